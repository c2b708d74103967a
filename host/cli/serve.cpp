// towerrec serve: one loaded model answering HTTP/JSON requests (cpp-httplib).
// Compiled where CMake found cpp-httplib (TOWERREC_HAVE_SERVE), i.e. always but
// in the Python build, which builds no CLI.
//
// Requests are parsed, checked and their IDs resolved on httplib's worker
// threads; the ranking itself (TrainedModel, its backend and the model's
// activation buffers, none of them safe to share) runs under one mutex, so
// requests are scored one at a time on the configured backend, each with all
// of its compute threads.
#ifdef TOWERREC_HAVE_SERVE
#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "host/cli/cli.h"
#include "host/data/text.h"
#include "towerrec/error.h"

namespace towerrec::cli {
namespace {

using nlohmann::json;

// A request the server refuses: HTTP status, the field at fault ("" for the
// request as a whole) and the message.
struct RequestError {
  int status;
  std::string field, message;
};

[[noreturn]] void refuse(int status, const std::string& field, const std::string& message) {
  throw RequestError{status, field, message};
}

struct Limits {
  int max_k = 1000;
  int64_t max_list = 100000;
  int64_t max_body = 1 << 20;
};

void reply_error(httplib::Response& res, int status, const std::string& field, const std::string& msg) {
  json j = {{"error", field.empty() ? msg : "field '" + field + "': " + msg}};
  if (!field.empty()) j["field"] = field;
  res.status = status;
  res.set_content(j.dump(), "application/json");
}

const char* json_type(const json& v) { return v.type_name(); }

// An ID: a JSON string, or an integer written in decimal (IDs are text).
std::string id_text(const json& v, const std::string& field) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return v.dump();
  refuse(400, field, std::string("expected an ID (string or integer), got ") + json_type(v));
}

int32_t find_id(const IdMap& map, const json& v, const std::string& field, const std::string& kind) {
  const std::string id = id_text(v, field);
  const int32_t x = map.find(data_detail::trim(id));
  if (x < 0) refuse(404, field, "unknown " + kind + " ID '" + id + "'");
  return x;
}

std::vector<int32_t> id_list(const IdMap& map, const json& v, const std::string& field,
                             const std::string& kind, const Limits& lim) {
  if (!v.is_array()) refuse(400, field, std::string("expected an array of IDs, got ") + json_type(v));
  if (static_cast<int64_t>(v.size()) > lim.max_list)
    refuse(413, field, std::to_string(v.size()) + " entries, more than --max-list " + std::to_string(lim.max_list));
  std::vector<int32_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) out.push_back(find_id(map, v[i], field + "[" + std::to_string(i) + "]", kind));
  return out;
}

json parse_body(const httplib::Request& req, const std::vector<std::string>& allowed) {
  json j = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) refuse(400, "", "malformed JSON body");
  if (!j.is_object()) refuse(400, "", std::string("the body must be a JSON object, got ") + json_type(j));
  for (const auto& [key, _] : j.items())
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
      refuse(400, key, "unknown field");
  return j;
}

int get_k(const json& j, const Limits& lim) {
  if (!j.contains("k")) return std::min(10, lim.max_k);
  const json& v = j["k"];
  if (!v.is_number_integer()) refuse(400, "k", std::string("expected an integer, got ") + json_type(v));
  const int64_t k = v.get<int64_t>();
  if (k < 1 || k > lim.max_k)
    refuse(400, "k", std::to_string(k) + " is out of range [1, " + std::to_string(lim.max_k) + "] (--max-k)");
  return static_cast<int>(k);
}

// The item filters of a request: "items" (allow), "exclude" (deny), "where".
RecommendFilter get_filter(const json& j, TrainedModel& m, const Limits& lim) {
  RecommendFilter f;
  if (j.contains("items")) {
    f.allow = id_list(m.items(), j["items"], "items", "item", lim);
    f.has_allow = true;
  }
  if (j.contains("exclude")) f.deny = id_list(m.items(), j["exclude"], "exclude", "item", lim);
  if (j.contains("where")) {
    const json& w = j["where"];
    if (!w.is_array()) refuse(400, "where", std::string("expected an array of \"column=value\" strings, got ") + json_type(w));
    if (static_cast<int64_t>(w.size()) > lim.max_list)
      refuse(413, "where", std::to_string(w.size()) + " entries, more than --max-list");
    for (size_t i = 0; i < w.size(); ++i) {
      if (!w[i].is_string()) refuse(400, "where", std::string("expected a \"column=value\" string, got ") + json_type(w[i]));
      try {
        f.where.push_back(parse_feature_condition(w[i].get<std::string>(), "where"));
      } catch (const Error& e) {
        refuse(400, "where", e.what());
      }
    }
    // Unknown columns and values are refused here, naming the field (the
    // checkpoint's features are read-only: no lock needed).
    try {
      (void)match_features(m.checkpoint().item_features, m.n_items(), f.where, "item");
    } catch (const Error& e) {
      refuse(400, "where", e.what());
    }
  }
  return f;
}

bool get_bool(const json& j, const std::string& key, bool dflt) {
  if (!j.contains(key)) return dflt;
  if (!j[key].is_boolean()) refuse(400, key, std::string("expected true or false, got ") + json_type(j[key]));
  return j[key].get<bool>();
}

// Row 0 of a TopK as parallel arrays of IDs and scores (padding left out).
void put_topk(json& out, const char* key, const TopK& top, const IdMap& map) {
  json ids = json::array(), scores = json::array();
  for (int q = 0; q < top.k && top.rows > 0; ++q) {
    const int32_t it = top.ids[q];
    if (it < 0) break;
    ids.push_back(map.id(it));
    // 9 significant digits: enough to read back as the same float (not the
    // 17 of the double it widens to).
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", top.scores[q]);
    scores.push_back(std::strtod(buf, nullptr));
  }
  out[key] = std::move(ids);
  out["scores"] = std::move(scores);
}

// The model and what ranking it needs, behind one mutex.
class Service {
 public:
  Service(TrainedModel m, Limits lim) : m_(std::move(m)), lim_(lim) {
    // Embed every user and item now, so the first request does not pay for it.
    (void)m_.item_embeddings();
    (void)m_.user_embeddings();
    history_problem_ = m_.model().history_input_problem();
  }

  json info() {
    const Config& c = m_.config();
    return {{"model", m_.path()},
            {"users", m_.n_users()},
            {"items", m_.n_items()},
            {"dim", m_.dim()},
            {"score", c.tower.normalize ? "cosine" : "dot"},
            {"loss", to_string(c.train.loss)},
            {"epochs", m_.checkpoint().epochs_done},
            {"history", c.tower.history},
            {"seen_items_stored", m_.checkpoint().has_seen()},
            {"backend", backend_}};
  }

  void set_backend_description() { backend_ = m_.backend().describe(); }

  json recommend(const json& j) {
    const int k = get_k(j, lim_);
    RecommendFilter f = get_filter(j, m_, lim_);
    f.exclude_seen = !get_bool(j, "include_seen", false);
    const bool has_user = j.contains("user"), has_history = j.contains("history");
    if (has_user == has_history) refuse(400, "user", "give exactly one of \"user\" and \"history\"");
    if (has_history) return recommend_history(j["history"], k, f);
    const int32_t u = find_id(m_.users(), j["user"], "user", "user");
    if (f.exclude_seen && !m_.checkpoint().has_seen())
      refuse(400, "include_seen", "the model stores no training interactions: set \"include_seen\": true");
    TopK top;
    {
      std::lock_guard<std::mutex> lock(mu_);
      top = m_.recommend({u}, k, f);
    }
    json out = {{"user", m_.users().id(u)}};
    put_topk(out, "items", top, m_.items());
    return out;
  }

  json similar(const json& j) {
    const int k = get_k(j, lim_);
    const bool by_item = j.contains("item"), by_user = j.contains("user");
    if (by_item == by_user) refuse(400, "item", "give exactly one of \"item\" and \"user\"");
    json out;
    if (by_item) {
      const RecommendFilter f = get_filter(j, m_, lim_);
      const int32_t q = find_id(m_.items(), j["item"], "item", "item");
      TopK top;
      {
        std::lock_guard<std::mutex> lock(mu_);
        top = m_.similar_items({q}, k, f);
      }
      out["item"] = m_.items().id(q);
      put_topk(out, "items", top, m_.items());
    } else {
      for (const char* key : {"items", "exclude", "where"})
        if (j.contains(key)) refuse(400, key, "item filters apply to similar items, not to similar users");
      const int32_t q = find_id(m_.users(), j["user"], "user", "user");
      TopK top;
      {
        std::lock_guard<std::mutex> lock(mu_);
        top = m_.similar_users({q}, k);
      }
      out["user"] = m_.users().id(q);
      put_topk(out, "users", top, m_.users());
    }
    return out;
  }

 private:
  // A new user: the user tower on the pooled history alone (the unknown-ID
  // bucket for the ID embedding), ranked against every item; the history's
  // items are left out unless include_seen (TrainedModel::recommend_histories).
  json recommend_history(const json& h, int k, const RecommendFilter& f) {
    if (!history_problem_.empty()) {
      const bool none = m_.config().tower.history <= 0;
      refuse(400, "history", history_problem_ + (none ? ": give \"user\"" : ""));
    }
    std::vector<int32_t> items = id_list(m_.items(), h, "history", "item", lim_);
    if (items.empty()) refuse(400, "history", "empty history");
    std::sort(items.begin(), items.end());
    items.erase(std::unique(items.begin(), items.end()), items.end());
    UserItems hist;
    hist.offsets = {0, static_cast<int64_t>(items.size())};
    hist.items = std::move(items);
    TopK top;
    {
      std::lock_guard<std::mutex> lock(mu_);
      top = m_.recommend_histories(hist, k, f);
    }
    json out = json::object();
    put_topk(out, "items", top, m_.items());
    return out;
  }

  TrainedModel m_;
  Limits lim_;
  std::mutex mu_;
  std::string history_problem_;  // why a history cannot be embedded ("" when it can)
  std::string backend_;
};

// A JSON endpoint: parse, answer, and turn every refusal into a 4xx.
template <typename F>
httplib::Server::Handler endpoint(F f) {
  return [f](const httplib::Request& req, httplib::Response& res) {
    try {
      res.set_content(f(req).dump(), "application/json");
    } catch (const RequestError& e) {
      reply_error(res, e.status, e.field, e.message);
    } catch (const InputError& e) {
      reply_error(res, 400, "", e.what());
    } catch (const std::exception& e) {
      reply_error(res, 500, "", e.what());
    }
  };
}

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace

int cmd_serve(const Args& args) {
  CLI::App app(
      "Loads a model once and answers HTTP/JSON requests: GET /health, GET /info,\n"
      "POST /recommend {\"user\": ID | \"history\": [IDs], \"k\", \"items\", \"exclude\",\n"
      "\"where\", \"include_seen\"}, POST /similar {\"item\": ID | \"user\": ID, \"k\", ...}.\n"
      "Prints 'serving MODEL on http://HOST:PORT' on standard error once listening\n"
      "(with --quiet only for --port 0).\n"
      "SIGINT or SIGTERM stops it. Loopback only unless --host names another address.",
      "towerrec serve");
  configure_app(app);
  std::string model, host = "127.0.0.1";
  int port = 8080, workers = 4;
  Limits lim;
  DeviceOptions dev;
  app.add_option("--model", model, "directory with model.ckpt (or the checkpoint file)")->required();
  app.add_option("--host", host, "address to listen on (a non-loopback one serves the network)")
      ->capture_default_str();
  app.add_option("--port", port, "TCP port (0: any free port, printed)")->check(CLI::Range(0, 65535))->capture_default_str();
  app.add_option("--threads", workers, "HTTP worker threads (requests are ranked one at a time)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--device", dev.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--compute-threads", dev.threads, "CPU threads of the backend's ranking (0: all cores)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  app.add_option("--max-k", lim.max_k, "largest k a request may ask for")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--max-list", lim.max_list, "most entries of a request's ID or condition list")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30))
      ->capture_default_str();
  app.add_option("--max-body-bytes", lim.max_body, "largest request body")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 34))
      ->capture_default_str();
  bool quiet = false;
  app.add_flag("--quiet", quiet,
               "print nothing but errors and warnings (with --port 0 the 'serving' line still "
               "names the port chosen)");
  if (!parse_args(app, args)) return 0;

  // SIGINT and SIGTERM go to one waiting thread (blocked everywhere else,
  // including the threads started from here on); a closed client connection
  // must not kill the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  Service svc(TrainedModel::load(model, dev.device, dev.threads), lim);
  svc.set_backend_description();

  httplib::Server svr;
  svr.new_task_queue = [workers] { return new httplib::ThreadPool(static_cast<size_t>(workers)); };
  svr.set_payload_max_length(static_cast<size_t>(lim.max_body));
  svr.set_tcp_nodelay(true);  // small JSON replies: no Nagle delay behind the client's ACK
  svr.set_error_handler([&lim](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413)
      reply_error(res, 413, "body", "request body larger than --max-body-bytes " + std::to_string(lim.max_body));
    else if (res.status == 404)
      reply_error(res, 404, "", "no such endpoint (GET /health, GET /info, POST /recommend, POST /similar)");
    else
      reply_error(res, res.status, "", "request refused");
  });
  svr.Get("/health", endpoint([](const httplib::Request&) { return json{{"status", "ok"}}; }));
  svr.Get("/info", endpoint([&svc](const httplib::Request&) { return svc.info(); }));
  const std::vector<std::string> rec_keys = {"user", "history", "k", "items", "exclude", "where", "include_seen"};
  const std::vector<std::string> sim_keys = {"item", "user", "k", "items", "exclude", "where"};
  svr.Post("/recommend", endpoint([&](const httplib::Request& r) { return svc.recommend(parse_body(r, rec_keys)); }));
  svr.Post("/similar", endpoint([&](const httplib::Request& r) { return svc.similar(parse_body(r, sim_keys)); }));

  int bound = -1;
  if (port == 0) bound = svr.bind_to_any_port(host);
  else if (svr.bind_to_port(host, port)) bound = port;
  if (bound <= 0) throw Error("cannot listen on " + host + ":" + std::to_string(port));
  if (!is_loopback(host))
    std::fprintf(stderr, "note: listening on %s, reachable from other machines\n", host.c_str());
  if (!quiet || port == 0) std::fprintf(stderr, "serving %s on http://%s:%d\n", model.c_str(), host.c_str(), bound);
  std::fflush(stderr);

  std::atomic<bool> done{false};
  int got = 0;
  std::thread waiter([&] {
    const timespec tick{0, 200 * 1000 * 1000};
    while (!done.load()) {
      const int s = sigtimedwait(&stop_signals, nullptr, &tick);
      if (s > 0) {
        got = s;
        svr.stop();
        return;
      }
    }
  });
  const bool ok = svr.listen_after_bind();
  done = true;
  waiter.join();
  if (got) {
    if (!quiet) std::fprintf(stderr, "stopped on %s\n", got == SIGINT ? "SIGINT" : "SIGTERM");
    return 0;
  }
  if (!ok) throw Error("the server stopped listening on " + host + ":" + std::to_string(bound));
  return 0;
}

}  // namespace towerrec::cli

#endif  // TOWERREC_HAVE_SERVE

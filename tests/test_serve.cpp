// `towerrec serve` end to end: the server runs as its own process on a free
// loopback port (--port 0, the port read from its "serving ... on" line) and
// is queried with httplib's client: health and info; recommend and similar
// equal to the CLI's `recommend` and `similar` output (IDs and scores as the
// CLI prints them); filters inside the top-K; a new user from a history; every
// error path a 4xx naming the field, the server serving on; concurrent
// clients; and a clean exit on SIGTERM. A small synthetic set, 2 epochs.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "tests/test_util.h"
#include "tests/work_dir.h"

namespace towerrec {
namespace {

using nlohmann::json;
std::string path(const std::string& name) { return testing::work_path(name); }

// Runs `towerrec ARGS`; returns the exit status, stdout in *out.
int cli(const std::string& args, std::string* out = nullptr) {
  static int n = 0;
  const std::string o = path("out." + std::to_string(n++));
  const int st = std::system((testing::cli_path() + " " + args + " >" + o + " 2>" + o + ".err").c_str());
  if (out) *out = read_file(o);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// One `towerrec serve` process; its stderr is collected by a reader thread.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe(fds) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 2);
      ::close(fds[0]);
      ::close(fds[1]);
      const std::string exe = testing::cli_path();
      std::vector<std::string> all = {exe, "serve"};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(exe.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] {
      char buf[4096];
      ssize_t r;
      while ((r = ::read(fd, buf, sizeof buf)) > 0) {
        std::lock_guard<std::mutex> lock(mu_);
        err_.append(buf, static_cast<size_t>(r));
      }
      ::close(fd);
    });
    // Wait (up to 60 s: the model loads first) for the listening line.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < until) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        const auto at = err_.find(" on http://127.0.0.1:");
        if (at != std::string::npos && err_.find('\n', at) != std::string::npos) {
          port_ = std::stoi(err_.substr(at + 21));
          return;
        }
      }
      int st;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) stop();
    if (reader_.joinable()) reader_.join();
  }
  int port() const { return port_; }
  std::string err() {
    std::lock_guard<std::mutex> lock(mu_);
    return err_;
  }
  // SIGTERM; returns the exit status (-1 when it did not exit normally).
  int stop() {
    ::kill(pid_, SIGTERM);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    if (reader_.joinable()) reader_.join();
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }

 private:
  pid_t pid_ = -1;
  int port_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::string err_;
};

struct Reply {
  int status = -1;
  json body;
};

Reply post(int port, const std::string& where, const std::string& body) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(60, 0);
  auto r = c.Post(where.c_str(), body, "application/json");
  Reply out;
  if (!r) return out;
  out.status = r->status;
  out.body = json::parse(r->body, nullptr, false);
  return out;
}
Reply post(int port, const std::string& where, const json& body) { return post(port, where, body.dump()); }
Reply get(int port, const std::string& where) {
  httplib::Client c("127.0.0.1", port);
  auto r = c.Get(where.c_str());
  Reply out;
  if (!r) return out;
  out.status = r->status;
  out.body = json::parse(r->body, nullptr, false);
  return out;
}

// The CLI's rows (query, result, rank, score) as (result, score text) pairs.
std::vector<std::pair<std::string, std::string>> cli_rows(const std::string& csv) {
  std::vector<std::pair<std::string, std::string>> rows;
  std::istringstream in(csv);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::istringstream ls(line);
    for (std::string cell; std::getline(ls, cell, ',');) f.push_back(cell);
    if (f.size() == 4) rows.emplace_back(f[1], f[3]);
  }
  return rows;
}

// A reply's (item, score) pairs, the scores printed as the CLI prints them.
std::vector<std::pair<std::string, std::string>> reply_rows(const json& j, const char* key) {
  std::vector<std::pair<std::string, std::string>> rows;
  for (size_t i = 0; i < j[key].size(); ++i) {
    char s[32];
    std::snprintf(s, sizeof s, "%.7g", j["scores"][i].get<float>());
    rows.emplace_back(j[key][i].get<std::string>(), s);
  }
  return rows;
}

class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ok_ = cli("synth --out " + path("syn") + " --users 300 --items 120 --interactions-per-user 15 --seed 3") == 0 &&
          cli("train --data " + path("syn") + " --epochs 2 --threads 1 --quiet --out " + path("model")) == 0;
    if (!ok_) return;
    std::ifstream in(path("syn/interactions.csv"));
    std::string line;
    std::getline(in, line);
    for (int i = 0; i < 400 && std::getline(in, line);) {
      const std::string u = line.substr(0, line.find(','));
      if (users_.empty() || users_.back() != u) users_.push_back(u), ++i;
    }
    server_ = new ServerProcess({"--model", path("model"), "--port", "0", "--threads", "4", "--compute-threads",
                                 "1", "--max-body-bytes", "8192", "--max-k", "50", "--max-list", "50"});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(ok_) << "synth or train failed";
    ASSERT_GT(server_->port(), 0) << server_->err();
  }
  static int port() { return server_->port(); }
  // The CLI's top-k for one user, with extra flags.
  static std::vector<std::pair<std::string, std::string>> cli_recommend(const std::string& user, int k,
                                                                       const std::string& extra = "") {
    std::string out;
    EXPECT_EQ(cli("recommend --model " + path("model") + " --threads 1 --out - --k " + std::to_string(k) +
                      " --user " + user + " " + extra,
                  &out),
              0);
    return cli_rows(out);
  }
  static bool ok_;
  static std::vector<std::string> users_;
  static ServerProcess* server_;
};
bool Serve::ok_ = false;
std::vector<std::string> Serve::users_;
ServerProcess* Serve::server_ = nullptr;

TEST_F(Serve, HealthAndInfo) {
  const Reply h = get(port(), "/health");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, json({{"status", "ok"}}));
  const Reply i = get(port(), "/info");
  ASSERT_EQ(i.status, 200);
  EXPECT_EQ(i.body["users"], 300);
  EXPECT_EQ(i.body["items"], 120);
  EXPECT_EQ(i.body["dim"], 64);
  EXPECT_EQ(i.body["score"], "cosine");  // softmax: normalised outputs
  EXPECT_EQ(i.body["loss"], "softmax");
  EXPECT_EQ(i.body["epochs"], 2);
  EXPECT_NE(i.body["backend"].get<std::string>().find("cpu"), std::string::npos) << i.body.dump();
}

TEST_F(Serve, RecommendEqualsTheCli) {
  for (const std::string& u : {users_[0], users_[7], users_[42]}) {
    const Reply r = post(port(), "/recommend", json{{"user", u}, {"k", 10}});
    ASSERT_EQ(r.status, 200) << r.body.dump();
    EXPECT_EQ(r.body["user"], u);
    EXPECT_EQ(reply_rows(r.body, "items"), cli_recommend(u, 10)) << u;
  }
  // include_seen against --include-seen.
  const Reply r = post(port(), "/recommend", json{{"user", users_[1]}, {"k", 5}, {"include_seen", true}});
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(reply_rows(r.body, "items"), cli_recommend(users_[1], 5, "--include-seen"));
}

TEST_F(Serve, FiltersApplyInsideTheTopK) {
  const std::string u = users_[3];
  const auto full = cli_recommend(u, 12);
  ASSERT_EQ(full.size(), 12u);
  // Deny the best two: the next ten move up, still ten results.
  const Reply d = post(port(), "/recommend",
                       json{{"user", u}, {"k", 10}, {"exclude", {full[0].first, full[1].first}}});
  ASSERT_EQ(d.status, 200) << d.body.dump();
  EXPECT_EQ(reply_rows(d.body, "items"), decltype(full)(full.begin() + 2, full.end()));
  // Allow a few items ranked far down: all come back, in the CLI's order.
  std::ofstream(path("allow.txt")) << full[11].first << "\n" << full[5].first << "\n";
  const Reply a = post(port(), "/recommend",
                       json{{"user", u}, {"k", 10}, {"items", {full[11].first, full[5].first}}});
  ASSERT_EQ(a.status, 200);
  EXPECT_EQ(reply_rows(a.body, "items"), (decltype(full){full[5], full[11]}));
  // A feature condition, against the CLI's --where.
  const Reply w = post(port(), "/recommend", json{{"user", u}, {"k", 10}, {"where", {"category=c1"}}});
  ASSERT_EQ(w.status, 200) << w.body.dump();
  EXPECT_EQ(w.body["items"].size(), 10u);
  EXPECT_EQ(reply_rows(w.body, "items"), cli_recommend(u, 10, "--where category=c1"));
  // Numeric comparisons and !=, all holding.
  const Reply n = post(port(), "/recommend",
                       json{{"user", u}, {"k", 10}, {"where", {"price>=20", "price<30", "category!=c1"}}});
  ASSERT_EQ(n.status, 200) << n.body.dump();
  EXPECT_EQ(reply_rows(n.body, "items"),
            cli_recommend(u, 10, "--where 'price>=20' --where 'price<30' --where 'category!=c1'"));
}

TEST_F(Serve, SimilarEqualsTheCli) {
  std::string out;
  ASSERT_EQ(cli("similar --model " + path("model") + " --threads 1 --out - --k 8 --id i5", &out), 0);
  const Reply r = post(port(), "/similar", json{{"item", "i5"}, {"k", 8}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["item"], "i5");
  EXPECT_EQ(reply_rows(r.body, "items"), cli_rows(out));
  ASSERT_EQ(cli("similar --model " + path("model") + " --threads 1 --out - --k 4 --users --id " + users_[2], &out), 0);
  const Reply s = post(port(), "/similar", json{{"user", users_[2]}, {"k", 4}});
  ASSERT_EQ(s.status, 200) << s.body.dump();
  EXPECT_EQ(reply_rows(s.body, "users"), cli_rows(out));
}

TEST_F(Serve, EveryErrorIsA4xxNamingTheFieldAndTheServerServesOn) {
  struct Case {
    const char* endpoint;
    std::string body;
    int status;
    std::string field;  // named in "error" (empty: the body as a whole)
  };
  const std::string u = users_[0];
  const std::vector<Case> cases = {
      {"/recommend", "{\"user\": ", 400, ""},                              // malformed JSON
      {"/recommend", "[1, 2]", 400, ""},                                   // not an object
      {"/recommend", "", 400, ""},                                         // empty body
      {"/recommend", R"({"user": "nobody"})", 404, "user"},                // unknown ID
      {"/recommend", R"({"user": [1]})", 400, "user"},                     // wrong type
      {"/recommend", R"({"k": 5})", 400, "user"},                          // no user
      {"/recommend", json{{"user", u}, {"k", 51}}.dump(), 400, "k"},       // above --max-k
      {"/recommend", json{{"user", u}, {"k", 0}}.dump(), 400, "k"},
      {"/recommend", json{{"user", u}, {"k", "10"}}.dump(), 400, "k"},     // wrong type
      {"/recommend", json{{"user", u}, {"k", 2.5}}.dump(), 400, "k"},
      {"/recommend", json{{"user", u}, {"items", "i1"}}.dump(), 400, "items"},
      {"/recommend", json{{"user", u}, {"exclude", {"i1", "zz"}}}.dump(), 404, "exclude[1]"},
      {"/recommend", json{{"user", u}, {"where", {"category"}}}.dump(), 400, "where"},
      {"/recommend", json{{"user", u}, {"where", {"colour=red"}}}.dump(), 400, "where"},
      {"/recommend", json{{"user", u}, {"where", {"price>=cheap"}}}.dump(), 400, "where"},
      {"/recommend", json{{"user", u}, {"where", {"category<c1"}}}.dump(), 400, "where"},
      {"/recommend", json{{"user", u}, {"include_seen", 1}}.dump(), 400, "include_seen"},
      {"/recommend", json{{"user", u}, {"usr", 1}}.dump(), 400, "usr"},  // unknown field
      {"/recommend", json{{"history", {"i1"}}}.dump(), 400, "history"},  // no history input
      {"/similar", json{{"item", "nothing"}}.dump(), 404, "item"},
      {"/similar", json{{"item", "i1"}, {"user", u}}.dump(), 400, "item"},
      {"/similar", json{{"user", u}, {"where", {"category=c1"}}}.dump(), 400, "where"},
      {"/recommend", std::string(9000, ' '), 413, "body"},                 // above --max-body-bytes
      {"/recommend", json{{"user", u}, {"exclude", std::vector<std::string>(51, "i1")}}.dump(), 413, "exclude"},
  };
  for (const Case& c : cases) {
    const Reply r = post(port(), c.endpoint, c.body);
    EXPECT_EQ(r.status, c.status) << c.body.substr(0, 80) << " -> " << r.body.dump();
    ASSERT_TRUE(r.body.is_object() && r.body.contains("error")) << c.body.substr(0, 80);
    if (!c.field.empty()) {
      EXPECT_NE(r.body["error"].get<std::string>().find("'" + c.field + "'"), std::string::npos)
          << r.body.dump();
    }
    EXPECT_EQ(get(port(), "/health").status, 200) << "after " << c.body.substr(0, 80);
  }
  // An unknown endpoint.
  EXPECT_EQ(get(port(), "/nothing").status, 404);
  EXPECT_EQ(post(port(), "/recommend", json{{"user", u}, {"k", 10}}).status, 200);
}

TEST_F(Serve, ConcurrentClientsAllGetTheirOwnAnswer) {
  std::vector<json> expected;
  for (int i = 0; i < 20; ++i) {
    const Reply r = post(port(), "/recommend", json{{"user", users_[i]}, {"k", 10}});
    ASSERT_EQ(r.status, 200);
    expected.push_back(r.body);
  }
  std::atomic<int> wrong{0}, done{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 6; ++t)
    clients.emplace_back([&, t] {
      for (int n = 0; n < 20; ++n) {
        const int i = (t * 7 + n) % 20;
        const Reply r = post(port(), "/recommend", json{{"user", users_[i]}, {"k", 10}});
        if (r.status != 200 || r.body != expected[i]) ++wrong;
        ++done;
      }
    });
  for (auto& c : clients) c.join();
  EXPECT_EQ(done.load(), 120);
  EXPECT_EQ(wrong.load(), 0);
}

TEST(ServeHistory, ANewUserFromAHistory) {
  ASSERT_EQ(cli("synth --out " + path("hsyn") + " --users 200 --items 80 --interactions-per-user 12 --seed 4"), 0);
  ASSERT_EQ(cli("train --data " + path("hsyn") + " --epochs 1 --threads 1 --quiet --history 8 --features false --out " +
                path("hmodel")),
            0);
  ServerProcess s({"--model", path("hmodel"), "--port", "0", "--compute-threads", "1"});
  ASSERT_GT(s.port(), 0) << s.err();
  EXPECT_EQ(get(s.port(), "/info").body["history"], 8);
  const Reply r = post(s.port(), "/recommend", json{{"history", {"i1", "i2", "i3"}}, {"k", 10}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  ASSERT_EQ(r.body["items"].size(), 10u);
  for (const auto& it : r.body["items"]) {
    EXPECT_TRUE(it != "i1" && it != "i2" && it != "i3") << it;
  }
  for (size_t q = 1; q < 10; ++q) EXPECT_GE(r.body["scores"][q - 1], r.body["scores"][q]);
  // The same history twice: the same answer; include_seen may return them.
  EXPECT_EQ(post(s.port(), "/recommend", json{{"history", {"i3", "i2", "i1"}}, {"k", 10}}).body, r.body);
  EXPECT_EQ(post(s.port(), "/recommend", json{{"history", json::array()}}).status, 400);
  EXPECT_EQ(post(s.port(), "/recommend", json{{"history", {"i1"}}, {"user", "u1"}}).status, 400);
  EXPECT_EQ(s.stop(), 0);
  EXPECT_NE(s.err().find("stopped on SIGTERM"), std::string::npos) << s.err();
}

// Last (gtest runs a file's tests in order): SIGTERM ends the shared server cleanly.
TEST_F(Serve, ZStopsCleanlyOnSigterm) {
  EXPECT_EQ(server_->stop(), 0);
  EXPECT_NE(server_->err().find("stopped on SIGTERM"), std::string::npos) << server_->err();
}

}  // namespace
}  // namespace towerrec

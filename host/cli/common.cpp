#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "host/cli/cli.h"
#include "host/data/text.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec::cli {

void add_validation_option(CLI::App& app, Config& cfg) {
  // The holdout key's own parser checks the value.
  const ConfigKey* holdout = nullptr;
  for (const auto& k : config_keys())
    if (k.name == "holdout") holdout = &k;
  app.add_option_function<std::string>(
         "--validation", [&cfg, holdout](const std::string& v) { holdout->set(cfg, v); },
         "per-user fraction of the training interactions held out for evaluation (the same as "
         "--holdout F)")
      ->trigger_on_parse()
      ->option_text("F");
}

void add_device_options(CLI::App& app, DeviceOptions& d) {
  app.add_option("--device", d.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--threads", d.threads, "CPU threads (0: all cores)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
}

void add_distributed_options(CLI::App& app, bool& distributed, double& timeout_s) {
  app.add_flag("--distributed", distributed,
               "run on the ranks of an MPI launch (mpirun -np N towerrec ...): data-parallel, "
               "rank 0 writes the outputs");
  app.add_option("--comm-timeout", timeout_s,
                 "seconds a rank waits in a collective before it gives up and ends the run (0: no limit)")
      ->check(CLI::Range(0.0, 1e7))
      ->capture_default_str();
}

DistributedRun start_distributed(std::string& device, double timeout_s, bool quiet, bool gradients) {
  DistributedRun run;
  if (!launched_by_mpi()) {
    const char* ws = std::getenv("WORLD_SIZE");
    if (ws && *ws && std::string(ws) != "1")
      throw Error(std::string("WORLD_SIZE=") + ws +
                  " but this process was not started by an MPI launcher: start the ranks with "
                  "mpirun -np N towerrec ... --distributed (MPI connects them)");
    if (!quiet) std::fprintf(stderr, "--distributed: not started by mpirun; running as one rank\n");
    run.control = std::make_unique<SingleRankCommunicator>();
    return run;
  }
  run.control = make_mpi_communicator(timeout_s);
  check_rank_environment(*run.control);
  if (run.size() > 1 && (device == "cuda" || device.rfind("cuda:", 0) == 0)) {
    const int gpu = device == "cuda" ? local_rank() : std::stoi(device.substr(5));
    device = "cuda:" + std::to_string(gpu);
    if (gradients && have_nccl()) run.gradients = make_nccl_communicator(*run.control, gpu);
  }
  return run;
}

int run_on_ranks(const DistributedRun& run, const char* cmd, const std::function<int()>& body) {
  if (run.size() <= 1) return body();
  try {
    return body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "towerrec %s: rank %d of %d: error: %s\n", cmd, run.rank(), run.size(), e.what());
    std::fflush(stderr);
    std::fflush(stdout);
    run.control->abort(1);
    throw;
  }
}

void add_delimiter_option(CLI::App& app, char& delimiter) {
  app.add_option_function<std::string>(
         "--delimiter", [&delimiter](const std::string& v) { delimiter = parse_delimiter("--delimiter", v); },
         "field separator of the CSV files read (default ','; tab or \\t for a tab)")
      ->option_text("C");
}

ProgressPrinter::ProgressPrinter(bool quiet) : quiet_(quiet), tty_(::isatty(2) != 0) {}

void ProgressPrinter::update(const TrainProgress& p, int64_t done, int64_t total, double secs) {
  if (quiet_) return;
  const double eta = done > 0 ? secs / static_cast<double>(done) * static_cast<double>(total - done) : 0;
  const double rate = p.seconds > 0 ? static_cast<double>(p.samples) / p.seconds : 0;
  std::fprintf(stderr, "%sepoch %d/%d  step %lld/%lld  loss %.5f  %.0f samples/s  eta %s%s",
               tty_ ? "\r\033[K" : "", p.epoch, p.epochs, static_cast<long long>(p.step),
               static_cast<long long>(p.steps), p.loss, rate, format_seconds(eta).c_str(),
               tty_ ? "" : "\n");
  std::fflush(stderr);
}

void ProgressPrinter::epoch_done(const EpochStats& s, double secs, int64_t steps_left) {
  if (quiet_) return;
  const double per_step = s.steps ? s.seconds / static_cast<double>(s.steps) : 0;
  std::fprintf(stderr, "%sepoch %d  loss %.5f  %.0f samples/s  %s  eta %s\n", tty_ ? "\r\033[K" : "",
               s.epoch, s.loss, s.samples_per_s, format_seconds(s.seconds).c_str(),
               format_seconds(per_step * static_cast<double>(steps_left)).c_str());
  (void)secs;
}

void add_quiet_option(CLI::App& app, bool& quiet) {
  app.add_flag("--quiet", quiet, "no progress, summary lines or notes on the terminal (results and errors still print)");
}

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double progress_interval(bool tty) {
  if (tty) return 0.1;
  const char* e = std::getenv("TOWERREC_PROGRESS_SECONDS");
  if (e && *e) {
    char* end = nullptr;
    const double v = std::strtod(e, &end);
    if (end && *end == '\0' && v >= 0) return v;
  }
  return 10.0;
}
}  // namespace

std::string group_digits(int64_t n) {
  std::string d = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i && (d.size() - i) % 3 == 0) out += ',';
    out += d[i];
  }
  return n < 0 ? "-" + out : out;
}

Progress::Progress(std::string label, std::string unit, int64_t total, bool quiet)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), quiet_(quiet),
      tty_(::isatty(2) != 0), start_(now_s()), interval_(progress_interval(tty_)) {}

Progress::~Progress() {
  if (open_) std::fputc('\n', stderr);
}

void Progress::set(int64_t done) {
  done_ = done;
  if (quiet_ || finished_ || (total_ > 0 && done_ >= total_)) return;  // the end: finish() prints it
  const double t = now_s();
  if (t - last_ < interval_) return;
  // The first plain line waits one interval: a short step prints only its final line.
  if (!tty_ && last_ < -1e29) {
    last_ = start_;
    if (t - last_ < interval_) return;
  }
  last_ = t;
  print(false);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (!quiet_) print(true);
}

void Progress::print(bool final) {
  std::string line = label_ + ": " + group_digits(done_) + " / " + group_digits(total_) + " " + unit_;
  if (total_ > 0) {
    char pct[16];
    std::snprintf(pct, sizeof pct, " (%d%%)", static_cast<int>(100.0 * static_cast<double>(done_) / static_cast<double>(total_)));
    line += pct;
  }
  if (final) line += " in " + format_seconds(now_s() - start_);
  std::fprintf(stderr, "%s%s%s", tty_ ? "\r\033[K" : "", line.c_str(), tty_ && !final ? "" : "\n");
  std::fflush(stderr);
  open_ = tty_ && !final;
}

std::vector<int> parse_ks(const std::string& s) {
  std::vector<int> ks;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    size_t pos = 0;
    long x = 0;
    try { x = std::stol(part, &pos); } catch (...) { pos = 0; }
    if (part.empty() || pos != part.size() || x <= 0 || x > 100000)
      throw Error("--k: expected positive cutoffs like 10,20, got '" + s + "'");
    ks.push_back(static_cast<int>(x));
  }
  if (ks.empty()) throw Error("--k: no cutoffs given");
  return ks;
}

UserItems no_items(int32_t n_users) {
  UserItems g;
  g.offsets.assign(static_cast<size_t>(n_users) + 1, 0);
  return g;
}

HistoryFile read_histories(const std::string& path, const LoadedModel& lm, char delimiter) {
  if (!file_exists(path)) throw Error("--histories " + path + ": no such file");
  if (is_directory(path)) throw Error("--histories " + path + ": is a directory");
  IdMap read_users;
  const Interactions x = read_interactions_new_users(path, read_users, lm.ck.items, delimiter);
  // Positives only, as in training: rows rated below the model's threshold go,
  // and so does a user left without any.
  const float threshold = lm.cfg.rating_threshold;
  Interactions kept;
  HistoryFile h;
  h.path = path;
  std::vector<int32_t> row_of(static_cast<size_t>(read_users.size()), -1);
  for (int64_t r = 0; r < x.size(); ++r) {
    if (!x.rating.empty() && !std::isnan(threshold) && !(x.rating[r] >= threshold)) {
      ++h.rows_dropped;
      continue;
    }
    int32_t& u = row_of[static_cast<size_t>(x.user[r])];
    if (u < 0) u = h.users.add(read_users.id(x.user[r]));
    kept.user.push_back(u);
    kept.item.push_back(x.item[r]);
  }
  h.rows = kept.size();
  h.users_dropped = read_users.size() - h.users.size();
  if (h.users.size() == 0)
    throw InputError(path, 0, "", x.size() == 0 ? "no interactions" : "no interaction rated at or above the model's rating threshold");
  h.items = group_by_user(kept, h.users.size());
  return h;
}

std::vector<int32_t> read_id_list(const std::string& path, const IdMap& map, const std::string& kind,
                                  bool allow_empty) {
  if (!file_exists(path)) throw Error(path + ": no such file");
  if (is_directory(path)) throw Error(path + ": is a directory");
  const std::string text = read_file(path);
  std::vector<int32_t> out;
  int64_t line = 0;
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string_view id(text.data() + at, end - at);
    at = end + 1;
    ++line;
    if (line == 1 && id.substr(0, 3) == "\xEF\xBB\xBF") id.remove_prefix(3);  // UTF-8 BOM
    while (!id.empty() && id.back() == '\r') id.remove_suffix(1);
    id = data_detail::trim(id);
    if (id.empty()) continue;
    if (line == 1 && (id == kind || id == kind + "_id")) continue;
    const int32_t x = map.find(id);
    if (x < 0) throw InputError(path, line, kind, "unknown " + kind + " ID '" + std::string(id) + "'");
    out.push_back(x);
  }
  if (out.empty() && !allow_empty) throw InputError(path, 0, "", "no " + kind + " IDs");
  return out;
}

void add_item_filter_options(CLI::App& app, ItemFilterOptions& f, bool add_items) {
  if (add_items)
    app.add_option_function<std::string>(
           "--items",
           [&f](const std::string& p) {
             f.allow_file = p;
             f.has_allow = true;
           },
           "allow list: only these item IDs may be returned (one per line)")
        ->option_text("FILE");
  app.add_option_function<std::string>(
         "--exclude",
         [&f](const std::string& p) {
           f.deny_file = p;
           f.has_deny = true;
         },
         "deny list: these item IDs are never returned (one per line)")
      ->option_text("FILE");
  app.add_option_function<std::string>(
         "--where", [&f](const std::string& w) { f.where.push_back(w); },
         "only items whose feature passes: COLUMN=VALUE or COLUMN!=VALUE on a categorical "
         "column (one value of a multi-hot column is enough), COLUMN=X, !=, <, <=, >, >= X on a "
         "numeric column (the feature file's raw values); repeatable: all must hold")
      ->option_text("COND")
      ->trigger_on_parse();
}

RankFilter make_item_filter(const LoadedModel& lm, const ItemFilterOptions& f, bool quiet) {
  RankFilter rf;
  if (!f.any()) return rf;
  std::vector<int32_t> allow, deny;
  if (f.has_allow) allow = read_id_list(f.allow_file, lm.ck.items, "item");
  if (f.has_deny) deny = read_id_list(f.deny_file, lm.ck.items, "item", true);
  std::vector<FeatureCondition> where;
  for (const auto& w : f.where) where.push_back(parse_feature_condition(w, "--where"));
  const std::vector<char> mask =
      where.empty() ? std::vector<char>() : match_features(lm.ck.item_features, lm.n_items(), where, "item");
  rf.restrict = true;
  rf.candidates = candidate_items(lm.n_items(), f.has_allow, allow, deny, mask);
  if (rf.candidates.empty() && !quiet) std::fprintf(stderr, "note: no item passes the filters; no rows will be written\n");
  return rf;
}

void check_writable(const std::string& out) {
  namespace fs = std::filesystem;
  if (out == "-") return;
  std::error_code ec;
  if (fs::is_directory(fs::status(out, ec))) throw Error("--out " + out + ": is a directory");
  const fs::path dir = fs::path(out).has_parent_path() ? fs::path(out).parent_path() : fs::path(".");
  if (!fs::is_directory(fs::status(dir, ec)))
    throw Error("--out " + out + ": no directory " + dir.string());
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw Error("--out " + out + ": cannot write in " + dir.string() + " (" + std::strerror(errno) + ")");
  const auto st = fs::status(out, ec);
  if (fs::exists(st) && ::access(out.c_str(), W_OK) != 0)
    throw Error("--out " + out + ": cannot be replaced (" + std::strerror(errno) + ")");
}

CsvOutput::CsvOutput(const std::string& out) : path_(out) {
  if (!to_stdout()) file_ = std::make_unique<AtomicFile>(out);
}

void CsvOutput::write(const std::string& text) {
  if (file_) return file_->write(text);
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size())
    throw Error("standard output: write failed");
}

void CsvOutput::commit() {
  if (file_) return file_->commit();
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) throw Error("standard output: write failed");
}

int64_t append_topk_rows(std::string& buf, const TopKBlock& b, const IdMap& queries, const IdMap& results) {
  int64_t rows = 0;
  for (size_t r = 0; r < b.users.size(); ++r) {
    const std::string& qid = queries.id(b.users[r]);
    for (int q = 0; q < b.k; ++q) {
      const int32_t it = b.items[r * static_cast<size_t>(b.k) + q];
      if (it < 0) break;
      data_detail::append_csv_field(buf, qid);
      buf += ',';
      data_detail::append_csv_field(buf, results.id(it));
      char tail[48];
      std::snprintf(tail, sizeof tail, ",%d,%.7g\n", q + 1, b.scores[r * static_cast<size_t>(b.k) + q]);
      buf += tail;
      ++rows;
    }
  }
  return rows;
}

void print_ranking(const std::string& label, const RankingMetrics& m) {
  for (size_t j = 0; j < m.ks.size(); ++j)
    std::printf("%s@%d  precision %.4f  recall %.4f  ndcg %.4f  map %.4f  hit-rate %.4f\n",
                label.c_str(), m.ks[j], m.precision[j], m.recall[j], m.ndcg[j], m.map[j],
                m.hit_rate[j]);
  std::printf("%s  mrr@%d %.4f  coverage@%d %.4f  users %lld (skipped %lld)\n", label.c_str(),
              m.ks.back(), m.mrr, m.ks.back(), m.coverage, static_cast<long long>(m.users_evaluated),
              static_cast<long long>(m.users_skipped));
}

void print_sampled(const std::string& label, const SampledMetrics& m) {
  for (size_t j = 0; j < m.ks.size(); ++j)
    std::printf("%s@%d  hit-rate %.4f  ndcg %.4f\n", label.c_str(), m.ks[j], m.hit_rate[j], m.ndcg[j]);
  std::printf("%s  auc %.4f  log-loss %.4f  positives %lld  users %lld  negatives %d per positive",
              label.c_str(), m.auc, m.log_loss, static_cast<long long>(m.cases),
              static_cast<long long>(m.users_evaluated), m.negatives);
  if (m.short_cases) std::printf(" (%lld with fewer unseen items)", static_cast<long long>(m.short_cases));
  std::printf("\n");
}

}  // namespace towerrec::cli

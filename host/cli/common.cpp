#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <sstream>

#include "host/cli/cli.h"
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

#include <unistd.h>

#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec::cli {

bool wants_help(const Args& args) {
  for (const auto& a : args)
    if (a == "--help" || a == "-h") return true;
  return false;
}

std::string format_seconds(double s) {
  char buf[64];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return buf;
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

Dataset load_dataset(const Config& cfg) {
  if (cfg.data.empty()) throw Error("no input: give --data (a MovieLens or synth directory, or a CSV)");
  LoadOptions opt;
  opt.rating_threshold = cfg.rating_threshold;
  opt.features = cfg.features;
  if (!cfg.user_features.empty() || !cfg.item_features.empty())
    return load_csv(cfg.data, cfg.user_features, cfg.item_features, opt);
  return load_auto(cfg.data, opt);
}

}  // namespace towerrec::cli

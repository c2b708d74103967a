#include <signal.h>

#include <algorithm>
#include <cstdio>

#include "host/cli/cli.h"
#include "host/config_flags.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/recommend.h"
#include "towerrec/session.h"

namespace towerrec::cli {

namespace {

// The session's reports as the command line shows them: results on stdout,
// progress and notes on stderr.
SessionCallbacks printing_callbacks(ProgressPrinter& printer) {
  SessionCallbacks cb;
  cb.out = [](const std::string& line) { std::printf("%s\n", line.c_str()); };
  cb.note = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  cb.warn = cb.note;
  cb.progress = [&printer](const TrainProgress& p, int64_t done, int64_t total, double secs) {
    printer.update(p, done, total, secs);
  };
  cb.epoch_done = [&printer](const EpochStats& st, double secs, int64_t left) {
    printer.epoch_done(st, secs, left);
  };
  cb.metrics = [](const std::string& label, const RankingMetrics& m) {
    print_ranking(label, m);
    std::fflush(stdout);
  };
  return cb;
}

// Exit status 128 + the signal, as a shell reports a process the signal ended.
int report_stop(const SessionResult& r, const std::string& ckpt_path) {
  const int sig = r.signal ? r.signal : SIGINT;
  std::string where = "epoch " + std::to_string(r.position.epoch);
  if (r.position.step)
    where = "epoch " + std::to_string(r.position.epoch + 1) + " step " + std::to_string(r.position.step);
  if (r.mid_epoch) where += " of " + std::to_string(r.steps_per_epoch) + " steps";
  std::fprintf(stderr, "\ninterrupted by %s: wrote %s at %s; continue with --resume\n",
               sig == SIGTERM ? "SIGTERM" : "SIGINT", ckpt_path.c_str(), where.c_str());
  std::fflush(stdout);
  return 128 + sig;
}

void print_summary(const SessionResult& r, const std::string& ckpt_path, int table_shards) {
  if (!r.history.empty()) {
    double samples = 0;
    for (const auto& h : r.history) samples += static_cast<double>(h.samples);
    std::printf("trained %d epochs in %s (%.0f samples/s); loss %.5f -> %.5f\n",
                static_cast<int>(r.history.size()), format_seconds(r.seconds).c_str(),
                r.seconds > 0 ? samples / r.seconds : 0.0, r.history.front().loss,
                r.history.back().loss);
    std::printf("loss by epoch:");
    for (const auto& h : r.history) std::printf(" %.4f", h.loss);
    std::printf("\n");
  }
  if (table_shards > 1)
    std::printf("model written to %s (ID tables in %d shard files beside it, %s.rows-R-of-%d.*)\n",
                ckpt_path.c_str(), table_shards, ckpt_path.c_str(), table_shards);
  else
    std::printf("model written to %s\n", ckpt_path.c_str());
}

void print_evaluation(const HoldoutEvaluation& ev) {
  if (!ev.done) return;
  print_ranking(ev.label, ev.model);
  std::fflush(stdout);
  std::printf("popularity baseline@10  recall %.4f  ndcg %.4f\n", ev.popularity.recall[0],
              ev.popularity.ndcg[0]);
  std::printf("evaluated in %s\n", format_seconds(ev.seconds).c_str());
}

// A few users' recommendations, to see what the model does.
void print_samples(TrainingSession& s) {
  const Dataset& ds = s.dataset();
  const int32_t n_users = ds.users.size(), n_items = ds.items.size();
  DeviceArray<float> U, V;
  s.model().embed_all_users(U);
  s.model().embed_all_items(V);
  std::vector<int32_t> sample;
  for (int32_t u = 0; u < std::min<int32_t>(3, n_users); ++u) sample.push_back(u);
  recommend_topk(s.backend(), U, V, n_users, n_items, s.model().out_dim(), sample, 5, &s.seen_all(),
                 [&](const TopKBlock& b) {
                   for (size_t r = 0; r < b.users.size(); ++r) {
                     std::printf("user %s:", ds.users.id(b.users[r]).c_str());
                     for (int q = 0; q < b.k; ++q) {
                       const int32_t it = b.items[r * b.k + q];
                       if (it >= 0) std::printf("  %s (%.3f)", ds.items.id(it).c_str(), b.scores[r * b.k + q]);
                     }
                     std::printf("\n");
                   }
                 });
}

}  // namespace

int cmd_train(const Args& args) {
  CLI::App app(
      "Trains a two-tower model and writes OUT/model.ckpt (after every epoch) and\n"
      "OUT/config.json.",
      "towerrec train");
  configure_app(app);
  Config cfg;
  SessionOptions options;
  options.handle_signals = true;
  app.add_flag("--resume", options.resume,
               "continue from OUT/model.ckpt when it exists, up to --epochs (the model-shaping "
               "keys must match the checkpoint's)");
  bool show_config = false;
  app.add_flag("--show-config", show_config,
               "print the effective configuration (OUT/config.json) on stderr before training");
  add_validation_option(app, cfg);
  add_config_options(app, cfg);
  bool distributed = false;
  double comm_timeout = 300;
  add_distributed_options(app, distributed, comm_timeout);
  app.footer(
      "Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes OUT/model.ckpt and\n"
      "exits with status 130 (143 for SIGTERM); --resume continues from that step.\n"
      "A non-finite loss or parameter stops training with an error; OUT/model.ckpt\n"
      "then keeps the last good state.\n"
      "Several ranks: mpirun -np N towerrec train --distributed ... (README, \"Running\n"
      "on several GPUs / nodes\"): the global --batch-size is split over the ranks.");
  if (!parse_args(app, args)) return 0;
  resolve_defaults(cfg);
  DistributedRun dist;
  if (distributed) dist = start_distributed(cfg.device, comm_timeout, cfg.quiet);
  return run_on_ranks(dist, "train", [&] {
    options.comm = dist.control.get();
    options.gradient_comm = dist.gradients.get();
    const bool rank0 = dist.rank() == 0;
    ProgressPrinter printer(cfg.quiet || !rank0);
    TrainingSession session(cfg, options, printing_callbacks(printer));
    if (show_config && rank0) std::fputs(read_file(cfg.out + "/config.json").c_str(), stderr);
    const SessionResult r = session.run();
    if (r.end == SessionResult::End::kStopped)
      return rank0 ? report_stop(r, session.checkpoint_path()) : 128 + (r.signal ? r.signal : SIGINT);
    if (!rank0) return 0;
    print_summary(r, session.checkpoint_path(),
                  session.table_sharding() == "rows" ? options.comm->size() : 0);
    print_evaluation(session.evaluate());
    if (!cfg.quiet) print_samples(session);
    return 0;
  });
}

}  // namespace towerrec::cli

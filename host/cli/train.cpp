#include <signal.h>

#include <algorithm>
#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/recommend.h"
#include "towerrec/session.h"

namespace towerrec::cli {

namespace {

// Options of `train` that are not configuration keys (they say where this run's
// data and state come from, not what the model is).
struct RunOptions {
  bool resume = false;     // continue from OUT/model.ckpt when it exists
};

// Takes the run options out of args; everything else goes to apply_flags.
Args take_run_options(const Args& args, RunOptions& run) {
  Args rest;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i], value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos && name.rfind("--", 0) == 0) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto take_value = [&]() {
      if (!has_value) {
        if (i + 1 >= args.size()) throw Error("option " + name + " needs a value");
        value = args[++i];
      }
      return value;
    };
    if (name == "--validation") {
      rest.push_back("--holdout");  // --validation F is --holdout F
      rest.push_back(take_value());
    } else if (name == "--resume") {
      if (has_value && value != "true" && value != "false") throw Error("--resume takes no value");
      run.resume = !has_value || value == "true";
    } else {
      rest.push_back(args[i]);
    }
  }
  return rest;
}

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

void print_summary(const SessionResult& r, const std::string& ckpt_path) {
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
  if (wants_help(args)) {
    std::printf(
        "usage: towerrec train --data PATH [options]\n\n"
        "Trains a two-tower model and writes OUT/model.ckpt (after every epoch) and\n"
        "OUT/config.json.\n\n"
        "run options:\n"
        "  --validation F        per-user fraction of the training interactions held out for\n"
        "                        evaluation (the same as --holdout F)\n"
        "  --resume              continue from OUT/model.ckpt when it exists, up to --epochs\n"
        "                        (the model-shaping keys must match the checkpoint's)\n\n"
        "Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes OUT/model.ckpt and\n"
        "exits with status 130 (143 for SIGTERM); --resume continues from that step.\n"
        "A non-finite loss or parameter stops training with an error; OUT/model.ckpt\n"
        "then keeps the last good state.\n\n"
        "configuration keys:\n%s",
        config_help().c_str());
    return 0;
  }
  RunOptions run;
  Config cfg;
  const auto positional = apply_flags(cfg, take_run_options(args, run));
  resolve_defaults(cfg);
  if (!positional.empty()) throw Error("unexpected argument '" + positional[0] + "'");
  ProgressPrinter printer(cfg.quiet);
  SessionOptions options;
  options.resume = run.resume;
  options.handle_signals = true;
  TrainingSession session(cfg, options, printing_callbacks(printer));
  const SessionResult r = session.run();
  if (r.end == SessionResult::End::kStopped) return report_stop(r, session.checkpoint_path());
  print_summary(r, session.checkpoint_path());
  print_evaluation(session.evaluate());
  if (!cfg.quiet) print_samples(session);
  return 0;
}

}  // namespace towerrec::cli

// towerrec_e2e: end-to-end throughput and quality on fixed configurations.
//
// For each configuration: load the data, split each user's interactions 75/25
// (seeded), train for E epochs (samples/s = positives per second over all
// epochs), embed every user and item, score users against every item with the
// top-10 (users/s, training items excluded, the embeddings precomputed), and
// evaluate full-ranking nDCG@10 and Recall@10 on the held-out 25%.
//
// Configurations (model: ID embedding + features -> hidden -> 64-d output):
//   ml100k      MovieLens-100k (--data DIR; default $TOWERREC_ML100K, else
//               ../shared/data/ml-100k or shared/data/ml-100k from the working directory),
//               hidden 128,64, batch 1024, 4 negatives, 20 epochs
//   wide        the same data with hidden 1024,512, 3 epochs
//   synth-100k  towerrec synth, 100k users x 100k items, 20 interactions per
//               user, hidden 128,64, 1 epoch, scoring/evaluation on the first
//               10k users (the CPU-sized stand-in for synth-1m)
//   synth-1m    1M users x 1M items: the full configuration, sized for a GPU
//
// --export DIR writes the split and the features the model saw (meta.json,
// train.csv, test.csv in dense indices, *.f32/*.i32 little-endian arrays) for
// the PyTorch peer (bench/peers/torch_two_tower.py), so both train and are
// evaluated on identical data. --ceilings FILE (from towerrec_ceilings --json)
// adds % of the machine's GEMM ceilings to the report: training against the
// float32 or bfloat16 GEMM rate of its precision, scoring against sgemm.
//
// usage: towerrec_e2e --config NAME [--data PATH] [--work DIR] [--epochs N] [--seed S]
//          [--threads N] [--device cpu|cuda|auto] [--score-users N] [--eval-users N]
//          [--export DIR] [--json FILE] [--ceilings FILE] [--profile] [--precision fp32|bf16]
//
// --precision: the tower products' precision in training (TrainConfig::
// matmul_precision; default fp32). The peer's --bf16 is its counterpart.
//
// --profile routes every op through a timing wrapper (bench/op_profile.h) and
// prints the training time per op family; the rest of an epoch is host work
// (batch planning: shuffle, negative sampling, dedup, CSR).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/op_profile.h"
#include "towerrec/backend.h"
#include "towerrec/data.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/model.h"
#include "towerrec/recommend.h"
#include "towerrec/split.h"
#include "towerrec/trainer.h"

using namespace towerrec;
using json = nlohmann::json;

namespace {

// MovieLens-100k: $TOWERREC_ML100K, else the first of ../shared/data/ml-100k and
// shared/data/ml-100k (from the working directory) that holds u.data.
std::string default_ml100k() {
  if (const char* e = std::getenv("TOWERREC_ML100K"); e != nullptr && *e != '\0') return e;
  for (const char* d : {"../shared/data/ml-100k", "shared/data/ml-100k"})
    if (std::ifstream(std::string(d) + "/u.data").good()) return d;
  return "../shared/data/ml-100k";
}

struct E2EConfig {
  std::string name;
  std::string data;             // dataset path; empty: synthetic in the work dir
  int64_t synth_users = 0, synth_items = 0;
  double synth_per_user = 20;
  TowerConfig tower;
  TrainConfig train;
  int64_t score_users = 0;      // 0: all users
  int64_t eval_users = 0;       // evaluate users with index < this (0: all)
};

E2EConfig preset(const std::string& name) {
  E2EConfig c;
  c.name = name;
  c.tower.id_dim = 64;
  c.tower.hidden = {128, 64};
  c.tower.out_dim = 64;
  c.tower.cat_dim = 16;
  c.train.batch_size = 1024;
  c.train.negatives = 4;
  c.train.optimizer.lr = 1e-3f;
  // The peer's model (bench/peers/torch_two_tower.py): logistic loss, constant lr,
  // no embedding decay; pinned so that changes of the library defaults do not
  // change the benchmark.
  c.train.loss = Loss::kLogistic;
  c.train.temperature = 1.0f;
  c.train.lr_schedule = LrSchedule::kConstant;
  c.train.optimizer.embedding_decay = 0.0f;
  c.train.seed = 42;
  if (name == "ml100k" || name == "wide") {
    c.data = default_ml100k();
    c.train.epochs = 20;
    if (name == "wide") {
      c.tower.hidden = {1024, 512};
      c.train.epochs = 3;
    }
  } else if (name == "synth-100k") {
    c.synth_users = c.synth_items = 100000;
    c.train.epochs = 1;
    c.score_users = c.eval_users = 10000;
  } else if (name == "synth-1m") {
    c.synth_users = c.synth_items = 1000000;
    c.train.epochs = 1;
    c.train.batch_size = 8192;
    c.score_users = c.eval_users = 100000;
  } else {
    throw Error("unknown configuration '" + name + "': expected ml100k, wide, synth-100k or synth-1m");
  }
  return c;
}

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename T>
void write_array(const std::string& path, const std::vector<T>& v) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  if (!out) throw Error("cannot write " + path);
}

void write_pairs_csv(const std::string& path, const Interactions& x) {
  std::string s = "user,item\n";
  s.reserve(static_cast<size_t>(x.size()) * 14 + 16);
  for (int64_t j = 0; j < x.size(); ++j)
    s += std::to_string(x.user[j]) + "," + std::to_string(x.item[j]) + "\n";
  write_file_atomic(path, s);
}

json export_features(const std::string& dir, const std::string& side, const EntityFeatures& f,
                     const TowerInputSpec& spec) {
  json j;
  j["dense_dim"] = spec.dense_dim;
  j["cat_vocab"] = spec.cat_vocab;
  j["cat_names"] = spec.cat_names;
  if (spec.dense_dim > 0) write_array(dir + "/" + side + "_dense.f32", f.dense);
  for (size_t c = 0; c < spec.cat_vocab.size(); ++c) {
    write_array(dir + "/" + side + "_cat" + std::to_string(c) + "_offsets.i32", f.categorical[c].offsets);
    write_array(dir + "/" + side + "_cat" + std::to_string(c) + "_values.i32", f.categorical[c].values);
  }
  return j;
}

// Mean per-step dense FLOPs (forward 2, backward 4 per multiply-add of each
// layer, per unique entity; the loss 6 n_pairs d), from planned batches.
double flops_per_step(Trainer& tr, TwoTowerModel& model, const TowerConfig& tc) {
  auto mac = [&](const Tower& t) {
    double s = 0;
    int in = t.input_dim();
    std::vector<int> w = tc.hidden;
    w.push_back(tc.out_dim);
    for (int o : w) s += double(in) * o, in = o;
    return s;
  };
  const double mu = mac(model.user_tower()), mi = mac(model.item_tower());
  const int64_t probe = std::min<int64_t>(tr.steps_per_epoch(), 16);
  double total = 0;
  Trainer::Batch b;
  for (int64_t s = 0; s < probe; ++s) {
    tr.plan_batch(0, s, b);
    total += 6.0 * (double(b.users.size()) * mu + double(b.items.size()) * mi) +
             6.0 * double(b.pair_user.size()) * tc.out_dim;
  }
  return probe ? total / double(probe) : 0;
}

// The command line; false after --help.
struct E2EArgs {
  E2EConfig cfg;
  std::string data_override, work = "out/bench", export_dir, json_path, ceilings_path,
                             device = "cpu";
  int threads = 0;
  bool profile = false;
};

bool parse_e2e_args(int argc, char** argv, E2EArgs& out) {
  std::string config_name, precision;
  int epochs = -1;
  int64_t seed = -1, score_users = -1, eval_users = -1;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    auto value = [&]() -> std::string {
      if (a + 1 >= argc) throw Error(arg + " needs a value");
      return argv[++a];
    };
    if (arg == "--config") config_name = value();
    else if (arg == "--data") out.data_override = value();
    else if (arg == "--work") out.work = value();
    else if (arg == "--epochs") epochs = std::stoi(value());
    else if (arg == "--threads") out.threads = std::stoi(value());
    else if (arg == "--seed") seed = std::stoll(value());
    else if (arg == "--device") out.device = value();
    else if (arg == "--score-users") score_users = std::stoll(value());
    else if (arg == "--eval-users") eval_users = std::stoll(value());
    else if (arg == "--export") out.export_dir = value();
    else if (arg == "--json") out.json_path = value();
    else if (arg == "--ceilings") out.ceilings_path = value();
    else if (arg == "--profile") out.profile = true;
    else if (arg == "--precision") precision = value();
    else if (arg == "--help" || arg == "-h") {
      std::printf("usage: towerrec_e2e --config ml100k|wide|synth-100k|synth-1m [--data PATH] [--work DIR]\n"
                  "         [--epochs N] [--seed S] [--threads N] [--device cpu|cuda|auto] [--score-users N]\n"
                  "         [--eval-users N] [--export DIR] [--json FILE] [--ceilings FILE] [--profile]\n"
                  "         [--precision fp32|bf16]\n");
      return false;
    } else throw Error("unknown option " + arg + " (see --help)");
  }
  if (config_name.empty()) throw Error("--config is required (see --help)");
  E2EConfig& cfg = out.cfg;
  cfg = preset(config_name);
  if (epochs >= 0) cfg.train.epochs = epochs;
  if (seed >= 0) cfg.train.seed = static_cast<uint64_t>(seed);
  if (score_users >= 0) cfg.score_users = score_users;
  if (eval_users >= 0) cfg.eval_users = eval_users;
  if (!out.data_override.empty()) cfg.data = out.data_override;
  if (!precision.empty()) cfg.train.matmul_precision = parse_matmul_precision(precision);
  return true;
}

// The training time per op from the profiling wrapper, printed and as JSON.
json report_profile(bench::ProfilingBackend& prof, double train_s, int64_t steps) {
  json out;
  double ops = 0;
  std::printf("training time by op (%.2f s in %lld steps):\n", train_s, static_cast<long long>(steps));
  for (const auto& [name, e] : prof.table()) ops += e.seconds;
  for (const auto& [name, e] : prof.table()) {
    std::printf("  %-24s %8.3f s %5.1f%%  %8lld calls\n", name.c_str(), e.seconds,
                100.0 * e.seconds / train_s, static_cast<long long>(e.calls));
    out[name] = {{"seconds", e.seconds}, {"calls", e.calls}};
  }
  std::printf("  %-24s %8.3f s %5.1f%%\n", "host (planning, other)", train_s - ops,
              100.0 * (train_s - ops) / train_s);
  out["host"] = {{"seconds", train_s - ops}};
  prof.reset();
  return out;
}

// The ceilings from towerrec_ceilings --json (when given and present): scoring
// against sgemm, training against the GEMM of its tower products' precision.
void add_ceilings(json& r, MatmulPrecision precision, const std::string& path) {
  if (path.empty() || !file_exists(path)) return;
  const json c = json::parse(read_file(path));
  const double g = c["cpu"]["sgemm_gflops"].get<double>();
  r["sgemm_ceiling_gflops"] = g;
  r["score_pct_of_sgemm"] = 100.0 * r["score_gflops_per_s"].get<double>() / g;
  // Training against the ceiling of its tower GEMMs' precision.
  const bool bf16 = precision == MatmulPrecision::kBF16 && c["cpu"].contains("bf16_gemm_gflops");
  const double f32 = c["cpu"].contains("dnnl_f32_gemm_gflops")
                         ? std::max(g, c["cpu"]["dnnl_f32_gemm_gflops"].get<double>())
                         : g;  // the faster of the two float32 GEMMs
  const double tg = bf16 ? c["cpu"]["bf16_gemm_gflops"].get<double>() : f32;
  r["train_ceiling"] = bf16 ? "bf16 gemm" : "f32 gemm";
  r["train_ceiling_gflops"] = tg;
  r["train_pct_of_ceiling"] = 100.0 * r["train_gflops_per_s"].get<double>() / tg;
}

// The summary lines of a result.
void print_result(const json& r) {
  std::printf("towerrec %s on %s\n", r["config"].get<std::string>().c_str(),
              r["backend"].get<std::string>().c_str());
  std::printf("  train   %10.0f samples/s  (%lld samples, %.1f s, %.1f GFLOP/s)\n",
              r["train_samples_per_s"].get<double>(), r["train_samples"].get<long long>(),
              r["train_seconds"].get<double>(),
              r["train_gflops_per_s"].get<double>());
  std::printf("  score   %10.0f users/s    (%lld users x %d items, top-10, %.2f s, %.1f GFLOP/s)\n",
              r["score_users_per_s"].get<double>(), r["score_users"].get<long long>(),
              r["data"]["items"].get<int>(), r["score_seconds"].get<double>(),
              r["score_gflops_per_s"].get<double>());
  if (r.contains("sgemm_ceiling_gflops"))
    std::printf("  ceilings: training at %.1f%% of %s (%.1f GFLOP/s), scoring at %.1f%% of sgemm\n",
                r["train_pct_of_ceiling"].get<double>(),
                r["train_ceiling"].get<std::string>().c_str(),
                r["train_ceiling_gflops"].get<double>(), r["score_pct_of_sgemm"].get<double>());
  std::printf("  quality nDCG@10 %.4f  Recall@10 %.4f  (%lld users; popularity %.4f / %.4f)\n",
              r["ndcg10"].get<double>(), r["recall10"].get<double>(),
              r["eval_users"].get<long long>(), r["popularity_ndcg10"].get<double>(),
              r["popularity_recall10"].get<double>());
}

// The data set's folder: the preset's, or (synthetic presets) one under
// `work`, generated on first use.
std::string prepare_data(const E2EConfig& cfg, const std::string& work, bool data_overridden) {
  std::string data = cfg.data;
  if (cfg.synth_users > 0 && !data_overridden) {
    data = work + "/synth-" + std::to_string(cfg.synth_users) + "x" + std::to_string(cfg.synth_items);
    if (!file_exists(data + "/interactions.csv")) {
      make_directories(data);
      SynthOptions so;
      so.users = cfg.synth_users;
      so.items = cfg.synth_items;
      so.interactions_per_user = cfg.synth_per_user;
      const auto t = std::chrono::steady_clock::now();
      const SynthSummary sum = write_synthetic(data, so);
      std::fprintf(stderr, "synthetic data: %lld interactions written to %s in %.1f s\n",
                   static_cast<long long>(sum.interactions), data.c_str(), since(t));
    }
  }
  return data;
}

// What the run used, for --export's meta.json and the result.
json make_meta(const E2EConfig& cfg, const std::string& data, int32_t nu, int32_t ni) {
  json meta;
  meta["config"] = cfg.name;
  meta["source"] = data;
  meta["n_users"] = nu;
  meta["n_items"] = ni;
  meta["model"] = {{"id_dim", cfg.tower.id_dim}, {"hidden", cfg.tower.hidden},
                   {"out_dim", cfg.tower.out_dim}, {"cat_dim", cfg.tower.cat_dim},
                   {"init_std", cfg.tower.init_std}};
  meta["train"] = {{"epochs", cfg.train.epochs}, {"batch_size", cfg.train.batch_size},
                   {"negatives", cfg.train.negatives}, {"lr", cfg.train.optimizer.lr},
                   {"beta1", cfg.train.optimizer.beta1}, {"beta2", cfg.train.optimizer.beta2},
                   {"eps", cfg.train.optimizer.eps}, {"seed", cfg.train.seed},
                   {"matmul_precision", matmul_precision_name(cfg.train.matmul_precision)}};
  meta["eval"] = {{"k", 10}, {"score_users", cfg.score_users}, {"eval_users", cfg.eval_users}};
  return meta;
}

}  // namespace

int main(int argc, char** argv) try {
  E2EArgs args;
  if (!parse_e2e_args(argc, argv, args)) return 0;
  const std::string& work = args.work;
  const std::string& data_override = args.data_override;
  const std::string& export_dir = args.export_dir;
  const std::string& json_path = args.json_path;
  const std::string& ceilings_path = args.ceilings_path;
  const std::string& device = args.device;
  const int threads = args.threads;
  const bool profile = args.profile;
  E2EConfig cfg = args.cfg;

  // ---- data
  const std::string data = prepare_data(cfg, work, !data_override.empty());
  const auto t_load = std::chrono::steady_clock::now();
  Dataset ds = load_auto(data);
  const double load_s = since(t_load);
  const int32_t nu = ds.users.size(), ni = ds.items.size();
  Split sp = split_per_user_ratio(ds.interactions, nu, 0.25, 42);
  if (cfg.score_users <= 0 || cfg.score_users > nu) cfg.score_users = nu;
  if (cfg.eval_users <= 0 || cfg.eval_users > nu) cfg.eval_users = nu;
  std::fprintf(stderr, "%s: %s: %d users, %d items, %lld train / %lld test (loaded in %.1f s)\n",
               cfg.name.c_str(), data.c_str(), nu, ni, static_cast<long long>(sp.train.size()),
               static_cast<long long>(sp.test.size()), load_s);

  auto real_be = make_backend(device, threads);
  std::unique_ptr<Backend> be;
  bench::ProfilingBackend* prof = nullptr;
  if (profile) {
    auto p = std::make_unique<bench::ProfilingBackend>(*real_be);
    prof = p.get();
    be = std::move(p);
  } else {
    be = std::move(real_be);
  }
  const TowerInputSpec us = make_input_spec(ds.user_features, nu, true);
  const TowerInputSpec is = make_input_spec(ds.item_features, ni, true);

  json meta = make_meta(cfg, data, nu, ni);
  if (!export_dir.empty()) {
    make_directories(export_dir);
    write_pairs_csv(export_dir + "/train.csv", sp.train);
    write_pairs_csv(export_dir + "/test.csv", sp.test);
    meta["user"] = export_features(export_dir, "user", ds.user_features, us);
    meta["item"] = export_features(export_dir, "item", ds.item_features, is);
    write_file_atomic(export_dir + "/meta.json", meta.dump(2) + "\n");
  }

  // ---- training
  TwoTowerModel model(*be, cfg.tower, us, is, cfg.train.seed);
  model.set_features(ds.user_features, ds.item_features);
  Trainer trainer(model, sp.train, cfg.train);
  const double step_flops = flops_per_step(trainer, model, cfg.tower);
  std::vector<json> epochs_out;
  int64_t samples = 0, steps = 0;
  double train_s = 0;
  for (int e = 0; e < cfg.train.epochs; ++e) {
    const EpochStats st = trainer.train_epoch();
    samples += st.samples;
    steps += st.steps;
    train_s += st.seconds;
    epochs_out.push_back({{"epoch", st.epoch}, {"loss", st.loss}, {"seconds", st.seconds},
                          {"samples_per_s", st.samples_per_s}});
    std::fprintf(stderr, "  epoch %d: loss %.4f, %.1f s, %.0f samples/s\n", st.epoch, st.loss,
                 st.seconds, st.samples_per_s);
  }

  json prof_out;
  if (prof) prof_out = report_profile(*prof, train_s, steps);

  // ---- embeddings and scoring
  DeviceArray<float> U, V;
  auto t = std::chrono::steady_clock::now();
  model.embed_all_users(U);
  model.embed_all_items(V);
  be->synchronize();
  const double embed_s = since(t);
  const UserItems seen = group_by_user(sp.train, nu);
  std::vector<int32_t> score_list(static_cast<size_t>(cfg.score_users));
  std::iota(score_list.begin(), score_list.end(), 0);
  int64_t scored = 0;
  t = std::chrono::steady_clock::now();
  recommend_topk(*be, U, V, nu, ni, cfg.tower.out_dim, score_list, 10, &seen,
                 [&](const TopKBlock& b) { scored += static_cast<int64_t>(b.users.size()); });
  const double score_s = since(t);

  // ---- quality (users with index < eval_users)
  std::vector<int64_t> eval_rows;
  for (int64_t j = 0; j < sp.test.size(); ++j)
    if (sp.test.user[j] < cfg.eval_users) eval_rows.push_back(j);
  const UserItems held = group_by_user(select_rows(sp.test, eval_rows), nu);
  t = std::chrono::steady_clock::now();
  const RankingMetrics m = evaluate_ranking(*be, U, V, nu, ni, cfg.tower.out_dim, seen, held, {10});
  const double eval_s = since(t);

  json r;
  r["engine"] = "towerrec";
  r["config"] = cfg.name;
  r["backend"] = be->describe();
  r["threads"] = threads;
  r["data"] = {{"source", data}, {"users", nu}, {"items", ni}, {"train", sp.train.size()},
               {"test", sp.test.size()}};
  r["model"] = meta["model"];
  r["train"] = meta["train"];
  r["train_seconds"] = train_s;
  r["train_samples"] = samples;
  r["train_samples_per_s"] = train_s > 0 ? double(samples) / train_s : 0;
  r["train_gflops_per_s"] = train_s > 0 ? step_flops * double(steps) / train_s * 1e-9 : 0;
  r["epochs"] = epochs_out;
  r["final_loss"] = epochs_out.empty() ? 0.0 : epochs_out.back()["loss"].get<double>();
  r["embed_seconds"] = embed_s;
  r["score_users"] = scored;
  r["score_seconds"] = score_s;
  r["score_users_per_s"] = score_s > 0 ? double(scored) / score_s : 0;
  r["score_gflops_per_s"] =
      score_s > 0 ? 2.0 * double(scored) * ni * cfg.tower.out_dim / score_s * 1e-9 : 0;
  if (prof) r["train_profile"] = prof_out;
  r["eval_users"] = m.users_evaluated;
  r["eval_seconds"] = eval_s;
  r["ndcg10"] = m.ndcg[0];
  r["recall10"] = m.recall[0];
  const RankingMetrics pop = evaluate_popularity(seen, held, ni, {10});
  r["popularity_ndcg10"] = pop.ndcg[0];
  r["popularity_recall10"] = pop.recall[0];
  add_ceilings(r, cfg.train.matmul_precision, ceilings_path);
  print_result(r);
  if (!json_path.empty()) write_file_atomic(json_path, r.dump(2) + "\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "towerrec_e2e: %s\n", e.what());
  return 1;
}

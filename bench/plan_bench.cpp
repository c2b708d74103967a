// Host batch planning (Trainer::plan_batch): shuffle slice, negative sampling
// from the counter-based generator, per-batch dedup of users and items, and the
// CSR of pairs per unique row -- the work each planner thread does per step
// while a device backend runs the previous one. One thread, no backend work.
//   positives_per_s  planned positives per second of one thread
//   bytes            5 values of 4 B per pair written (pair user, item, label, and
//                    its place in the user and item CSR)
// Data: 1M interactions, 100k users x 100k items (uniform), logistic pairs with
// 4 uniform negatives, or popularity negatives with hit rejection.
#include <numeric>

#include "bench/bench_common.h"
#include "towerrec/model.h"
#include "towerrec/trainer.h"

namespace towerrec::bench {
namespace {

struct PlanFixture {
  std::unique_ptr<Backend> be;
  Interactions data;
  std::unique_ptr<TwoTowerModel> model;
  std::unique_ptr<Trainer> trainer;
  Trainer::Batch batch;
};

}  // namespace

void register_plan() {
  constexpr int32_t kEntities = 100000;
  constexpr int64_t kInteractions = 1000000;
  for (int64_t batch : {int64_t{1024}, int64_t{8192}, int64_t{65536}}) {
    for (int popular : {0, 1}) {
      add_case<PlanFixture>(
          case_name("plan_batch", "host", {{"batch", batch}, {"negatives", 4}, {"popularity", popular}}),
          [batch, popular] {
            auto f = std::make_shared<PlanFixture>();
            f->be = make_cpu_backend(1);
            const auto u = random_ints(kInteractions, kEntities, 30);
            const auto i = random_ints(kInteractions, kEntities, 31);
            f->data.user = u;
            f->data.item = i;
            TowerConfig tc;
            tc.id_dim = 4;
            tc.hidden = {};
            tc.out_dim = 4;
            tc.use_features = false;
            TowerInputSpec us, is;
            us.n_entities = kEntities;
            is.n_entities = kEntities;
            f->model = std::make_unique<TwoTowerModel>(*f->be, tc, us, is, 1);
            TrainConfig cfg;
            cfg.batch_size = batch;
            cfg.negatives = 4;
            cfg.loss = Loss::kLogistic;
            cfg.sampler = popular ? Sampler::kPopularity : Sampler::kUniform;
            cfg.reject_hits = popular != 0;
            f->trainer = std::make_unique<Trainer>(*f->model, f->data, cfg);
            f->trainer->plan_batch(0, 0, f->batch);  // the epoch's shuffle, outside the timing
            return f;
          },
          [batch](benchmark::State& s, PlanFixture& f) {
            const int64_t steps = f.trainer->steps_per_epoch();
            int64_t b = 0;
            run_timed(
                s, *f.be, [&] { f.trainer->plan_batch(0, b++ % steps, f.batch); },
                4.0 * 5 * static_cast<double>(batch) * (1 + 4), 0);
            s.counters["positives_per_s"] = benchmark::Counter(
                static_cast<double>(batch) * static_cast<double>(s.iterations()),
                benchmark::Counter::kIsRate);
          });
    }
  }
}

}  // namespace towerrec::bench

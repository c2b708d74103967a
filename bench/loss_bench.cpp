// The fused logistic loss (scores, loss, pair gradients, per-row dU/dV
// reductions) over a training batch of B positives with k negatives each:
// n_pairs = B (1 + k), B unique users, B (1 + k) / 2 unique items (repeats as a
// small catalogue produces them), CSR lists in pair order as the trainer builds.
//   FLOPs 6 n_pairs d (score, dU and dV multiply-adds)
//   bytes 4 (3 n_pairs [user, item, label] + 2 (n_users + n_items) [CSR]
//            + 2 (n_users + n_items) d [U, V read; dU, dV written] + n_pairs [g])
// The sampled softmax over B positives (B users) and I batch items, whole
// (item_tile 0: logits [B x I] in scratch) or in item blocks (a bounded
// scratch, one more GEMM):
//   FLOPs 2 B I d per GEMM: 3 whole, 4 tiled
//   bytes 4 B I per pass over the logits (write + read: 4 whole, 6 tiled)
#include "bench/bench_common.h"

namespace towerrec::bench {
namespace {

struct SoftmaxFixture {
  DeviceArray<float> U, V, dU, dV, log_q, logits, rows, loss;
  DeviceArray<int32_t> user, item, uoff, upairs;
  PairBatch pb;
};

struct LossFixture {
  DeviceArray<float> U, V, dU, dV, label, pair_grad, loss;
  DeviceArray<int32_t> user, item, uoff, upairs, ioff, ipairs;
  PairBatch pb;
};

void csr(const std::vector<int32_t>& key, int32_t rows, std::vector<int32_t>& offsets,
         std::vector<int32_t>& pairs) {
  offsets.assign(static_cast<size_t>(rows) + 1, 0);
  for (int32_t r : key) ++offsets[static_cast<size_t>(r) + 1];
  for (int32_t r = 0; r < rows; ++r) offsets[r + 1] += offsets[r];
  pairs.resize(key.size());
  std::vector<int32_t> fill(offsets.begin(), offsets.end() - 1);
  for (size_t q = 0; q < key.size(); ++q) pairs[static_cast<size_t>(fill[key[q]]++)] = static_cast<int32_t>(q);
}

}  // namespace

void register_softmax() {
  for (const auto& entry : backends()) {
    Backend* be = entry.be;
    for (int64_t B : {1024, 4096}) {
      const int d = 64;
      const int32_t ni = static_cast<int32_t>(2 * B);  // the batch's items and as many sampled
      for (int64_t tile : {int64_t{0}, int64_t{512}}) {
        add_case<SoftmaxFixture>(
            case_name("softmax_loss", entry.name, {{"batch", B}, {"items", ni}, {"d", d}, {"tile", tile}}),
            [be, B, ni, d, tile] {
              auto f = std::make_shared<SoftmaxFixture>();
              const int32_t nu = static_cast<int32_t>(B);
              std::vector<int32_t> user(static_cast<size_t>(B)), item(static_cast<size_t>(B));
              for (int64_t p = 0; p < B; ++p) {
                user[p] = static_cast<int32_t>(p);
                item[p] = static_cast<int32_t>(p);
              }
              std::vector<int32_t> uo, up;
              csr(user, nu, uo, up);
              f->U = upload(*be, random_floats(int64_t{nu} * d, -0.3f, 0.3f, 15));
              f->V = upload(*be, random_floats(int64_t{ni} * d, -0.3f, 0.3f, 16));
              f->log_q = upload(*be, random_floats(ni, -9.0f, -3.0f, 17));
              f->dU.reset(be, int64_t{nu} * d);
              f->dV.reset(be, int64_t{ni} * d);
              const bool tiled = tile > 0 && tile < ni;
              f->logits.reset(be, B * (tiled ? tile : ni));
              f->rows.reset(be, B * d * (tiled ? 2 : 1));
              f->loss.reset(be, 1);
              f->user = upload(*be, user);
              f->item = upload(*be, item);
              f->uoff = upload(*be, uo);
              f->upairs = upload(*be, up);
              f->pb = PairBatch{B, f->user.data(), f->item.data(), nullptr, nu, f->uoff.data(),
                                f->upairs.data(), ni, nullptr, nullptr};
              return f;
            },
            [be, B, ni, d, tile](benchmark::State& s, SoftmaxFixture& f) {
              const bool tiled = tile > 0 && tile < ni;
              const double cells = static_cast<double>(B) * ni;
              run_timed(
                  s, *be,
                  [&] {
                    be->softmax_loss(f.U.data(), f.V.data(), d, f.pb, f.log_q.data(), 0.1f,
                                     1.0f / static_cast<float>(B), f.dU.data(), f.dV.data(),
                                     f.logits.data(), f.rows.data(), f.loss.data(), tile);
                  },
                  4 * cells * (tiled ? 6 : 4), 2 * cells * d * (tiled ? 4 : 3));
            });
      }
    }
  }
}

void register_loss() {
  register_softmax();
  constexpr int kNeg = 4;
  for (const auto& entry : backends()) {
    Backend* be = entry.be;
    for (int64_t B : {1024, 8192}) {
      for (int d : {64, 128}) {
        const int64_t np = B * (1 + kNeg);
        const auto nu = static_cast<int32_t>(B);
        const auto ni = static_cast<int32_t>(np / 2);
        add_case<LossFixture>(
            case_name("logistic_loss", entry.name, {{"batch", B}, {"neg", kNeg}, {"d", d}}),
            [be, np, nu, ni, d] {
              auto f = std::make_shared<LossFixture>();
              std::vector<int32_t> user(static_cast<size_t>(np)), item = random_ints(np, ni, 12);
              std::vector<float> label(static_cast<size_t>(np));
              for (int64_t p = 0; p < np; ++p) {
                user[p] = static_cast<int32_t>(p / (1 + kNeg));
                label[p] = p % (1 + kNeg) == 0 ? 1.0f : -1.0f;
              }
              for (int32_t i = 0; i < ni; ++i) item[static_cast<size_t>(i) * 2] = i;  // every item used
              std::vector<int32_t> uo, up, io, ip;
              csr(user, nu, uo, up);
              csr(item, ni, io, ip);
              f->U = upload(*be, random_floats(int64_t{nu} * d, -0.3f, 0.3f, 13));
              f->V = upload(*be, random_floats(int64_t{ni} * d, -0.3f, 0.3f, 14));
              f->dU.reset(be, int64_t{nu} * d);
              f->dV.reset(be, int64_t{ni} * d);
              f->label = upload(*be, label);
              f->pair_grad.reset(be, np);
              f->loss.reset(be, 1);
              f->user = upload(*be, user);
              f->item = upload(*be, item);
              f->uoff = upload(*be, uo);
              f->upairs = upload(*be, up);
              f->ioff = upload(*be, io);
              f->ipairs = upload(*be, ip);
              f->pb = PairBatch{np, f->user.data(), f->item.data(), f->label.data(),
                                nu, f->uoff.data(), f->upairs.data(),
                                ni, f->ioff.data(), f->ipairs.data()};
              return f;
            },
            [be, np, nu, ni, d](benchmark::State& s, LossFixture& f) {
              const double p = static_cast<double>(np), rows = static_cast<double>(nu) + ni;
              run_timed(
                  s, *be,
                  [&] {
                    be->logistic_loss(f.U.data(), f.V.data(), d, f.pb, 1.0f / static_cast<float>(np),
                                      f.dU.data(), f.dV.data(), f.pair_grad.data(), f.loss.data());
                  },
                  4 * (3 * p + 2 * rows + 2 * rows * d + p), 6 * p * d);
            });
      }
    }
  }
}

}  // namespace towerrec::bench

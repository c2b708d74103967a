// Float64 reference of the loss family (logistic_loss, bpr_loss, softmax_loss,
// ccl_loss):
// the oracle of tests/test_loss.cpp. Header-only, written independently of
// kernels/math.h. `Pairs` is any type with n_users, n_items and the vectors
// user, item (and label for the logistic loss), e.g. the tests' HostPairs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace towerrec::ref {

inline double softplus64(double x) {
  return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
}
inline double sigmoid64(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Loss, per-pair gradient g and the reduced dU, dV of a pair loss.
struct PairLossRef {
  std::vector<double> g, dU, dV;
  double loss = 0.0;
};

// dU[user_p] += g_p V[item_p], dV[item_p] += g_p U[user_p].
template <typename Pairs>
void reduce_pair_grads(const std::vector<double>& U, const std::vector<double>& V, int d,
                       const Pairs& h, PairLossRef& r) {
  r.dU.assign(size_t(h.n_users) * d, 0.0);
  r.dV.assign(size_t(h.n_items) * d, 0.0);
  for (size_t p = 0; p < h.user.size(); ++p)
    for (int c = 0; c < d; ++c) {
      r.dU[size_t(h.user[p]) * d + c] += r.g[p] * V[size_t(h.item[p]) * d + c];
      r.dV[size_t(h.item[p]) * d + c] += r.g[p] * U[size_t(h.user[p]) * d + c];
    }
}

template <typename Pairs>
double pair_score(const std::vector<double>& U, const std::vector<double>& V, int d,
                  const Pairs& h, size_t p) {
  double s = 0.0;
  for (int c = 0; c < d; ++c) s += U[size_t(h.user[p]) * d + c] * V[size_t(h.item[p]) * d + c];
  return s;
}

// l_p = softplus(-y_p s_p), loss = scale sum l_p, g_p = -scale y_p sigmoid(-y_p s_p).
template <typename Pairs>
PairLossRef logistic_loss(const std::vector<double>& U, const std::vector<double>& V, int d,
                          const Pairs& h, double scale, bool grads = true) {
  PairLossRef r;
  const size_t np = h.user.size();
  r.g.assign(np, 0.0);
  double sum = 0.0;
  for (size_t p = 0; p < np; ++p) {
    const double y = h.label[p], s = pair_score(U, V, d, h, p);
    sum += softplus64(-y * s);
    r.g[p] = -scale * y / (1.0 + std::exp(y * s));
  }
  r.loss = scale * sum;
  if (grads) reduce_pair_grads(U, V, d, h, r);
  return r;
}

// Groups of `group` pairs, the positive first: l_gj = softplus(-(s_+ - s_j)).
template <typename Pairs>
PairLossRef bpr_loss(const std::vector<double>& U, const std::vector<double>& V, int d,
                     const Pairs& h, int group, double scale) {
  const int64_t np = static_cast<int64_t>(h.user.size());
  PairLossRef r;
  r.g.assign(np, 0.0);
  double sum = 0.0;
  for (int64_t base = 0; base < np; base += group) {
    const double sp = pair_score(U, V, d, h, base);
    for (int j = 1; j < group; ++j) {
      const double x = sp - pair_score(U, V, d, h, base + j);
      sum += softplus64(-x);
      const double w = scale * sigmoid64(-x);
      r.g[base + j] = w;
      r.g[base] -= w;
    }
  }
  r.loss = scale * sum;
  reduce_pair_grads(U, V, d, h, r);
  return r;
}

// Sampled softmax over the batch's items with logQ correction. magU/magV: the
// sum of |terms| of each gradient element (for magnitude-scaled tolerances),
// with |dlogit| floored at 0.1 scale / T; zmax: the largest |logit|.
struct SoftmaxRef {
  std::vector<double> dU, dV, magU, magV;
  double loss = 0.0, zmax = 0.0;
};

template <typename Pairs>
SoftmaxRef softmax_loss(const std::vector<double>& U, const std::vector<double>& V, int d,
                        const Pairs& h, const std::vector<float>* log_q, double T, double scale,
                        bool grads = true) {
  const int64_t np = static_cast<int64_t>(h.user.size());
  const int32_t ni = h.n_items;
  SoftmaxRef r;
  r.dU.assign(size_t(h.n_users) * d, 0.0);
  r.dV.assign(size_t(ni) * d, 0.0);
  r.magU = r.dU;
  r.magV = r.dV;
  std::vector<double> z(ni);
  double sum = 0.0;
  for (int64_t p = 0; p < np; ++p) {
    const double* u = &U[size_t(h.user[p]) * d];
    for (int32_t j = 0; j < ni; ++j) {
      double s = 0.0;
      for (int c = 0; c < d; ++c) s += u[c] * V[size_t(j) * d + c];
      z[j] = s / T - (log_q ? double((*log_q)[j]) : 0.0);
      r.zmax = std::max(r.zmax, std::fabs(z[j]));
    }
    const double m = *std::max_element(z.begin(), z.end());
    double se = 0.0;
    for (double v : z) se += std::exp(v - m);
    const double lse = m + std::log(se);
    sum += lse - z[h.item[p]];
    if (!grads) continue;
    for (int32_t j = 0; j < ni; ++j) {
      const double gz = scale * (std::exp(z[j] - lse) - (j == h.item[p] ? 1.0 : 0.0)) / T;
      for (int c = 0; c < d; ++c) {
        const double tu = gz * V[size_t(j) * d + c], tv = gz * u[c];
        r.dU[size_t(h.user[p]) * d + c] += tu;
        r.dV[size_t(j) * d + c] += tv;
        // A probability near 1 minus the one-hot cancels in float32, so gz
        // carries an absolute error of float32's resolution near 1.
        const double gm = std::fabs(gz) + 0.1 * scale / T;
        r.magU[size_t(h.user[p]) * d + c] += gm * std::fabs(V[size_t(j) * d + c]);
        r.magV[size_t(j) * d + c] += gm * std::fabs(u[c]);
      }
    }
  }
  r.loss = scale * sum;
  return r;
}

// Cosine contrastive loss (SimpleX) over the batch's items: per pair p with
// scores s_pj = <U[user_p], V[j]>, item weights c_j = exp(-log_q_j) (1 without
// log_q) and C_p = sum_{k != item_p} c_k,
//   l_p = (1 - s_p,item_p) + w / C_p sum_{j != item_p} c_j max(0, s_pj - margin)
// (no negative term when the batch has one item). magU/magV: the sum of |terms|
// of each gradient element; smin: the smallest |s_pj - margin| over negatives
// (finite differences need it larger than their step); nearU/nearV: rows
// touched by a negative whose score is within `near` of the margin, where a
// float32 score may fall on the other side and switch the hinge's term.
struct CclRef {
  std::vector<double> dU, dV, magU, magV;
  std::vector<char> nearU, nearV;
  double loss = 0.0, smin = 1e300;
};

template <typename Pairs>
CclRef ccl_loss(const std::vector<double>& U, const std::vector<double>& V, int d, const Pairs& h,
                const std::vector<float>* log_q, double margin, double w, double scale,
                double near = 1e-5) {
  const int64_t np = static_cast<int64_t>(h.user.size());
  const int32_t ni = h.n_items;
  CclRef r;
  r.dU.assign(size_t(h.n_users) * d, 0.0);
  r.dV.assign(size_t(ni) * d, 0.0);
  r.magU = r.dU;
  r.magV = r.dV;
  r.nearU.assign(size_t(h.n_users), 0);
  r.nearV.assign(size_t(ni), 0);
  std::vector<double> c(size_t(ni), 1.0);
  if (log_q)
    for (int32_t j = 0; j < ni; ++j) c[j] = std::exp(-double((*log_q)[j]));
  double c_all = 0.0;
  for (double x : c) c_all += x;
  double sum = 0.0;
  for (int64_t p = 0; p < np; ++p) {
    const double* u = &U[size_t(h.user[p]) * d];
    const double others = c_all - c[h.item[p]];
    // A lone item (others = 0): no negative term; rounding leaves others tiny.
    const double wn = ni > 1 ? w / others : 0.0;
    for (int32_t j = 0; j < ni; ++j) {
      double s = 0.0;
      for (int c = 0; c < d; ++c) s += u[c] * V[size_t(j) * d + c];
      double gz;
      if (j == h.item[p]) {
        sum += 1.0 - s;
        gz = -scale;
      } else {
        r.smin = std::min(r.smin, std::fabs(s - margin));
        if (std::fabs(s - margin) < near) r.nearU[size_t(h.user[p])] = r.nearV[size_t(j)] = 1;
        sum += wn * c[j] * std::max(0.0, s - margin);
        gz = s > margin ? scale * wn * c[j] : 0.0;
      }
      for (int col = 0; col < d; ++col) {
        r.dU[size_t(h.user[p]) * d + col] += gz * V[size_t(j) * d + col];
        r.dV[size_t(j) * d + col] += gz * u[col];
        // Every term may be rounded, or switched by a score within rounding of
        // the margin: floor |gz| at the negative's full weight.
        const double gm = std::fabs(gz) + scale * wn * c[j];
        r.magU[size_t(h.user[p]) * d + col] += gm * std::fabs(V[size_t(j) * d + col]);
        r.magV[size_t(j) * d + col] += gm * std::fabs(u[col]);
      }
    }
  }
  r.loss = scale * sum;
  return r;
}

}  // namespace towerrec::ref

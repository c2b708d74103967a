// Float64 reference of the optimizer family (adam, sparse_adam, sgd, sparse_sgd):
// the oracle of tests/test_optim.cpp. Header-only.
#pragma once

#include <cmath>
#include <cstdint>

namespace towerrec::ref {

// One AdamW step of one element (decoupled weight decay, bias correction at the
// 1-based step t).
struct Adam64 {
  double lr, b1, b2, eps, wd;
  void step(double& p, double g, double& m, double& v, int64_t t) const {
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double mhat = m / (1 - std::pow(b1, double(t)));
    const double vhat = v / (1 - std::pow(b2, double(t)));
    p -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p);
  }
};

// p -= lr * (g + weight_decay * p)
inline void sgd_step(double& p, double g, double lr, double wd) { p -= lr * (g + wd * p); }

}  // namespace towerrec::ref

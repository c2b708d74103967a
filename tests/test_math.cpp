// The scalar math of kernels/math.h (shared by the CPU and CUDA backends)
// against float64, including the extremes where naive formulas overflow.
//
// Tolerances: softplus/sigmoid in float32 are accurate to a few ulps, so they are
// compared with rel 4e-7 (about 3.4 ulp) plus an absolute floor of 1e-37 for
// underflowing tails; adam_update with rel 1e-5 after several steps.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/vec_exp.h"
#include "kernels/math.h"
#include "tests/test_util.h"

namespace towerrec {
namespace {

namespace m = towerrec::math;

double softplus_ref(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }
double sigmoid_ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }

std::vector<float> probe_points() {
  std::vector<float> xs = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-7f, -1e-7f, 0.5f, -0.5f, 1.0f, -1.0f,
                           15.0f, -15.0f, 17.0f, -17.0f, 20.0f, -20.0f, 30.0f, -30.0f, 80.0f,
                           -80.0f, 88.0f, -88.0f, 89.0f, -89.0f, 100.0f, -100.0f, 104.0f, -104.0f,
                           1e3f, -1e3f, 1e4f, -1e4f, 1e30f, -1e30f,
                           std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
  std::mt19937_64 g(testing::test_seed());
  for (float x : testing::random_floats(g, 2000, -50.0f, 50.0f)) xs.push_back(x);
  return xs;
}

TEST(Math, SoftplusMatchesFloat64Everywhere) {
  SCOPED_TRACE("TOWERREC_TEST_SEED=" + std::to_string(testing::test_seed()));
  for (float x : probe_points()) {
    const double want = softplus_ref(x);
    const float got = m::softplus(x);
    ASSERT_TRUE(std::isfinite(got)) << "x=" << x;
    ASSERT_GE(got, 0.0f) << "x=" << x;
    ASSERT_NEAR(got, want, 1e-37 + 4e-7 * want) << "x=" << x;
    // The double overload agrees with the reference to double precision.
    ASSERT_NEAR(m::softplus(double(x)), want, 1e-300 + 1e-15 * want) << "x=" << x;
  }
}

TEST(Math, SigmoidMatchesFloat64AtExtremes) {
  SCOPED_TRACE("TOWERREC_TEST_SEED=" + std::to_string(testing::test_seed()));
  for (float x : probe_points()) {
    const double want = sigmoid_ref(x);
    const float got = m::sigmoid(x);
    ASSERT_TRUE(std::isfinite(got)) << "x=" << x;
    ASSERT_GE(got, 0.0f) << "x=" << x;
    ASSERT_LE(got, 1.0f) << "x=" << x;
    ASSERT_NEAR(got, want, 1e-37 + 4e-7 * want) << "x=" << x;
    ASSERT_NEAR(m::sigmoid(double(x)), want, 1e-300 + 1e-15 * want) << "x=" << x;
  }
  EXPECT_EQ(m::sigmoid(0.0f), 0.5f);
  EXPECT_EQ(m::sigmoid(1e4f), 1.0f);
  EXPECT_EQ(m::sigmoid(-1e4f), 0.0f);
}

TEST(Math, LogisticLossAndGradient) {
  for (float s : probe_points())
    for (float y : {1.0f, -1.0f}) {
      const double want = softplus_ref(-double(y) * s);
      ASSERT_NEAR(m::logistic_loss(s, y), want, 1e-37 + 4e-7 * want) << "s=" << s << " y=" << y;
      const double wg = -double(y) * sigmoid_ref(-double(y) * s);
      const float g = m::logistic_grad(s, y);
      ASSERT_TRUE(std::isfinite(g));
      ASSERT_NEAR(g, wg, 1e-37 + 4e-7 * std::fabs(wg)) << "s=" << s << " y=" << y;
      // The gradient points downhill: the loss decreases along -g.
      ASSERT_LE(g * y, 0.0f);
      // The fused form shares one exp and must agree bit for bit.
      float fused_g = std::numeric_limits<float>::quiet_NaN();
      const float fused_l = m::logistic_loss_grad(s, y, &fused_g);
      ASSERT_TRUE(testing::bit_identical({fused_l}, {m::logistic_loss(s, y)})) << "s=" << s << " y=" << y;
      ASSERT_TRUE(testing::bit_identical({fused_g}, {g})) << "s=" << s << " y=" << y;
    }
}

TEST(Math, ReluClampsNegatives) {
  EXPECT_EQ(m::relu(-2.0f), 0.0f);
  EXPECT_EQ(m::relu(0.0f), 0.0f);
  EXPECT_EQ(m::relu(3.5f), 3.5f);
  EXPECT_TRUE(std::isnan(m::relu(std::numeric_limits<float>::quiet_NaN())));
}

TEST(Math, AdamStepBiasCorrection) {
  for (int64_t t : {1, 2, 10, 1000, 100000}) {
    const auto s = m::make_adam_step(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
    const double b1 = 0.9f, b2 = 0.999f;
    EXPECT_NEAR(s.inv_bc1, 1.0 / (1.0 - std::pow(b1, double(t))), 1e-6 / (1.0 - std::pow(b1, double(t))));
    EXPECT_NEAR(s.inv_sqrt_bc2, 1.0 / std::sqrt(1.0 - std::pow(b2, double(t))),
                1e-6 / std::sqrt(1.0 - std::pow(b2, double(t))));
    EXPECT_EQ(s.lr, 1e-3f);
    EXPECT_EQ(s.weight_decay, 0.01f);
  }
}

TEST(Math, AdamUpdateMatchesFloat64) {
  SCOPED_TRACE("TOWERREC_TEST_SEED=" + std::to_string(testing::test_seed()));
  std::mt19937_64 g(testing::test_seed() + 17);
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  for (float wd : {0.0f, 0.1f}) {
    const auto p0 = testing::random_floats(g, 500);
    std::vector<float> p(p0), mm(500, 0.0f), vv(500, 0.0f);
    std::vector<double> pd(p0.begin(), p0.end()), md(500, 0.0), vd(500, 0.0);
    for (int64_t t = 1; t <= 20; ++t) {
      const auto grad = testing::random_floats(g, 500, -3.0f, 3.0f);
      const auto s = m::make_adam_step(lr, b1, b2, eps, wd, t);
      for (size_t i = 0; i < p.size(); ++i) {
        m::adam_update(p[i], grad[i], mm[i], vv[i], s);
        md[i] = double(b1) * md[i] + (1.0 - double(b1)) * grad[i];
        vd[i] = double(b2) * vd[i] + (1.0 - double(b2)) * double(grad[i]) * grad[i];
        const double mhat = md[i] / (1.0 - std::pow(double(b1), double(t)));
        const double vhat = vd[i] / (1.0 - std::pow(double(b2), double(t)));
        pd[i] -= double(lr) * (mhat / (std::sqrt(vhat) + double(eps)) + double(wd) * pd[i]);
      }
    }
    EXPECT_TRUE(testing::all_close(p, pd, 1e-6, 1e-5)) << "param wd=" << wd;
    EXPECT_TRUE(testing::all_close(mm, md, 1e-7, 1e-5)) << "m wd=" << wd;
    EXPECT_TRUE(testing::all_close(vv, vd, 1e-8, 1e-5)) << "v wd=" << wd;
  }
}

TEST(Math, AdamFirstStepMovesByLearningRate) {
  // With m = v = 0 and no decay, the first step is lr * sign(g) (up to eps).
  const auto s = m::make_adam_step(0.01f, 0.9f, 0.999f, 1e-8f, 0.0f, 1);
  for (float grad : {0.3f, -2.0f, 1e-3f}) {
    float p = 1.0f, mm = 0.0f, vv = 0.0f;
    m::adam_update(p, grad, mm, vv, s);
    EXPECT_NEAR(p, 1.0f - 0.01f * (grad > 0 ? 1.0f : -1.0f), 1e-6f) << "g=" << grad;
  }
  // A zero gradient with zero moments leaves the parameter alone.
  float p = 0.7f, mm = 0.0f, vv = 0.0f;
  m::adam_update(p, 0.0f, mm, vv, s);
  EXPECT_EQ(p, 0.7f);
}

// The CPU softmax's vectorisable exp against float64 exp: within 2 ulp (rel
// 2.4e-7) over [-87.3, 88.3], random points and the ends; clamped outside that
// range (never inf, never a denormal), NaN kept.
TEST(Math, VecExpMatchesFloat64Exp) {
  std::mt19937_64 g(testing::test_seed());
  std::vector<float> xs = {0.0f, -0.0f, 1e-30f, -1e-7f, 0.5f, -0.5f, 1.0f, -1.0f, -20.0f, 20.0f,
                           -87.3f, 88.3f, -80.0f, 80.0f, 0.34657359f, -0.34657359f};
  for (float x : testing::random_floats(g, 20000, -87.3f, 88.3f)) xs.push_back(x);
  for (float x : testing::random_floats(g, 20000, -30.0f, 0.0f)) xs.push_back(x);
  double worst = 0.0;
  for (float x : xs) {
    const double want = std::exp(static_cast<double>(x));
    const double got = cpu::vec_exp(x);
    ASSERT_TRUE(std::isfinite(got)) << "x=" << x;
    const double rel = std::abs(got - want) / want;
    worst = std::max(worst, rel);
    ASSERT_LE(rel, 2.4e-7) << "x=" << x << " got " << got << " want " << want;
  }
  EXPECT_GT(worst, 0.0);  // the comparison saw rounding, so it compared values
  EXPECT_FLOAT_EQ(cpu::vec_exp(-1000.0f), cpu::vec_exp(-87.3f));
  EXPECT_GT(cpu::vec_exp(-1000.0f), 0.0f);
  EXPECT_TRUE(std::isfinite(cpu::vec_exp(1000.0f)));
  EXPECT_TRUE(std::isnan(cpu::vec_exp(std::numeric_limits<float>::quiet_NaN())));
}

}  // namespace
}  // namespace towerrec

// Scalar math shared by both backends. Every function here is compiled for the
// host and, under nvcc, for the device, so the CPU tests exercise the very code
// the CUDA kernels run.
#pragma once

#include <cmath>
#include <cstdint>

#include "towerrec/hostdevice.h"

namespace towerrec::math {

// log(1 + exp(x)) without overflow for any finite x, accurate for x << 0.
TR_HD float softplus(float x) {
  return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x));
}
TR_HD double softplus(double x) { return x > 0.0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

// 1 / (1 + exp(-x)), stable for any finite x.
TR_HD float sigmoid(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}
TR_HD double sigmoid(double x) {
  if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
  const double e = exp(x);
  return e / (1.0 + e);
}

// Logistic loss of score s with label y in {+1, -1}: softplus(-y s).
TR_HD float logistic_loss(float s, float y) { return softplus(-y * s); }
// d/ds of logistic_loss: -y * sigmoid(-y s).
TR_HD float logistic_grad(float s, float y) { return -y * sigmoid(-y * s); }
// Both from one exp: softplus and sigmoid of x = -y s each need only
// e = exp(-|x|), so the forms below are bit-identical to the two functions above.
struct LogisticTerms {
  float x, e;
};
TR_HD LogisticTerms logistic_terms(float s, float y) {
  const float x = -y * s;
  return {x, expf(x > 0.0f ? -x : x)};
}
TR_HD float logistic_grad(LogisticTerms t, float y) {
  return -y * (t.x >= 0.0f ? 1.0f / (1.0f + t.e) : t.e / (1.0f + t.e));
}
TR_HD float logistic_loss(LogisticTerms t) { return t.x > 0.0f ? t.x + log1pf(t.e) : log1pf(t.e); }
TR_HD float logistic_loss_grad(float s, float y, float* grad) {
  const LogisticTerms t = logistic_terms(s, y);
  *grad = logistic_grad(t, y);
  return logistic_loss(t);
}

// BPR loss of one (positive, negative) score pair: softplus(-(s_pos - s_neg)).
TR_HD float bpr_loss(float s_pos, float s_neg) { return softplus(-(s_pos - s_neg)); }
// Weight of one negative in the BPR gradient: sigmoid(-(s_pos - s_neg)), so that
// d/ds_neg = +bpr_weight and d/ds_pos = -bpr_weight.
TR_HD float bpr_weight(float s_pos, float s_neg) { return sigmoid(-(s_pos - s_neg)); }

// Gradient of one sampled-softmax logit: scale * (prob - [positive]) / temperature,
// with prob = exp(z - max) / sum_exp (the caller passes exp(z - max) and
// inv_sum = 1 / sum_exp).
TR_HD float softmax_logit_grad(float e, float inv_sum, bool positive, float scale_over_t) {
  return scale_over_t * (e * inv_sum - (positive ? 1.0f : 0.0f));
}

// Cosine contrastive loss, one negative of weight w (the loss's w / n_neg,
// times the batch scale): its hinge max(0, s - margin) and that hinge's gradient.
TR_HD float ccl_hinge(float s, float margin) { return s > margin ? s - margin : 0.0f; }
TR_HD float ccl_negative_grad(float s, float margin, float w) { return s > margin ? w : 0.0f; }
// An item's weight exp(-log_q - shift) (shift: the largest -log_q of the batch,
// so weights lie in (0, 1]).
TR_HD float ccl_item_weight(float log_q, float shift) { return expf(-log_q - shift); }

// 1 / max(||x||, 1e-12) from the sum of squares of x.
TR_HD float l2_inv_norm(float sumsq) { return 1.0f / fmaxf(sqrtf(sumsq), 1e-12f); }
TR_HD double l2_inv_norm(double sumsq) { return 1.0 / fmax(sqrt(sumsq), 1e-12); }

// Inverted dropout of one element given its uniform draw u in [0, 1):
// kept (u >= p) elements are divided by 1 - p, dropped ones become 0.
TR_HD float dropout(float x, float u, float p) { return u >= p ? x / (1.0f - p) : 0.0f; }

// NaN passes through (as in oneDNN's ReLU, which the CPU backend's forward uses),
// so a diverged layer shows up in the loss instead of vanishing.
TR_HD float relu(float x) { return x > 0.0f || x != x ? x : 0.0f; }

// Bias-correction factors of Adam for 1-based step t: 1 - beta^t.
// Computed in double on the host once per step; passed to the element update.
struct AdamStep {
  float lr, beta1, beta2, eps, weight_decay;
  float inv_bc1;       // 1 / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
};

inline AdamStep make_adam_step(float lr, float beta1, float beta2, float eps, float wd,
                               int64_t t) {
  AdamStep s;
  s.lr = lr; s.beta1 = beta1; s.beta2 = beta2; s.eps = eps; s.weight_decay = wd;
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t));
  s.inv_bc1 = static_cast<float>(1.0 / bc1);
  s.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  return s;
}

// One AdamW update of one element. Decoupled weight decay.
TR_HD void adam_update(float& p, float g, float& m, float& v, const AdamStep& s) {
  m = s.beta1 * m + (1.0f - s.beta1) * g;
  v = s.beta2 * v + (1.0f - s.beta2) * g * g;
  const float mhat = m * s.inv_bc1;
  const float denom = sqrtf(v) * s.inv_sqrt_bc2 + s.eps;
  p -= s.lr * (mhat / denom + s.weight_decay * p);
}

}  // namespace towerrec::math

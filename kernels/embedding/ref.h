// Float64 reference of the embedding family (gather_rows, bag_forward,
// bag_backward): the oracle of tests/test_embedding.cpp. Header-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace towerrec::ref {

// out[r, c] = src[idx[r], c] (the gathered window only, [n x dim]).
template <typename T>
std::vector<T> gather_rows(const std::vector<T>& src, int dim, const std::vector<int32_t>& idx) {
  std::vector<T> out;
  out.reserve(idx.size() * dim);
  for (int32_t i : idx)
    for (int c = 0; c < dim; ++c) out.push_back(src[int64_t{i} * dim + c]);
  return out;
}

// Mean of table rows over each bag: entity e owns values[offsets[e] .. offsets[e+1]);
// out[r] is the mean over the bag of idx[r], 0 for an empty bag. [n x dim].
inline std::vector<double> bag_forward(const std::vector<double>& table, int dim,
                                       const std::vector<int32_t>& offsets,
                                       const std::vector<int32_t>& values,
                                       const std::vector<int32_t>& idx) {
  std::vector<double> out(idx.size() * dim, 0.0);
  for (size_t r = 0; r < idx.size(); ++r) {
    const int32_t b0 = offsets[idx[r]], b1 = offsets[idx[r] + 1];
    for (int32_t j = b0; j < b1; ++j)
      for (int c = 0; c < dim; ++c) out[r * dim + c] += table[size_t(values[j]) * dim + c];
    if (b1 > b0)
      for (int c = 0; c < dim; ++c) out[r * dim + c] /= (b1 - b0);
  }
  return out;
}

// dtable[v] += dout[r, col_off ..] / bag size for every value v of idx[r]'s bag.
template <typename T>
void bag_backward(const std::vector<T>& dout, int ld_dout, int col_off,
                  const std::vector<int32_t>& offsets, const std::vector<int32_t>& values,
                  const std::vector<int32_t>& idx, int dim, std::vector<double>& dtable) {
  for (size_t r = 0; r < idx.size(); ++r) {
    const int32_t b0 = offsets[idx[r]], b1 = offsets[idx[r] + 1];
    for (int32_t j = b0; j < b1; ++j)
      for (int c = 0; c < dim; ++c)
        dtable[size_t(values[j]) * dim + c] += double(dout[r * ld_dout + col_off + c]) / (b1 - b0);
  }
}

// The softmax of logit[values[j]] over the bag j in [b0, b1) (empty: none).
inline std::vector<double> bag_softmax(const std::vector<double>& logit,
                                       const std::vector<int32_t>& values, int32_t b0, int32_t b1) {
  std::vector<double> w;
  if (b1 <= b0) return w;
  double top = logit[values[b0]], z = 0.0;
  for (int32_t j = b0; j < b1; ++j) top = std::max(top, logit[values[j]]);
  for (int32_t j = b0; j < b1; ++j) z += std::exp(logit[values[j]] - top);
  for (int32_t j = b0; j < b1; ++j) w.push_back(std::exp(logit[values[j]] - top) / z);
  return w;
}

// Weighted bag: w = softmax over the bag of logit[v]; out[r] = sum_j w_j table[v_j].
inline std::vector<double> bag_weighted_forward(const std::vector<double>& table,
                                                const std::vector<double>& logit, int dim,
                                                const std::vector<int32_t>& offsets,
                                                const std::vector<int32_t>& values,
                                                const std::vector<int32_t>& idx) {
  std::vector<double> out(idx.size() * dim, 0.0);
  for (size_t r = 0; r < idx.size(); ++r) {
    const int32_t b0 = offsets[idx[r]], b1 = offsets[idx[r] + 1];
    const std::vector<double> w = bag_softmax(logit, values, b0, b1);
    for (int32_t j = b0; j < b1; ++j)
      for (int c = 0; c < dim; ++c) out[r * dim + c] += w[j - b0] * table[size_t(values[j]) * dim + c];
  }
  return out;
}

// Its gradients for dL/dout = dout [n x dim]: dtable [rows x dim], dlogit [rows].
inline void bag_weighted_backward(const std::vector<double>& dout, const std::vector<double>& table,
                                  const std::vector<double>& logit, int dim,
                                  const std::vector<int32_t>& offsets,
                                  const std::vector<int32_t>& values,
                                  const std::vector<int32_t>& idx, std::vector<double>& dtable,
                                  std::vector<double>& dlogit) {
  const std::vector<double> pooled = bag_weighted_forward(table, logit, dim, offsets, values, idx);
  for (size_t r = 0; r < idx.size(); ++r) {
    const int32_t b0 = offsets[idx[r]], b1 = offsets[idx[r] + 1];
    const std::vector<double> ws = bag_softmax(logit, values, b0, b1);
    for (int32_t j = b0; j < b1; ++j) {
      const double w = ws[j - b0];
      double dot = 0.0;
      for (int c = 0; c < dim; ++c) {
        dtable[size_t(values[j]) * dim + c] += w * dout[r * dim + c];
        dot += (table[size_t(values[j]) * dim + c] - pooled[r * dim + c]) * dout[r * dim + c];
      }
      dlogit[size_t(values[j])] += w * dot;
    }
  }
}

}  // namespace towerrec::ref

// Float64 reference of the top-K family: the oracle of tests/test_topk.cpp.
// Header-only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <set>
#include <utility>
#include <vector>

namespace towerrec::ref {

// <U[r], V[j]> in float64.
inline double topk_score(const std::vector<float>& U, const std::vector<float>& V, int d,
                         int64_t r, int64_t j) {
  double s = 0.0;
  for (int t = 0; t < d; ++t) s += double(U[r * d + t]) * double(V[j * d + t]);
  return s;
}

// Full-sort top-K: (score desc, item asc), excluded items skipped, padded with
// (-1, -inf). all_scores[r][j] receives every float64 score.
inline void topk(const std::vector<float>& U, int64_t nu, const std::vector<float>& V, int64_t ni,
                 int d, int k, const std::vector<int64_t>* excl_off,
                 const std::vector<int32_t>* excl, std::vector<int32_t>& items,
                 std::vector<double>& scores, std::vector<std::vector<double>>& all_scores) {
  items.assign(size_t(nu * k), -1);
  scores.assign(size_t(nu * k), -std::numeric_limits<double>::infinity());
  all_scores.assign(size_t(nu), std::vector<double>(size_t(ni)));
  for (int64_t r = 0; r < nu; ++r) {
    std::set<int32_t> ex;
    if (excl_off)
      for (int64_t j = (*excl_off)[r]; j < (*excl_off)[r + 1]; ++j) ex.insert((*excl)[j]);
    std::vector<std::pair<double, int32_t>> c;
    for (int64_t j = 0; j < ni; ++j) {
      const double s = topk_score(U, V, d, r, j);
      all_scores[r][j] = s;
      if (!ex.count(int32_t(j))) c.emplace_back(s, int32_t(j));
    }
    std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (size_t j = 0; j < c.size() && j < size_t(k); ++j) {
      items[r * k + j] = c[j].second;
      scores[r * k + j] = c[j].first;
    }
  }
}

}  // namespace towerrec::ref

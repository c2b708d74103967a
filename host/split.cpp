#include "towerrec/split.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "towerrec/error.h"
#include "towerrec/rng.h"

namespace towerrec {

Interactions select_rows(const Interactions& x, const std::vector<int64_t>& rows) {
  Interactions out;
  out.user.reserve(rows.size());
  out.item.reserve(rows.size());
  for (int64_t r : rows) {
    out.user.push_back(x.user[r]);
    out.item.push_back(x.item[r]);
    if (!x.rating.empty()) out.rating.push_back(x.rating[r]);
    if (!x.timestamp.empty()) out.timestamp.push_back(x.timestamp[r]);
  }
  return out;
}

Split split_per_user_ratio(const Interactions& x, int32_t n_users, double test_fraction,
                           uint64_t seed) {
  TOWERREC_CHECK(test_fraction >= 0.0 && test_fraction < 1.0, "test fraction must be in [0, 1)");
  std::vector<std::vector<int64_t>> by_user(static_cast<size_t>(n_users));
  for (int64_t j = 0; j < x.size(); ++j) {
    TOWERREC_CHECK(x.user[j] >= 0 && x.user[j] < n_users, "user index out of range");
    by_user[x.user[j]].push_back(j);
  }
  std::vector<int64_t> train_rows, test_rows;
  for (int32_t u = 0; u < n_users; ++u) {
    auto& rows = by_user[u];
    const int64_t n = static_cast<int64_t>(rows.size());
    // Fisher-Yates with a counter-based stream per user.
    for (int64_t j = n - 1; j > 0; --j) {
      const auto r = static_cast<int64_t>(rng::below(
          seed, rng::kSplit, (static_cast<uint64_t>(u) << 32) + static_cast<uint64_t>(j),
          static_cast<uint64_t>(j + 1)));
      std::swap(rows[j], rows[r]);
    }
    int64_t n_test = std::llround(test_fraction * static_cast<double>(n));
    if (n >= 2) n_test = std::min(n_test, n - 1);
    else n_test = 0;
    std::sort(rows.begin(), rows.begin() + n_test);
    std::sort(rows.begin() + n_test, rows.end());
    test_rows.insert(test_rows.end(), rows.begin(), rows.begin() + n_test);
    train_rows.insert(train_rows.end(), rows.begin() + n_test, rows.end());
  }
  std::sort(train_rows.begin(), train_rows.end());
  std::sort(test_rows.begin(), test_rows.end());
  return Split{select_rows(x, train_rows), select_rows(x, test_rows)};
}

namespace {

void require_timestamps(const Interactions& x, const char* method) {
  if (x.size() > 0 && x.timestamp.size() != x.user.size())
    throw Error(std::string("the ") + method +
                " split needs timestamps, and these interactions have none (use --method ratio)");
}

}  // namespace

Split split_leave_one_out(const Interactions& x, int32_t n_users) {
  require_timestamps(x, "leave-one-out");
  // Per user: the row with the largest (timestamp, row) and the row count.
  std::vector<int64_t> latest(static_cast<size_t>(n_users), -1), count(static_cast<size_t>(n_users), 0);
  for (int64_t j = 0; j < x.size(); ++j) {
    const int32_t u = x.user[j];
    TOWERREC_CHECK(u >= 0 && u < n_users, "user index out of range");
    ++count[u];
    if (latest[u] < 0 || x.timestamp[j] >= x.timestamp[latest[u]]) latest[u] = j;
  }
  std::vector<int64_t> train_rows, test_rows;
  train_rows.reserve(static_cast<size_t>(x.size()));
  for (int64_t j = 0; j < x.size(); ++j) {
    const int32_t u = x.user[j];
    if (count[u] >= 2 && latest[u] == j) test_rows.push_back(j);
    else train_rows.push_back(j);
  }
  return Split{select_rows(x, train_rows), select_rows(x, test_rows)};
}

Split split_temporal(const Interactions& x, double test_fraction) {
  TOWERREC_CHECK(test_fraction >= 0.0 && test_fraction < 1.0, "test fraction must be in [0, 1)");
  require_timestamps(x, "temporal");
  std::vector<int64_t> order(static_cast<size_t>(x.size()));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return x.timestamp[a] < x.timestamp[b]; });
  const int64_t n_test = std::llround(test_fraction * static_cast<double>(x.size()));
  std::vector<int64_t> train_rows(order.begin(), order.end() - n_test);
  std::vector<int64_t> test_rows(order.end() - n_test, order.end());
  std::sort(train_rows.begin(), train_rows.end());
  std::sort(test_rows.begin(), test_rows.end());
  return Split{select_rows(x, train_rows), select_rows(x, test_rows)};
}

Split split_by_method(const std::string& method, const Interactions& x, int32_t n_users,
                      double test_fraction, uint64_t seed) {
  if (method == "ratio") return split_per_user_ratio(x, n_users, test_fraction, seed);
  if (method == "loo") return split_leave_one_out(x, n_users);
  if (method == "temporal") return split_temporal(x, test_fraction);
  throw Error("unknown split method '" + method + "' (expected ratio, loo or temporal)");
}

}  // namespace towerrec

// NaN-safe comparisons for tests. Outputs are poisoned with NaN before an op
// runs, so a check must fail when it meets a NaN; but `fabs(a - b) > tol` and
// `a > b` are false for NaN, and a check written "fail when they differ" passes
// an unwritten element. Each helper here states what must hold and is false
// whenever an operand is NaN: write `if (!near(...)) fail(...)`.
#pragma once

#include <cmath>
#include <cstdint>

namespace towerrec::testing {

// a and b agree within tol: equal (so equal infinities agree), or
// |a - b| <= tol. False when a or b is NaN.
inline bool near(double a, double b, double tol) { return a == b || std::fabs(a - b) <= tol; }

// (score, item) may follow (prev_score, prev_item) in a ranking: a lower score,
// or the same score and a higher item index. False when either score is NaN.
inline bool ranks_after(float score, int32_t item, float prev_score, int32_t prev_item) {
  return score < prev_score || (score == prev_score && item > prev_item);
}

}  // namespace towerrec::testing

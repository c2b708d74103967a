// The filters of a ranking (include/towerrec/recommend.h): feature
// conditions (--where column=value on categorical columns, comparisons such
// as column>=x on numeric ones), the mask they leave, and the candidate items
// an allow list, a deny list and that mask leave.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "towerrec/error.h"
#include "towerrec/recommend.h"

namespace towerrec {

const char* op_text(FeatureCondition::Op op) {
  using Op = FeatureCondition::Op;
  switch (op) {
    case Op::kEq: return "=";
    case Op::kNe: return "!=";
    case Op::kLt: return "<";
    case Op::kLe: return "<=";
    case Op::kGt: return ">";
    case Op::kGe: return ">=";
  }
  return "?";
}

FeatureCondition parse_feature_condition(const std::string& text, const std::string& flag) {
  using Op = FeatureCondition::Op;
  const size_t at = text.find_first_of("<>!=");
  FeatureCondition c;
  size_t len = 0;
  if (at != std::string::npos) {
    const bool eq_next = at + 1 < text.size() && text[at + 1] == '=';
    switch (text[at]) {
      case '=': c.op = Op::kEq, len = 1; break;
      case '!': c.op = Op::kNe, len = eq_next ? 2 : 0; break;
      case '<': c.op = eq_next ? Op::kLe : Op::kLt, len = eq_next ? 2 : 1; break;
      default: c.op = eq_next ? Op::kGe : Op::kGt, len = eq_next ? 2 : 1; break;
    }
  }
  if (len) {
    c.column = text.substr(0, at);
    c.value = text.substr(at + len);
  }
  auto trim = [](std::string& s) {
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.pop_back();
    size_t b = 0;
    while (b < s.size() && (s[b] == ' ' || s[b] == '\t')) ++b;
    s.erase(0, b);
  };
  trim(c.column);
  trim(c.value);
  if (!len || c.column.empty())
    throw Error(flag + ": expected column=value, column!=value or a comparison such as column>=x, got '" +
                text + "'");
  return c;
}

namespace {

std::string condition_text(const FeatureCondition& c) { return "--where " + c.column + op_text(c.op) + c.value; }

std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// The dense column `col` against the number in c.value, on raw values.
void match_dense(const EntityFeatures& f, int32_t n, int col, const FeatureCondition& c,
                 const std::string& what, std::vector<char>& mask) {
  using Op = FeatureCondition::Op;
  double x = 0;
  {
    const char* b = c.value.c_str();
    char* e = nullptr;
    x = std::strtod(b, &e);
    if (c.value.empty() || e != b + c.value.size() || !std::isfinite(x))
      throw Error(condition_text(c) + ": '" + c.value + "' is not a number ('" + c.column + "' is a numeric " +
                  what + " feature)");
  }
  const int nd = f.dense_dim();
  TOWERREC_CHECK(f.dense.size() >= static_cast<size_t>(n) * static_cast<size_t>(nd),
                 "dense feature table smaller than the entity count");
  TOWERREC_CHECK(f.dense_min.size() == static_cast<size_t>(nd) && f.dense_max.size() == static_cast<size_t>(nd),
                 "dense features without their min-max range");
  const double lo = f.dense_min[static_cast<size_t>(col)], hi = f.dense_max[static_cast<size_t>(col)];
  const double span = hi - lo;
  // The stored value is float(scaled) and the range float(min), float(max):
  // each within 2^-24 relative, so the raw value is known to within tol.
  const double tol = std::ldexp(std::fabs(lo) + std::fabs(hi) + span, -22);
  for (int32_t e = 0; e < n; ++e) {
    if (!mask[static_cast<size_t>(e)]) continue;
    const double y = f.dense[static_cast<size_t>(e) * static_cast<size_t>(nd) + static_cast<size_t>(col)];
    const double raw = lo + y * span;
    bool ok = false;
    switch (c.op) {
      case Op::kEq: ok = std::fabs(raw - x) <= tol; break;
      case Op::kNe: ok = std::fabs(raw - x) > tol; break;
      case Op::kLt: ok = raw < x - tol; break;
      case Op::kLe: ok = raw <= x + tol; break;
      case Op::kGt: ok = raw > x + tol; break;
      case Op::kGe: ok = raw >= x - tol; break;
    }
    mask[static_cast<size_t>(e)] = ok;
  }
}

}  // namespace

std::vector<char> match_features(const EntityFeatures& f, int32_t n,
                                 const std::vector<FeatureCondition>& where, const std::string& what) {
  using Op = FeatureCondition::Op;
  std::vector<char> mask(static_cast<size_t>(n), 1);
  for (const FeatureCondition& c : where) {
    const CategoricalField* field = nullptr;
    for (const auto& cf : f.categorical)
      if (cf.name == c.column) field = &cf;
    int dense_col = -1;
    for (int j = 0; j < f.dense_dim(); ++j)
      if (f.dense_names[static_cast<size_t>(j)] == c.column) dense_col = j;
    if (!field && dense_col >= 0) {
      match_dense(f, n, dense_col, c, what, mask);
      continue;
    }
    if (!field) {
      std::vector<std::string> cat;
      for (const auto& cf : f.categorical) cat.push_back(cf.name);
      std::string have;
      if (!cat.empty()) have += "categorical " + what + " features: " + joined(cat);
      if (!f.dense_names.empty()) have += (have.empty() ? "" : "; ") + std::string("numeric: ") + joined(f.dense_names);
      throw Error(condition_text(c) + ": no " + what + " feature column '" + c.column + "'" +
                  (have.empty() ? " (the model has no " + what + " features)" : " (" + have + ")"));
    }
    if (c.op != Op::kEq && c.op != Op::kNe)
      throw Error(condition_text(c) + ": '" + c.column + "' is a categorical " + what + " feature: use " +
                  c.column + "=VALUE or " + c.column + "!=VALUE (comparisons apply to numeric columns)");
    const int32_t v = field->vocab.find(c.value);
    if (v < 0) {
      std::string some;
      const int32_t show = std::min<int32_t>(field->vocab.size(), 12);
      for (int32_t j = 0; j < show; ++j) some += (j ? ", " : "") + field->vocab.id(j);
      if (show < field->vocab.size()) some += ", ...";
      throw Error(condition_text(c) + ": no " + what + " has " + c.column + " '" + c.value + "' (values: " + some + ")");
    }
    TOWERREC_CHECK(static_cast<int64_t>(field->offsets.size()) >= static_cast<int64_t>(n) + 1,
                   "feature table smaller than the entity count");
    const bool want = c.op == Op::kEq;
    for (int32_t e = 0; e < n; ++e) {
      if (!mask[static_cast<size_t>(e)]) continue;
      bool has = false;
      for (int32_t p = field->offsets[e]; p < field->offsets[e + 1] && !has; ++p) has = field->values[p] == v;
      mask[static_cast<size_t>(e)] = has == want;
    }
  }
  return mask;
}

std::vector<int32_t> candidate_items(int32_t n_items, bool has_allow, const std::vector<int32_t>& allow,
                                     const std::vector<int32_t>& deny, const std::vector<char>& mask) {
  std::vector<char> ok(static_cast<size_t>(n_items), has_allow ? 0 : 1);
  for (int32_t i : allow) {
    TOWERREC_CHECK(i >= 0 && i < n_items, "allowed item index out of range");
    ok[static_cast<size_t>(i)] = 1;
  }
  for (int32_t i : deny) {
    TOWERREC_CHECK(i >= 0 && i < n_items, "denied item index out of range");
    ok[static_cast<size_t>(i)] = 0;
  }
  std::vector<int32_t> out;
  for (int32_t i = 0; i < n_items; ++i)
    if (ok[static_cast<size_t>(i)] && (mask.empty() || mask[static_cast<size_t>(i)])) out.push_back(i);
  return out;
}

}  // namespace towerrec

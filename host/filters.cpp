// The filters of a ranking (include/towerrec/recommend.h): feature
// conditions (--where column=value), the mask they leave, and the candidate
// items an allow list, a deny list and that mask leave.
#include <algorithm>
#include <string>
#include <vector>

#include "towerrec/error.h"
#include "towerrec/recommend.h"

namespace towerrec {

FeatureCondition parse_feature_condition(const std::string& text, const std::string& flag) {
  const size_t eq = text.find('=');
  FeatureCondition c;
  if (eq != std::string::npos) {
    c.column = text.substr(0, eq);
    c.value = text.substr(eq + 1);
  }
  auto trim = [](std::string& s) {
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.pop_back();
    size_t b = 0;
    while (b < s.size() && (s[b] == ' ' || s[b] == '\t')) ++b;
    s.erase(0, b);
  };
  trim(c.column);
  trim(c.value);
  if (eq == std::string::npos || c.column.empty())
    throw Error(flag + ": expected column=value, got '" + text + "'");
  return c;
}

std::vector<char> match_features(const EntityFeatures& f, int32_t n,
                                 const std::vector<FeatureCondition>& where, const std::string& what) {
  std::vector<char> mask(static_cast<size_t>(n), 1);
  for (const FeatureCondition& c : where) {
    const CategoricalField* field = nullptr;
    for (const auto& cf : f.categorical)
      if (cf.name == c.column) field = &cf;
    if (!field) {
      std::string have;
      for (const auto& cf : f.categorical) have += (have.empty() ? "" : ", ") + cf.name;
      bool dense = false;
      for (const auto& dn : f.dense_names) dense |= dn == c.column;
      throw Error("--where " + c.column + "=" + c.value + ": " +
                  (dense ? "'" + c.column + "' is a numeric " + what + " feature; --where takes categorical ones"
                         : "no " + what + " feature column '" + c.column + "'") +
                  (have.empty() ? " (the model has no categorical " + what + " features)"
                                : " (categorical " + what + " features: " + have + ")"));
    }
    const int32_t v = field->vocab.find(c.value);
    if (v < 0) {
      std::string some;
      const int32_t show = std::min<int32_t>(field->vocab.size(), 12);
      for (int32_t j = 0; j < show; ++j) some += (j ? ", " : "") + field->vocab.id(j);
      if (show < field->vocab.size()) some += ", ...";
      throw Error("--where " + c.column + "=" + c.value + ": no " + what + " has " + c.column + " '" +
                  c.value + "' (values: " + some + ")");
    }
    TOWERREC_CHECK(static_cast<int64_t>(field->offsets.size()) >= static_cast<int64_t>(n) + 1,
                   "feature table smaller than the entity count");
    for (int32_t e = 0; e < n; ++e) {
      if (!mask[static_cast<size_t>(e)]) continue;
      bool has = false;
      for (int32_t p = field->offsets[e]; p < field->offsets[e + 1] && !has; ++p) has = field->values[p] == v;
      mask[static_cast<size_t>(e)] = has;
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

// The closed choices of a training configuration, as enums. They are parsed
// once where text comes in (flags, JSON files, checkpoints) and written back
// under the same names, so config.json and the configuration section of a
// checkpoint read as they always have; the trainer and model switch on the
// enums.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "towerrec/backend.h"
#include "towerrec/error.h"

namespace towerrec {

// logistic: pointwise, each positive and negative pair
// bpr:      pairwise, each positive against each of its negatives
// softmax:  sampled softmax over all items of the batch (the other positives'
//           items and the sampled negatives), with logQ correction
// ccl:      cosine contrastive loss (SimpleX) over the same items: 1 - s for
//           the positive, a weighted mean of max(0, s - margin) over the rest
enum class Loss { kLogistic, kBpr, kSoftmax, kCcl };
// Negative sampler: uniform over items, or by popularity (count^alpha).
enum class Sampler { kUniform, kPopularity };
// constant | cosine (to 0 at the last step) | step (times lr_gamma every
// lr_step_epochs).
enum class LrSchedule { kConstant, kCosine, kStep };
enum class OptimizerKind { kAdam, kSgd };

// The names of an enum's values, in the order of the values (0, 1, ...), and
// what the enum is called in errors.
template <typename E>
struct EnumNames;
template <>
struct EnumNames<Loss> {
  static constexpr const char* what = "loss";
  static constexpr std::array<const char*, 4> names = {"logistic", "bpr", "softmax", "ccl"};
};
template <>
struct EnumNames<Sampler> {
  static constexpr const char* what = "sampler";
  static constexpr std::array<const char*, 2> names = {"uniform", "popularity"};
};
template <>
struct EnumNames<LrSchedule> {
  static constexpr const char* what = "lr schedule";
  static constexpr std::array<const char*, 3> names = {"constant", "cosine", "step"};
};
template <>
struct EnumNames<OptimizerKind> {
  static constexpr const char* what = "optimizer";
  static constexpr std::array<const char*, 2> names = {"adam", "sgd"};
};
// MatmulPrecision (backend.h) has its own parse_matmul_precision and
// matmul_precision_name; these are the same names.
template <>
struct EnumNames<MatmulPrecision> {
  static constexpr const char* what = "matmul precision";
  static constexpr std::array<const char*, 2> names = {"fp32", "bf16"};
};

// The valid names joined with ", " (for help and errors).
template <typename E>
std::string enum_choices() {
  std::string s;
  for (const char* n : EnumNames<E>::names) s += (s.empty() ? "" : ", ") + std::string(n);
  return s;
}

// The name of a value; throws Error for a value outside the enum (a cast
// from an integer, e.g. from a language binding).
template <typename E>
const char* to_string(E e) {
  const auto i = static_cast<size_t>(e);
  if (i >= EnumNames<E>::names.size())
    throw Error(std::string("invalid ") + EnumNames<E>::what + " value " + std::to_string(i));
  return EnumNames<E>::names[i];
}

// The value of a name; throws Error listing the valid names.
template <typename E>
E parse_enum(std::string_view text) {
  const auto& names = EnumNames<E>::names;
  for (size_t i = 0; i < names.size(); ++i)
    if (text == names[i]) return static_cast<E>(i);
  throw Error(std::string("unknown ") + EnumNames<E>::what + " '" + std::string(text) +
              "': expected one of " + enum_choices<E>());
}

}  // namespace towerrec

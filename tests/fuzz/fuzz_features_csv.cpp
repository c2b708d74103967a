// Fuzzes the feature CSV reader and build_features through load_csv. Input:
// the interactions CSV, a line "====", the user feature CSV, optionally
// another "====" and the item feature CSV. Accepted input yields features
// that satisfy the EntityFeatures invariants (dense values finite in [0, 1],
// bag offsets monotone, values inside the vocabulary).
#include <cstdint>

#include "tests/fuzz/fuzz_util.h"
#include "towerrec/error.h"

using namespace towerrec;
using namespace towerrec::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = split_parts(data, size);
  const std::string dir = scratch_dir();
  write_parts(dir, parts, {"x.csv", "u.csv", "i.csv"});
  try {
    const Dataset ds = load_csv(dir + "/x.csv", parts.size() > 1 ? dir + "/u.csv" : "",
                                parts.size() > 2 ? dir + "/i.csv" : "", LoadOptions{});
    check_dataset(ds);
  } catch (const Error&) {
  }
  return 0;
}

// Fuzzes the MovieLens-100k directory reader. Input: u.data, then (each after
// a line "====") u.user, u.item and u.genre; missing parts are absent files.
#include <cstdint>

#include "tests/fuzz/fuzz_util.h"
#include "towerrec/error.h"

using namespace towerrec;
using namespace towerrec::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = scratch_dir();
  write_parts(dir, split_parts(data, size), {"u.data", "u.user", "u.item", "u.genre"});
  try {
    check_dataset(load_movielens_100k(dir, LoadOptions{}));
  } catch (const Error&) {
  }
  return 0;
}

// Fuzzes the MovieLens-1M/10M reader ('::'-separated .dat files). Input:
// ratings.dat, then (each after a line "====") users.dat and movies.dat;
// missing parts are absent files.
#include <cstdint>

#include "tests/fuzz/fuzz_util.h"
#include "towerrec/error.h"

using namespace towerrec;
using namespace towerrec::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = scratch_dir();
  write_parts(dir, split_parts(data, size), {"ratings.dat", "users.dat", "movies.dat"});
  try {
    check_dataset(load_movielens_dat(dir, LoadOptions{}));
  } catch (const Error&) {
  }
  return 0;
}

// Fuzzes read_interactions_csv (the generic interaction CSV and the training,
// test and split files): any input is either read or refused with an Error;
// what is read satisfies the Interactions invariants, writes back with
// write_interactions_csv and reads back identical; re-reading with the maps
// fixed (allow_new = false, as eval does) succeeds.
#include <cstdint>

#include "tests/fuzz/fuzz_util.h"
#include "towerrec/error.h"

using namespace towerrec;
using namespace towerrec::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in = scratch("in.csv"), out = scratch("out.csv");
  write_bytes(in, std::string_view(reinterpret_cast<const char*>(data), size));
  Dataset ds;
  try {
    ds.interactions = read_interactions_csv(in, ds.users, ds.items, true);
  } catch (const Error&) {
    return 0;
  }
  check_interactions(ds.interactions, ds.users, ds.items);
  // Known IDs only: the same rows.
  const Interactions again = read_interactions_csv(in, ds.users, ds.items, false);
  FUZZ_CHECK(again.user == ds.interactions.user && again.item == ds.interactions.item);
  // Round trip through the writer.
  write_interactions_csv(out, ds.interactions, ds.users, ds.items);
  IdMap u2, i2;
  const Interactions back = read_interactions_csv(out, u2, i2, true);
  FUZZ_CHECK(back.user.size() == ds.interactions.user.size());
  for (size_t r = 0; r < back.user.size(); ++r) {
    FUZZ_CHECK(u2.id(back.user[r]) == ds.users.id(ds.interactions.user[r]));
    FUZZ_CHECK(i2.id(back.item[r]) == ds.items.id(ds.interactions.item[r]));
  }
  FUZZ_CHECK(back.rating == ds.interactions.rating);
  FUZZ_CHECK(back.timestamp == ds.interactions.timestamp);
  return 0;
}

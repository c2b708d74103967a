// Fuzzes the JSON configuration reader (train --config FILE, the configuration
// section of every checkpoint). Accepted input round-trips: to_json of the
// result reads back to the same configuration.
#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "towerrec/config.h"
#include "towerrec/error.h"

using namespace towerrec;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  Config cfg;
  try {
    apply_json(cfg, text, "fuzz.json");
  } catch (const Error&) {
    return 0;
  }
  const std::string once = to_json(cfg);
  Config again;
  apply_json(again, once, "round trip");
  FUZZ_CHECK(to_json(again) == once);
  return 0;
}

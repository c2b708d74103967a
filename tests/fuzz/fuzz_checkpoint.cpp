// Fuzzes load_checkpoint. The CRC-32 trailer would stop almost every mutation
// at the checksum, so the target rewrites the last four bytes to the CRC of
// the rest before loading: the section parser behind it is what gets fuzzed.
// An accepted checkpoint saves and loads back equal, and its configuration
// section is read as load_model reads it.
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "towerrec/checkpoint.h"
#include "towerrec/config.h"
#include "towerrec/error.h"

using namespace towerrec;
using namespace towerrec::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  if (bytes.size() >= 4) {
    const uint32_t crc = static_cast<uint32_t>(
        crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()),
              static_cast<uInt>(bytes.size() - 4)));
    std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);
  }
  const std::string in = scratch("in.ckpt"), out = scratch("out.ckpt");
  write_bytes(in, bytes);
  Checkpoint ck;
  try {
    ck = load_checkpoint(in);
  } catch (const Error&) {
    return 0;
  }
  FUZZ_CHECK(ck.state.names.size() == ck.state.tensors.size());
  if (ck.has_seen()) FUZZ_CHECK(ck.seen.n_users() == ck.users.size());
  save_checkpoint(out, ck);
  const Checkpoint back = load_checkpoint(out);
  FUZZ_CHECK(back.config_json == ck.config_json && back.epochs_done == ck.epochs_done);
  FUZZ_CHECK(back.step == ck.step);
  FUZZ_CHECK(back.users.ids() == ck.users.ids() && back.items.ids() == ck.items.ids());
  FUZZ_CHECK(back.state.names == ck.state.names && back.state.steps == ck.state.steps);
  FUZZ_CHECK(back.seen.offsets == ck.seen.offsets && back.seen.items == ck.seen.items);
  Config cfg;
  try {
    apply_json(cfg, ck.config_json, in + " (configuration section)");
  } catch (const Error&) {
  }
  return 0;
}

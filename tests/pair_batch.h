// A batch of (user, item, label) pairs for the loss ops, on the host and in
// backend memory, with the per-user and per-item CSR of pair indices the
// PairBatch contract asks for. Shared by the loss and determinism suites.
#pragma once

#include <cstdint>
#include <vector>

#include "tests/test_util.h"
#include "towerrec/backend.h"

namespace towerrec::testing {

// The CSR the PairBatch contract asks for: the library's own (backend.h).
using towerrec::build_pair_csr;

struct HostPairs {
  int32_t n_users = 0, n_items = 0;
  std::vector<int32_t> user, item, uoff, upairs, ioff, ipairs;
  std::vector<float> label;
};

struct DevicePairs {
  DeviceArray<int32_t> user, item, uoff, upairs, ioff, ipairs;
  DeviceArray<float> label;
  PairBatch pb;
  DevicePairs(Backend& be, const HostPairs& h)
      : user(upload(be, h.user)), item(upload(be, h.item)), uoff(upload(be, h.uoff)),
        upairs(upload(be, h.upairs)), ioff(upload(be, h.ioff)), ipairs(upload(be, h.ipairs)),
        label(upload(be, h.label)) {
    pb.n_pairs = static_cast<int64_t>(h.user.size());
    pb.user = user.data();
    pb.item = item.data();
    pb.label = label.data();
    pb.n_users = h.n_users;
    pb.user_offsets = uoff.data();
    pb.user_pairs = upairs.data();
    pb.n_items = h.n_items;
    pb.item_offsets = ioff.data();
    pb.item_pairs = ipairs.data();
  }
};

}  // namespace towerrec::testing

// A batch of (user, item, label) pairs for the loss ops, on the host and in
// backend memory, with the per-user and per-item CSR of pair indices the
// PairBatch contract asks for. Shared by the loss and determinism suites.
#pragma once

#include <cstdint>
#include <vector>

#include "tests/test_util.h"
#include "towerrec/backend.h"

namespace towerrec::testing {

// CSR of `key` (values in [0, n_keys)): offsets [n_keys + 1] and the pair
// indices of each key in increasing order.
inline void build_csr(const std::vector<int32_t>& key, int32_t n_keys, std::vector<int32_t>& off,
                      std::vector<int32_t>& pairs) {
  off.assign(static_cast<size_t>(n_keys) + 1, 0);
  for (int32_t k : key) ++off[static_cast<size_t>(k) + 1];
  for (int32_t i = 0; i < n_keys; ++i) off[i + 1] += off[i];
  pairs.assign(key.size(), -1);
  std::vector<int32_t> pos(off.begin(), off.end() - 1);
  for (size_t p = 0; p < key.size(); ++p) pairs[pos[key[p]]++] = static_cast<int32_t>(p);
}

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

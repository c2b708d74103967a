#include "towerrec/export.h"

#include <cstring>

#include "host/data/text.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {

namespace {

// NPY 1.0: magic, version, u16 header length, then a Python dict literal
// padded with spaces and ended by '\n' so the data starts at a multiple of 64.
// `shape` is the tuple's inside ("3, 4" or "7,").
void write_npy_raw(const std::string& path, const char* descr, const std::string& shape,
                   const void* data, size_t bytes) {
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" +
                     shape + "), }";
  const size_t prefix = 10;
  size_t total = prefix + dict.size() + 1;
  total = (total + 63) / 64 * 64;
  dict.append(total - prefix - dict.size() - 1, ' ');
  dict += '\n';
  TOWERREC_CHECK(dict.size() <= 65535, "npy: header too long");
  std::string head = "\x93NUMPY";
  head += '\x01';
  head += '\x00';
  const uint16_t hl = static_cast<uint16_t>(dict.size());
  head += static_cast<char>(hl & 0xff);
  head += static_cast<char>(hl >> 8);
  head += dict;
  uint32_t probe = 1;
  char little = 0;
  std::memcpy(&little, &probe, 1);
  TOWERREC_CHECK(little == 1, "npy: big-endian hosts are not supported");
  AtomicFile f(path);
  f.write(head);
  if (bytes) f.write(data, bytes);
  f.commit();
}

}  // namespace

void write_npy(const std::string& path, const float* data, int64_t rows, int64_t cols) {
  TOWERREC_CHECK(rows >= 0 && cols >= 0, "npy: negative shape");
  static_assert(sizeof(float) == 4, "float32 expected");
  write_npy_raw(path, "<f4", std::to_string(rows) + ", " + std::to_string(cols), data,
                static_cast<size_t>(rows) * static_cast<size_t>(cols) * sizeof(float));
}

void write_npy(const std::string& path, const int64_t* data, int64_t n) {
  TOWERREC_CHECK(n >= 0, "npy: negative shape");
  write_npy_raw(path, "<i8", std::to_string(n) + ",", data, static_cast<size_t>(n) * sizeof(int64_t));
}

void write_npy(const std::string& path, const int32_t* data, int64_t n) {
  TOWERREC_CHECK(n >= 0, "npy: negative shape");
  write_npy_raw(path, "<i4", std::to_string(n) + ",", data, static_cast<size_t>(n) * sizeof(int32_t));
}

void export_seen(const UserItems& seen, const std::string& dir) {
  TOWERREC_CHECK(!seen.offsets.empty(), "export: no seen items");
  make_directories(dir);
  write_npy(dir + "/" + kSeenOffsetsFile, seen.offsets.data(), static_cast<int64_t>(seen.offsets.size()));
  write_npy(dir + "/" + kSeenItemsFile, seen.items.data(), static_cast<int64_t>(seen.items.size()));
}

void write_id_map_csv(const std::string& path, const IdMap& ids) {
  std::string buf = "index,id\n";
  for (int32_t j = 0; j < ids.size(); ++j) {
    buf += std::to_string(j);
    buf += ',';
    data_detail::append_csv_field(buf, ids.id(j));
    buf += '\n';
  }
  write_file_atomic(path, buf);
}

void export_embeddings(TwoTowerModel& model, const IdMap& users, const IdMap& items,
                       const std::string& dir,
                       const std::function<void(int64_t done, int64_t total)>& progress) {
  const int32_t nu = model.user_tower().spec().n_entities, ni = model.item_tower().spec().n_entities;
  TOWERREC_CHECK(nu == users.size() && ni == items.size(), "export: ID maps do not match the model");
  make_directories(dir);
  Backend& be = model.backend();
  const int d = model.out_dim();
  auto dump = [&](const DeviceArray<float>& a, int64_t rows, const char* name) {
    std::vector<float> host(static_cast<size_t>(rows) * d);
    if (!host.empty()) be.to_host(host.data(), a.data(), sizeof(float) * host.size());
    write_npy(dir + "/" + name, host.data(), rows, d);
  };
  {
    DeviceArray<float> U;
    model.embed_all_users(U);
    dump(U, nu, kUserEmbeddingsFile);
  }
  if (progress) progress(nu, int64_t{nu} + ni);
  {
    DeviceArray<float> V;
    model.embed_all_items(V);
    dump(V, ni, kItemEmbeddingsFile);
  }
  if (progress) progress(int64_t{nu} + ni, int64_t{nu} + ni);
  write_id_map_csv(dir + "/" + kUserIdsFile, users);
  write_id_map_csv(dir + "/" + kItemIdsFile, items);
}

}  // namespace towerrec

#include "towerrec/export.h"

#include <cstring>

#include "host/data/text.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {

void write_npy(const std::string& path, const float* data, int64_t rows, int64_t cols) {
  TOWERREC_CHECK(rows >= 0 && cols >= 0, "npy: negative shape");
  // NPY 1.0: magic, version, u16 header length, then a Python dict literal
  // padded with spaces and ended by '\n' so the data starts at a multiple of 64.
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                     std::to_string(rows) + ", " + std::to_string(cols) + "), }";
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
  static_assert(sizeof(float) == 4, "float32 expected");
  uint32_t probe = 1;
  char little = 0;
  std::memcpy(&little, &probe, 1);
  TOWERREC_CHECK(little == 1, "npy: big-endian hosts are not supported");
  AtomicFile f(path);
  f.write(head);
  const size_t bytes = static_cast<size_t>(rows) * static_cast<size_t>(cols) * sizeof(float);
  if (bytes) f.write(data, bytes);
  f.commit();
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
                       const std::string& dir) {
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
  {
    DeviceArray<float> V;
    model.embed_all_items(V);
    dump(V, ni, kItemEmbeddingsFile);
  }
  write_id_map_csv(dir + "/" + kUserIdsFile, users);
  write_id_map_csv(dir + "/" + kItemIdsFile, items);
}

}  // namespace towerrec

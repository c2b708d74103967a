// Embedding export (.npy header and data against embed_all) and the
// checkpoint's seen section.
#include <gtest/gtest.h>

#include <cstring>
#include <regex>

#include "tests/test_util.h"
#include "towerrec/checkpoint.h"
#include "towerrec/error.h"
#include "towerrec/export.h"
#include "towerrec/io.h"

namespace towerrec {
namespace {

// A minimal reader of NPY 1.0 float32 files, independent of the writer.
struct Npy {
  std::string descr;
  bool fortran_order = true;
  int64_t rows = -1, cols = -1;
  std::vector<float> data;
};

Npy read_npy(const std::string& path) {
  const std::string b = read_file(path);
  Npy n;
  EXPECT_GE(b.size(), 10u);
  EXPECT_EQ(b.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(b[6], '\x01');
  EXPECT_EQ(b[7], '\x00');
  const size_t hl = static_cast<unsigned char>(b[8]) | (static_cast<size_t>(static_cast<unsigned char>(b[9])) << 8);
  EXPECT_EQ((10 + hl) % 64, 0u) << "data must start 64-byte aligned";
  const std::string h = b.substr(10, hl);
  EXPECT_EQ(h.back(), '\n');
  std::smatch m;
  if (std::regex_search(h, m, std::regex("'descr': '([^']*)'"))) n.descr = m[1];
  if (std::regex_search(h, m, std::regex("'fortran_order': (True|False)"))) n.fortran_order = m[1] == "True";
  if (std::regex_search(h, m, std::regex("'shape': \\((\\d+), (\\d+)\\)"))) {
    n.rows = std::stoll(m[1]);
    n.cols = std::stoll(m[2]);
  }
  const size_t bytes = b.size() - 10 - hl;
  EXPECT_EQ(bytes, static_cast<size_t>(std::max<int64_t>(n.rows, 0) * std::max<int64_t>(n.cols, 0)) * 4);
  n.data.resize(bytes / 4);
  if (!n.data.empty()) std::memcpy(n.data.data(), b.data() + 10 + hl, n.data.size() * 4);  // data() may be null when empty
  return n;
}

std::string temp_dir(const std::string& name) { return ::testing::TempDir() + "/towerrec_export_" + name; }

TEST(Export, NpyHeaderParsesAndDataEqualsEmbedAll) {
  auto be = make_cpu_backend(1);
  IdMap users, items;
  for (int u = 0; u < 37; ++u) users.add("user," + std::to_string(u));  // a comma: quoted in CSV
  for (int i = 0; i < 23; ++i) items.add("i" + std::to_string(i));
  TowerConfig tc;
  tc.id_dim = 8;
  tc.hidden = {16};
  tc.out_dim = 5;
  TwoTowerModel model(*be, tc, make_input_spec(EntityFeatures{}, 37, false),
                      make_input_spec(EntityFeatures{}, 23, false), 3);
  const std::string dir = temp_dir("npy");
  export_embeddings(model, users, items, dir);
  DeviceArray<float> U, V;
  model.embed_all_users(U);
  model.embed_all_items(V);
  const Npy nu = read_npy(dir + "/" + kUserEmbeddingsFile);
  const Npy ni = read_npy(dir + "/" + kItemEmbeddingsFile);
  EXPECT_EQ(nu.descr, "<f4");
  EXPECT_FALSE(nu.fortran_order);
  EXPECT_EQ(nu.rows, 37);
  EXPECT_EQ(nu.cols, 5);
  EXPECT_EQ(ni.rows, 23);
  EXPECT_EQ(ni.cols, 5);
  EXPECT_EQ(nu.data, testing::download(*be, U));
  EXPECT_EQ(ni.data, testing::download(*be, V));
  const std::string ids = read_file(dir + "/" + kUserIdsFile);
  EXPECT_EQ(ids.substr(0, 29), "index,id\n0,\"user,0\"\n1,\"user,1");
  EXPECT_NE(read_file(dir + "/" + kItemIdsFile).find("\n22,i22\n"), std::string::npos);
}

TEST(Export, EmptyAndWideShapes) {
  const std::string dir = temp_dir("shapes");
  make_directories(dir);
  write_npy(dir + "/empty.npy", nullptr, 0, 3);
  const Npy e = read_npy(dir + "/empty.npy");
  EXPECT_EQ(e.rows, 0);
  EXPECT_EQ(e.cols, 3);
  std::vector<float> big(2 * 1000);
  for (size_t j = 0; j < big.size(); ++j) big[j] = static_cast<float>(j) * 0.5f;
  write_npy(dir + "/wide.npy", big.data(), 2, 1000);
  const Npy w = read_npy(dir + "/wide.npy");
  EXPECT_EQ(w.rows, 2);
  EXPECT_EQ(w.cols, 1000);
  EXPECT_EQ(w.data, big);
}

// Seen items as CSR: a 1-D int64 offsets vector and a 1-D int32 items vector.
TEST(Export, SeenItemsAsCsrOfTwoVectors) {
  Interactions x;
  x.user = {2, 0, 2, 2, 0};
  x.item = {4, 1, 0, 4, 3};
  const UserItems seen = group_by_user(x, 4);  // user 1 and 3: none
  const std::string dir = temp_dir("seen");
  export_seen(seen, dir);
  auto raw = [&](const std::string& name, std::string& header) {
    const std::string b = read_file(dir + "/" + name);
    const size_t hl = static_cast<unsigned char>(b[8]) | (static_cast<size_t>(static_cast<unsigned char>(b[9])) << 8);
    EXPECT_EQ((10 + hl) % 64, 0u);
    header = b.substr(10, hl);
    return b.substr(10 + hl);
  };
  std::string h;
  const std::string off = raw(kSeenOffsetsFile, h);
  EXPECT_NE(h.find("'descr': '<i8', 'fortran_order': False, 'shape': (5,)"), std::string::npos) << h;
  std::vector<int64_t> o(off.size() / 8);
  std::memcpy(o.data(), off.data(), off.size());
  EXPECT_EQ(o, (std::vector<int64_t>{0, 2, 2, 4, 4}));
  const std::string it = raw(kSeenItemsFile, h);
  EXPECT_NE(h.find("'descr': '<i4', 'fortran_order': False, 'shape': (4,)"), std::string::npos) << h;
  std::vector<int32_t> v(it.size() / 4);
  std::memcpy(v.data(), it.data(), it.size());
  EXPECT_EQ(v, (std::vector<int32_t>{1, 3, 0, 4}));
}

Checkpoint tiny_checkpoint() {
  Checkpoint ck;
  ck.config_json = "{}";
  for (const char* u : {"a", "b", "c"}) ck.users.add(u);
  for (const char* i : {"x", "y"}) ck.items.add(i);
  ck.state.names = {"t"};
  ck.state.tensors = {{1.0f, 2.0f}};
  return ck;
}

TEST(CheckpointSeen, RoundTripsAndIsOptional) {
  const std::string path = temp_dir("seen.ckpt");
  Checkpoint ck = tiny_checkpoint();
  save_checkpoint(path, ck);
  EXPECT_FALSE(load_checkpoint(path).has_seen());
  ck.seen.offsets = {0, 2, 2, 3};
  ck.seen.items = {0, 1, 1};
  save_checkpoint(path, ck);
  const Checkpoint b = load_checkpoint(path);
  ASSERT_TRUE(b.has_seen());
  EXPECT_EQ(b.seen.offsets, ck.seen.offsets);
  EXPECT_EQ(b.seen.items, ck.seen.items);
  // Lists that do not fit the users are refused when writing.
  ck.seen.offsets = {0, 1};
  ck.seen.items = {0};
  EXPECT_THROW(save_checkpoint(path, ck), Error);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace towerrec

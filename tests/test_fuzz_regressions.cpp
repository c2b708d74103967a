// Regression tests for what the fuzz targets (tests/fuzz/) found. Each test
// names its input in tests/fuzz/corpus/<target>/, where the same input stays
// in the seed corpus; under the sanitizer build (CI's build-asan) the memory
// errors among them fail loudly again if they return.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/test_util.h"
#include "towerrec/checkpoint.h"
#include "towerrec/config.h"
#include "towerrec/data.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {
namespace {

class FuzzRegression : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = ::testing::TempDir() + "towerrec_fuzzreg_XXXXXX";
    ASSERT_NE(::mkdtemp(t.data()), nullptr);
    dir_ = t;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string file(const std::string& name, const std::string& text) {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  std::string dir_;
};

// The InputError a call throws (fails the test when it throws nothing or another type).
template <typename F>
InputError input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected an InputError, got: " << e.what();
    return InputError("", 0, "", "");
  }
  ADD_FAILURE() << "expected an InputError, nothing was thrown";
  return InputError("", 0, "", "");
}

// fuzz_movielens_100k/uitem_few_fields.txt: a u.item row with 6..23 fields
// named the missing field from a 6-entry table by the field count: read past
// the table (heap-buffer-overflow).
TEST_F(FuzzRegression, MovieLens100kItemRowWithTooFewFields) {
  file("u.data", "1\t10\t4\t100\n");
  file("u.item", "10|Title (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|0\n");
  const InputError e = input_error([&] { load_movielens_100k(dir_); });
  EXPECT_EQ(e.line(), 1);
  EXPECT_EQ(e.field(), "field 15");
  EXPECT_NE(std::string(e.what()).find("u.item:1: field 'field 15': missing column"), std::string::npos)
      << e.what();
}

// fuzz_movielens_dat/rating_beyond_float.txt: a rating that is a finite double
// but not a finite float became an infinite rating.
TEST_F(FuzzRegression, RatingBeyondFloatRangeIsRefused) {
  file("ratings.dat", "1::5::1e39::978300760\n");
  const InputError e = input_error([&] { load_movielens_dat(dir_); });
  EXPECT_EQ(e.line(), 1);
  EXPECT_EQ(e.field(), "rating");
  const std::string csv = file("x.csv", "user,item,rating\nu,i,4\nu,j,-3.5e38\n");
  IdMap users, items;
  const InputError c = input_error([&] { read_interactions_csv(csv, users, items); });
  EXPECT_EQ(c.line(), 3);
  EXPECT_EQ(c.field(), "rating");
}

// fuzz_config/number_overflow.json: a number beyond the double range made the
// JSON library throw an exception apply_json did not turn into an InputError.
TEST_F(FuzzRegression, ConfigNumberOverflowIsAnInputError) {
  Config cfg;
  const InputError e = input_error([&] { apply_json(cfg, "{\"lr\": 1111111104E5511104}", "c.json"); });
  EXPECT_EQ(e.file(), "c.json");
  EXPECT_NE(std::string(e.what()).find("invalid JSON"), std::string::npos) << e.what();
}

// fuzz_config/negative_zero.json: -0 was written back as -0, which JSON reads
// as the integer 0, so the saved configuration did not read back the same.
TEST_F(FuzzRegression, ConfigNegativeZeroRoundTrips) {
  Config a;
  apply_json(a, "{\"rating-threshold\": -0e30}", "a.json");
  const std::string once = to_json(a);
  Config b;
  apply_json(b, once, "again");
  EXPECT_EQ(to_json(b), once);
}

// fuzz_checkpoint/empty_vector_null_memcpy.ckpt: reading an empty array
// passed a null pointer to memcpy (undefined behaviour, reported by UBSan).
TEST_F(FuzzRegression, CheckpointWithEmptyArraysRoundTrips) {
  Checkpoint ck;
  ck.config_json = "{}";
  ck.users.add("u");
  ck.items.add("i");
  ck.state.names = {"empty", "one"};
  ck.state.tensors = {{}, {1.0f}};
  const std::string p = dir_ + "/a.ckpt";
  save_checkpoint(p, ck);
  const Checkpoint back = load_checkpoint(p);
  EXPECT_EQ(back.state.tensors, ck.state.tensors);
  EXPECT_EQ(back.user_features.dense.size(), 0u);
}

// fuzz_checkpoint/seen_offsets_past_items.ckpt: seen offsets that rise past
// the item count and fall back were checked one user at a time, so the
// sortedness check read past the items (heap-buffer-overflow).
TEST_F(FuzzRegression, CheckpointSeenOffsetsPastTheItemsAreRefused) {
  Checkpoint ck;
  ck.config_json = "{}";
  ck.users.add("a");
  ck.users.add("b");
  ck.items.add("i");
  ck.items.add("j");
  ck.state.names = {"w"};
  ck.state.tensors = {{1.0f}};
  ck.seen.offsets = {0, 50, 2};
  ck.seen.items = {0, 1};
  const std::string p = dir_ + "/b.ckpt";
  save_checkpoint(p, ck);  // the writer does not validate; the reader must
  try {
    load_checkpoint(p);
    FAIL() << "loaded a checkpoint with inconsistent seen offsets";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seen offsets decrease"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// Not a fuzz finding, but the same reader: feature tables whose row count
// disagrees with the ID maps would index out of range when the model is built.
TEST_F(FuzzRegression, CheckpointFeatureRowsMustMatchTheIds) {
  Checkpoint ck;
  ck.config_json = "{}";
  ck.users.add("a");
  ck.items.add("i");
  ck.state.names = {"w"};
  ck.state.tensors = {{1.0f}};
  ck.user_features.n_entities = 3;
  ck.user_features.dense_names = {"x"};
  ck.user_features.dense = {0, 0, 0};
  ck.user_features.dense_min = {0};
  ck.user_features.dense_max = {1};
  const std::string p = dir_ + "/c.ckpt";
  save_checkpoint(p, ck);
  EXPECT_THROW(load_checkpoint(p), Error);
}

// The seed corpus itself: every file is there, and those of the file readers
// are refused or read without a crash (the fuzz targets check more).
TEST_F(FuzzRegression, SeedCorpusIsPresent) {
  const std::string root = testing::fuzz_corpus_dir() + "/";
  for (const char* t : {"fuzz_interactions_csv", "fuzz_features_csv", "fuzz_movielens_100k",
                        "fuzz_movielens_dat", "fuzz_config", "fuzz_checkpoint"}) {
    ASSERT_TRUE(is_directory(root + t)) << t;
    EXPECT_FALSE(std::filesystem::is_empty(root + t)) << t;
  }
  for (const auto& e : std::filesystem::directory_iterator(root + "fuzz_interactions_csv")) {
    IdMap users, items;
    try {
      read_interactions_csv(e.path().string(), users, items);
    } catch (const Error&) {
    }
  }
  const Checkpoint ck = load_checkpoint(root + "fuzz_checkpoint/small.ckpt");
  EXPECT_EQ(ck.step, 3);
  EXPECT_EQ(ck.users.size(), 2);
}

}  // namespace
}  // namespace towerrec

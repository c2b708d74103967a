// Data readers, feature building and the synthetic generator.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "tests/test_util.h"
#include "towerrec/data.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {
namespace {

// A fresh temporary directory per test.
class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "towerrec_data_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  // Writes `contents` to dir/name and returns the path.
  std::string put(const std::string& name, const std::string& contents) {
    const std::string p = dir_ + "/" + name;
    std::filesystem::create_directories(std::filesystem::path(p).parent_path());
    write_file_atomic(p, contents);
    return p;
  }
  std::string dir_;
};

// Runs f, expecting an InputError naming `file`, `line` and `field` (field may be
// "" to skip the check) in both its accessors and its message.
void expect_input_error(const std::function<void()>& f, const std::string& file, int64_t line,
                        const std::string& field) {
  try {
    f();
    ADD_FAILURE() << "no InputError for " << file;
  } catch (const InputError& e) {
    const std::string msg = e.what();
    SCOPED_TRACE(msg);
    EXPECT_EQ(e.file(), file);
    EXPECT_NE(msg.find(file), std::string::npos);
    EXPECT_EQ(e.line(), line);
    if (line > 0) {
      EXPECT_NE(msg.find(file + ":" + std::to_string(line)), std::string::npos);
    }
    if (!field.empty()) {
      EXPECT_EQ(e.field(), field);
      EXPECT_NE(msg.find("'" + field + "'"), std::string::npos);
    }
  }
}

const CategoricalField* field(const EntityFeatures& f, const std::string& name) {
  for (const auto& c : f.categorical)
    if (c.name == name) return &c;
  return nullptr;
}

// The bag of entity e in a categorical field, as strings.
std::vector<std::string> bag(const CategoricalField& c, int32_t e) {
  std::vector<std::string> out;
  for (int32_t k = c.offsets[static_cast<size_t>(e)]; k < c.offsets[static_cast<size_t>(e) + 1]; ++k)
    out.push_back(c.vocab.id(c.values[static_cast<size_t>(k)]));
  return out;
}

float dense(const EntityFeatures& f, int32_t e, const std::string& name) {
  for (int k = 0; k < f.dense_dim(); ++k)
    if (f.dense_names[static_cast<size_t>(k)] == name)
      return f.dense[static_cast<size_t>(e) * static_cast<size_t>(f.dense_dim()) + static_cast<size_t>(k)];
  ADD_FAILURE() << "no dense column " << name;
  return NAN;
}

void check_feature_shapes(const EntityFeatures& f, int32_t n) {
  EXPECT_EQ(f.n_entities, n);
  EXPECT_EQ(f.dense.size(), static_cast<size_t>(n) * static_cast<size_t>(f.dense_dim()));
  EXPECT_EQ(f.dense_min.size(), static_cast<size_t>(f.dense_dim()));
  EXPECT_EQ(f.dense_max.size(), static_cast<size_t>(f.dense_dim()));
  for (float v : f.dense) {
    EXPECT_GE(v, 0.0f);
    EXPECT_LE(v, 1.0f);
  }
  for (const auto& c : f.categorical) {
    ASSERT_EQ(c.offsets.size(), static_cast<size_t>(n) + 1) << c.name;
    EXPECT_EQ(c.offsets.front(), 0);
    EXPECT_EQ(static_cast<size_t>(c.offsets.back()), c.values.size());
    for (size_t e = 0; e < static_cast<size_t>(n); ++e) EXPECT_LE(c.offsets[e], c.offsets[e + 1]);
    for (int32_t v : c.values) {
      EXPECT_GE(v, 0);
      EXPECT_LT(v, c.vocab.size());
    }
  }
}

TEST(IdMap, AddFind) {
  IdMap m;
  EXPECT_EQ(m.add("b"), 0);
  EXPECT_EQ(m.add(std::string("a")), 1);
  EXPECT_EQ(m.add(std::string_view("b")), 0);
  EXPECT_EQ(m.size(), 2);
  EXPECT_EQ(m.find("a"), 1);
  EXPECT_EQ(m.find(std::string("zz")), -1);
  EXPECT_EQ(m.id(0), "b");
  EXPECT_EQ(m.ids(), (std::vector<std::string>{"b", "a"}));
}

TEST_F(DataTest, CsvBasic) {
  const std::string p = put("x.csv", "user,item,rating,timestamp\nu1,i1,4,100\nu2,i1,2.5,101\nu1,i2,5,99\n");
  Dataset ds = load_csv(p, "", "");
  EXPECT_EQ(ds.users.ids(), (std::vector<std::string>{"u1", "u2"}));
  EXPECT_EQ(ds.items.ids(), (std::vector<std::string>{"i1", "i2"}));
  EXPECT_EQ(ds.interactions.user, (std::vector<int32_t>{0, 1, 0}));
  EXPECT_EQ(ds.interactions.item, (std::vector<int32_t>{0, 0, 1}));
  EXPECT_EQ(ds.interactions.rating, (std::vector<float>{4, 2.5f, 5}));
  EXPECT_EQ(ds.interactions.timestamp, (std::vector<int64_t>{100, 101, 99}));
  EXPECT_TRUE(ds.user_features.empty());
  EXPECT_EQ(ds.user_features.n_entities, 2);
}

TEST_F(DataTest, CsvOptionalColumnsAndOrder) {
  // Columns in any order, extra columns ignored, no rating, no timestamp.
  const std::string p = put("x.csv", "item,extra,user\n7,zz,a\n8,yy,b\n");
  Dataset ds = load_csv(p, "", "");
  EXPECT_EQ(ds.interactions.size(), 2);
  EXPECT_TRUE(ds.interactions.rating.empty());
  EXPECT_TRUE(ds.interactions.timestamp.empty());
  EXPECT_EQ(ds.users.id(1), "b");
  EXPECT_EQ(ds.items.id(0), "7");
}

TEST_F(DataTest, CsvCrlfBomTrailingBlankLines) {
  const std::string p =
      put("x.csv", "\xEF\xBB\xBFuser,item,rating\r\nu1,i1,4\r\nu2,i2,3\r\n\r\n\n  \n");
  Dataset ds = load_csv(p, "", "");
  EXPECT_EQ(ds.interactions.size(), 2);
  EXPECT_EQ(ds.users.id(0), "u1");
  EXPECT_EQ(ds.items.id(1), "i2");
  EXPECT_EQ(ds.interactions.rating, (std::vector<float>{4, 3}));
}

TEST_F(DataTest, CsvQuotedFields) {
  const std::string p = put("x.csv", "user,item\n\"a,b\",\"say \"\"hi\"\"\"\n");
  Dataset ds = load_csv(p, "", "");
  EXPECT_EQ(ds.users.id(0), "a,b");
  EXPECT_EQ(ds.items.id(0), "say \"hi\"");
}

// The ID rule: opaque strings compared byte for byte after trimming spaces
// and tabs (quoted or not); no numeric normalisation.
TEST_F(DataTest, IdsAreTrimmedOpaqueStrings) {
  const std::string p = put("ids.csv", "user,item\n7,a\n 7 ,a\n\"7\",b\n\" 7\t\",c\n007,a\n+7,a\n-7,a\n");
  Dataset ds = load_csv(p, "", "");
  ASSERT_EQ(ds.users.size(), 4);
  EXPECT_EQ(ds.users.id(0), "7");
  EXPECT_EQ(ds.users.id(1), "007");
  EXPECT_EQ(ds.users.id(2), "+7");
  EXPECT_EQ(ds.users.id(3), "-7");
  EXPECT_EQ(ds.interactions.user, (std::vector<int32_t>{0, 0, 0, 0, 1, 2, 3}));
  // Reading more interactions and features into those maps follows the same rule.
  const std::string q = put("more.csv", "user,item\n\" 007 \",a\n");
  EXPECT_EQ(read_interactions_csv(q, ds.users, ds.items, false).user, (std::vector<int32_t>{1}));
  const std::string f = put("uf.csv", "user,age\n\" 7 \",30\n007,40\n");
  const Dataset with = load_csv(p, f, "");
  ASSERT_EQ(with.user_features.dense_dim(), 1);
  EXPECT_EQ(with.user_features.dense, (std::vector<float>{0, 1, 0, 0}));  // 7: 30, 007: 40 (max)
  expect_input_error([&] { read_interactions_csv(put("bad.csv", "user,item\n\"  \",a\n"), ds.users, ds.items); },
                     dir_ + "/bad.csv", 2, "user");
}

// RFC 4180: quoted fields hold delimiters, doubled quotes and line breaks; the
// line numbers of errors after such a record still name the physical line.
TEST_F(DataTest, CsvQuotedFieldsAcrossLines) {
  const std::string p = put("q.csv",
                            "user,item,rating\n"
                            "\"multi\nline\",\"say \"\"hi\"\"\",4\n"
                            "\"u2\",\"a,b\",\"3\"\r\n"
                            "\n"
                            "u3,\"\",5\n");
  IdMap users, items;
  expect_input_error([&] { read_interactions_csv(p, users, items); }, p, 6, "item");  // empty ID
  put("q.csv", "user,item,rating\n\"multi\nline\",\"say \"\"hi\"\"\",4\n\"u2\",\"a,b\",\"3\"\r\n\nu3,i,five\n");
  expect_input_error([&] { read_interactions_csv(p, users, items); }, p, 6, "rating");
  put("q.csv", "user,item,rating\n\"multi\nline\",\"say \"\"hi\"\"\",4\n\"u2\",\"a,b\",\"3\"\r\n");
  IdMap u2, i2;
  const Interactions x = read_interactions_csv(p, u2, i2);
  ASSERT_EQ(x.size(), 2);
  EXPECT_EQ(u2.id(0), "multi\nline");
  EXPECT_EQ(i2.id(0), "say \"hi\"");
  EXPECT_EQ(i2.id(1), "a,b");
  EXPECT_EQ(x.rating, (std::vector<float>{4, 3}));
  // Written back (quoted where needed) and read again: the same IDs.
  const std::string back = dir_ + "/back.csv";
  write_interactions_csv(back, x, u2, i2);
  IdMap u3, i3;
  read_interactions_csv(back, u3, i3);
  EXPECT_EQ(u3.ids(), u2.ids());
  EXPECT_EQ(i3.ids(), i2.ids());
  // An unterminated quote names the line where the field starts.
  put("bad.csv", "user,item\nu1,i1\nu2,\"i2\nu3,i3\n");
  expect_input_error([&] { read_interactions_csv(dir_ + "/bad.csv", u2, i2); }, dir_ + "/bad.csv", 3, "");
}

TEST_F(DataTest, CsvOtherDelimiters) {
  LoadOptions tab;
  tab.delimiter = '\t';
  const std::string p = put("t.tsv", "user\titem\trating\n u1 \t\"i,1\"\t4\nu2\t\t3\n");
  expect_input_error([&] { load_csv(p, "", "", tab); }, p, 3, "item");
  put("t.tsv", "user\titem\trating\n u1 \t\"i,1\"\t4\nu2\ti2\t3\n");
  const std::string f = put("f.tsv", "item\tgenre\ni,1\tA|B\ni2\tC\n");
  const Dataset ds = load_csv(p, "", f, tab);
  EXPECT_EQ(ds.users.id(0), "u1");
  EXPECT_EQ(ds.items.id(0), "i,1");
  ASSERT_EQ(ds.item_features.categorical.size(), 1u);
  EXPECT_EQ(bag(ds.item_features.categorical[0], 0), (std::vector<std::string>{"A", "B"}));
  LoadOptions semi;
  semi.delimiter = ';';
  const std::string q = put("s.csv", "user;item\na;\"x;y\"\n");
  EXPECT_EQ(load_csv(q, "", "", semi).items.id(0), "x;y");
  // The default comma reads the semicolon file as one column named "user;item".
  expect_input_error([&] { load_csv(q, "", ""); }, q, 1, "user");
}

TEST_F(DataTest, GzipInputsAreReadLikePlainOnes) {
  const std::string plain = "user,item,rating\nu1,i1,4\nu2,\"i\n2\",3\n";
  const std::string gz = dir_ + "/x.csv.gz";
  {
    gzFile g = gzopen(gz.c_str(), "wb");
    ASSERT_NE(g, nullptr);
    gzwrite(g, plain.data(), static_cast<unsigned>(plain.size()));
    gzclose(g);
  }
  const Dataset a = load_auto(gz), b = load_auto(put("x.csv", plain));
  EXPECT_EQ(a.users.ids(), b.users.ids());
  EXPECT_EQ(a.items.ids(), b.items.ids());
  EXPECT_EQ(a.interactions.rating, b.interactions.rating);
  // Truncated gzip data is refused, naming the file.
  std::string bytes = read_file(gz);
  bytes.resize(bytes.size() - 6);
  const std::string cut = put("cut.csv.gz", bytes);
  expect_input_error([&] { load_auto(cut); }, cut, 0, "");
  // Errors inside compressed data name the (decompressed) line and field.
  {
    gzFile g = gzopen(gz.c_str(), "wb");
    const std::string bad = "user,item,rating\nu1,i1,4\nu2,i2,x\n";
    gzwrite(g, bad.data(), static_cast<unsigned>(bad.size()));
    gzclose(g);
  }
  expect_input_error([&] { load_auto(gz); }, gz, 3, "rating");
}

TEST_F(DataTest, CsvMissingColumn) {
  const std::string p = put("x.csv", "user,item,rating\nu1,i1,4\nu2,i2\n");
  expect_input_error([&] { load_csv(p, "", ""); }, p, 3, "rating");
  const std::string q = put("y.csv", "user,item,rating\nu1,i1,4\n\nu2\n");
  expect_input_error([&] { load_csv(q, "", ""); }, q, 4, "item");
}

TEST_F(DataTest, CsvHeaderMissingRequiredColumn) {
  const std::string p = put("x.csv", "user,rating\nu1,4\n");
  expect_input_error([&] { load_csv(p, "", ""); }, p, 1, "item");
  // No header at all: the first row is read as one and lacks the columns.
  const std::string q = put("y.csv", "1,2,3\n");
  expect_input_error([&] { load_csv(q, "", ""); }, q, 1, "user");
}

TEST_F(DataTest, CsvNonNumericRatingAndTimestamp) {
  const std::string p = put("x.csv", "user,item,rating\nu1,i1,4\nu1,i2,good\n");
  expect_input_error([&] { load_csv(p, "", ""); }, p, 3, "rating");
  const std::string q = put("y.csv", "user,item,rating\nu1,i1,nan\n");
  expect_input_error([&] { load_csv(q, "", ""); }, q, 2, "rating");
  const std::string r = put("z.csv", "user,item,timestamp\nu1,i1,12\nu1,i2,12x\n");
  expect_input_error([&] { load_csv(r, "", ""); }, r, 3, "timestamp");
}

TEST_F(DataTest, CsvEmptyFile) {
  const std::string p = put("x.csv", "");
  expect_input_error([&] { load_csv(p, "", ""); }, p, 0, "");
  const std::string b = put("b.csv", "\n\r\n");
  expect_input_error([&] { load_csv(b, "", ""); }, b, 0, "");
  // Header only: a valid (empty) interaction file, but not a dataset.
  const std::string q = put("y.csv", "user,item\n");
  IdMap u, i;
  EXPECT_EQ(read_interactions_csv(q, u, i).size(), 0);
  expect_input_error([&] { load_csv(q, "", ""); }, q, 1, "");
}

TEST_F(DataTest, CsvExtraField) {
  const std::string p = put("x.csv", "user,item\nu1,i1\nu1,i2,5\n");
  expect_input_error([&] { load_csv(p, "", ""); }, p, 3, "");
}

TEST_F(DataTest, ReadInteractionsKnownIdsOnly) {
  const std::string p = put("x.csv", "user,item\nu1,i1\nu2,i2\n");
  IdMap users, items;
  users.add("u1");
  items.add("i1");
  items.add("i2");
  expect_input_error([&] { read_interactions_csv(p, users, items, false); }, p, 3, "user");
  EXPECT_EQ(users.size(), 1);
  Interactions x = read_interactions_csv(p, users, items, true);
  EXPECT_EQ(users.size(), 2);
  EXPECT_EQ(x.item, (std::vector<int32_t>{0, 1}));
}

TEST_F(DataTest, FeaturesDenseOneHotMultiHot) {
  const std::string inter = put("i.csv", "user,item\na,x\nb,x\nc,y\nd,y\n");
  // d has no row. b's age is empty (-> column minimum). 'const' is constant.
  const std::string users = put("u.csv",
                                "id,age,const,city,tags\n"
                                "c,30,5,paris,x|y\n"
                                "a,10,5,rome,z\n"
                                "b,,5,paris,\n");
  const std::string items = put("it.csv", "item,price\ny,2.5\nx,-1.5e0\n");
  Dataset ds = load_csv(inter, users, items);
  const EntityFeatures& f = ds.user_features;
  check_feature_shapes(f, 4);
  ASSERT_EQ(f.dense_names, (std::vector<std::string>{"age", "const"}));
  EXPECT_FLOAT_EQ(f.dense_min[0], 10.0f);
  EXPECT_FLOAT_EQ(f.dense_max[0], 30.0f);
  EXPECT_FLOAT_EQ(f.dense_min[1], 5.0f);
  EXPECT_FLOAT_EQ(f.dense_max[1], 5.0f);
  const int32_t a = ds.users.find("a"), b = ds.users.find("b"), c = ds.users.find("c"),
                d = ds.users.find("d");
  EXPECT_FLOAT_EQ(dense(f, a, "age"), 0.0f);
  EXPECT_FLOAT_EQ(dense(f, c, "age"), 1.0f);
  EXPECT_FLOAT_EQ(dense(f, b, "age"), 0.0f);  // empty cell
  EXPECT_FLOAT_EQ(dense(f, d, "age"), 0.0f);  // no row
  EXPECT_FLOAT_EQ(dense(f, c, "const"), 0.0f);
  const CategoricalField* city = field(f, "city");
  const CategoricalField* tags = field(f, "tags");
  ASSERT_TRUE(city && tags);
  EXPECT_EQ(city->vocab.ids(), (std::vector<std::string>{"paris", "rome"}));
  EXPECT_EQ(bag(*city, a), (std::vector<std::string>{"rome"}));
  EXPECT_EQ(bag(*city, b), (std::vector<std::string>{"paris"}));
  EXPECT_TRUE(bag(*city, d).empty());
  EXPECT_EQ(tags->vocab.size(), 3);
  EXPECT_EQ(bag(*tags, c), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(bag(*tags, a), (std::vector<std::string>{"z"}));
  EXPECT_TRUE(bag(*tags, b).empty());
  EXPECT_TRUE(bag(*tags, d).empty());
  const EntityFeatures& g = ds.item_features;
  check_feature_shapes(g, 2);
  EXPECT_FLOAT_EQ(g.dense_min[0], -1.5f);
  EXPECT_FLOAT_EQ(g.dense_max[0], 2.5f);
  EXPECT_FLOAT_EQ(dense(g, ds.items.find("x"), "price"), 0.0f);
  EXPECT_FLOAT_EQ(dense(g, ds.items.find("y"), "price"), 1.0f);
}

TEST_F(DataTest, FeaturesMinMaxValues) {
  std::string inter = "user,item\n", users = "user,v\n";
  const std::vector<double> v = {3, -1, 7, 0.5, 7, -1};
  for (size_t k = 0; k < v.size(); ++k) {
    inter += "u" + std::to_string(k) + ",i\n";
    users += "u" + std::to_string(k) + "," + std::to_string(v[k]) + "\n";
  }
  Dataset ds = load_csv(put("i.csv", inter), put("u.csv", users), "");
  for (size_t k = 0; k < v.size(); ++k)
    EXPECT_NEAR(ds.user_features.dense[k], (v[k] + 1) / 8.0, 1e-6) << k;
}

TEST_F(DataTest, MultiHotDuplicatesAndEmptyParts) {
  const std::string inter = put("i.csv", "user,item\na,x\n");
  const std::string users = put("u.csv", "user,g\na,b||c|b| \n");
  Dataset ds = load_csv(inter, users, "");
  const CategoricalField* g = field(ds.user_features, "g");
  ASSERT_TRUE(g);
  EXPECT_EQ(bag(*g, 0), (std::vector<std::string>{"b", "c"}));
}

TEST_F(DataTest, FeatureRowForUnknownId) {
  const std::string inter = put("i.csv", "user,item\na,x\n");
  const std::string users = put("u.csv", "uid,age\na,3\nghost,4\n");
  expect_input_error([&] { load_csv(inter, users, ""); }, users, 3, "uid");
}

TEST_F(DataTest, FeatureNanInf) {
  const std::string inter = put("i.csv", "user,item\na,x\nb,x\nc,x\n");
  for (const char* bad : {"nan", "NaN", "inf", "-inf", "Infinity", "1e999"}) {
    SCOPED_TRACE(bad);
    const std::string users =
        put("u.csv", std::string("user,city,score\na,rome,1\nb,oslo,") + bad + "\nc,rome,2\n");
    expect_input_error([&] { load_csv(inter, users, ""); }, users, 3, "score");
  }
}

TEST_F(DataTest, FeatureDuplicateKey) {
  const std::string inter = put("i.csv", "user,item\na,x\nb,x\n");
  const std::string users = put("u.csv", "user,age\na,1\nb,2\n\na,3\n");
  expect_input_error([&] { load_csv(inter, users, ""); }, users, 5, "user");
}

TEST_F(DataTest, FeatureMissingColumnAndEmpty) {
  const std::string inter = put("i.csv", "user,item\na,x\nb,x\n");
  const std::string users = put("u.csv", "user,age,city\na,1,x\nb,2\n");
  expect_input_error([&] { load_csv(inter, users, ""); }, users, 3, "city");
  const std::string empty = put("e.csv", "");
  expect_input_error([&] { load_csv(inter, empty, ""); }, empty, 0, "");
  // A header alone is fine: nobody has a row.
  Dataset ds = load_csv(inter, put("h.csv", "user,age\n"), "");
  EXPECT_EQ(ds.user_features.dense, (std::vector<float>{0, 0}));
}

TEST_F(DataTest, FeaturesCanBeSkipped) {
  const std::string inter = put("i.csv", "user,item\na,x\n");
  const std::string users = put("u.csv", "user,age\nghost,1\n");  // would be an error
  LoadOptions opt;
  opt.features = false;
  Dataset ds = load_csv(inter, users, "", opt);
  EXPECT_TRUE(ds.user_features.empty());
}

TEST_F(DataTest, WriteReadRoundTrip) {
  Dataset ds = load_csv(put("i.csv",
                            "user,item,rating,timestamp\n"
                            "alice,\"m,1\",4.5,1700000000123\nbob,m2,0.1,-5\nalice,m2,3,7\n"),
                        "", "");
  const std::string out = dir_ + "/out.csv";
  write_interactions_csv(out, ds.interactions, ds.users, ds.items);
  EXPECT_EQ(read_file(out).substr(0, 32), "user,item,rating,timestamp\nalice");
  IdMap users = ds.users, items = ds.items;
  Interactions back = read_interactions_csv(out, users, items, false);
  EXPECT_EQ(back.user, ds.interactions.user);
  EXPECT_EQ(back.item, ds.interactions.item);
  EXPECT_EQ(back.rating, ds.interactions.rating);
  EXPECT_EQ(back.timestamp, ds.interactions.timestamp);
  EXPECT_EQ(users.size(), ds.users.size());
  EXPECT_EQ(items.id(0), "m,1");

  // Only the columns present are written.
  Interactions bare;
  bare.user = {1, 0};
  bare.item = {0, 0};
  write_interactions_csv(out, bare, ds.users, ds.items);
  EXPECT_EQ(read_file(out), "user,item\nbob,\"m,1\"\nalice,\"m,1\"\n");
  EXPECT_FALSE(file_exists(out + ".tmp." + std::to_string(::getpid())));
}

TEST_F(DataTest, RatingThreshold) {
  const std::string p = put("x.csv", "user,item,rating,timestamp\na,x,1,1\nb,y,4,2\na,z,5,3\nc,x,3.5,4\n");
  LoadOptions opt;
  opt.rating_threshold = 4;
  Dataset ds = load_csv(p, "", "", opt);
  EXPECT_EQ(ds.interactions.size(), 2);
  EXPECT_EQ(ds.interactions.rating, (std::vector<float>{4, 5}));
  EXPECT_EQ(ds.interactions.timestamp, (std::vector<int64_t>{2, 3}));
  // ID maps cover every entity of the file, positives or not.
  EXPECT_EQ(ds.users.size(), 3);
  EXPECT_EQ(ds.items.size(), 3);
  opt.rating_threshold = NAN;
  EXPECT_EQ(load_csv(p, "", "", opt).interactions.size(), 4);
}

// ---- MovieLens ----------------------------------------------------------------------------

TEST_F(DataTest, MovieLens100kSmall) {
  put("ml/u.data", "1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t20\t1\t881250951\n\n");
  put("ml/u.user", "1|24|M|technician|85711\n2|53|F|other|T8H1N\n");
  std::string flags0 = "|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0";
  std::string flags1 = "|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0";
  put("ml/u.item", "10|Caf\xe9 Society (1995)|01-Jan-1995||http://x" + flags1 + "\n" +
                       "20|unknown||||" + flags0 + "\r\n");
  const std::string d = dir_ + "/ml";
  Dataset ds = load_movielens_100k(d);
  EXPECT_EQ(ds.users.size(), 2);
  EXPECT_EQ(ds.items.size(), 2);
  EXPECT_EQ(ds.interactions.size(), 3);
  check_feature_shapes(ds.user_features, 2);
  check_feature_shapes(ds.item_features, 2);
  EXPECT_EQ(ds.user_features.dense_names, (std::vector<std::string>{"age"}));
  EXPECT_EQ(bag(*field(ds.user_features, "zip_prefix"), 1), (std::vector<std::string>{"T"}));
  EXPECT_EQ(bag(*field(ds.user_features, "gender"), 0), (std::vector<std::string>{"M"}));
  const CategoricalField* g = field(ds.item_features, "genres");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->vocab.size(), 19);  // all genres, named genre0..18 without u.genre
  EXPECT_EQ(bag(*g, 0), (std::vector<std::string>{"genre3", "genre4", "genre5"}));
  EXPECT_EQ(bag(*g, 1), (std::vector<std::string>{"genre0"}));
  EXPECT_FLOAT_EQ(ds.item_features.dense_min[0], 1995.0f);
  EXPECT_FLOAT_EQ(ds.item_features.dense[1], 0.0f);  // empty date -> minimum

  LoadOptions opt;
  opt.rating_threshold = 3;
  EXPECT_EQ(load_movielens_100k(d, opt).interactions.size(), 2);
}

TEST_F(DataTest, MovieLens100kErrors) {
  const std::string d = dir_ + "/ml";
  const std::string data = put("ml/u.data", "1\t10\t5\t881250949\nx7\t10\t3\t881250950\n");
  expect_input_error([&] { load_movielens_100k(d); }, data, 2, "user");
  put("ml/u.data", "1\t10\t5\t881250949\n2\t10\n");
  expect_input_error([&] { load_movielens_100k(d); }, data, 2, "rating");
  put("ml/u.data", "1\t10\t5\t881250949\n2\t1.5\t3\t9\n");
  expect_input_error([&] { load_movielens_100k(d); }, data, 2, "item");
  put("ml/u.data", "");
  expect_input_error([&] { load_movielens_100k(d); }, data, 0, "");
  // MovieLens IDs are digits only: no sign.
  put("ml/u.data", "1\t10\t5\t881250949\n-7\t10\t3\t881250950\n");
  expect_input_error([&] { load_movielens_100k(d); }, data, 2, "user");
  put("ml/u.data", "1\t10\t5\t881250949\n7\t+10\t3\t881250950\n");
  expect_input_error([&] { load_movielens_100k(d); }, data, 2, "item");
  put("ml/u.data", "1\t10\t5\t881250949\n");
  const std::string user = put("ml/u.user", "1|24|M|technician|85711\n3|1|F|x|1\n");
  expect_input_error([&] { load_movielens_100k(d); }, user, 2, "user");
  put("ml/u.user", "1|24|M|technician|85711\n1|24|M|technician|85711\n");
  expect_input_error([&] { load_movielens_100k(d); }, user, 2, "user");
  put("ml/u.user", "1|24|M|technician\n");
  expect_input_error([&] { load_movielens_100k(d); }, user, 1, "zip");
  put("ml/u.user", "1|nan|M|technician|1\n");
  expect_input_error([&] { load_movielens_100k(d); }, user, 1, "age");
}

TEST(MovieLens100k, RealData) {
  TOWERREC_REQUIRE_ML100K(dir);
  const auto t0 = std::chrono::steady_clock::now();
  Dataset ds = load_movielens_100k(dir);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("ml-100k parsed in %.1f ms\n", secs * 1e3);
  EXPECT_LT(secs, 1.0);
  EXPECT_EQ(ds.users.size(), 943);
  EXPECT_EQ(ds.items.size(), 1682);
  EXPECT_EQ(ds.interactions.size(), 100000);
  EXPECT_EQ(ds.interactions.rating.size(), 100000u);
  EXPECT_EQ(ds.interactions.timestamp.size(), 100000u);
  check_feature_shapes(ds.user_features, 943);
  check_feature_shapes(ds.item_features, 1682);
  EXPECT_EQ(ds.user_features.dense_names, (std::vector<std::string>{"age"}));
  EXPECT_FLOAT_EQ(ds.user_features.dense_min[0], 7.0f);
  EXPECT_FLOAT_EQ(ds.user_features.dense_max[0], 73.0f);
  EXPECT_EQ(field(ds.user_features, "gender")->vocab.size(), 2);
  EXPECT_EQ(field(ds.user_features, "occupation")->vocab.size(), 21);
  EXPECT_GE(field(ds.user_features, "zip_prefix")->vocab.size(), 10);
  EXPECT_EQ(ds.item_features.dense_names, (std::vector<std::string>{"year"}));
  EXPECT_FLOAT_EQ(ds.item_features.dense_min[0], 1922.0f);
  EXPECT_FLOAT_EQ(ds.item_features.dense_max[0], 1998.0f);
  const CategoricalField* g = field(ds.item_features, "genres");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->vocab.size(), 19);
  EXPECT_EQ(g->vocab.id(1), "Action");
  // Toy Story: Animation, Children's, Comedy.
  EXPECT_EQ(bag(*g, ds.items.find("1")), (std::vector<std::string>{"Animation", "Children's", "Comedy"}));
  // Every user has a one-hot gender and occupation.
  for (int32_t u = 0; u < 943; ++u) {
    EXPECT_EQ(bag(*field(ds.user_features, "gender"), u).size(), 1u);
    EXPECT_EQ(bag(*field(ds.user_features, "occupation"), u).size(), 1u);
  }
  LoadOptions opt;
  opt.rating_threshold = 4;
  Dataset pos = load_auto(dir, opt);
  EXPECT_EQ(pos.interactions.size(), 55375);
  EXPECT_EQ(pos.users.size(), 943);
}

TEST_F(DataTest, MovieLensDat) {
  put("m/ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n");
  put("m/users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n");
  put("m/movies.dat",
      "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
      "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
      "5::Unknown Film::(no genres listed)\n");
  const std::string d = dir_ + "/m";
  const std::string movies = d + "/movies.dat";
  // Movie 5 has no ratings: its row is an error.
  expect_input_error([&] { load_movielens_dat(d); }, movies, 3, "item");
  put("m/movies.dat",
      "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
      "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n");
  Dataset ds = load_auto(d);
  EXPECT_EQ(ds.users.size(), 2);
  EXPECT_EQ(ds.items.size(), 2);
  EXPECT_EQ(ds.interactions.size(), 3);
  EXPECT_EQ(ds.interactions.timestamp[2], 978298413);
  check_feature_shapes(ds.user_features, 2);
  check_feature_shapes(ds.item_features, 2);
  EXPECT_EQ(bag(*field(ds.user_features, "gender"), 0), (std::vector<std::string>{"F"}));
  EXPECT_EQ(bag(*field(ds.user_features, "occupation"), 1), (std::vector<std::string>{"16"}));
  EXPECT_FLOAT_EQ(dense(ds.user_features, 1, "age"), 1.0f);
  EXPECT_FLOAT_EQ(ds.item_features.dense_min[0], 1975.0f);
  EXPECT_FLOAT_EQ(ds.item_features.dense_max[0], 1996.0f);
  const int32_t peach = ds.items.find("661");
  EXPECT_FLOAT_EQ(dense(ds.item_features, peach, "year"), 1.0f);
  EXPECT_EQ(bag(*field(ds.item_features, "genres"), peach),
            (std::vector<std::string>{"Animation", "Children's", "Musical"}));
  // Without users.dat there are no user features.
  std::filesystem::remove(d + "/users.dat");
  EXPECT_TRUE(load_movielens_dat(d).user_features.empty());
  put("m/ratings.dat", "1::1193::5::978300760\n1::abc::3::978302109\n");
  expect_input_error([&] { load_movielens_dat(d); }, d + "/ratings.dat", 2, "item");
}

TEST_F(DataTest, LoadAuto) {
  put("s/interactions.csv", "user,item\na,x\n");
  put("s/users.csv", "user,age\na,3\n");
  Dataset ds = load_auto(dir_ + "/s");
  EXPECT_EQ(ds.user_features.dense_names, (std::vector<std::string>{"age"}));
  EXPECT_TRUE(ds.item_features.empty());
  EXPECT_EQ(load_auto(dir_ + "/s/interactions.csv").interactions.size(), 1);
  EXPECT_THROW(load_auto(dir_ + "/nothing"), Error);
  EXPECT_THROW(load_auto(dir_), Error);
  EXPECT_THROW(load_auto(put("x.txt", "user,item\na,x\n")), Error);
}

// ---- synthetic data -------------------------------------------------------------------------

TEST_F(DataTest, SynthDeterministicAndLoadable) {
  SynthOptions opt;
  opt.users = 300;
  opt.items = 200;
  opt.interactions_per_user = 10;
  opt.seed = 7;
  const SynthSummary a = write_synthetic(dir_ + "/a", opt);
  const SynthSummary b = write_synthetic(dir_ + "/b", opt);
  for (const char* f : {"/interactions.csv", "/users.csv", "/items.csv"})
    EXPECT_EQ(read_file(dir_ + "/a" + f), read_file(dir_ + "/b" + f)) << f;
  opt.seed = 8;
  write_synthetic(dir_ + "/c", opt);
  EXPECT_NE(read_file(dir_ + "/a/interactions.csv"), read_file(dir_ + "/c/interactions.csv"));

  EXPECT_EQ(a.users, 300);
  EXPECT_EQ(a.interactions, b.interactions);
  EXPECT_GT(a.items, 180);
  EXPECT_LE(a.items, 200);
  EXPECT_NEAR(static_cast<double>(a.interactions) / 300.0, 10.0, 2.0);
  EXPECT_EQ(read_file(dir_ + "/a/users.csv").substr(0, 28), "user,age,segment,interests\nu");
  EXPECT_EQ(read_file(dir_ + "/a/items.csv").substr(0, 25), "item,price,category,tags\n");

  Dataset ds = load_auto(dir_ + "/a");
  EXPECT_EQ(ds.users.size(), 300);
  EXPECT_EQ(ds.items.size(), a.items);
  EXPECT_EQ(ds.interactions.size(), a.interactions);
  EXPECT_EQ(ds.users.id(0), "u0");
  EXPECT_EQ(ds.items.id(0).substr(0, 1), "i");
  check_feature_shapes(ds.user_features, 300);
  check_feature_shapes(ds.item_features, a.items);
  EXPECT_EQ(ds.user_features.dense_names, (std::vector<std::string>{"age"}));
  EXPECT_EQ(ds.item_features.dense_names, (std::vector<std::string>{"price"}));
  EXPECT_EQ(field(ds.user_features, "segment")->vocab.size(), 4);
  EXPECT_EQ(field(ds.item_features, "category")->vocab.size(), 4);
  EXPECT_GT(field(ds.user_features, "interests")->vocab.size(), 8);
  EXPECT_GT(field(ds.item_features, "tags")->vocab.size(), 8);
  // Ratings 1..5; per-user distinct items with increasing timestamps.
  std::map<int32_t, std::pair<int64_t, std::set<int32_t>>> seen;
  for (int64_t r = 0; r < ds.interactions.size(); ++r) {
    const float rating = ds.interactions.rating[static_cast<size_t>(r)];
    EXPECT_TRUE(rating >= 1 && rating <= 5 && rating == std::round(rating));
    auto& s = seen[ds.interactions.user[static_cast<size_t>(r)]];
    EXPECT_GT(ds.interactions.timestamp[static_cast<size_t>(r)], s.first);
    s.first = ds.interactions.timestamp[static_cast<size_t>(r)];
    EXPECT_TRUE(s.second.insert(ds.interactions.item[static_cast<size_t>(r)]).second);
  }
}

// The planted structure is learnable: on held-out last interactions, item-item
// co-occurrence ranks far better than popularity. (Exercises both the exact
// and the candidate-pool samplers.)
TEST_F(DataTest, SynthBeatsPopularity) {
  for (int64_t n_items : {400, 2000}) {
    SCOPED_TRACE(n_items);
    SynthOptions opt;
    opt.users = 3000;
    opt.items = n_items;
    opt.interactions_per_user = 30;
    opt.seed = 3;
    const std::string d = dir_ + "/s" + std::to_string(n_items);
    write_synthetic(d, opt);
    Dataset ds = load_auto(d);
    const int32_t nu = ds.users.size(), ni = ds.items.size();
    std::vector<std::vector<int32_t>> hist(static_cast<size_t>(nu));
    for (int64_t r = 0; r < ds.interactions.size(); ++r)
      hist[static_cast<size_t>(ds.interactions.user[static_cast<size_t>(r)])].push_back(
          ds.interactions.item[static_cast<size_t>(r)]);
    // Train: all but the last item of each user.
    std::vector<double> pop(static_cast<size_t>(ni), 0);
    std::vector<std::vector<int32_t>> by_item(static_cast<size_t>(ni));
    for (int32_t u = 0; u < nu; ++u)
      for (size_t k = 0; k + 1 < hist[static_cast<size_t>(u)].size(); ++k) {
        pop[static_cast<size_t>(hist[static_cast<size_t>(u)][k])] += 1;
        by_item[static_cast<size_t>(hist[static_cast<size_t>(u)][k])].push_back(u);
      }
    int pop_hits = 0, cooc_hits = 0, tested = 0;
    std::vector<double> score(static_cast<size_t>(ni));
    auto hit_at = [&](const std::vector<double>& s, int32_t target, const std::vector<int32_t>& seen) {
      const double t = s[static_cast<size_t>(target)];
      int better = 0;
      for (int32_t i = 0; i < ni; ++i)
        if (s[static_cast<size_t>(i)] > t &&
            std::find(seen.begin(), seen.end(), i) == seen.end())
          ++better;
      return better < 20;
    };
    for (int32_t u = 0; u < nu; u += 3) {
      const auto& h = hist[static_cast<size_t>(u)];
      if (h.size() < 2) continue;
      const std::vector<int32_t> train(h.begin(), h.end() - 1);
      ++tested;
      pop_hits += hit_at(pop, h.back(), train);
      std::fill(score.begin(), score.end(), 0.0);
      for (int32_t i : train)
        for (int32_t v : by_item[static_cast<size_t>(i)]) {
          if (v == u) continue;
          const auto& hv = hist[static_cast<size_t>(v)];
          for (size_t k = 0; k + 1 < hv.size(); ++k)
            score[static_cast<size_t>(hv[k])] += 1.0 / std::sqrt(pop[static_cast<size_t>(i)]);
        }
      for (int32_t i = 0; i < ni; ++i)
        score[static_cast<size_t>(i)] /= std::pow(pop[static_cast<size_t>(i)] + 1.0, 0.5);
      cooc_hits += hit_at(score, h.back(), train);
    }
    const double p = static_cast<double>(pop_hits) / tested, c = static_cast<double>(cooc_hits) / tested;
    std::printf("items %lld: hit@20 popularity %.3f, co-occurrence %.3f\n",
                static_cast<long long>(n_items), p, c);
    // The candidate-pool sampler (large catalogs) plants a weaker but clear signal.
    EXPECT_GT(c, p * (n_items <= 1024 ? 1.3 : 1.15));
  }
}

}  // namespace
}  // namespace towerrec

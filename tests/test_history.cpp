// Users embedded from a history alone (a model trained with --history N):
// `towerrec recommend --histories` and `towerrec eval --histories` against the
// pooled mean pushed through the user tower by hand and a brute-force ranking;
// history items excluded; filters; bad inputs refused with no output file;
// the CUDA backend where a device is present. A small synthetic set, 2 epochs.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <sstream>

#include "tests/test_util.h"
#include "tests/work_dir.h"
#include "towerrec/api.h"
#include "towerrec/io.h"

namespace towerrec {
namespace {

struct Result {
  int rc = -1;
  std::string out, err;
};

std::string path(const std::string& name) { return testing::work_path(name); }

Result cli(const std::string& args) {
  static int n = 0;
  const std::string o = path("h.stdout." + std::to_string(n)), e = path("h.stderr." + std::to_string(n));
  ++n;
  const int st = std::system((testing::cli_path() + " " + args + " >" + o + " 2>" + e).c_str());
  Result r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = read_file(o);
  r.err = read_file(e);
  return r;
}

#define ASSERT_OK(r) ASSERT_EQ((r).rc, 0) << (r).err
#define EXPECT_FAILS_WITH(r, text)                                                \
  do {                                                                            \
    const Result& res_ = (r);                                                     \
    EXPECT_NE(res_.rc, 0);                                                        \
    EXPECT_NE(res_.err.find(text), std::string::npos) << "stderr: " << res_.err; \
  } while (0)

void write_text(const std::string& p, const std::string& s) { std::ofstream(p) << s; }

// user -> its rows (item, score) in rank order, from recommend's CSV.
std::map<std::string, std::vector<std::pair<std::string, float>>> read_recs(const std::string& text) {
  std::map<std::string, std::vector<std::pair<std::string, float>>> out;
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "user,item,rank,score");
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::string cell;
    std::istringstream ls(line);
    while (std::getline(ls, cell, ',')) f.push_back(cell);
    EXPECT_EQ(f.size(), 4u) << line;
    if (f.size() != 4) continue;
    auto& rows = out[f[0]];
    EXPECT_EQ(std::stoi(f[2]), static_cast<int>(rows.size()) + 1) << line;
    rows.emplace_back(f[1], std::stof(f[3]));
  }
  return out;
}

// The histories every test uses: two new users (one with more items than the
// model pools, one with a repeated item) and a known user given a new history.
const std::map<std::string, std::vector<std::string>> kHistories = {
    {"new1", {"i1", "i2", "i3", "i5", "i8", "i13", "i21"}},
    {"new2", {"i4", "i4"}},
    {"u1", {"i7", "i9"}},
};
constexpr int kCap = 4;  // --history of the model

std::string histories_csv() {
  std::string s = "user,item\n";
  for (const auto& [u, items] : kHistories)
    for (const auto& i : items) s += u + "," + i + "\n";
  return s;
}

class History : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ok_ = cli("synth --out " + path("hsyn") + " --users 150 --items 60 --interactions-per-user 20 --seed 3").rc == 0 &&
          cli("train --data " + path("hsyn") + " --epochs 2 --threads 1 --quiet --history " + std::to_string(kCap) +
              " --features false --out " + path("hmodel"))
                  .rc == 0;
    write_text(path("hist.csv"), histories_csv());
  }
  void SetUp() override { ASSERT_TRUE(ok_) << "synth or train failed"; }
  static bool ok_;
};
bool History::ok_ = false;

// The user tower by hand on the CPU, in double: [zero ID embedding | mean of
// the history rows of the pooled items] through the layers (ReLU on the hidden
// ones), L2-normalised when the model normalises.
std::vector<double> hand_embedding(TrainedModel& m, std::vector<int32_t> items) {
  const TowerConfig& t = m.config().tower;
  std::sort(items.begin(), items.end());
  items.erase(std::unique(items.begin(), items.end()), items.end());
  std::vector<int32_t> off, bag;
  cap_history({0, static_cast<int64_t>(items.size())}, items, t.history, m.model().seed(), off, bag);
  EXPECT_EQ(bag.size(), std::min<size_t>(items.size(), static_cast<size_t>(t.history)));
  const TwoTowerModel::State s = m.model().save_state();
  const std::vector<float>* arena = nullptr;
  for (size_t j = 0; j < s.names.size(); ++j)
    if (s.names[j] == "arena.params") arena = &s.tensors[j];
  EXPECT_NE(arena, nullptr);
  if (!arena) return {};
  // The user tower's part of the arena: its history table (no features; none
  // when the history reads the item tower's ID rows), then each layer's
  // weights [in x out] and bias.
  const std::vector<float>* table = arena;
  int64_t cur = 0, hist_off = 0;
  int hd = t.history_dim;
  if (t.history_shared) {
    hd = t.id_dim;
    table = nullptr;
    for (size_t j = 0; j < s.names.size(); ++j)
      if (s.names[j] == "item.id") table = &s.tensors[j];
    EXPECT_NE(table, nullptr);
    if (!table) return {};
  } else {
    cur += static_cast<int64_t>(m.n_items()) * t.history_dim;
  }
  // The pooling weights: 1 / |bag|, or the softmax of the learned logits
  // (after the history table in the arena) over the bag.
  std::vector<double> w(bag.size(), 1.0 / static_cast<double>(bag.size()));
  if (t.history_weighted) {
    const int64_t logits = cur;
    cur += m.n_items();
    double top = -1e300, z = 0.0;
    for (int32_t i : bag) top = std::max(top, double((*arena)[static_cast<size_t>(logits + i)]));
    for (size_t j = 0; j < bag.size(); ++j) z += w[j] = std::exp((*arena)[static_cast<size_t>(logits + bag[j])] - top);
    for (double& v : w) v /= z;
  }
  std::vector<double> x(static_cast<size_t>(t.id_dim + hd), 0.0);
  for (size_t j = 0; j < bag.size(); ++j)
    for (int c = 0; c < hd; ++c)
      x[static_cast<size_t>(t.id_dim + c)] += (*table)[static_cast<size_t>(hist_off + int64_t{bag[j]} * hd + c)] * w[j];
  std::vector<int> widths = t.hidden;
  widths.push_back(t.out_dim);
  for (size_t l = 0; l < widths.size(); ++l) {
    const int in = static_cast<int>(x.size()), out = widths[l];
    const int64_t w = cur, b = cur + int64_t{in} * out;
    cur = b + out;
    std::vector<double> y(static_cast<size_t>(out));
    for (int o = 0; o < out; ++o) {
      double v = (*arena)[static_cast<size_t>(b + o)];
      for (int r = 0; r < in; ++r) v += x[static_cast<size_t>(r)] * (*arena)[static_cast<size_t>(w + int64_t{r} * out + o)];
      y[static_cast<size_t>(o)] = (l + 1 < widths.size()) ? std::max(v, 0.0) : v;
    }
    x = std::move(y);
  }
  if (t.normalize) {
    double n = 0;
    for (double v : x) n += v * v;
    n = std::sqrt(n);
    for (double& v : x) v /= n;
  }
  return x;
}

std::vector<int32_t> dense_items(TrainedModel& m, const std::vector<std::string>& ids) {
  return lookup_ids(m.items(), ids, "test", "item");
}

// Brute force: every item scored against q in double, `skip` left out, higher
// score first, ties by the lower index; the top k.
std::vector<std::pair<int32_t, double>> brute_topk(TrainedModel& m, const std::vector<double>& q,
                                                   const std::set<int32_t>& skip, int k) {
  const float* V = m.item_embeddings();
  std::vector<std::pair<int32_t, double>> all;
  for (int32_t i = 0; i < m.n_items(); ++i) {
    if (skip.count(i)) continue;
    double s = 0;
    for (int c = 0; c < m.dim(); ++c) s += q[static_cast<size_t>(c)] * V[static_cast<size_t>(i) * m.dim() + c];
    all.emplace_back(i, s);
  }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  if (static_cast<int>(all.size()) > k) all.resize(static_cast<size_t>(k));
  return all;
}

TEST_F(History, RecommendEqualsThePooledMeanThroughTheTowerAndABruteForce) {
  const Result r = cli("recommend --model " + path("hmodel") + " --histories " + path("hist.csv") +
                       " --k 10 --threads 1 --out " + path("hrec.csv"));
  ASSERT_OK(r);
  EXPECT_NE(r.out.find("history items excluded"), std::string::npos) << r.out;
  const auto recs = read_recs(read_file(path("hrec.csv")));
  ASSERT_EQ(recs.size(), kHistories.size());
  TrainedModel m = TrainedModel::load(path("hmodel"), "cpu", 1);
  EXPECT_TRUE(m.model().history_input_problem().empty());
  // The library's embeddings of the three histories, in one call.
  std::vector<int64_t> off = {0};
  std::vector<int32_t> flat;
  for (const auto& [u, ids] : kHistories) {
    const auto d = dense_items(m, ids);
    flat.insert(flat.end(), d.begin(), d.end());
    off.push_back(static_cast<int64_t>(flat.size()));
  }
  DeviceArray<float> Q;
  m.model().embed_histories(off, flat, Q);
  ASSERT_EQ(Q.size(), static_cast<int64_t>(kHistories.size()) * m.dim());
  std::vector<float> lib(static_cast<size_t>(Q.size()));
  m.backend().to_host(lib.data(), Q.data(), Q.bytes());
  int row = 0;
  for (const auto& [u, ids] : kHistories) {
    SCOPED_TRACE(u);
    const std::vector<int32_t> items = dense_items(m, ids);
    const std::vector<double> hand = hand_embedding(m, items);
    const std::vector<float> got(lib.begin() + row * m.dim(), lib.begin() + (row + 1) * m.dim());
    EXPECT_TRUE(testing::all_close(got, hand, 1e-5, 1e-4));
    ++row;
    const std::set<int32_t> seen(items.begin(), items.end());
    const auto want = brute_topk(m, hand, seen, 10);
    const auto& rows = recs.at(u);
    ASSERT_EQ(rows.size(), want.size());
    for (size_t q = 0; q < rows.size(); ++q) {
      EXPECT_EQ(rows[q].first, m.items().id(want[q].first)) << "rank " << q + 1;
      EXPECT_NEAR(rows[q].second, want[q].second, 1e-4) << "rank " << q + 1;
      EXPECT_EQ(seen.count(m.items().find(rows[q].first)), 0u) << "history item recommended: " << rows[q].first;
    }
  }
  // A known user's stored items are not what is excluded: its given history is.
  // And the library call the server uses gives the same lists.
  UserItems h;
  h.offsets = off;
  h.items = flat;
  const TopK top = m.recommend_histories(h, 10);
  ASSERT_EQ(top.rows, static_cast<int64_t>(kHistories.size()));
  row = 0;
  for (const auto& [u, ids] : kHistories) {
    for (int q = 0; q < 10; ++q) EXPECT_EQ(m.items().id(top.ids[static_cast<size_t>(row * 10 + q)]), recs.at(u)[static_cast<size_t>(q)].first);
    ++row;
  }
  // Position and the other rows do not matter: one history alone embeds the same.
  DeviceArray<float> one;
  const auto n2 = dense_items(m, kHistories.at("new2"));
  m.model().embed_histories({0, static_cast<int64_t>(n2.size())}, n2, one);
  std::vector<float> one_host(static_cast<size_t>(m.dim()));
  m.backend().to_host(one_host.data(), one.data(), one.bytes());
  EXPECT_TRUE(testing::all_close(one_host, testing::to_double(std::vector<float>(lib.begin() + m.dim(), lib.begin() + 2 * m.dim())),
                                 1e-6, 1e-6));
}

// --history-table items: the history pools the item tower's ID rows. The
// library's and recommend's embeddings of given histories follow those rows
// through the user tower; the key is kept in the model's configuration.
class HistoryTables : public History, public ::testing::WithParamInterface<const char*> {};
INSTANTIATE_TEST_SUITE_P(Pooling, HistoryTables, ::testing::Values("mean", "weighted"));

TEST_P(HistoryTables, SharedTableEmbedsHistoriesFromTheItemRows) {
  const std::string pool = GetParam(), model = path(std::string("hshared-") + GetParam());
  ASSERT_OK(cli("train --data " + path("hsyn") + " --epochs 2 --threads 1 --quiet --history " + std::to_string(kCap) +
                " --history-table items --history-pool " + pool + " --features false --out " + model));
  const std::string config = read_file(model + "/config.json");
  EXPECT_NE(config.find("\"history-table\": \"items\""), std::string::npos) << config;
  EXPECT_NE(config.find("\"history-pool\": \"" + pool + "\""), std::string::npos) << config;
  const Result r = cli("recommend --model " + model + " --histories " + path("hist.csv") +
                       " --k 5 --threads 1 --out " + path("hsrec.csv"));
  ASSERT_OK(r);
  const auto recs = read_recs(read_file(path("hsrec.csv")));
  TrainedModel m = TrainedModel::load(model, "cpu", 1);
  ASSERT_TRUE(m.config().tower.history_shared);
  ASSERT_EQ(m.config().tower.history_weighted, pool == "weighted");
  if (pool == "weighted") {  // the logits trained away from the mean
    const TwoTowerModel::State st = m.model().save_state();
    const std::vector<float>* arena = nullptr;
    for (size_t j = 0; j < st.names.size(); ++j)
      if (st.names[j] == "arena.params") arena = &st.tensors[j];
    ASSERT_NE(arena, nullptr);
    EXPECT_TRUE(std::any_of(arena->begin(), arena->begin() + m.n_items(), [](float v) { return v != 0.0f; }));
  }
  EXPECT_TRUE(m.model().history_input_problem().empty());
  for (const auto& [u, ids] : kHistories) {
    SCOPED_TRACE(u);
    const std::vector<int32_t> items = dense_items(m, ids);
    DeviceArray<float> q;
    m.model().embed_histories({0, static_cast<int64_t>(items.size())}, items, q);
    std::vector<float> got(static_cast<size_t>(m.dim()));
    m.backend().to_host(got.data(), q.data(), q.bytes());
    const std::vector<double> hand = hand_embedding(m, items);
    EXPECT_TRUE(testing::all_close(got, hand, 1e-5, 1e-4));
    const auto want = brute_topk(m, hand, std::set<int32_t>(items.begin(), items.end()), 5);
    ASSERT_EQ(recs.at(u).size(), want.size());
    for (size_t k = 0; k < want.size(); ++k) EXPECT_EQ(recs.at(u)[k].first, m.items().id(want[k].first)) << "rank " << k + 1;
  }
  // Resuming with the other table is refused: it changes the model's shape.
  EXPECT_FAILS_WITH(cli("train --data " + path("hsyn") + " --epochs 3 --threads 1 --quiet --history " +
                        std::to_string(kCap) + " --history-pool " + pool + " --features false --resume --out " + model),
                    "history-table");
}

TEST_F(History, IncludeSeenFiltersAndStandardOutput) {
  TrainedModel m = TrainedModel::load(path("hmodel"), "cpu", 1);
  // --include-seen: the brute force over every item.
  const Result all = cli("recommend --model " + path("hmodel") + " --histories " + path("hist.csv") +
                         " --k 60 --include-seen --threads 1 --quiet --out -");
  ASSERT_OK(all);
  const auto recs = read_recs(all.out);
  const auto items = dense_items(m, kHistories.at("new1"));
  const auto want = brute_topk(m, hand_embedding(m, items), {}, 60);
  ASSERT_EQ(recs.at("new1").size(), want.size());
  for (size_t q = 0; q < want.size(); ++q) EXPECT_EQ(recs.at("new1")[q].first, m.items().id(want[q].first));
  // --items and --exclude filter inside the ranking, beside the history.
  std::string allow = "item\n";
  std::set<std::string> allowed;
  for (int i = 0; i < 20; ++i) {
    allow += "i" + std::to_string(i) + "\n";
    allowed.insert("i" + std::to_string(i));
  }
  write_text(path("allow.txt"), allow);
  write_text(path("deny.txt"), "i0\ni6\n");
  const Result f = cli("recommend --model " + path("hmodel") + " --histories " + path("hist.csv") + " --items " +
                       path("allow.txt") + " --exclude " + path("deny.txt") + " --k 5 --threads 1 --out -");
  ASSERT_OK(f);
  EXPECT_NE(f.err.find("wrote standard output"), std::string::npos) << f.err;
  const auto fr = read_recs(f.out);
  ASSERT_EQ(fr.size(), kHistories.size());
  for (const auto& [u, rows] : fr) {
    EXPECT_EQ(rows.size(), 5u) << u;
    const auto& h = kHistories.at(u);
    for (const auto& [it, s] : rows) {
      EXPECT_TRUE(allowed.count(it)) << u << " got " << it;
      EXPECT_TRUE(it != "i0" && it != "i6") << u << " got " << it;
      EXPECT_EQ(std::count(h.begin(), h.end(), it), 0) << u << " got its history item " << it;
    }
  }
}

TEST_F(History, BadInputsAreRefusedWithNoOutputFile) {
  // An unknown item: file, line and field named.
  write_text(path("bad_hist.csv"), "user,item\nnew1,i1\nnew1,nope\n");
  const Result a = cli("recommend --model " + path("hmodel") + " --histories " + path("bad_hist.csv") +
                       " --threads 1 --out " + path("bad_out.csv"));
  EXPECT_FAILS_WITH(a, "bad_hist.csv:3");
  EXPECT_FAILS_WITH(a, "item");
  EXPECT_FAILS_WITH(a, "'nope'");
  EXPECT_FALSE(file_exists(path("bad_out.csv")));
  const Result e = cli("eval --model " + path("hmodel") + " --histories " + path("bad_hist.csv") + " --test " +
                       path("hist.csv") + " --threads 1");
  EXPECT_FAILS_WITH(e, "bad_hist.csv:3");
  // Flags that name users another way.
  EXPECT_FAILS_WITH(cli("recommend --model " + path("hmodel") + " --histories " + path("hist.csv") +
                        " --user u1 --out " + path("bad_out.csv")),
                    "--histories names its own users");
  EXPECT_FALSE(file_exists(path("bad_out.csv")));
  // A test user neither in the model nor in the histories.
  write_text(path("bad_test.csv"), "user,item\nnew1,i30\nstranger,i31\n");
  EXPECT_FAILS_WITH(cli("eval --model " + path("hmodel") + " --histories " + path("hist.csv") + " --test " +
                        path("bad_test.csv") + " --threads 1"),
                    "'stranger'");
}

TEST_F(History, ModelsThatCannotEmbedAHistoryAreRefused) {
  ASSERT_OK(cli("train --data " + path("hsyn") + " --epochs 1 --threads 1 --quiet --features false --out " +
                path("plain")));
  const Result a = cli("recommend --model " + path("plain") + " --histories " + path("hist.csv") +
                       " --threads 1 --out " + path("plain_out.csv"));
  EXPECT_FAILS_WITH(a, "no history input");
  EXPECT_FALSE(file_exists(path("plain_out.csv")));
  EXPECT_FAILS_WITH(cli("eval --model " + path("plain") + " --histories " + path("hist.csv") + " --test " +
                        path("hist.csv") + " --threads 1"),
                    "no history input");
  // With user features the user tower needs more than a history gives.
  ASSERT_OK(cli("train --data " + path("hsyn") + " --epochs 1 --threads 1 --quiet --history 4 --out " +
                path("featured")));
  const Result b = cli("recommend --model " + path("featured") + " --histories " + path("hist.csv") +
                       " --threads 1 --out " + path("feat_out.csv"));
  EXPECT_FAILS_WITH(b, "user features");
  EXPECT_FALSE(file_exists(path("feat_out.csv")));
  TrainedModel m = TrainedModel::load(path("featured"), "cpu", 1);
  UserItems h;
  h.offsets = {0, 1};
  h.items = {0};
  EXPECT_THROW(m.recommend_histories(h, 5), Error);
}

// The metrics of one ranked list by hand.
struct Hand {
  double recall = 0, ndcg = 0;
};
Hand hand_metrics(const std::vector<int32_t>& ranked, const std::set<int32_t>& rel, int k) {
  Hand h;
  double dcg = 0, idcg = 0;
  int hits = 0;
  for (int q = 0; q < k && q < static_cast<int>(ranked.size()); ++q)
    if (rel.count(ranked[static_cast<size_t>(q)])) {
      ++hits;
      dcg += 1.0 / std::log2(q + 2.0);
    }
  for (int q = 0; q < std::min<int>(k, static_cast<int>(rel.size())); ++q) idcg += 1.0 / std::log2(q + 2.0);
  h.recall = static_cast<double>(hits) / static_cast<double>(rel.size());
  h.ndcg = idcg > 0 ? dcg / idcg : 0;
  return h;
}

TEST_F(History, EvalWithHistoriesMatchesABruteForce) {
  // Test rows: the three history users (items outside their histories) and a
  // known user evaluated as usual.
  const std::map<std::string, std::vector<std::string>> test = {
      {"new1", {"i30", "i31", "i40", "i2"}},  // i2 is in its history: can never be ranked
      {"new2", {"i10", "i11"}},
      {"u1", {"i12", "i50", "i51"}},
      {"u2", {"i33"}},
  };
  std::string csv = "user,item\n";
  for (const auto& [u, items] : test)
    for (const auto& i : items) csv += u + "," + i + "\n";
  write_text(path("htest.csv"), csv);
  const Result r = cli("eval --model " + path("hmodel") + " --histories " + path("hist.csv") + " --test " +
                       path("htest.csv") + " --k 5,10 --json --threads 1 --quiet");
  ASSERT_OK(r);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["history_users"], 3);
  EXPECT_EQ(j["users_evaluated"], 4);
  ASSERT_TRUE(j.contains("history")) << r.out;
  EXPECT_EQ(j["history"]["users_evaluated"], 3);

  TrainedModel m = TrainedModel::load(path("hmodel"), "cpu", 1);
  for (int k : {5, 10}) {
    SCOPED_TRACE("k " + std::to_string(k));
    Hand sum;
    for (const auto& [u, h] : kHistories) {
      const auto items = dense_items(m, h);
      const std::set<int32_t> seen(items.begin(), items.end());
      std::vector<int32_t> ranked;
      for (const auto& [i, s] : brute_topk(m, hand_embedding(m, items), seen, k)) ranked.push_back(i);
      const auto rel = dense_items(m, test.at(u));
      const Hand one = hand_metrics(ranked, std::set<int32_t>(rel.begin(), rel.end()), k);
      sum.recall += one.recall / 3;
      sum.ndcg += one.ndcg / 3;
    }
    const std::string at = "@" + std::to_string(k);
    EXPECT_NEAR(j["history"]["recall" + at].get<double>(), sum.recall, 1e-9);
    EXPECT_NEAR(j["history"]["ndcg" + at].get<double>(), sum.ndcg, 1e-9);
    EXPECT_GE(j["recall" + at].get<double>(), 0.0);
    EXPECT_LE(j["recall" + at].get<double>(), 1.0);
  }
  // Text: the history users reported apart, beside the warm ones.
  const Result t = cli("eval --model " + path("hmodel") + " --histories " + path("hist.csv") + " --test " +
                       path("htest.csv") + " --k 5,10 --threads 1");
  ASSERT_OK(t);
  EXPECT_NE(t.out.find("test-history"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("test-warm"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("histories " + path("hist.csv") + ": 3 users"), std::string::npos) << t.out;
}

TEST_F(History, CudaRanksAsTheCpuDoes) {
  TOWERREC_REQUIRE_CUDA();
  const Result c = cli("recommend --model " + path("hmodel") + " --histories " + path("hist.csv") +
                       " --k 10 --device cpu --threads 1 --quiet --out -");
  const Result g = cli("recommend --model " + path("hmodel") + " --histories " + path("hist.csv") +
                       " --k 10 --device cuda --quiet --out -");
  ASSERT_OK(c);
  ASSERT_OK(g);
  const auto a = read_recs(c.out), b = read_recs(g.out);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [u, rows] : a) {
    ASSERT_EQ(rows.size(), b.at(u).size()) << u;
    for (size_t q = 0; q < rows.size(); ++q) {
      EXPECT_EQ(rows[q].first, b.at(u)[q].first) << u << " rank " << q + 1;
      EXPECT_NEAR(rows[q].second, b.at(u)[q].second, 1e-4) << u << " rank " << q + 1;
    }
  }
  const Result e = cli("eval --model " + path("hmodel") + " --histories " + path("hist.csv") + " --test " +
                       path("hist.csv") + " --include-seen --json --quiet --device cuda");
  ASSERT_OK(e);
  EXPECT_EQ(nlohmann::json::parse(e.out)["history"]["users_evaluated"], 3);
}

}  // namespace
}  // namespace towerrec

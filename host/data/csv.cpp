// Generic CSV interactions and feature files.
//
// Interactions: a header naming the columns (any order, extra columns ignored):
//   user   (also user_id, userid)           required, string ID (see IdMap: opaque,
//                                           trimmed of surrounding spaces and tabs)
//   item   (also item_id, itemid, movie_id, movieid)  required, string ID
//   rating (also score)                     optional, finite number
//   timestamp (also ts, time)               optional, integer (or integral number)
// Header names are matched case-insensitively.
#include <cmath>
#include <cstring>
#include <deque>

#include "host/data/features.h"
#include "host/data/text.h"
#include "towerrec/data.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {
namespace {

using namespace data_detail;

std::string lower(std::string_view s) {
  std::string r(s);
  for (auto& c : r)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return r;
}

// Column role of a header name: 0 user, 1 item, 2 rating, 3 timestamp, -1 other.
int role_of(std::string_view name) {
  const std::string n = lower(name);
  if (n == "user" || n == "user_id" || n == "userid") return 0;
  if (n == "item" || n == "item_id" || n == "itemid" || n == "movie_id" || n == "movieid") return 1;
  if (n == "rating" || n == "score") return 2;
  if (n == "timestamp" || n == "ts" || n == "time") return 3;
  return -1;
}

const char* const kRoleName[4] = {"user", "item", "rating", "timestamp"};

}  // namespace

namespace {

// new_users / new_items: new IDs of that kind are added, else an unknown one
// is an InputError (the map is then only searched).
Interactions read_interactions(const std::string& path, IdMap& users, IdMap& items, bool new_users,
                               bool new_items, char delimiter) {
  const std::string text = slurp(path);
  CsvReader lines(text, delimiter);
  std::deque<std::string> arena;
  std::vector<std::string_view> f;
  const auto record = [&] {
    const CsvReader::Status st = lines.next(f, arena);
    if (st == CsvReader::kUnterminatedQuote)
      throw InputError(path, lines.line_no(), "", "unterminated quote");
    return st == CsvReader::kRecord;
  };
  if (!record()) throw InputError(path, 0, "", "empty file");
  int col[4] = {-1, -1, -1, -1};
  std::vector<std::string> names;
  for (size_t c = 0; c < f.size(); ++c) {
    names.emplace_back(f[c]);
    const int r = role_of(f[c]);
    if (r < 0) continue;
    if (col[r] >= 0)
      throw InputError(path, lines.line_no(), std::string(f[c]), "duplicate column in header");
    col[r] = static_cast<int>(c);
  }
  for (int r = 0; r < 2; ++r)
    if (col[r] < 0)
      throw InputError(path, lines.line_no(), kRoleName[r],
                       std::string("header has no '") + kRoleName[r] + "' column");
  const size_t want = f.size();
  Interactions x;
  const bool has_rating = col[2] >= 0, has_ts = col[3] >= 0;
  if (text.size() > 4096) {
    const size_t guess = text.size() / 24;
    x.user.reserve(guess);
    x.item.reserve(guess);
  }
  while (record()) {
    const int64_t ln = lines.line_no();
    if (f.size() < want) throw InputError(path, ln, names[f.size()], "missing column");
    if (f.size() > want)
      throw InputError(path, ln, "",
                       "expected " + std::to_string(want) + " fields, found " +
                           std::to_string(f.size()));
    int32_t idx[2];
    for (int r = 0; r < 2; ++r) {
      // IDs are trimmed of surrounding spaces and tabs, quoted or not.
      const std::string_view id = trim(f[static_cast<size_t>(col[r])]);
      if (id.empty()) throw InputError(path, ln, kRoleName[r], "empty ID");
      IdMap& m = r == 0 ? users : items;
      idx[r] = (r == 0 ? new_users : new_items) ? m.add(id) : m.find(id);
      if (idx[r] < 0)
        throw InputError(path, ln, kRoleName[r], "unknown ID '" + std::string(id) + "'");
    }
    x.user.push_back(idx[0]);
    x.item.push_back(idx[1]);
    if (has_rating) {
      const std::string_view s = f[static_cast<size_t>(col[2])];
      double v;
      if (!parse_double(s, v)) throw InputError(path, ln, "rating", "'" + std::string(s) + "' is not a number");
      if (!std::isfinite(v)) throw InputError(path, ln, "rating", "non-finite rating '" + std::string(s) + "'");
      if (!std::isfinite(static_cast<float>(v)))
        throw InputError(path, ln, "rating", "'" + std::string(s) + "' is out of the float range");
      x.rating.push_back(static_cast<float>(v));
    }
    if (has_ts) {
      const std::string_view s = f[static_cast<size_t>(col[3])];
      int64_t t;
      if (!parse_int64(s, t)) {
        double v;
        if (!parse_double(s, v) || !std::isfinite(v) || v != std::floor(v) || std::fabs(v) > 9e18)
          throw InputError(path, ln, "timestamp", "'" + std::string(s) + "' is not an integer");
        t = static_cast<int64_t>(v);
      }
      x.timestamp.push_back(t);
    }
  }
  return x;
}

}  // namespace

Interactions read_interactions_csv(const std::string& path, IdMap& users, IdMap& items,
                                   bool allow_new, char delimiter) {
  return read_interactions(path, users, items, allow_new, allow_new, delimiter);
}

Interactions read_interactions_new_users(const std::string& path, IdMap& users, const IdMap& items,
                                         char delimiter) {
  // With new_items false the item map is only searched, never changed.
  return read_interactions(path, users, const_cast<IdMap&>(items), true, false, delimiter);
}

void write_interactions_csv(const std::string& path, const Interactions& x, const IdMap& users,
                            const IdMap& items) {
  const size_t n = x.user.size();
  TOWERREC_CHECK(x.item.size() == n, "interactions: user and item sizes differ");
  TOWERREC_CHECK(x.rating.empty() || x.rating.size() == n, "interactions: rating size differs");
  TOWERREC_CHECK(x.timestamp.empty() || x.timestamp.size() == n,
                 "interactions: timestamp size differs");
  const bool has_rating = !x.rating.empty(), has_ts = !x.timestamp.empty();
  AtomicFile out(path);
  std::string buf = "user,item";
  if (has_rating) buf += ",rating";
  if (has_ts) buf += ",timestamp";
  buf += '\n';
  for (size_t r = 0; r < n; ++r) {
    TOWERREC_CHECK(x.user[r] >= 0 && x.user[r] < users.size(), "interactions: user index out of range");
    TOWERREC_CHECK(x.item[r] >= 0 && x.item[r] < items.size(), "interactions: item index out of range");
    append_csv_field(buf, users.id(x.user[r]));
    buf += ',';
    append_csv_field(buf, items.id(x.item[r]));
    if (has_rating) {
      buf += ',';
      append_float(buf, x.rating[r]);
    }
    if (has_ts) {
      buf += ',';
      append_int(buf, x.timestamp[r]);
    }
    buf += '\n';
    if (buf.size() >= (1u << 20)) {
      out.write(buf);
      buf.clear();
    }
  }
  out.write(buf);
  out.commit();
}

Dataset load_csv(const std::string& interactions_csv, const std::string& user_features_csv,
                 const std::string& item_features_csv, const LoadOptions& opt) {
  Dataset ds;
  ds.source = "csv:" + interactions_csv;
  ds.interactions = read_interactions_csv(interactions_csv, ds.users, ds.items, true, opt.delimiter);
  if (ds.interactions.size() == 0) throw InputError(interactions_csv, 1, "", "no interactions");
  if (opt.features && !user_features_csv.empty()) {
    FeatureTable t;
    read_feature_csv(user_features_csv, ds.users, t, opt.delimiter);
    ds.user_features = build_features(t, ds.users.size());
  }
  if (opt.features && !item_features_csv.empty()) {
    FeatureTable t;
    read_feature_csv(item_features_csv, ds.items, t, opt.delimiter);
    ds.item_features = build_features(t, ds.items.size());
  }
  ds.user_features.n_entities = ds.users.size();
  ds.item_features.n_entities = ds.items.size();
  apply_rating_threshold(ds.interactions, opt.rating_threshold);
  return ds;
}

Dataset load_auto(const std::string& path, const LoadOptions& opt) {
  if (is_directory(path)) {
    if (file_exists(path + "/u.data")) return load_movielens_100k(path, opt);
    if (file_exists(path + "/ratings.dat")) return load_movielens_dat(path, opt);
    if (file_exists(path + "/interactions.csv")) {
      const std::string u = path + "/users.csv", i = path + "/items.csv";
      return load_csv(path + "/interactions.csv", file_exists(u) ? u : "", file_exists(i) ? i : "",
                      opt);
    }
    throw Error(path + ": no u.data, ratings.dat or interactions.csv in this directory");
  }
  if (file_exists(path)) {
    const std::string l = lower(path);
    const auto ends = [&](const char* e) { return l.size() >= std::strlen(e) && l.compare(l.size() - std::strlen(e), std::string::npos, e) == 0; };
    if (ends(".csv") || ends(".csv.gz") || ends(".tsv") || ends(".tsv.gz")) return load_csv(path, "", "", opt);
    throw Error(path + ": unknown data format (expected a .csv or .csv.gz file or a dataset directory)");
  }
  throw Error(path + ": no such file or directory");
}

}  // namespace towerrec

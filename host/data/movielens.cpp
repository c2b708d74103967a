// MovieLens readers.
//
// 100k (u.data, u.user, u.item, u.genre):
//   u.data  user \t item \t rating \t timestamp      (all numeric)
//   u.user  id|age|gender|occupation|zip  -> age (dense), gender, occupation and
//           zip_prefix (first character of the zip code) one-hot
//   u.item  id|title|release date|video date|url|19 genre flags -> year (dense,
//           from the release date "01-Jan-1995"; empty -> column minimum) and
//           genres (multi-hot, names from u.genre, else genre0..genre18)
// 1M/10M (ratings.dat, users.dat, movies.dat; '::' separated):
//   ratings.dat user::item::rating::timestamp
//   users.dat   user::gender::age::occupation::zip (optional) -> gender, age
//               (dense), occupation, zip_prefix
//   movies.dat  item::title::Genre|Genre -> year (dense, from "(1995)" at the end
//               of the title) and genres (multi-hot; "(no genres listed)" is empty)
// IDs must be unsigned integers (digits only); they are kept as the text of the
// file ("196"), compared byte for byte as every ID is (see IdMap). Titles are
// Latin-1 in the original files and are never decoded.
#include <cmath>

#include "host/data/features.h"
#include "host/data/text.h"
#include "towerrec/data.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {
namespace {

using namespace data_detail;

// MovieLens IDs are unsigned decimal integers: digits only (no sign), kept as
// text like every ID (so "007" and "7" would be two IDs; the files never pad).
void require_int(const std::string& file, int64_t line, const char* field, std::string_view s) {
  bool digits = !s.empty();
  for (char c : s) digits = digits && c >= '0' && c <= '9';
  if (!digits)
    throw InputError(file, line, field,
                     "'" + std::string(s) + "' is not an integer ID (digits only, no sign)");
}

// Reads a ratings file of `ncol` (>= 3) fields: user, item, rating[, timestamp].
Interactions read_ratings(const std::string& path, std::string_view delim, IdMap& users,
                          IdMap& items) {
  const std::string text = slurp(path);
  LineReader lines(text);
  std::string_view line;
  std::vector<std::string_view> f;
  Interactions x;
  const size_t guess = text.size() / 20;
  x.user.reserve(guess);
  x.item.reserve(guess);
  x.rating.reserve(guess);
  x.timestamp.reserve(guess);
  static const char* const kNames[4] = {"user", "item", "rating", "timestamp"};
  bool has_ts = true;
  while (lines.next(line)) {
    const int64_t ln = lines.line_no();
    split(line, delim, f);
    if (f.size() < 3) throw InputError(path, ln, kNames[f.size()], "missing column");
    if (f.size() > 4)
      throw InputError(path, ln, "", "expected 4 fields, found " + std::to_string(f.size()));
    if (x.user.empty()) has_ts = f.size() == 4;
    if ((f.size() == 4) != has_ts)
      throw InputError(path, ln, has_ts ? "timestamp" : "",
                       has_ts ? "missing column" : "unexpected extra field");
    require_int(path, ln, "user", f[0]);
    require_int(path, ln, "item", f[1]);
    double r;
    if (!parse_double(f[2], r) || !std::isfinite(r))
      throw InputError(path, ln, "rating", "'" + std::string(f[2]) + "' is not a number");
    if (!std::isfinite(static_cast<float>(r)))
      throw InputError(path, ln, "rating", "'" + std::string(f[2]) + "' is out of the float range");
    int64_t t = 0;
    if (has_ts && !parse_int64(f[3], t))
      throw InputError(path, ln, "timestamp", "'" + std::string(f[3]) + "' is not an integer");
    x.user.push_back(users.add(f[0]));
    x.item.push_back(items.add(f[1]));
    x.rating.push_back(static_cast<float>(r));
    if (has_ts) x.timestamp.push_back(t);
  }
  if (x.user.empty()) throw InputError(path, 0, "", "empty file: no interactions");
  if (!has_ts) x.timestamp.clear();
  return x;
}

// Feature file: one row per entity, `delim`-separated, at least `min_fields`
// fields; `row` pushes the cells of one row.
template <typename Row>
void read_feature_rows(const std::string& path, std::string_view delim, const IdMap& ids,
                       size_t min_fields, const std::vector<const char*>& field_names,
                       FeatureTable& t, Row row) {
  t.file = path;
  t.text = slurp(path);
  LineReader lines(t.text);
  std::string_view line;
  std::vector<std::string_view> f;
  bool any = false;
  while (lines.next(line)) {
    any = true;
    const int64_t ln = lines.line_no();
    split(line, delim, f);
    if (f.size() < min_fields)
      throw InputError(path, ln,
                       f.size() < field_names.size() ? std::string(field_names[f.size()])
                                                     : "field " + std::to_string(f.size() + 1),
                       "missing column: expected at least " + std::to_string(min_fields) +
                           " fields, found " + std::to_string(f.size()));
    require_int(path, ln, field_names[0], f[0]);
    t.begin_row(ids, f[0], ln);
    row(f, ln);
  }
  if (!any) throw InputError(path, 0, "", "empty file");
}

std::string_view zip_prefix(std::string_view zip) { return zip.empty() ? zip : zip.substr(0, 1); }

EntityFeatures ml100k_users(const std::string& path, const IdMap& users) {
  FeatureTable t;
  t.id_name = "user";
  t.add_column("age", ColumnKind::kDense);
  t.add_column("gender", ColumnKind::kOneHot);
  t.add_column("occupation", ColumnKind::kOneHot);
  t.add_column("zip_prefix", ColumnKind::kOneHot);
  read_feature_rows(path, "|", users, 5, {"user", "age", "gender", "occupation", "zip"}, t,
                    [&](const std::vector<std::string_view>& f, int64_t) {
                      t.cells.insert(t.cells.end(), {f[1], f[2], f[3], zip_prefix(f[4])});
                    });
  return build_features(t, users.size());
}

std::vector<std::string> genre_names(const std::string& dir) {
  std::vector<std::string> names;
  const std::string path = dir + "/u.genre";
  if (file_exists(path)) {
    const std::string text = slurp(path);
    LineReader lines(text);
    std::string_view line;
    std::vector<std::string_view> f;
    while (lines.next(line)) {
      split(line, "|", f);
      int64_t k;
      if (f.size() < 2 || !parse_int64(f[1], k) || k != static_cast<int64_t>(names.size()))
        throw InputError(path, lines.line_no(), "genre", "expected 'name|index' in index order");
      names.emplace_back(f[0]);
    }
  }
  if (names.size() != 19) {
    names.clear();
    for (int k = 0; k < 19; ++k) names.push_back("genre" + std::to_string(k));
  }
  return names;
}

EntityFeatures ml100k_items(const std::string& path, const std::string& dir, const IdMap& items) {
  const std::vector<std::string> genres = genre_names(dir);
  FeatureTable t;
  t.id_name = "item";
  t.add_column("year", ColumnKind::kDense);
  t.add_column("genres", ColumnKind::kMultiHot, genres);
  std::string bag;
  read_feature_rows(
      path, "|", items, 24,
      {"item", "title", "release_date", "video_release_date", "url", "genre0"}, t,
      [&](const std::vector<std::string_view>& f, int64_t ln) {
        // A '|' inside the title shifts the fields: count from the end.
        const size_t n = f.size();
        const size_t g0 = n - 19;
        const std::string_view date = f[g0 - 3];
        std::string_view year;
        if (!date.empty()) {
          year = date.substr(date.rfind('-') == std::string_view::npos ? 0 : date.rfind('-') + 1);
          int64_t y;
          if (!parse_int64(year, y))
            throw InputError(path, ln, "release_date", "cannot read a year from '" + std::string(date) + "'");
        }
        bag.clear();
        for (size_t k = 0; k < 19; ++k) {
          const std::string_view flag = f[g0 + k];
          if (flag != "0" && flag != "1")
            throw InputError(path, ln, genres[k], "genre flag '" + std::string(flag) + "' is not 0 or 1");
          if (flag == "1") {
            if (!bag.empty()) bag += '|';
            bag += genres[k];
          }
        }
        t.cells.push_back(year);
        t.cells.push_back(t.own(bag));
      });
  return build_features(t, items.size());
}

// Year from a title ending in "(1995)" (trailing spaces allowed); empty if none.
std::string_view title_year(std::string_view title) {
  title = trim(title);
  if (title.size() < 6 || title.back() != ')') return {};
  const std::string_view y = title.substr(title.size() - 5, 4);
  if (title[title.size() - 6] != '(') return {};
  for (char c : y)
    if (c < '0' || c > '9') return {};
  return y;
}

}  // namespace

Dataset load_movielens_100k(const std::string& dir, const LoadOptions& opt) {
  Dataset ds;
  ds.source = "movielens-100k:" + dir;
  ds.interactions = read_ratings(dir + "/u.data", "\t", ds.users, ds.items);
  if (opt.features) {
    if (file_exists(dir + "/u.user")) ds.user_features = ml100k_users(dir + "/u.user", ds.users);
    if (file_exists(dir + "/u.item"))
      ds.item_features = ml100k_items(dir + "/u.item", dir, ds.items);
  }
  ds.user_features.n_entities = ds.users.size();
  ds.item_features.n_entities = ds.items.size();
  data_detail::apply_rating_threshold(ds.interactions, opt.rating_threshold);
  return ds;
}

Dataset load_movielens_dat(const std::string& dir, const LoadOptions& opt) {
  Dataset ds;
  ds.source = "movielens-dat:" + dir;
  ds.interactions = read_ratings(dir + "/ratings.dat", "::", ds.users, ds.items);
  if (opt.features && file_exists(dir + "/users.dat")) {
    FeatureTable t;
    t.id_name = "user";
    t.add_column("gender", ColumnKind::kOneHot);
    t.add_column("age", ColumnKind::kDense);
    t.add_column("occupation", ColumnKind::kOneHot);
    t.add_column("zip_prefix", ColumnKind::kOneHot);
    read_feature_rows(dir + "/users.dat", "::", ds.users, 5,
                      {"user", "gender", "age", "occupation", "zip"}, t,
                      [&](const std::vector<std::string_view>& f, int64_t) {
                        t.cells.insert(t.cells.end(), {f[1], f[2], f[3], zip_prefix(f[4])});
                      });
    ds.user_features = build_features(t, ds.users.size());
  }
  if (opt.features && file_exists(dir + "/movies.dat")) {
    FeatureTable t;
    t.id_name = "item";
    t.add_column("year", ColumnKind::kDense);
    t.add_column("genres", ColumnKind::kMultiHot);
    read_feature_rows(dir + "/movies.dat", "::", ds.items, 3, {"item", "title", "genres"}, t,
                      [&](const std::vector<std::string_view>& f, int64_t) {
                        // The title may itself hold "::": it is everything between
                        // the first and the last field.
                        const std::string_view first = f.front(), last = f.back();
                        const char* b = f[1].data();
                        const char* e = f[f.size() - 2].data() + f[f.size() - 2].size();
                        (void)first;
                        t.cells.push_back(title_year(std::string_view(b, static_cast<size_t>(e - b))));
                        t.cells.push_back(last == "(no genres listed)" ? std::string_view() : last);
                      });
    ds.item_features = build_features(t, ds.items.size());
  }
  ds.user_features.n_entities = ds.users.size();
  ds.item_features.n_entities = ds.items.size();
  data_detail::apply_rating_threshold(ds.interactions, opt.rating_threshold);
  return ds;
}

}  // namespace towerrec

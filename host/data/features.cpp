#include "host/data/features.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "host/data/text.h"
#include "towerrec/error.h"

namespace towerrec::data_detail {

void FeatureTable::begin_row(const IdMap& ids, std::string_view id, int64_t line) {
  id = trim(id);  // the ID rule of every reader (see IdMap)
  if (id.empty()) throw InputError(file, line, id_name, "empty ID");
  const int32_t e = ids.find(id);
  if (e < 0)
    throw InputError(file, line, id_name,
                     "feature row for ID '" + std::string(id) + "' that is not in the interactions");
  if (seen.size() < static_cast<size_t>(ids.size())) seen.resize(static_cast<size_t>(ids.size()), 0);
  if (seen[static_cast<size_t>(e)])
    throw InputError(file, line, id_name, "duplicate feature row for ID '" + std::string(id) + "'");
  seen[static_cast<size_t>(e)] = 1;
  row_entity.push_back(e);
  row_line.push_back(line);
}

namespace {

// Checks that `s` is a finite number, else throws naming the cell.
double finite_number(const FeatureTable& t, size_t row, size_t col, std::string_view s) {
  double v;
  if (!parse_double(s, v))
    throw InputError(t.file, t.row_line[row], t.names[col],
                     "'" + std::string(s) + "' is not a number");
  if (!std::isfinite(v) || std::fabs(v) > std::numeric_limits<float>::max())
    throw InputError(t.file, t.row_line[row], t.names[col],
                     "non-finite value '" + std::string(s) + "'");
  return v;
}

ColumnKind decide_kind(const FeatureTable& t, size_t col) {
  const size_t ncol = t.names.size(), nrow = t.row_entity.size();
  bool numeric = true, bar = false;
  for (size_t r = 0; r < nrow; ++r) {
    const std::string_view s = t.cells[r * ncol + col];
    if (s.empty()) continue;
    double v;
    if (numeric && !parse_double(s, v)) numeric = false;
    if (s.find('|') != std::string_view::npos) bar = true;
  }
  if (numeric) return ColumnKind::kDense;
  return bar ? ColumnKind::kMultiHot : ColumnKind::kOneHot;
}

void build_dense(const FeatureTable& t, size_t col, int32_t n, size_t out_col, size_t out_cols,
                 EntityFeatures& f) {
  const size_t ncol = t.names.size(), nrow = t.row_entity.size();
  std::vector<double> v(nrow, std::numeric_limits<double>::quiet_NaN());
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (size_t r = 0; r < nrow; ++r) {
    const std::string_view s = t.cells[r * ncol + col];
    if (s.empty()) continue;
    v[r] = finite_number(t, r, col, s);
    lo = std::min(lo, v[r]);
    hi = std::max(hi, v[r]);
  }
  if (lo > hi) lo = hi = 0.0;  // no values at all
  f.dense_names.push_back(t.names[col]);
  f.dense_min.push_back(static_cast<float>(lo));
  f.dense_max.push_back(static_cast<float>(hi));
  const double range = hi - lo;
  for (size_t r = 0; r < nrow; ++r) {
    const double x = std::isnan(v[r]) ? lo : v[r];  // empty cell: the column minimum
    const double y = range > 0 ? (x - lo) / range : 0.0;
    f.dense[static_cast<size_t>(t.row_entity[r]) * out_cols + out_col] =
        static_cast<float>(std::clamp(y, 0.0, 1.0));
  }
  (void)n;
}

void build_categorical(const FeatureTable& t, size_t col, bool multi, int32_t n,
                       EntityFeatures& f) {
  const size_t ncol = t.names.size(), nrow = t.row_entity.size();
  CategoricalField field;
  field.name = t.names[col];
  for (const auto& s : t.seed[col]) field.vocab.add(s);
  // Per row bags in file order (so the vocabulary follows first appearance),
  // then scattered into entity order.
  std::vector<int64_t> row_off(nrow + 1, 0);
  std::vector<int32_t> row_val;
  std::vector<int32_t> row_of(static_cast<size_t>(n), -1);
  for (size_t r = 0; r < nrow; ++r) {
    row_of[static_cast<size_t>(t.row_entity[r])] = static_cast<int32_t>(r);
    const std::string_view s = t.cells[r * ncol + col];
    const size_t start = row_val.size();
    auto push = [&](std::string_view part) {
      part = trim(part);
      if (part.empty()) return;
      const int32_t k = field.vocab.add(part);
      for (size_t i = start; i < row_val.size(); ++i)
        if (row_val[i] == k) return;
      row_val.push_back(k);
    };
    if (multi) {
      size_t b = 0;
      for (;;) {
        const size_t e = s.find('|', b);
        push(s.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b));
        if (e == std::string_view::npos) break;
        b = e + 1;
      }
    } else {
      push(s);
    }
    row_off[r + 1] = static_cast<int64_t>(row_val.size());
  }
  if (row_val.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw InputError(t.file, 0, field.name, "more than 2^31-1 categorical values");
  field.offsets.assign(static_cast<size_t>(n) + 1, 0);
  field.values.reserve(row_val.size());
  for (int32_t e = 0; e < n; ++e) {
    const int32_t r = row_of[static_cast<size_t>(e)];
    if (r >= 0)
      field.values.insert(field.values.end(), row_val.begin() + row_off[static_cast<size_t>(r)],
                          row_val.begin() + row_off[static_cast<size_t>(r) + 1]);
    field.offsets[static_cast<size_t>(e) + 1] = static_cast<int32_t>(field.values.size());
  }
  f.categorical.push_back(std::move(field));
}

}  // namespace

EntityFeatures build_features(const FeatureTable& t, int32_t n) {
  const size_t ncol = t.names.size();
  std::vector<ColumnKind> kinds(ncol);
  size_t n_dense = 0;
  for (size_t c = 0; c < ncol; ++c) {
    kinds[c] = t.kinds[c] == ColumnKind::kAuto ? decide_kind(t, c) : t.kinds[c];
    if (kinds[c] == ColumnKind::kDense) ++n_dense;
  }
  EntityFeatures f;
  f.n_entities = n;
  f.dense.assign(static_cast<size_t>(n) * n_dense, 0.0f);
  size_t d = 0;
  for (size_t c = 0; c < ncol; ++c) {
    if (kinds[c] == ColumnKind::kDense)
      build_dense(t, c, n, d++, n_dense, f);
    else
      build_categorical(t, c, kinds[c] == ColumnKind::kMultiHot, n, f);
  }
  return f;
}

void read_feature_csv(const std::string& path, const IdMap& ids, FeatureTable& t, char delimiter) {
  t.file = path;
  t.text = slurp(path);
  CsvReader lines(t.text, delimiter);
  std::vector<std::string_view> f;
  const auto record = [&] {
    const CsvReader::Status st = lines.next(f, t.arena);
    if (st == CsvReader::kUnterminatedQuote)
      throw InputError(path, lines.line_no(), "", "unterminated quote");
    return st == CsvReader::kRecord;
  };
  if (!record()) throw InputError(path, 0, "", "empty file");
  if (f.empty() || f[0].empty()) throw InputError(path, lines.line_no(), "", "header has no ID column");
  t.id_name = std::string(f[0]);
  for (size_t c = 1; c < f.size(); ++c) {
    if (f[c].empty())
      throw InputError(path, lines.line_no(), "column " + std::to_string(c + 1),
                       "empty column name in header");
    for (size_t k = 0; k < c; ++k)
      if (f[k] == f[c])
        throw InputError(path, lines.line_no(), std::string(f[c]), "duplicate column in header");
    t.add_column(std::string(f[c]), ColumnKind::kAuto);
  }
  const size_t want = f.size();
  while (record()) {
    if (f.size() < want)
      throw InputError(path, lines.line_no(), t.names[f.size() - 1], "missing column");
    if (f.size() > want)
      throw InputError(path, lines.line_no(), "",
                       "expected " + std::to_string(want) + " fields, found " +
                           std::to_string(f.size()));
    t.begin_row(ids, f[0], lines.line_no());
    t.cells.insert(t.cells.end(), f.begin() + 1, f.end());
  }
}

void apply_rating_threshold(Interactions& x, float threshold) {
  if (x.rating.empty() || std::isnan(threshold)) return;
  const bool has_ts = !x.timestamp.empty();
  size_t w = 0;
  for (size_t r = 0; r < x.user.size(); ++r) {
    if (!(x.rating[r] >= threshold)) continue;
    x.user[w] = x.user[r];
    x.item[w] = x.item[r];
    x.rating[w] = x.rating[r];
    if (has_ts) x.timestamp[w] = x.timestamp[r];
    ++w;
  }
  x.user.resize(w);
  x.item.resize(w);
  x.rating.resize(w);
  if (has_ts) x.timestamp.resize(w);
}

}  // namespace towerrec::data_detail

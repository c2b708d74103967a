// Feature tables and the shared parts of the readers (internal to host/data).
//
// Every reader fills a FeatureTable (one row per feature-file row: the dense
// entity index, the source line and one text cell per feature column) and
// build_features() turns it into EntityFeatures. Column kinds:
//   kAuto     : decided from the values: every non-empty cell a number -> dense
//               (a "nan"/"inf" cell is then an InputError naming the field);
//               otherwise any cell containing '|' -> multi-hot, else one-hot.
//               A column whose cells are all empty is dense (all zero).
//   kDense    : every non-empty cell must be a finite number.
//   kOneHot   : the cell is the category; empty -> empty bag.
//   kMultiHot : the cell is split on '|'; empty parts are skipped, repeats dropped.
// Dense columns are min-max normalised per column to [0, 1] (a constant column
// becomes 0); an empty dense cell takes the column minimum (so 0 after
// normalisation). Entities without a row get dense 0 and empty bags.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "towerrec/data.h"

namespace towerrec::data_detail {

enum class ColumnKind { kAuto, kDense, kOneHot, kMultiHot };

struct FeatureTable {
  std::string file;                              // for error messages
  std::string id_name = "id";                    // name of the ID column (errors)
  std::vector<std::string> names;                // feature columns
  std::vector<ColumnKind> kinds;                 // per column
  std::vector<std::vector<std::string>> seed;    // per column: vocabulary entries added first
  std::vector<int32_t> row_entity;               // per row
  std::vector<int64_t> row_line;                 // per row
  std::vector<std::string_view> cells;           // [rows x names.size()]
  std::string text;                              // owns the file the cells point into
  std::deque<std::string> arena;                 // owns cells built by the reader
  std::vector<uint8_t> seen;                     // per entity: has a row

  void add_column(std::string name, ColumnKind kind, std::vector<std::string> vocab = {}) {
    names.push_back(std::move(name));
    kinds.push_back(kind);
    seed.push_back(std::move(vocab));
  }
  // Starts a row for `id`: InputError when the ID is not in `ids` or already has a
  // row. The caller then pushes names.size() cells.
  void begin_row(const IdMap& ids, std::string_view id, int64_t line);
  std::string_view own(std::string s) {
    arena.push_back(std::move(s));
    return arena.back();
  }
};

// Builds the features of `n_entities` entities from the table.
EntityFeatures build_features(const FeatureTable& t, int32_t n_entities);

// Reads a generic feature CSV (header row; first column the ID) into `t`.
void read_feature_csv(const std::string& path, const IdMap& ids, FeatureTable& t, char delimiter = ',');

// Keeps the interactions with rating >= threshold (all when there are no
// ratings or the threshold is NaN).
void apply_rating_threshold(Interactions& x, float threshold);

}  // namespace towerrec::data_detail

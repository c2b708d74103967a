// Data: ID maps, interactions, entity features, and the readers that fill them.
//
// Every ID a user sees (in files, on screen) is the original string ID; inside
// the library entities are dense int32 indices assigned in order of first
// appearance. Readers throw towerrec::InputError naming file, line and field.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace towerrec {

// Original string IDs <-> dense indices.
//
// The ID rule, the same in every reader (interaction and feature CSVs,
// MovieLens files, ID lists, --user/--id flags, lookup_ids): an ID is an opaque
// string, compared byte for byte after its surrounding spaces and tabs are
// trimmed (also inside quotes). "7", " 7" and "\"7\"" are one ID; "007", "+7"
// and "7" are three. MovieLens files also require digits only (no sign).
// IdMap itself stores and compares exactly what it is given.
class IdMap {
 public:
  // Index of id, adding it when new.
  int32_t add(const std::string& id);
  int32_t add(std::string_view id);
  int32_t add(const char* id) { return add(std::string_view(id)); }
  // Index of id, or -1.
  int32_t find(const std::string& id) const;
  int32_t find(std::string_view id) const;
  int32_t find(const char* id) const { return find(std::string_view(id)); }
  const std::string& id(int32_t index) const { return ids_[static_cast<size_t>(index)]; }
  int32_t size() const { return static_cast<int32_t>(ids_.size()); }
  const std::vector<std::string>& ids() const { return ids_; }

 private:
  // Transparent hashing: lookups by string_view allocate nothing.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::vector<std::string> ids_;
  std::unordered_map<std::string, int32_t, Hash, std::equal_to<>> index_;
};

// Interaction log in dense indices. rating and timestamp are empty when the
// source had none.
struct Interactions {
  std::vector<int32_t> user;
  std::vector<int32_t> item;
  std::vector<float> rating;
  std::vector<int64_t> timestamp;
  int64_t size() const { return static_cast<int64_t>(user.size()); }
};

// One categorical field: each entity has a (possibly empty) bag of values from
// the field's vocabulary; one-hot fields have bags of size one.
struct CategoricalField {
  std::string name;
  IdMap vocab;
  std::vector<int32_t> offsets;  // [n_entities + 1]
  std::vector<int32_t> values;   // vocab indices
};

// Features of one entity kind (users or items), rows indexed by dense entity index.
struct EntityFeatures {
  int32_t n_entities = 0;
  std::vector<std::string> dense_names;
  std::vector<float> dense;       // [n_entities x dense_names.size()], min-max normalised to [0,1]
  std::vector<float> dense_min;   // per column, before normalisation
  std::vector<float> dense_max;
  std::vector<CategoricalField> categorical;
  int dense_dim() const { return static_cast<int>(dense_names.size()); }
  bool empty() const { return dense_names.empty() && categorical.empty(); }
};

struct Dataset {
  IdMap users;
  IdMap items;
  Interactions interactions;
  EntityFeatures user_features;   // n_entities == users.size() (or empty)
  EntityFeatures item_features;   // n_entities == items.size() (or empty)
  std::string source;             // description for logs
};

struct LoadOptions {
  // Keep interactions with rating >= threshold as positives (NaN: keep all).
  float rating_threshold = -1e30f;
  // Read feature files when the format has them.
  bool features = true;
  // Field separator of CSV inputs (interactions and feature files).
  char delimiter = ',';
};

// MovieLens-100k directory: u.data, u.user, u.item (features from the last two).
Dataset load_movielens_100k(const std::string& dir, const LoadOptions& opt = {});
// MovieLens-1M/10M directory: ratings.dat, users.dat (if present), movies.dat.
Dataset load_movielens_dat(const std::string& dir, const LoadOptions& opt = {});
// CSV inputs follow RFC 4180 (quoted fields may hold the delimiter, quotes as
// "" and line breaks), with `LoadOptions::delimiter` as separator; every file
// reader also takes gzip-compressed files (recognised by their magic bytes,
// e.g. data.csv.gz).
// Generic CSV with header user,item[,rating][,timestamp]; optional feature CSVs
// (first column the ID; numeric columns dense, string columns categorical,
// '|'-separated columns multi-hot). Empty feature paths are skipped.
Dataset load_csv(const std::string& interactions_csv, const std::string& user_features_csv,
                 const std::string& item_features_csv, const LoadOptions& opt = {});
// Picks the reader by what the path holds: a directory with u.data, one with
// ratings.dat, one with interactions.csv (+ users.csv, items.csv, as written by
// `towerrec synth`), or a .csv file.
Dataset load_auto(const std::string& path, const LoadOptions& opt = {});

// Reads an interaction CSV (header user,item[,rating][,timestamp]) into an
// existing dataset's ID maps. New IDs are added unless `allow_new` is false, in
// which case an unknown ID is an InputError.
Interactions read_interactions_csv(const std::string& path, IdMap& users, IdMap& items,
                                   bool allow_new = true, char delimiter = ',');
// As read_interactions_csv, but only user IDs may be new (added to `users`):
// an unknown item ID is an InputError naming the file, line and field "item".
// For histories of users the model has not seen.
Interactions read_interactions_new_users(const std::string& path, IdMap& users, const IdMap& items,
                                         char delimiter = ',');
// Writes interactions with original IDs (atomic).
void write_interactions_csv(const std::string& path, const Interactions& x, const IdMap& users,
                            const IdMap& items);

// Synthetic data with planted structure: latent user/item factors, observed
// features correlated with them, and popularity skew. Streams to
// dir/interactions.csv, dir/users.csv, dir/items.csv.
struct SynthOptions {
  int64_t users = 2000;
  int64_t items = 1000;
  double interactions_per_user = 20;
  int latent_dim = 8;
  double popularity_skew = 1.0;  // Zipf-like exponent of item popularity
  double noise = 0.5;            // feature noise
  double temperature = 0.5;      // softmax temperature of the preference score (lower: sharper)
  uint64_t seed = 1;
};
struct SynthSummary {
  int64_t users = 0, items = 0, interactions = 0;
};
SynthSummary write_synthetic(const std::string& dir, const SynthOptions& opt);

}  // namespace towerrec

// Export of a trained model's embeddings for use outside towerrec: NumPy .npy
// matrices (NPY format 1.0, little-endian float32, C order) and the ID maps
// that give each row its original ID.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "towerrec/data.h"
#include "towerrec/model.h"
#include "towerrec/recommend.h"

namespace towerrec {

// Writes a rows x cols float32 matrix (row-major) as an .npy file, atomically.
void write_npy(const std::string& path, const float* data, int64_t rows, int64_t cols);
// Writes a 1-D int64 (<i8) or int32 (<i4) vector of n elements as an .npy file, atomically.
void write_npy(const std::string& path, const int64_t* data, int64_t n);
void write_npy(const std::string& path, const int32_t* data, int64_t n);

// Writes an ID map as CSV "index,id" (atomic).
void write_id_map_csv(const std::string& path, const IdMap& ids);

// Files written by export_embeddings, relative to its directory.
inline constexpr const char* kUserEmbeddingsFile = "user_embeddings.npy";
inline constexpr const char* kItemEmbeddingsFile = "item_embeddings.npy";
inline constexpr const char* kUserIdsFile = "users.csv";
inline constexpr const char* kItemIdsFile = "items.csv";
inline constexpr const char* kSeenOffsetsFile = "seen_offsets.npy";
inline constexpr const char* kSeenItemsFile = "seen_items.npy";

// Embeds every user and item with the model (inference mode) and writes
// dir/user_embeddings.npy [n_users x d], dir/item_embeddings.npy [n_items x d],
// dir/users.csv and dir/items.csv. Creates dir when missing. `progress`
// (optional) is called with (rows written, users + items) after each matrix.
void export_embeddings(TwoTowerModel& model, const IdMap& users, const IdMap& items,
                       const std::string& dir,
                       const std::function<void(int64_t done, int64_t total)>& progress = {});

// Writes each user's seen (training) items as CSR: dir/seen_offsets.npy
// (int64 [n_users + 1]) and dir/seen_items.npy (int32, item rows), user u's
// sorted items being items[offsets[u] .. offsets[u + 1]).
void export_seen(const UserItems& seen, const std::string& dir);

}  // namespace towerrec

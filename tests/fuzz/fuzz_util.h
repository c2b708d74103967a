// Shared pieces of the fuzz targets (libFuzzer, built with -DTOWERREC_FUZZ=ON).
//
// The parsers read files, so each input is written to a per-process scratch
// directory first (under /dev/shm when it exists: no disk traffic). Inputs that
// stand for several files separate them with a line "====" (see split_parts),
// which keeps the seed corpus readable.
//
// A parser may reject an input only by throwing towerrec::Error (InputError
// included); any other exception, a crash, a sanitizer report or a broken
// invariant (FUZZ_CHECK) is a finding.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "towerrec/data.h"

namespace towerrec::fuzz {

#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);   \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

// The scratch directory, created on first use and removed at exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    struct stat st;
    std::string base = (::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && ::access("/dev/shm", W_OK) == 0)
                           ? "/dev/shm"
                           : (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp");
    std::string t = base + "/towerrec_fuzz_XXXXXX";
    if (!::mkdtemp(t.data())) std::abort();
    static std::string keep;
    keep = t;
    std::atexit([] {
      const std::string cmd = "rm -rf '" + keep + "'";
      if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", keep.c_str());
    });
    return t;
  }();
  return dir;
}

inline std::string scratch(const std::string& name) { return scratch_dir() + "/" + name; }

inline void write_bytes(const std::string& path, std::string_view bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
  std::fclose(f);
}

// Splits the input at lines that are exactly "====".
inline std::vector<std::string_view> split_parts(const uint8_t* data, size_t size) {
  std::string_view all(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  constexpr std::string_view sep = "\n====\n";
  size_t at = 0;
  for (;;) {
    const size_t k = all.find(sep, at);
    if (k == std::string_view::npos) break;
    parts.push_back(all.substr(at, k + 1 - at));
    at = k + sep.size();
  }
  parts.push_back(all.substr(at));
  return parts;
}

// Writes parts[j] to dir/names[j] (a name beyond the parts is removed, so the
// reader sees it absent).
inline void write_parts(const std::string& dir, const std::vector<std::string_view>& parts,
                        const std::vector<const char*>& names) {
  for (size_t j = 0; j < names.size(); ++j) {
    const std::string p = dir + "/" + names[j];
    if (j < parts.size()) write_bytes(p, parts[j]);
    else std::remove(p.c_str());
  }
}

// What every reader promises about the features it returns.
inline void check_features(const EntityFeatures& f, int32_t n) {
  FUZZ_CHECK(f.n_entities == n);
  FUZZ_CHECK(f.dense.size() == static_cast<size_t>(n) * f.dense_names.size());
  FUZZ_CHECK(f.dense_min.size() == f.dense_names.size() && f.dense_max.size() == f.dense_names.size());
  for (float x : f.dense) FUZZ_CHECK(std::isfinite(x) && x >= 0.0f && x <= 1.0f);
  for (const auto& c : f.categorical) {
    FUZZ_CHECK(c.offsets.size() == static_cast<size_t>(n) + 1);
    FUZZ_CHECK(c.offsets.front() == 0 && static_cast<size_t>(c.offsets.back()) == c.values.size());
    for (size_t e = 0; e + 1 < c.offsets.size(); ++e) FUZZ_CHECK(c.offsets[e] <= c.offsets[e + 1]);
    for (int32_t v : c.values) FUZZ_CHECK(v >= 0 && v < c.vocab.size());
  }
}

inline void check_interactions(const Interactions& x, const IdMap& users, const IdMap& items) {
  FUZZ_CHECK(x.item.size() == x.user.size());
  FUZZ_CHECK(x.rating.empty() || x.rating.size() == x.user.size());
  FUZZ_CHECK(x.timestamp.empty() || x.timestamp.size() == x.user.size());
  for (size_t r = 0; r < x.user.size(); ++r) {
    FUZZ_CHECK(x.user[r] >= 0 && x.user[r] < users.size());
    FUZZ_CHECK(x.item[r] >= 0 && x.item[r] < items.size());
  }
  for (float v : x.rating) FUZZ_CHECK(std::isfinite(v));
}

inline void check_dataset(const Dataset& ds) {
  const Interactions& x = ds.interactions;
  FUZZ_CHECK(x.item.size() == x.user.size());
  FUZZ_CHECK(x.rating.empty() || x.rating.size() == x.user.size());
  FUZZ_CHECK(x.timestamp.empty() || x.timestamp.size() == x.user.size());
  for (size_t r = 0; r < x.user.size(); ++r) {
    FUZZ_CHECK(x.user[r] >= 0 && x.user[r] < ds.users.size());
    FUZZ_CHECK(x.item[r] >= 0 && x.item[r] < ds.items.size());
  }
  for (float v : x.rating) FUZZ_CHECK(std::isfinite(v));
  if (ds.user_features.empty()) FUZZ_CHECK(ds.user_features.n_entities == ds.users.size());
  else check_features(ds.user_features, ds.users.size());
  if (ds.item_features.empty()) FUZZ_CHECK(ds.item_features.n_entities == ds.items.size());
  else check_features(ds.item_features, ds.items.size());
}

}  // namespace towerrec::fuzz

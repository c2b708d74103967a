// towerrec_topk_bench: constants, options and their parsing.
// Private to towerrec_topk_bench: bench/topk_grid/main.cu includes it once,
// so its helpers live in an unnamed namespace like the rest of that program.
#pragma once

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "towerrec/error.h"
#include "towerrec/options.h"

namespace {

using towerrec::Error;
using towerrec::cuda::CudaBackend;
using towerrec::TopkPath;
using towerrec::TopkPrecision;

constexpr int64_t kTileUsers = towerrec::cuda::kTopkTileUsers;  // the two-kernel path's score
constexpr int64_t kTileItems = towerrec::cuda::kTopkTileItems;  // tile (the backend's defaults)
constexpr int64_t kMaxK = 1024;        // the CUDA backend's largest k
constexpr size_t kBareCapBytes = size_t{4} << 30;
constexpr size_t kMarginBytes = size_t{512} << 20;

const char* const kUsage =
    "usage: towerrec_topk_bench [--users LIST] [--items LIST] [--dims LIST] [--ks LIST]\n"
    "         [--paths two-kernel,fused] [--precisions fp32,tf32,bf16] [--budget-s S]\n"
    "         [--seed N] [--min-time-s S] [--max-reps N] [--recall-users N]\n"
    "         [--ceiling-n N] [--device N] [--json FILE] [--csv FILE]\n"
    "LIST is comma-separated; counts take a k or M suffix (100k, 10M). Defaults:\n"
    "  --users 4096,65536 --items 100k,1M,10M --dims 64,128 --ks 10,100,1000\n"
    "  --paths two-kernel,fused --precisions fp32,tf32,bf16 --budget-s 300\n"
    "  --seed 1 --min-time-s 0.2 --max-reps 10 --recall-users 4096 --ceiling-n 8192\n";

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- options -------------------------------------------------------------------------

struct Options {
  std::vector<int64_t> users{4096, 65536};
  std::vector<int64_t> items{100000, 1000000, 10000000};
  std::vector<int64_t> dims{64, 128};
  std::vector<int64_t> ks{10, 100, 1000};
  std::vector<TopkPath> paths{TopkPath::kGemm, TopkPath::kFused};
  std::vector<TopkPrecision> precisions{TopkPrecision::kFP32, TopkPrecision::kTF32,
                                        TopkPrecision::kBF16};
  double budget_s = 300;
  uint64_t seed = 1;
  double min_time_s = 0.2;
  int max_reps = 10;
  int64_t recall_users = 4096;
  int64_t ceiling_n = 8192;
  int device = 0;
  std::string json_path, csv_path;
};

const char* path_name(TopkPath p) { return p == TopkPath::kFused ? "fused" : "two-kernel"; }

const char* precision_name(TopkPrecision p) { return towerrec::to_string(p); }

std::vector<std::string> split_list(const std::string& flag, const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos
                                                                         : comma - start);
    if (item.empty()) throw Error(flag + ": empty entry in '" + s + "'");
    out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// "100000", "100k", "10M" -> a positive count.
int64_t parse_count(const std::string& flag, const std::string& s) {
  size_t i = 0;
  int64_t v = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    if (v > (INT64_MAX - 9) / 10) throw Error(flag + ": '" + s + "' is too large");
    v = v * 10 + (s[i] - '0');
    ++i;
  }
  const std::string suffix = s.substr(i);
  int64_t mult = 1;
  if (suffix == "k" || suffix == "K") mult = 1000;
  else if (suffix == "m" || suffix == "M") mult = 1000000;
  else if (!suffix.empty() || i == 0) throw Error(flag + ": '" + s + "' is not a count");
  if (v <= 0) throw Error(flag + ": '" + s + "' must be positive");
  if (v > INT64_MAX / mult) throw Error(flag + ": '" + s + "' is too large");
  return v * mult;
}

std::vector<int64_t> parse_counts(const std::string& flag, const std::string& s, int64_t max) {
  std::vector<int64_t> out;
  for (const std::string& item : split_list(flag, s)) {
    const int64_t v = parse_count(flag, item);
    if (v > max) throw Error(flag + ": " + item + " exceeds " + std::to_string(max));
    out.push_back(v);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

int64_t parse_one(const std::string& flag, const std::string& s, int64_t max) {
  const int64_t v = parse_count(flag, s);
  if (v > max) throw Error(flag + ": " + s + " exceeds " + std::to_string(max));
  return v;
}

double parse_double(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v) || v < 0)
    throw Error(flag + ": '" + s + "' is not a non-negative number");
  return v;
}

// False after --help (usage printed); throws Error on a bad argument.
bool parse_args(int argc, char** argv, Options& o) {
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return false;
    }
    if (a + 1 >= argc) throw Error("unknown argument or missing value: " + arg);
    const std::string v = argv[++a];
    if (arg == "--users") o.users = parse_counts(arg, v, INT_MAX);
    else if (arg == "--items") o.items = parse_counts(arg, v, INT_MAX);
    else if (arg == "--dims") o.dims = parse_counts(arg, v, 65536);
    else if (arg == "--ks") o.ks = parse_counts(arg, v, INT_MAX);
    else if (arg == "--paths") {
      bool gemm = false, fused = false;
      for (const std::string& p : split_list(arg, v)) {
        if (p == "two-kernel" || p == "gemm") gemm = true;
        else if (p == "fused") fused = true;
        else throw Error("--paths: '" + p + "': expected two-kernel (or gemm) or fused");
      }
      o.paths.clear();
      if (gemm) o.paths.push_back(TopkPath::kGemm);
      if (fused) o.paths.push_back(TopkPath::kFused);
    } else if (arg == "--precisions") {
      bool on[3] = {false, false, false};
      for (const std::string& p : split_list(arg, v))
        on[static_cast<int>(towerrec::parse_enum<TopkPrecision>(p))] = true;
      o.precisions.clear();
      for (TopkPrecision p : {TopkPrecision::kFP32, TopkPrecision::kTF32, TopkPrecision::kBF16})
        if (on[static_cast<int>(p)]) o.precisions.push_back(p);
    } else if (arg == "--budget-s") o.budget_s = parse_double(arg, v);
    else if (arg == "--seed") {
      char* end = nullptr;
      o.seed = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || v[0] == '-' || *end != '\0') throw Error("--seed: '" + v + "' is not a number");
    }
    else if (arg == "--min-time-s") o.min_time_s = parse_double(arg, v);
    else if (arg == "--max-reps") o.max_reps = static_cast<int>(parse_one(arg, v, 1000));
    else if (arg == "--recall-users") o.recall_users = parse_count(arg, v);
    else if (arg == "--ceiling-n") o.ceiling_n = parse_one(arg, v, 32768);
    else if (arg == "--device") {
      char* end = nullptr;
      const long d = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || d < 0 || d > 1024) throw Error("--device: bad index '" + v + "'");
      o.device = static_cast<int>(d);
    } else if (arg == "--json") o.json_path = v;
    else if (arg == "--csv") o.csv_path = v;
    else throw Error("unknown argument: " + arg);
  }
  return true;
}

}  // namespace

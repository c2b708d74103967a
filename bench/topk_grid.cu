// towerrec_topk_bench: the all-users top-K on one GPU over a grid of users,
// items, dimension d and K, read against the cuBLAS GEMM that produces the same
// scores.
//
// usage: towerrec_topk_bench [--users LIST] [--items LIST] [--dims LIST] [--ks LIST]
//          [--paths two-kernel,fused] [--precisions fp32,tf32,bf16] [--budget-s S]
//          [--seed N] [--min-time-s S] [--max-reps N] [--recall-users N]
//          [--ceiling-n N] [--device N] [--json FILE] [--csv FILE]
// LIST is comma-separated; counts take a k or M suffix (100k, 10M).
//
// Per (users, items, d), U[users x d] and V[items x d] are drawn uniform in
// [-1, 1) on the device from --seed; nothing is excluded (no seen-item lists).
// Per cell (k, path, precision):
//   topk       CudaBackend::topk after set_topk_path / set_topk_precision
//              (path two-kernel = TopkPath::kGemm, fused = TopkPath::kFused)
//   GEMM       the score GEMMs the two-kernel path issues, alone: the same tiles
//              (kTileUsers x kTileItems, set on the backend), the same cuBLAS
//              call on the backend's handle and stream, the same precision; for
//              bf16 on inputs converted beforehand
//   conv       bf16 only: the fp32 -> bf16 conversions of each U block and V
//              chunk that the two-kernel path runs, alone
//   select     derived: topk - GEMM - conv (selection kernels, their memset
//              and the final key decoding)
//   bare GEMM  the same users x items scores, same precision, from the fewest
//              cuBLAS calls whose output fits (the whole matrix, else tiles of
//              at most 4 GiB)
//   recall@k   overlap of the item lists with the fp32 two-kernel result on the
//              same inputs, over the first --recall-users users
// Ceilings: one square GEMM (--ceiling-n, default 8192) per precision, in the
// configuration topk uses (fp32: cublasSgemm; tf32: cublasGemmEx, FP32 in and
// out, CUBLAS_COMPUTE_32F_FAST_TF32; bf16: BF16 in, FP32 out and compute).
// Timing: CUDA events on the backend's stream; one warm-up call, then repeats
// until about --min-time-s (the median is reported; ceilings take the best).
//
// Cells run in increasing order of work. A cell is skipped when its buffers do
// not fit the free device memory, when the fused path does not support it
// (CudaBackend::topk_fused_supported), when k exceeds the backend's maximum, or
// when its estimated time exceeds what is left of --budget-s; once the budget
// is spent no cell starts. The table rows are printed as cells finish, and
// --json / --csv are rewritten (atomically) after every cell, so a run cut
// short still leaves its results. Without a CUDA device the program prints
// "no CUDA device: skipped" and exits 0.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "towerrec/rng.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_testing.h"
#include "towerrec/backend.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace {

using towerrec::Error;
using towerrec::cuda::CudaBackend;
using towerrec::cuda::TopkPath;
using towerrec::cuda::TopkPrecision;

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

const char* precision_name(TopkPrecision p) { return towerrec::cuda::topk_precision_name(p); }

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
        on[static_cast<int>(towerrec::cuda::parse_topk_precision(p))] = true;
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

// ---- results -------------------------------------------------------------------------

struct Cell {
  int64_t users = 0, items = 0, d = 0, k = 0;
  TopkPath path = TopkPath::kGemm;
  TopkPrecision precision = TopkPrecision::kFP32;
  bool ok = false;
  std::string reason;  // why skipped
  double topk_ms = NAN;
  int topk_reps = 0, topk_inner = 0;
  double gemm_ms = NAN, conv_ms = NAN, select_ms = NAN;  // two-kernel only
  double bare_ms = NAN;
  std::string bare_tiles;
  double recall = NAN;
  int64_t recall_users = 0;
  bool reference = false;  // the fp32 two-kernel result the others are compared with
  double est_s = NAN;      // the estimate the budget check used

  double flops() const { return 2.0 * double(users) * double(items) * double(d); }
};

std::string json_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

std::string jnum(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string jstr(const std::string& s) { return "\"" + json_escape(s) + "\""; }

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string csv_num(double v) { return std::isfinite(v) ? jnum(v) : ""; }

struct Report {
  const Options* opt = nullptr;
  std::string device;
  std::map<TopkPrecision, double> ceiling_tflops;
  std::vector<Cell> cells;  // in the order they were decided
  double elapsed_s = 0;
  bool budget_spent = false;
  bool complete = false;
  std::string error;

  double ceiling(TopkPrecision p) const {
    const auto it = ceiling_tflops.find(p);
    return it == ceiling_tflops.end() ? NAN : it->second;
  }
};

// Derived figures of a measured cell.
struct Derived {
  double users_per_s = NAN, topk_tflops = NAN, gemm_tflops = NAN, gemm_pct = NAN,
         bare_tflops = NAN, bare_pct = NAN, topk_over_bare = NAN;
};

Derived derive(const Cell& c, const Report& r) {
  Derived x;
  if (!c.ok) return x;
  const double ceil = r.ceiling(c.path == TopkPath::kFused ? TopkPrecision::kFP32 : c.precision);
  x.users_per_s = double(c.users) / (c.topk_ms * 1e-3);
  x.topk_tflops = c.flops() / c.topk_ms * 1e-9;
  x.gemm_tflops = c.flops() / c.gemm_ms * 1e-9;  // NaN where gemm_ms is
  x.gemm_pct = 100.0 * x.gemm_tflops / ceil;
  x.bare_tflops = c.flops() / c.bare_ms * 1e-9;
  x.bare_pct = 100.0 * x.bare_tflops / ceil;
  x.topk_over_bare = c.topk_ms / c.bare_ms;
  return x;
}

std::string to_json(const Report& r) {
  const Options& o = *r.opt;
  auto list = [](const std::vector<int64_t>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
  };
  std::string s = "{\n";
  s += "  \"tool\": \"towerrec_topk_bench\",\n";
  s += "  \"device\": " + jstr(r.device) + ",\n";
  s += "  \"grid\": {\"users\": " + list(o.users) + ", \"items\": " + list(o.items) +
       ", \"dims\": " + list(o.dims) + ", \"ks\": " + list(o.ks) + ", \"paths\": [";
  for (size_t i = 0; i < o.paths.size(); ++i) s += std::string(i ? ", " : "") + jstr(path_name(o.paths[i]));
  s += "], \"precisions\": [";
  for (size_t i = 0; i < o.precisions.size(); ++i)
    s += std::string(i ? ", " : "") + jstr(precision_name(o.precisions[i]));
  s += "]},\n";
  s += "  \"seed\": " + std::to_string(o.seed) + ",\n";
  s += "  \"inputs\": \"U, V uniform in [-1, 1) from the seed; no excluded items\",\n";
  s += "  \"two_kernel_tiles\": {\"users\": " + std::to_string(kTileUsers) +
       ", \"items\": " + std::to_string(kTileItems) + "},\n";
  s += "  \"ceiling_n\": " + std::to_string(o.ceiling_n) + ",\n";
  s += "  \"ceiling_tflops\": {";
  bool first = true;
  for (const auto& [p, t] : r.ceiling_tflops) {
    s += std::string(first ? "" : ", ") + jstr(precision_name(p)) + ": " + jnum(t);
    first = false;
  }
  s += "},\n";
  s += "  \"budget_s\": " + jnum(o.budget_s) + ",\n";
  s += "  \"elapsed_s\": " + jnum(r.elapsed_s) + ",\n";
  s += "  \"budget_spent\": " + std::string(r.budget_spent ? "true" : "false") + ",\n";
  s += "  \"complete\": " + std::string(r.complete ? "true" : "false") + ",\n";
  if (!r.error.empty()) s += "  \"error\": " + jstr(r.error) + ",\n";
  s += "  \"cells\": [";
  for (size_t i = 0; i < r.cells.size(); ++i) {
    const Cell& c = r.cells[i];
    const Derived x = derive(c, r);
    s += i ? ",\n    {" : "\n    {";
    s += "\"users\": " + std::to_string(c.users) + ", \"items\": " + std::to_string(c.items) +
         ", \"d\": " + std::to_string(c.d) + ", \"k\": " + std::to_string(c.k) +
         ", \"path\": " + jstr(path_name(c.path)) +
         ", \"precision\": " + jstr(precision_name(c.precision)) +
         ", \"status\": " + jstr(c.ok ? "ok" : "skipped");
    if (!c.ok) {
      s += ", \"reason\": " + jstr(c.reason) + "}";
      continue;
    }
    s += ", \"topk_ms\": " + jnum(c.topk_ms) + ", \"topk_reps\": " + std::to_string(c.topk_reps) +
         ", \"topk_calls_per_rep\": " + std::to_string(c.topk_inner) +
         ", \"users_per_s\": " + jnum(x.users_per_s) + ", \"topk_tflops\": " + jnum(x.topk_tflops) +
         ", \"gemm_ms\": " + jnum(c.gemm_ms) + ", \"conv_ms\": " + jnum(c.conv_ms) +
         ", \"select_ms_derived\": " + jnum(c.select_ms) +
         ", \"gemm_tflops\": " + jnum(x.gemm_tflops) + ", \"gemm_pct_of_ceiling\": " + jnum(x.gemm_pct) +
         ", \"bare_gemm_ms\": " + jnum(c.bare_ms) + ", \"bare_gemm_tiles\": " + jstr(c.bare_tiles) +
         ", \"bare_gemm_tflops\": " + jnum(x.bare_tflops) +
         ", \"bare_gemm_pct_of_ceiling\": " + jnum(x.bare_pct) +
         ", \"topk_over_bare_gemm\": " + jnum(x.topk_over_bare) +
         ", \"recall_vs_fp32\": " + (c.reference ? std::string("\"reference\"") : jnum(c.recall)) +
         ", \"recall_users\": " + std::to_string(c.recall_users) +
         ", \"estimated_s\": " + jnum(c.est_s) + "}";
  }
  s += r.cells.empty() ? "]\n}\n" : "\n  ]\n}\n";
  return s;
}

std::string to_csv(const Report& r) {
  std::string s =
      "users,items,d,k,path,precision,status,reason,topk_ms,users_per_s,topk_tflops,gemm_ms,"
      "conv_ms,select_ms_derived,gemm_tflops,gemm_pct_of_ceiling,bare_gemm_ms,bare_gemm_tiles,"
      "topk_over_bare_gemm,recall_vs_fp32,recall_users\n";
  for (const Cell& c : r.cells) {
    s += std::to_string(c.users) + "," + std::to_string(c.items) + "," + std::to_string(c.d) + "," +
         std::to_string(c.k) + "," + path_name(c.path) + "," + precision_name(c.precision) + ",";
    if (!c.ok) {
      s += "skipped," + csv_field(c.reason) + ",,,,,,,,,,,,,\n";
      continue;
    }
    const Derived x = derive(c, r);
    s += "ok,," + csv_num(c.topk_ms) + "," +
         csv_num(x.users_per_s) + "," + csv_num(x.topk_tflops) + "," + csv_num(c.gemm_ms) + "," +
         csv_num(c.conv_ms) + "," + csv_num(c.select_ms) + "," + csv_num(x.gemm_tflops) + "," +
         csv_num(x.gemm_pct) + "," + csv_num(c.bare_ms) + "," + csv_field(c.bare_tiles) + "," +
         csv_num(x.topk_over_bare) + "," +
         (c.reference ? std::string("reference") : csv_num(c.recall)) + "," +
         std::to_string(c.recall_users) + "\n";
  }
  return s;
}

void write_outputs(const Report& r) {
  if (!r.opt->json_path.empty()) towerrec::write_file_atomic(r.opt->json_path, to_json(r));
  if (!r.opt->csv_path.empty()) towerrec::write_file_atomic(r.opt->csv_path, to_csv(r));
}

// ---- table -----------------------------------------------------------------------------

std::string count_str(int64_t v) {
  if (v >= 1000000 && v % 1000000 == 0) return std::to_string(v / 1000000) + "M";
  if (v >= 1000 && v % 1000 == 0) return std::to_string(v / 1000) + "k";
  return std::to_string(v);
}

std::string fmt(const char* f, double v) {
  if (!std::isfinite(v)) return "-";
  char buf[48];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string ms_str(double v) {
  if (!std::isfinite(v)) return "-";
  const double a = std::fabs(v);
  return fmt(a >= 100 ? "%.0f" : a >= 10 ? "%.1f" : a >= 1 ? "%.2f" : "%.3f", v);
}

std::string rate_str(double v) {
  if (!std::isfinite(v)) return "-";
  if (v >= 1e9) return fmt("%.2fG", v * 1e-9);
  if (v >= 1e6) return fmt("%.2fM", v * 1e-6);
  if (v >= 1e3) return fmt("%.1fk", v * 1e-3);
  return fmt("%.0f", v);
}

// Five decimals, rounded down: "1" only for an exact match.
std::string recall_str(double v) {
  if (!std::isfinite(v)) return "-";
  if (v >= 1.0) return "1";
  return fmt("%.5f", std::floor(v * 1e5) / 1e5);
}

void print_header() {
  std::printf(
      "| users | items | d | k | path | prec | topk ms | users/s | topk TFLOP/s | GEMM ms | "
      "conv ms | select ms* | GEMM TFLOP/s | GEMM %% ceil | bare GEMM ms | topk/bare | "
      "recall@k |\n"
      "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);
}

void print_row(const Cell& c, const Report& r) {
  const Derived x = derive(c, r);
  std::printf("| %s | %s | %lld | %lld | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
              count_str(c.users).c_str(), count_str(c.items).c_str(), static_cast<long long>(c.d),
              static_cast<long long>(c.k), path_name(c.path), precision_name(c.precision),
              ms_str(c.topk_ms).c_str(), rate_str(x.users_per_s).c_str(),
              fmt("%.1f", x.topk_tflops).c_str(), ms_str(c.gemm_ms).c_str(),
              ms_str(c.conv_ms).c_str(), ms_str(c.select_ms).c_str(),
              fmt("%.1f", x.gemm_tflops).c_str(), fmt("%.0f%%", x.gemm_pct).c_str(),
              ms_str(c.bare_ms).c_str(), fmt("%.2f", x.topk_over_bare).c_str(),
              c.reference ? "ref" : recall_str(c.recall).c_str());
  std::fflush(stdout);
}

// ---- device helpers ----------------------------------------------------------------------

class OutOfMemory : public Error {
 public:
  using Error::Error;
};

// cudaMalloc'd bytes, freed on scope exit (errors there are ignored: a
// destructor cannot throw). Out of memory throws OutOfMemory, anything else
// towerrec::Error.
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(size_t bytes, const char* what) {
    if (bytes == 0) return;
    const cudaError_t e = cudaMalloc(&p_, bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: clear it
      p_ = nullptr;
      throw OutOfMemory(std::string("out of device memory allocating ") + what + " (" +
                        std::to_string(bytes >> 20) + " MiB)");
    }
    if (e != cudaSuccess) towerrec::cuda::throw_cuda_error(e, what, __FILE__, __LINE__);
  }
  ~DevBuf() {
    if (p_) cudaFree(p_);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = o.p_;
      o.p_ = nullptr;
    }
    return *this;
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

class Events {
 public:
  explicit Events(cudaStream_t s) : s_(s) {
    CUDA_CHECK(cudaEventCreate(&a_));
    CUDA_CHECK(cudaEventCreate(&b_));
  }
  ~Events() {
    if (a_) cudaEventDestroy(a_);
    if (b_) cudaEventDestroy(b_);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;

  // Milliseconds per call of `inner` back-to-back calls of fn (queued on the stream).
  template <typename F>
  double ms(F& fn, int inner) {
    CUDA_CHECK(cudaEventRecord(a_, s_));
    for (int i = 0; i < inner; ++i) fn();
    CUDA_CHECK(cudaEventRecord(b_, s_));
    CUDA_CHECK(cudaEventSynchronize(b_));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, a_, b_));
    return double(t) / inner;
  }

 private:
  cudaStream_t s_;
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

struct Timing {
  double median_ms = NAN, best_ms = NAN;
  int reps = 0, inner = 0;
};

// One warm-up call (allocations, cuBLAS heuristics), then `reps` timings of
// `inner` calls each, together about min_time_s (at least one timing).
template <typename F>
Timing measure(Events& ev, const Options& o, F fn) {
  const double warm = std::max(ev.ms(fn, 1), 1e-3);
  const double target = o.min_time_s * 1e3;
  int reps = 1, inner = 1;
  if (warm < target) {
    reps = static_cast<int>(std::clamp(target / warm, 1.0, double(std::max(1, o.max_reps))));
    inner = static_cast<int>(std::clamp(target / (reps * warm), 1.0, 1000.0));
  }
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) t.push_back(ev.ms(fn, inner));
  std::sort(t.begin(), t.end());
  Timing out;
  const size_t n = t.size();
  out.median_ms = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
  out.best_ms = t[0];
  out.reps = reps;
  out.inner = inner;
  return out;
}

using towerrec::rng::mix64;     // splitmix64's finalizer
using towerrec::cuda::to_bf16;  // the two-kernel path's conversion (kernels/topk/cuda.cu)

// p[i] uniform in [-1, 1) (24 random bits), a function of (seed, i) only.
__global__ void uniform_kernel(float* __restrict__ p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const uint64_t h = mix64(seed + mix64(static_cast<uint64_t>(i)));
    p[i] = static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }
}

void fill_uniform(cudaStream_t s, float* p, int64_t n, uint64_t seed) {
  uniform_kernel<<<towerrec::cuda::grid_for(n), towerrec::cuda::kThreads, 0, s>>>(p, n, seed);
  CUDA_CHECK_LAUNCH(s, "uniform_kernel");
}

// Row-major S[nb x nc] = U[u0 .. u0+nb) . V[c0 .. c0+nc)^T, the call kernels/topk/cuda.cu makes:
// column-major S^T[nc x nb] = V_chunk (OP_T of column-major [d x nc]) . U_blk^T.
// U and V are float for fp32/tf32 and __nv_bfloat16 for bf16.
void score_gemm(cublasHandle_t h, TopkPrecision p, const void* V, const void* U, int64_t c0,
                int64_t u0, int64_t nc, int64_t nb, int d, float* S) {
  const float one = 1.0f, zero = 0.0f;
  const int m = static_cast<int>(nc), n = static_cast<int>(nb);
  switch (p) {
    case TopkPrecision::kFP32:
      CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, d, &one,
                               static_cast<const float*>(V) + c0 * d, d,
                               static_cast<const float*>(U) + u0 * d, d, &zero, S, m));
      break;
    case TopkPrecision::kTF32:
      CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, d, &one,
                                static_cast<const float*>(V) + c0 * d, CUDA_R_32F, d,
                                static_cast<const float*>(U) + u0 * d, CUDA_R_32F, d, &zero, S,
                                CUDA_R_32F, m, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
      break;
    case TopkPrecision::kBF16:
      CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, d, &one,
                                static_cast<const __nv_bfloat16*>(V) + c0 * d, CUDA_R_16BF, d,
                                static_cast<const __nv_bfloat16*>(U) + u0 * d, CUDA_R_16BF, d,
                                &zero, S, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      break;
  }
}

// Users per block and items per chunk of a tiled pass over the score matrix.
struct Tiles {
  int64_t users = 1, items = 1;
  int64_t count(int64_t n_users, int64_t n_items) const {
    return ((n_users + users - 1) / users) * ((n_items + items - 1) / items);
  }
};

// The two-kernel path's tiles (kernels/topk/cuda.cu with the tiles set on the backend).
Tiles topk_tiles(int64_t users, int64_t items) {
  return {std::min(users, std::min<int64_t>(kTileUsers, 65535)),
          std::max<int64_t>(1, std::min(items, kTileItems))};
}

// The fewest tiles whose output fits cap_bytes: the whole matrix where it fits,
// else every user with as many items as fit (multiples of 256), else chunks of
// up to 65536 items with as many users as fit.
Tiles bare_tiles(int64_t users, int64_t items, size_t cap_bytes) {
  const int64_t cap = static_cast<int64_t>(cap_bytes / sizeof(float));
  if (users * items <= cap) return {users, items};  // users, items <= INT_MAX: no overflow
  int64_t ic = cap / users;
  if (ic >= std::min<int64_t>(items, 65536)) return {users, std::min(items, ic / 256 * 256)};
  ic = std::min<int64_t>(items, 65536);
  return {std::clamp<int64_t>(cap / ic, 1, users), ic};
}

std::string tiles_str(const Tiles& t, int64_t users, int64_t items) {
  if (t.users >= users && t.items >= items) return "one call";
  return std::to_string(t.count(users, items)) + " calls of " + std::to_string(t.users) + " x " +
         std::to_string(t.items);
}

// A tiled pass: per block of users, optionally the block's bf16 conversion; per
// chunk of items, optionally the chunk's bf16 conversion and the score GEMM into
// S (ld = chunk width). With gemm and convert both on, this is the GEMM part of
// topk's two-kernel path.
struct Inputs {
  int64_t users = 0, items = 0;
  int d = 0;
  const float* U = nullptr;
  const float* V = nullptr;
  const __nv_bfloat16* Ub = nullptr;  // whole U and V in bf16 (converted beforehand)
  const __nv_bfloat16* Vb = nullptr;
};

void tiled_pass(cudaStream_t s, cublasHandle_t h, TopkPrecision p, const Inputs& in,
                const Tiles& t, bool gemm, bool convert, float* S, __nv_bfloat16* Ut,
                __nv_bfloat16* Vt) {
  const int d = in.d;
  const bool bf16 = p == TopkPrecision::kBF16;
  const void* Uarg = bf16 ? static_cast<const void*>(in.Ub) : in.U;
  const void* Varg = bf16 ? static_cast<const void*>(in.Vb) : in.V;
  for (int64_t u0 = 0; u0 < in.users; u0 += t.users) {
    const int64_t nb = std::min(t.users, in.users - u0);
    if (convert) to_bf16(s, in.U + u0 * d, nb * d, Ut);
    for (int64_t c0 = 0; c0 < in.items; c0 += t.items) {
      const int64_t nc = std::min(t.items, in.items - c0);
      if (convert) to_bf16(s, in.V + c0 * d, nc * d, Vt);
      if (gemm) score_gemm(h, p, Varg, Uarg, c0, u0, nc, nb, d, S);
    }
  }
}

// The item lists of the first `rows` users, on the host.
std::vector<int32_t> copy_rows(cudaStream_t s, const int32_t* items, int64_t rows, int64_t k) {
  std::vector<int32_t> h(static_cast<size_t>(rows * k));
  if (h.empty()) return h;
  CUDA_CHECK(cudaMemcpyAsync(h.data(), items, h.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  return h;
}

// Mean over users of |got ∩ ref| / |ref| (padding items -1 ignored).
double recall_at_k(const std::vector<int32_t>& ref, const std::vector<int32_t>& got, int64_t rows,
                   int64_t k) {
  double sum = 0;
  int64_t counted = 0;
  std::vector<int32_t> a, b;
  for (int64_t r = 0; r < rows; ++r) {
    a.clear();
    b.clear();
    for (int64_t j = 0; j < k; ++j) {
      if (ref[r * k + j] >= 0) a.push_back(ref[r * k + j]);
      if (got[r * k + j] >= 0) b.push_back(got[r * k + j]);
    }
    if (a.empty()) continue;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    size_t i = 0, j = 0, hits = 0;
    while (i < a.size() && j < b.size()) {
      if (a[i] < b[j]) ++i;
      else if (b[j] < a[i]) ++j;
      else {
        ++hits;
        ++i;
        ++j;
      }
    }
    sum += double(hits) / double(a.size());
    ++counted;
  }
  return counted ? sum / double(counted) : NAN;
}

// ---- the run ------------------------------------------------------------------------------

double measure_ceiling(CudaBackend& cb, Events& ev, const Options& o, TopkPrecision p) {
  const int64_t n = o.ceiling_n;
  const size_t nn = static_cast<size_t>(n * n);
  const cudaStream_t s = cb.stream();
  DevBuf A(nn * 4, "ceiling A"), B(nn * 4, "ceiling B"), C(nn * 4, "ceiling C");
  DevBuf Ah, Bh;
  fill_uniform(s, A.as<float>(), n * n, mix64(o.seed + 101));
  fill_uniform(s, B.as<float>(), n * n, mix64(o.seed + 102));
  if (p == TopkPrecision::kBF16) {
    Ah = DevBuf(nn * 2, "ceiling A bf16");
    Bh = DevBuf(nn * 2, "ceiling B bf16");
    to_bf16(s, A.as<float>(), n * n, Ah.as<__nv_bfloat16>());
    to_bf16(s, B.as<float>(), n * n, Bh.as<__nv_bfloat16>());
  }
  const bool bf16 = p == TopkPrecision::kBF16;
  const void* a = bf16 ? static_cast<const void*>(Ah.as<__nv_bfloat16>()) : A.as<float>();
  const void* b = bf16 ? static_cast<const void*>(Bh.as<__nv_bfloat16>()) : B.as<float>();
  const Timing t = measure(ev, o, [&] {
    score_gemm(cb.cublas(), p, a, b, 0, 0, n, n, static_cast<int>(n), C.as<float>());
  });
  CUDA_CHECK(cudaStreamSynchronize(s));  // before the buffers are freed
  return 2.0 * double(n) * double(n) * double(n) / t.best_ms * 1e-9;
}

class Runner {
 public:
  Runner(const Options& o, CudaBackend& cb, Report& r, double t0)
      : o_(o), cb_(cb), r_(r), ev_(cb.stream()), t0_(t0) {}

  void run();

 private:
  struct Triple {
    int64_t users, items, d;
    double work() const { return double(users) * double(items) * double(d); }
  };
  struct GemmRefs {  // per precision, within one (users, items, d)
    bool tiled = false, bare = false;
    double gemm_ms = NAN, conv_ms = NAN, bare_ms = NAN;
    std::string bare_tiles;
  };

  double elapsed() const { return now_s() - t0_; }
  void add(Cell c) {
    r_.cells.push_back(std::move(c));
    r_.elapsed_s = elapsed();
    write_outputs(r_);
  }
  void skip(Cell c, const std::string& why) {
    c.ok = false;
    c.reason = why;
    add(std::move(c));
  }
  std::vector<Cell> cells_of(const Triple& t) const;
  void run_triple(const Triple& t);
  double estimate_run_s(const Cell& c) const;
  double estimate_cell_s(const Cell& c, const GemmRefs& g, bool need_ref) const;

  const Options& o_;
  CudaBackend& cb_;
  Report& r_;
  Events ev_;
  double t0_;  // the budget counts from here
  double calib_ = 1.0;  // measured / estimated run time, largest seen on long runs
  bool header_printed_ = false;
};

std::vector<Cell> Runner::cells_of(const Triple& t) const {
  std::vector<Cell> out;
  for (int64_t k : o_.ks)
    for (TopkPrecision p : o_.precisions)
      for (TopkPath path : o_.paths) {
        Cell c;
        c.users = t.users;
        c.items = t.items;
        c.d = t.d;
        c.k = k;
        c.path = path;
        c.precision = p;
        out.push_back(c);
      }
  return out;  // k ascending; fp32 first; two-kernel before fused
}

// One topk call: arithmetic at half the ceiling (a quarter on CUDA cores for
// the fused kernel), plus for the two-kernel path the score tiles written and
// read back at 1.5 TB/s and about 10 us per tile for the small kernels.
double Runner::estimate_run_s(const Cell& c) const {
  if (c.path == TopkPath::kFused) return c.flops() / (0.25 * r_.ceiling(TopkPrecision::kFP32) * 1e12);
  const double tiles = double(topk_tiles(c.users, c.items).count(c.users, c.items));
  return c.flops() / (0.5 * r_.ceiling(c.precision) * 1e12) +
         8.0 * double(c.users) * double(c.items) / 1.5e12 + tiles * 10e-6;
}

// Warm-up and at least one timed call, padded to min_time; the GEMM references
// of this precision if not yet measured; the fp32 reference if missing.
double Runner::estimate_cell_s(const Cell& c, const GemmRefs& g, bool need_ref) const {
  const double run = calib_ * estimate_run_s(c);
  double s = 2 * run + o_.min_time_s;
  const double gemm = c.flops() / (0.5 * r_.ceiling(c.precision) * 1e12);
  if (c.path == TopkPath::kGemm && !g.tiled) {
    const double tiles = double(topk_tiles(c.users, c.items).count(c.users, c.items));
    s += 2 * (gemm + tiles * 10e-6) + o_.min_time_s;
    if (c.precision == TopkPrecision::kBF16) s += 2 * (tiles * 10e-6) + o_.min_time_s;
  }
  if (!g.bare) s += 2 * gemm + o_.min_time_s;
  if (need_ref) {
    Cell ref = c;
    ref.path = TopkPath::kGemm;
    ref.precision = TopkPrecision::kFP32;
    s += calib_ * estimate_run_s(ref);
  }
  return s;
}

void Runner::run() {
  // Ceilings first: the estimates and the % columns need them.
  for (TopkPrecision p : {TopkPrecision::kFP32, TopkPrecision::kTF32, TopkPrecision::kBF16})
    if (p == TopkPrecision::kFP32 ||
        std::find(o_.precisions.begin(), o_.precisions.end(), p) != o_.precisions.end())
      r_.ceiling_tflops[p] = measure_ceiling(cb_, ev_, o_, p);
  std::printf("cuBLAS ceilings (%lld^3, the GEMM configuration topk uses):",
              static_cast<long long>(o_.ceiling_n));
  for (const auto& [p, t] : r_.ceiling_tflops) std::printf("  %s %.1f", precision_name(p), t);
  std::printf(" TFLOP/s\n\n");
  std::fflush(stdout);
  write_outputs(r_);

  std::vector<Triple> triples;
  for (int64_t u : o_.users)
    for (int64_t i : o_.items)
      for (int64_t d : o_.dims) triples.push_back({u, i, d});
  std::stable_sort(triples.begin(), triples.end(),
                   [](const Triple& a, const Triple& b) { return a.work() < b.work(); });
  for (const Triple& t : triples) run_triple(t);
  if (!header_printed_) std::printf("(no cell was measured)\n");
}

void Runner::run_triple(const Triple& t) {
  std::vector<Cell> cells = cells_of(t);
  auto skip_all = [&](const std::string& why) {
    for (Cell& c : cells) skip(c, why);
  };
  if (r_.budget_spent || elapsed() >= o_.budget_s) {
    r_.budget_spent = true;
    skip_all("not started: the time budget was spent");
    return;
  }
  const cudaStream_t s = cb_.stream();
  cublasHandle_t h = cb_.cublas();
  const int d = static_cast<int>(t.d);
  int64_t kmax = 0;
  for (const Cell& c : cells)
    if (c.k <= kMaxK) kmax = std::max(kmax, c.k);
  const bool want_bf16 = std::find(o_.precisions.begin(), o_.precisions.end(),
                                   TopkPrecision::kBF16) != o_.precisions.end();

  // Device memory: inputs (and their bf16 copies), outputs, the backend's topk
  // scratch (score tile, keys, bf16 tiles; its allocator rounds up by <= 25%),
  // our score buffer (at least one tile) and a margin.
  const Tiles tt = topk_tiles(t.users, t.items);
  const double gib = 1024.0 * 1024.0 * 1024.0;
  const size_t bU = size_t(t.users) * size_t(d) * 4, bV = size_t(t.items) * size_t(d) * 4;
  const size_t bbf = want_bf16 ? (bU + bV) / 2 : 0;  // our bf16 copies of U and V
  const size_t bbf_tiles = want_bf16 ? size_t(tt.users + tt.items) * size_t(d) * 2 : 0;
  const size_t bOut = size_t(t.users) * size_t(kmax) * 8;
  const size_t bTile = size_t(tt.users) * size_t(tt.items) * 4;
  const size_t bTopk = (bTile + size_t(tt.users) * size_t(kmax) * 8 +
                        bbf_tiles) * 5 / 4;
  const size_t need = bU + bV + bbf + bbf_tiles + bOut + bTopk + bTile + kMarginBytes;
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  if (kmax == 0) {
    for (Cell& c : cells) skip(c, "k > " + std::to_string(kMaxK) + ", the CUDA backend's maximum");
    return;
  }
  if (need > free_b) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "does not fit: needs %.1f GiB of device memory, %.1f GiB free",
                  double(need) / gib, double(free_b) / gib);
    skip_all(buf);
    return;
  }
  const size_t cap = std::min(kBareCapBytes, bTile + (free_b - need) / 2);
  const Tiles bt = bare_tiles(t.users, t.items, cap);
  const size_t bS = std::max(bTile, size_t(bt.users) * size_t(bt.items) * 4);

  try {
    DevBuf U(bU, "U"), V(bV, "V"), S(bS, "score buffer");
    DevBuf out_items(size_t(t.users) * size_t(kmax) * 4, "output items");
    DevBuf out_scores(size_t(t.users) * size_t(kmax) * 4, "output scores");
    DevBuf Ub, Vb, Ut, Vt;
    // Element i of U depends on (seed, i) only: the first n users are the same
    // whatever --users says; likewise the items.
    fill_uniform(s, U.as<float>(), int64_t(bU / 4), mix64(o_.seed * 2 + 0));
    fill_uniform(s, V.as<float>(), int64_t(bV / 4), mix64(o_.seed * 2 + 1));
    if (want_bf16) {
      Ub = DevBuf(bU / 2, "U bf16");
      Vb = DevBuf(bV / 2, "V bf16");
      Ut = DevBuf(size_t(tt.users) * size_t(d) * 2, "U tile bf16");
      Vt = DevBuf(size_t(tt.items) * size_t(d) * 2, "V tile bf16");
      to_bf16(s, U.as<float>(), int64_t(bU / 4), Ub.as<__nv_bfloat16>());
      to_bf16(s, V.as<float>(), int64_t(bV / 4), Vb.as<__nv_bfloat16>());
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
    Inputs in;
    in.users = t.users;
    in.items = t.items;
    in.d = d;
    in.U = U.as<float>();
    in.V = V.as<float>();
    in.Ub = Ub.as<__nv_bfloat16>();
    in.Vb = Vb.as<__nv_bfloat16>();

    std::map<TopkPrecision, GemmRefs> refs;
    std::map<int64_t, std::vector<int32_t>> fp32_items;  // per k: the reference item lists
    const int64_t rows = std::min(t.users, o_.recall_users);

    for (Cell& c : cells) {
      if (r_.budget_spent || elapsed() >= o_.budget_s) {
        r_.budget_spent = true;
        skip(c, "not started: the time budget was spent");
        continue;
      }
      if (c.k > kMaxK) {
        skip(c, "k > " + std::to_string(kMaxK) + ", the CUDA backend's maximum");
        continue;
      }
      cb_.set_topk_precision(c.precision);
      cb_.set_topk_path(c.path);
      if (c.path == TopkPath::kFused && !cb_.topk_fused_supported(d, static_cast<int>(c.k))) {
        skip(c, "the fused path supports fp32, d <= 64 and k <= 128 only");
        continue;
      }
      const TopkPrecision gp = c.path == TopkPath::kFused ? TopkPrecision::kFP32 : c.precision;
      GemmRefs& g = refs[gp];
      const bool is_ref = c.path == TopkPath::kGemm && c.precision == TopkPrecision::kFP32;
      const bool need_ref = !is_ref && fp32_items.count(c.k) == 0;
      Cell probe = c;
      probe.precision = gp;
      c.est_s = estimate_cell_s(probe, g, need_ref);
      const double left = o_.budget_s - elapsed();
      if (c.est_s > left) {
        char buf[160];
        std::snprintf(buf, sizeof buf,
                      "estimated %.1f s, more than the %.1f s left of the time budget", c.est_s,
                      left);
        skip(c, buf);
        continue;
      }

      // GEMM references of this precision (independent of k and path).
      if (c.path == TopkPath::kGemm && !g.tiled) {
        g.gemm_ms = measure(ev_, o_, [&] {
                      tiled_pass(s, h, gp, in, tt, true, false, S.as<float>(), nullptr, nullptr);
                    }).median_ms;
        if (gp == TopkPrecision::kBF16)
          g.conv_ms = measure(ev_, o_, [&] {
                        tiled_pass(s, h, gp, in, tt, false, true, nullptr,
                                   Ut.as<__nv_bfloat16>(), Vt.as<__nv_bfloat16>());
                      }).median_ms;
        g.tiled = true;
      }
      if (!g.bare) {
        g.bare_ms = measure(ev_, o_, [&] {
                      tiled_pass(s, h, gp, in, bt, true, false, S.as<float>(), nullptr, nullptr);
                    }).median_ms;
        g.bare_tiles = tiles_str(bt, t.users, t.items);
        g.bare = true;
      }

      // The op.
      int32_t* items_out = out_items.as<int32_t>();
      float* scores_out = out_scores.as<float>();
      const Timing tk = measure(ev_, o_, [&] {
        cb_.topk(in.U, t.users, in.V, t.items, d, static_cast<int>(c.k), nullptr, nullptr,
                 items_out, scores_out);
      });
      c.topk_ms = tk.median_ms;
      c.topk_reps = tk.reps;
      c.topk_inner = tk.inner;
      if (c.path == TopkPath::kGemm) {
        c.gemm_ms = g.gemm_ms;
        c.conv_ms = gp == TopkPrecision::kBF16 ? g.conv_ms : NAN;
        c.select_ms = c.topk_ms - c.gemm_ms - (gp == TopkPrecision::kBF16 ? c.conv_ms : 0.0);
      }
      c.bare_ms = g.bare_ms;
      c.bare_tiles = g.bare_tiles;
      const double est_run = estimate_run_s(probe);
      if (c.topk_ms >= 50 && est_run > 0)
        calib_ = std::max(calib_, c.topk_ms * 1e-3 / est_run);

      // Recall against the fp32 two-kernel item lists of the same inputs.
      std::vector<int32_t> got = copy_rows(s, items_out, rows, c.k);
      if (is_ref) {
        c.reference = true;
        fp32_items[c.k] = std::move(got);
      } else {
        if (need_ref) {  // not measured in this grid: one untimed fp32 two-kernel call
          cb_.set_topk_precision(TopkPrecision::kFP32);
          cb_.set_topk_path(TopkPath::kGemm);
          cb_.topk(in.U, t.users, in.V, t.items, d, static_cast<int>(c.k), nullptr, nullptr,
                   items_out, scores_out);
          fp32_items[c.k] = copy_rows(s, items_out, rows, c.k);
        }
        c.recall = recall_at_k(fp32_items[c.k], got, rows, c.k);
      }
      c.recall_users = rows;
      c.ok = true;
      if (!header_printed_) {
        print_header();
        header_printed_ = true;
      }
      print_row(c, r_);
      add(c);
    }
    CUDA_CHECK(cudaStreamSynchronize(s));  // before the buffers are freed
  } catch (const OutOfMemory& e) {
    CUDA_CHECK(cudaStreamSynchronize(s));
    // Cells of this triple not yet decided are skipped with the reason.
    for (const Cell& c : cells) {
      bool decided = false;
      for (const Cell& d2 : r_.cells)
        decided = decided || (d2.users == c.users && d2.items == c.items && d2.d == c.d &&
                              d2.k == c.k && d2.path == c.path && d2.precision == c.precision);
      if (!decided) skip(c, e.what());
    }
  }
}

void print_summary(const Report& r) {
  // Skipped cells, grouped by reason.
  std::map<std::string, std::vector<const Cell*>> by_reason;
  for (const Cell& c : r.cells)
    if (!c.ok) by_reason[c.reason].push_back(&c);
  if (!by_reason.empty()) std::printf("\nSkipped cells:\n");
  for (const auto& [why, list] : by_reason) {
    std::printf("- %zu: %s", list.size(), why.c_str());
    if (list.size() <= 6) {
      std::printf(" (");
      for (size_t i = 0; i < list.size(); ++i)
        std::printf("%s%s users x %s items, d=%lld, k=%lld, %s %s", i ? "; " : "",
                    count_str(list[i]->users).c_str(), count_str(list[i]->items).c_str(),
                    static_cast<long long>(list[i]->d), static_cast<long long>(list[i]->k),
                    path_name(list[i]->path), precision_name(list[i]->precision));
      std::printf(")");
    }
    std::printf("\n");
  }

  // The fp32 paths side by side: which to choose, by measurement.
  bool head = false;
  for (const Cell& a : r.cells) {
    if (!a.ok || a.path != TopkPath::kGemm || a.precision != TopkPrecision::kFP32) continue;
    for (const Cell& b : r.cells) {
      if (!b.ok || b.path != TopkPath::kFused || b.users != a.users || b.items != a.items ||
          b.d != a.d || b.k != a.k)
        continue;
      if (!head) {
        std::printf("\nfp32: two-kernel vs fused\n\n"
                    "| users | items | d | k | two-kernel ms | fused ms | faster |\n"
                    "|---:|---:|---:|---:|---:|---:|---|\n");
        head = true;
      }
      const bool fused = b.topk_ms < a.topk_ms;
      std::printf("| %s | %s | %lld | %lld | %s | %s | %s %.2fx |\n", count_str(a.users).c_str(),
                  count_str(a.items).c_str(), static_cast<long long>(a.d),
                  static_cast<long long>(a.k), ms_str(a.topk_ms).c_str(),
                  ms_str(b.topk_ms).c_str(), fused ? "fused" : "two-kernel",
                  fused ? a.topk_ms / b.topk_ms : b.topk_ms / a.topk_ms);
    }
  }
}

const char* const kLegend =
    "\nColumns: topk ms = median per call of the whole op (CudaBackend::topk, CUDA events);\n"
    "users/s = users / topk time; topk TFLOP/s = 2 users items d / topk time.\n"
    "GEMM ms = the score GEMMs the two-kernel path issues, alone (same tiles, cuBLAS call and\n"
    "precision; bf16 on inputs converted beforehand); conv ms = the bf16 conversions of each\n"
    "U block and V chunk that path runs, alone; select ms* = DERIVED: topk - GEMM - conv.\n"
    "GEMM TFLOP/s and %% ceil = 2 users items d / GEMM ms, against the square-GEMM ceiling of\n"
    "that precision. bare GEMM ms = the same users x items scores from the fewest cuBLAS calls\n"
    "whose output fits memory (calls in the JSON); topk/bare = topk ms / bare GEMM ms (fused:\n"
    "against the fp32 GEMM). recall@k = mean overlap of each user's k items with the fp32\n"
    "two-kernel result (ref) on the same inputs, over the first %lld users.\n";

int run(const Options& o) {
  const double t_start = now_s();
  std::unique_ptr<towerrec::Backend> be = towerrec::make_cuda_backend(o.device);
  auto* cb = dynamic_cast<CudaBackend*>(be.get());
  if (cb == nullptr) throw Error("make_cuda_backend did not return the CUDA backend");
  cb->set_topk_precision(TopkPrecision::kFP32);
  cb->set_topk_path(TopkPath::kAuto);
  cb->set_topk_tiles(kTileUsers, kTileItems);

  Report r;
  r.opt = &o;
  r.device = cb->describe();
  std::printf("towerrec_topk_bench: all-users top-K on %s\n", r.device.c_str());
  std::printf("U, V uniform in [-1, 1) (seed %llu), no excluded items; two-kernel tiles %lld users x "
              "%lld items; time budget %.0f s\n",
              static_cast<unsigned long long>(o.seed), static_cast<long long>(kTileUsers),
              static_cast<long long>(kTileItems), o.budget_s);
  std::fflush(stdout);

  Runner runner(o, *cb, r, t_start);
  try {
    runner.run();
  } catch (const std::exception& e) {
    r.error = e.what();
    r.elapsed_s = now_s() - t_start;
    try {
      write_outputs(r);
    } catch (const std::exception&) {
    }
    throw;
  }
  r.elapsed_s = now_s() - t_start;
  r.complete = true;
  std::printf(kLegend, static_cast<long long>(o.recall_users));
  print_summary(r);
  int measured = 0;
  for (const Cell& c : r.cells) measured += c.ok;
  std::printf("\n%d of %zu cells measured in %.1f s", measured, r.cells.size(), r.elapsed_s);
  if (r.budget_spent) std::printf("; the time budget of %.0f s was spent: the cells after it were not started", o.budget_s);
  std::printf("\n");
  write_outputs(r);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    if (!parse_args(argc, argv, o)) return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "towerrec_topk_bench: %s\n%s", e.what(), kUsage);
    return 2;
  }
  try {
    if (!towerrec::cuda_available()) {
      std::printf("towerrec_topk_bench: no CUDA device: skipped\n");
      if (!o.json_path.empty())
        towerrec::write_file_atomic(
            o.json_path, "{\n  \"tool\": \"towerrec_topk_bench\",\n  \"skipped\": \"no CUDA device\",\n"
                         "  \"cells\": []\n}\n");
      return 0;
    }
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "towerrec_topk_bench: error: %s\n", e.what());
    return 1;
  }
}

// towerrec_topk_bench: the results, their JSON and CSV, the table and the summary.
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

#include "bench/topk_grid/options.h"
#include "towerrec/io.h"

namespace {

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

}  // namespace

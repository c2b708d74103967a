// Shared helpers of the kernel benchmarks (towerrec_bench).
//
// Every suite registers its cases at startup, once per backend in backends():
// the CPU backend always, the CUDA backend only when cuda_available(). Cases are
// named "<op>/<backend>/<size>=<value>/...", so --benchmark_filter selects by op,
// backend or size (e.g. --benchmark_filter='^topk/cpu/').
//
// Timing: each case runs the op once per iteration and times it with manual
// timing around backend synchronize() calls, so a device backend's asynchronous
// launches are included in full and the CPU backend pays nothing extra.
//
// Counters (all rates per second of measured time):
//   bytes  the op's logical traffic: every input element read once plus every
//          output element written once (scratch, caches and re-reads not
//          counted), so GB/s is a lower bound of what the memory system moved;
//   flops  the op's arithmetic, counted per op in its suite.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "towerrec/backend.h"

namespace towerrec::bench {

struct BackendEntry {
  std::string name;  // "cpu" or "cuda"
  Backend* be;
};

// The backends to benchmark: CPU (threads from TOWERREC_BENCH_THREADS, else all
// cores), then CUDA when a device is present. Created once, kept for the run.
const std::vector<BackendEntry>& backends();

// Backend memory filled from host data.
template <typename T>
DeviceArray<T> upload(Backend& be, const std::vector<T>& host) {
  DeviceArray<T> a(&be, static_cast<int64_t>(host.size()));
  if (!host.empty()) be.to_device(a.data(), host.data(), host.size() * sizeof(T));
  return a;
}

std::vector<float> random_floats(int64_t n, float lo, float hi, uint64_t seed);
std::vector<int32_t> random_ints(int64_t n, int32_t below, uint64_t seed);

// Runs `op` once per iteration, timed between backend synchronizations, and
// sets the byte and FLOP rate counters from per-call totals.
void run_timed(benchmark::State& state, Backend& be, const std::function<void()>& op,
               double bytes_per_call, double flops_per_call);

// Registers one case with a short minimum time, so the default grid stays quick
// on small machines. `make` builds the case's inputs on its first run; they are
// kept while the case runs and released when the next case starts (one case's
// inputs in memory at a time).
void add_case_impl(const std::string& name, std::function<std::shared_ptr<void>()> make,
                   std::function<void(benchmark::State&, void*)> run);

template <typename Fixture>
void add_case(const std::string& name, std::function<std::shared_ptr<Fixture>()> make,
              std::function<void(benchmark::State&, Fixture&)> run) {
  add_case_impl(
      name, [make] { return std::static_pointer_cast<void>(make()); },
      [run](benchmark::State& s, void* f) { run(s, *static_cast<Fixture*>(f)); });
}

// "op/backend/a=1/b=2"
std::string case_name(const std::string& op, const std::string& backend,
                      const std::vector<std::pair<std::string, int64_t>>& sizes);

// Each suite's registration function (one per bench/<family>_bench.cpp, and
// bench/plan_bench.cpp for the host batch planner).
void register_dense();
void register_embedding();
void register_loss();
void register_optim();
void register_plan();
void register_topk();
void register_transform();

}  // namespace towerrec::bench

// towerrec_bench: kernel throughput of every op family on every backend.
//
//   towerrec_bench                                   the whole default grid
//   towerrec_bench --benchmark_filter='^dense_'      one family (bench/<family>_bench.cpp)
//   towerrec_bench --benchmark_filter='/cuda/'       one backend
//   towerrec_bench --benchmark_format=json --benchmark_out=ops.json
//
// TOWERREC_BENCH_THREADS sets the CPU backend's threads (default: all cores).
#include <cstdio>
#include <cstdlib>

#include "bench/bench_common.h"

namespace towerrec::bench {

const std::vector<BackendEntry>& backends() {
  static const std::vector<BackendEntry> list = [] {
    static std::unique_ptr<Backend> cpu, cuda;
    int threads = 0;
    if (const char* t = std::getenv("TOWERREC_BENCH_THREADS")) threads = std::atoi(t);
    cpu = make_cpu_backend(threads);
    std::vector<BackendEntry> v{{"cpu", cpu.get()}};
    if (cuda_available()) {
      cuda = make_cuda_backend(0);
      v.push_back({"cuda", cuda.get()});
    }
    return v;
  }();
  return list;
}

std::vector<float> random_floats(int64_t n, float lo, float hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

std::vector<int32_t> random_ints(int64_t n, int32_t below, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int32_t> d(0, below - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

void run_timed(benchmark::State& state, Backend& be, const std::function<void()>& op,
               double bytes_per_call, double flops_per_call) {
  op();  // warm-up: first-touch pages, caches, device allocations
  be.synchronize();
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    op();
    be.synchronize();
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double it = static_cast<double>(state.iterations());
  state.counters["bytes"] = benchmark::Counter(bytes_per_call * it, benchmark::Counter::kIsRate,
                                               benchmark::Counter::kIs1000);
  state.counters["flops"] = benchmark::Counter(flops_per_call * it, benchmark::Counter::kIsRate,
                                               benchmark::Counter::kIs1000);
}

void add_case_impl(const std::string& name, std::function<std::shared_ptr<void>()> make,
                   std::function<void(benchmark::State&, void*)> run) {
  benchmark::RegisterBenchmark(name.c_str(),
                               [name, make, run](benchmark::State& s) {
                                 static std::string current;
                                 static std::shared_ptr<void> fixture;
                                 if (current != name) {
                                   fixture.reset();  // release the previous case's inputs first
                                   fixture = make();
                                   current = name;
                                 }
                                 run(s, fixture.get());
                               })
      ->UseManualTime()
      ->MinTime(0.2)
      ->Unit(benchmark::kMicrosecond);
}

std::string case_name(const std::string& op, const std::string& backend,
                      const std::vector<std::pair<std::string, int64_t>>& sizes) {
  std::string s = op + "/" + backend;
  for (const auto& [k, v] : sizes) s += "/" + k + "=" + std::to_string(v);
  return s;
}

}  // namespace towerrec::bench

int main(int argc, char** argv) {
  using namespace towerrec::bench;
  for (const auto& b : backends()) std::fprintf(stderr, "backend %s: %s\n", b.name.c_str(), b.be->describe().c_str());
  register_dense();
  register_embedding();
  register_loss();
  register_optim();
  register_plan();
  register_topk();
  register_transform();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

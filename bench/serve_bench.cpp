// serve/recommend: the HTTP round trip of `towerrec serve` for one user's
// top-10 (POST /recommend), from 1 and 4 client threads, each with its own
// keep-alive connection; users taken in turn from a list.
//
// Registered only when TOWERREC_SERVE_URL names a running server
// (http://127.0.0.1:PORT) and TOWERREC_SERVE_USERS a file of its user IDs,
// one per line; scripts/bench-serve starts one per model size and sets both.
// Counters: items_per_second is requests/s (all threads, real time); p50_us
// and p99_us are per-thread latency percentiles, averaged over the threads.
#ifdef TOWERREC_HAVE_HTTPLIB
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_common.h"

namespace towerrec::bench {
namespace {

struct Target {
  std::string host;
  int port = 0;
  std::vector<std::string> users;
};

const Target& target() {
  static const Target t = [] {
    Target x;
    const char* url = std::getenv("TOWERREC_SERVE_URL");
    const char* users = std::getenv("TOWERREC_SERVE_USERS");
    if (!url || !users) return x;
    std::string u = url;
    if (u.rfind("http://", 0) == 0) u = u.substr(7);
    const auto colon = u.rfind(':');
    if (colon == std::string::npos) return x;
    x.host = u.substr(0, colon);
    x.port = std::atoi(u.c_str() + colon + 1);
    std::ifstream in(users);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) x.users.push_back(line);
    return x;
  }();
  return t;
}

void bm_serve_recommend(benchmark::State& state) {
  const Target& t = target();
  httplib::Client c(t.host, t.port);
  c.set_keep_alive(true);
  c.set_tcp_nodelay(true);
  std::vector<double> lat;
  size_t next = static_cast<size_t>(state.thread_index()) * 7919;
  int64_t failed = 0;
  for (auto _ : state) {
    const std::string body =
        nlohmann::json{{"user", t.users[next++ % t.users.size()]}, {"k", 10}}.dump();
    const auto t0 = std::chrono::steady_clock::now();
    auto r = c.Post("/recommend", body, "application/json");
    lat.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    if (!r || r->status != 200) ++failed;
  }
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) { return lat.empty() ? 0.0 : lat[static_cast<size_t>(p * (lat.size() - 1))]; };
  state.SetItemsProcessed(state.iterations());
  state.counters["p50_us"] = benchmark::Counter(pct(0.50), benchmark::Counter::kAvgThreads);
  state.counters["p99_us"] = benchmark::Counter(pct(0.99), benchmark::Counter::kAvgThreads);
  state.counters["failed"] = benchmark::Counter(static_cast<double>(failed));
}

const bool registered = [] {
  if (target().port <= 0 || target().users.empty()) return false;
  benchmark::RegisterBenchmark("serve/recommend/k=10", bm_serve_recommend)
      ->Threads(1)
      ->Threads(4)
      ->UseRealTime()
      ->MinTime(3.0);
  return true;
}();

}  // namespace
}  // namespace towerrec::bench
#endif  // TOWERREC_HAVE_HTTPLIB

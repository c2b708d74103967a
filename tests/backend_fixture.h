// Fixtures of the per-family op suites (tests/test_<family>.cpp):
//  * OpsTest: a value-parametrised fixture over the backends; every TEST_P runs
//    on the CPU backend and on the CUDA backend, the CUDA instance skipping
//    (with the "no CUDA device" message the GPU check looks for) where no device
//    is present. Instantiate with TOWERREC_INSTANTIATE_BACKENDS(Suite).
//  * CpuOpsTest: the CPU backend only, for properties of that backend (thread
//    counts, its chunking, its host-side argument checks).
// Both give be() and a per-test random generator rng_ seeded from
// TOWERREC_TEST_SEED (or a fresh seed, printed by TRACE_SEED()) and the test name.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <random>
#include <string>

#include "tests/test_util.h"
#include "towerrec/backend.h"

namespace towerrec::testing {

inline uint64_t test_name_salt() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::hash<std::string>{}(std::string(info->test_suite_name()) + "." + info->name());
}

class OpsTest : public ::testing::TestWithParam<DeviceKind> {
 protected:
  OpsTest() : rng_(test_seed() ^ test_name_salt()) {}
  void SetUp() override {
    if (GetParam() == DeviceKind::kCUDA) {
      TOWERREC_REQUIRE_CUDA();
      be_ = make_cuda_backend(0);
    } else {
      be_ = make_cpu_backend(0);
    }
  }
  Backend& be() { return *be_; }
  bool on_cuda() const { return GetParam() == DeviceKind::kCUDA; }

  std::unique_ptr<Backend> be_;
  std::mt19937_64 rng_;
};

class CpuOpsTest : public ::testing::Test {
 protected:
  CpuOpsTest() : rng_(test_seed() ^ test_name_salt()) {}
  Backend& be() { return *be_; }

  std::unique_ptr<Backend> be_ = make_cpu_backend(0);
  std::mt19937_64 rng_;
};

inline std::string backend_param_name(const ::testing::TestParamInfo<DeviceKind>& info) {
  return info.param == DeviceKind::kCUDA ? "cuda" : "cpu";
}

}  // namespace towerrec::testing

// Runs every TEST_P of `suite` (an OpsTest) on each backend: Backends/suite.Name/cpu, .../cuda.
#define TOWERREC_INSTANTIATE_BACKENDS(suite)                                          \
  INSTANTIATE_TEST_SUITE_P(Backends, suite,                                           \
                           ::testing::Values(::towerrec::DeviceKind::kCPU,            \
                                             ::towerrec::DeviceKind::kCUDA),          \
                           ::towerrec::testing::backend_param_name)

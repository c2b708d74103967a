// A fresh temporary directory per test binary run, removed when the run ends
// (kept when TOWERREC_KEEP_TEST_FILES is set), for tests that write files.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace towerrec::testing {

inline const std::string& work_dir() {
  static const std::string dir = [] {
    std::string t = ::testing::TempDir() + "/towerrec_test_XXXXXX";
    if (::mkdtemp(t.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + t);
    return t;
  }();
  return dir;
}

inline std::string work_path(const std::string& name) { return work_dir() + "/" + name; }

class WorkDirCleanUp : public ::testing::Environment {
 public:
  void TearDown() override {
    if (std::getenv("TOWERREC_KEEP_TEST_FILES") != nullptr) return;
    std::error_code ec;
    std::filesystem::remove_all(work_dir(), ec);
  }
};
inline const ::testing::Environment* const kWorkDirCleanUp =
    ::testing::AddGlobalTestEnvironment(new WorkDirCleanUp);

}  // namespace towerrec::testing

// Atomic file output: data goes to a temporary file beside the target, is
// fsync'd, then renamed over the target. A failed or interrupted write leaves
// the previous file (if any) intact and no partial file behind.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace towerrec {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Allocates `bytes` on disk up front, so a full disk is reported before
  // anything is written ("needs N bytes, M available"). Optional.
  void reserve(uint64_t bytes);
  void write(const void* data, size_t bytes);
  void write(const std::string& s) { write(s.data(), s.size()); }
  std::FILE* stream() { return f_; }  // for fprintf-style writers; errors caught at commit
  // Flushes, fsyncs, renames over the target and fsyncs the directory.
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  bool committed_ = false;
  uint64_t written_ = 0, reserved_ = 0;
};

// Removes the temporary files AtomicFile(path) left behind when its process
// was killed (PATH.tmp.PID of a PID that no longer runs). They are never read
// in place of PATH; this only reclaims their space. Returns how many it removed.
int remove_stale_temp_files(const std::string& path);

// Whole-file helpers.
void write_file_atomic(const std::string& path, const std::string& contents);
std::string read_file(const std::string& path);
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
void make_directories(const std::string& path);

}  // namespace towerrec

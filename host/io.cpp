#include "towerrec/io.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "towerrec/error.h"

namespace towerrec {
namespace {
std::string errno_text() { return std::strerror(errno); }

std::string dir_of(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

// " (D has N bytes free)" when the file system says, else "".
std::string free_space_note(const std::string& path) {
  struct statvfs sv;
  if (::statvfs(dir_of(path).c_str(), &sv) != 0) return "";
  const unsigned long long avail = static_cast<unsigned long long>(sv.f_bavail) * sv.f_frsize;
  return " (" + dir_of(path) + " has " + std::to_string(avail) + " bytes free)";
}
}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) throw Error("cannot create " + tmp_ + ": " + errno_text());
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!committed_) std::remove(tmp_.c_str());
}

void AtomicFile::reserve(uint64_t bytes) {
  if (bytes == 0) return;
  const int rc = ::posix_fallocate(::fileno(f_), 0, static_cast<off_t>(bytes));
  if (rc == ENOSPC || rc == EFBIG || rc == EDQUOT)
    throw Error("cannot write " + path_ + ": it needs " + std::to_string(bytes) + " bytes: " +
                std::strerror(rc) + free_space_note(path_));
  if (rc == 0) reserved_ = bytes;  // other failures (no support): write without reserving
}

void AtomicFile::write(const void* data, size_t bytes) {
  if (bytes && std::fwrite(data, 1, bytes, f_) != bytes) {
    const std::string why = errno_text();
    throw Error("cannot write " + tmp_ + ": " + why + " after " + std::to_string(written_) +
                " bytes (writing " + std::to_string(bytes) + " more)" + free_space_note(path_));
  }
  written_ += bytes;
}

void AtomicFile::commit() {
  if (std::fflush(f_) != 0 || std::ferror(f_)) {
    const std::string why = errno_text();
    throw Error("cannot write " + tmp_ + ": " + why + " (" + std::to_string(written_) +
                " bytes)" + free_space_note(path_));
  }
  // Give back what reserve() allocated beyond the data.
  if (reserved_ > written_ && ::ftruncate(::fileno(f_), static_cast<off_t>(written_)) != 0)
    throw Error("cannot truncate " + tmp_ + ": " + errno_text());
  if (::fsync(::fileno(f_)) != 0) {
    const std::string why = errno_text();
    throw Error("cannot sync " + tmp_ + ": " + why + " (" + std::to_string(written_) + " bytes)" +
                free_space_note(path_));
  }
  const int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) throw Error("cannot close " + tmp_ + ": " + errno_text());
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw Error("cannot rename " + tmp_ + " to " + path_ + ": " + errno_text());
  committed_ = true;
  const std::string dir = dir_of(path_);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

int remove_stale_temp_files(const std::string& path) {
  const std::string dir = dir_of(path);
  const std::string prefix = std::filesystem::path(path).filename().string() + ".tmp.";
  int removed = 0;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return 0;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.compare(0, prefix.size(), prefix) != 0 || name.size() == prefix.size()) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) continue;
    const long pid = std::stol(digits);
    if (pid == ::getpid() || (pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH)))
      continue;  // its writer may still be running
    if (std::remove((dir + "/" + name).c_str()) == 0) ++removed;
  }
  ::closedir(d);
  return removed;
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path + ": " + errno_text());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error("cannot read " + path);
  return ss.str();
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_directories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) throw Error("cannot create directory " + path + ": " + ec.message());
}

}  // namespace towerrec

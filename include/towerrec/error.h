// Error types. The library never exits: it throws, and the CLI turns an
// exception into a message and a non-zero exit status.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace towerrec {

// Any failure the library reports: bad arguments, I/O, device errors.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A malformed input file. The message names the file, the 1-based line
// (0 when the whole file is at fault) and the field.
class InputError : public Error {
 public:
  InputError(std::string file, int64_t line, std::string field, const std::string& what)
      : Error(format(file, line, field, what)),
        file_(std::move(file)), line_(line), field_(std::move(field)) {}
  const std::string& file() const { return file_; }
  int64_t line() const { return line_; }
  const std::string& field() const { return field_; }

 private:
  static std::string format(const std::string& file, int64_t line, const std::string& field,
                            const std::string& what) {
    std::string s = file;
    if (line > 0) {
      s += ':';
      s += std::to_string(line);
    }
    if (!field.empty()) {
      s += ": field '";
      s += field;
      s += '\'';
    }
    s += ": ";
    s += what;
    return s;
  }
  std::string file_;
  int64_t line_;
  std::string field_;
};

// Training diverged: a non-finite loss or parameter. The message says where;
// whoever checkpoints the run adds what the checkpoint on disk holds.
class DivergedError : public Error {
 public:
  using Error::Error;
};

[[noreturn]] inline void throw_error(const char* file, int line, const std::string& msg) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": " + msg);
}

}  // namespace towerrec

// Checks a precondition; on failure throws towerrec::Error naming the source location.
#define TOWERREC_CHECK(cond, msg)                                                   \
  do {                                                                              \
    if (!(cond)) ::towerrec::throw_error(__FILE__, __LINE__, std::string(msg));     \
  } while (0)

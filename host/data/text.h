// Fast line/field scanning for the data readers (internal to host/data).
//
// A file is read whole into memory; LineReader walks it line by line without
// copying (string_views into the buffer), strips a leading UTF-8 BOM and a
// trailing '\r', and skips blank (or whitespace-only) lines while keeping the
// 1-based physical line number for error messages. Fields are split on a
// one-character or multi-character delimiter and trimmed of spaces and tabs.
// Numbers are parsed with std::from_chars; nothing goes through iostreams.
//
// Bytes above 127 are passed through untouched, so Latin-1 and UTF-8 files are
// both read as opaque byte strings.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace towerrec::data_detail {

// Whole-file read (throws towerrec::Error when the file cannot be opened/read).
// A gzip file (magic bytes 1f 8b) is returned decompressed; corrupt or
// truncated gzip data is an InputError naming the file.
std::string slurp(const std::string& path);

inline std::string_view trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) --e;
  return s.substr(b, e - b);
}

class LineReader {
 public:
  explicit LineReader(std::string_view text);
  // Next non-blank line (without its end-of-line bytes); false at the end.
  bool next(std::string_view& line);
  // 1-based physical number of the line last returned by next().
  int64_t line_no() const { return line_no_; }

 private:
  std::string_view text_;
  size_t pos_ = 0;
  int64_t line_no_ = 0;
};

// Splits `line` on `delim` into `out` (cleared first), trimming each field.
// Plain split: no quoting. Used for the MovieLens formats ('\t', '|', "::").
void split(std::string_view line, std::string_view delim, std::vector<std::string_view>& out);

// Reads CSV records (RFC 4180) from a whole file's text: fields separated by
// `delim`; a field that starts with '"' (after spaces) runs to its closing
// quote, across line ends, and "" inside stands for one quote; unquoted fields
// are trimmed of spaces and tabs. A leading UTF-8 BOM, a '\r' before each line
// end and blank (whitespace-only) lines between records are skipped. Quoted
// fields that need unescaping are stored in `arena`.
class CsvReader {
 public:
  explicit CsvReader(std::string_view text, char delim = ',');
  enum Status { kRecord, kEnd, kUnterminatedQuote };
  // The next record's fields into `out` (cleared first).
  Status next(std::vector<std::string_view>& out, std::deque<std::string>& arena);
  // 1-based physical line on which the record last returned starts (for an
  // unterminated quote: the line where its field starts).
  int64_t line_no() const { return record_line_; }

 private:
  std::string_view text_;
  char delim_;
  size_t pos_ = 0;
  int64_t line_ = 1, record_line_ = 0;
};

// Writes `s` as one CSV field, quoting it when it holds ',', '"', CR or LF, or
// leading/trailing spaces.
void append_csv_field(std::string& out, std::string_view s);

// Whole-string numeric parses; false when `s` is not entirely a number.
bool parse_int64(std::string_view s, int64_t& v);
// Accepts what strtod accepts in the "C" locale, including nan/inf (the caller
// decides whether non-finite values are allowed) and a leading '+'.
bool parse_double(std::string_view s, double& v);

// Appends the shortest decimal text that reads back as exactly `v`.
void append_float(std::string& out, float v);
void append_int(std::string& out, int64_t v);

}  // namespace towerrec::data_detail

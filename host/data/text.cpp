#include "host/data/text.h"

#include <sys/stat.h>
#include <zlib.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cmath>
#include <cstring>

#include "towerrec/error.h"

namespace towerrec::data_detail {

namespace {

// The whole of a gzip file (one or more members) inflated.
std::string gunzip(const std::string& path, const std::string& in) {
  std::string out;
  out.reserve(in.size() * 4);
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) throw Error(path + ": cannot start gzip decompression");
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  char buf[1 << 16];
  for (;;) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    const int rc = inflate(&z, Z_NO_FLUSH);
    out.append(buf, sizeof buf - z.avail_out);
    if (rc == Z_STREAM_END) {
      if (z.avail_in == 0) break;
      if (inflateReset(&z) != Z_OK) break;  // another member follows
      continue;
    }
    if (rc != Z_OK) {
      const std::string why = z.msg ? z.msg : (rc == Z_BUF_ERROR ? "truncated" : "corrupt");
      inflateEnd(&z);
      throw InputError(path, 0, "", "corrupt gzip data (" + why + ")");
    }
  }
  inflateEnd(&z);
  return out;
}

}  // namespace

std::string slurp(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error("cannot open " + path + ": " + std::strerror(errno));
  std::string s;
  struct stat st;
  if (::fstat(::fileno(f), &st) == 0 && st.st_size > 0) s.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  const bool bad = std::ferror(f) != 0;
  std::fclose(f);
  if (bad) throw Error("cannot read " + path);
  if (s.size() >= 2 && static_cast<unsigned char>(s[0]) == 0x1f && static_cast<unsigned char>(s[1]) == 0x8b)
    return gunzip(path, s);
  return s;
}

LineReader::LineReader(std::string_view text) : text_(text) {
  if (text_.size() >= 3 && text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;
}

bool LineReader::next(std::string_view& line) {
  while (pos_ < text_.size()) {
    const char* base = text_.data();
    const void* nl = std::memchr(base + pos_, '\n', text_.size() - pos_);
    const size_t end = nl ? static_cast<size_t>(static_cast<const char*>(nl) - base) : text_.size();
    std::string_view l(base + pos_, end - pos_);
    pos_ = nl ? end + 1 : text_.size();
    ++line_no_;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (trim(l).empty()) continue;
    line = l;
    return true;
  }
  return false;
}

void split(std::string_view line, std::string_view delim, std::vector<std::string_view>& out) {
  out.clear();
  if (delim.size() == 1) {
    const char d = delim[0];
    size_t start = 0;
    for (;;) {
      const void* p = std::memchr(line.data() + start, d, line.size() - start);
      if (!p) break;
      const size_t at = static_cast<size_t>(static_cast<const char*>(p) - line.data());
      out.push_back(trim(line.substr(start, at - start)));
      start = at + 1;
    }
    out.push_back(trim(line.substr(start)));
    return;
  }
  size_t start = 0;
  for (;;) {
    const size_t at = line.find(delim, start);
    if (at == std::string_view::npos) break;
    out.push_back(trim(line.substr(start, at - start)));
    start = at + delim.size();
  }
  out.push_back(trim(line.substr(start)));
}

CsvReader::CsvReader(std::string_view text, char delim) : text_(text), delim_(delim) {
  if (text_.size() >= 3 && text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;
}

CsvReader::Status CsvReader::next(std::vector<std::string_view>& out, std::deque<std::string>& arena) {
  out.clear();
  const size_t n = text_.size();
  const char* t = text_.data();
  const auto blank = [&](char c) { return (c == ' ' || c == '\t' || c == '\r') && c != delim_; };
  // Skip blank lines.
  for (;;) {
    size_t i = pos_;
    while (i < n && blank(t[i])) ++i;
    if (i >= n) {
      pos_ = n;
      return kEnd;
    }
    if (t[i] != '\n') break;
    pos_ = i + 1;
    ++line_;
  }
  record_line_ = line_;
  size_t i = pos_;
  for (;;) {
    size_t j = i;
    while (j < n && (t[j] == ' ' || t[j] == '\t') && t[j] != delim_) ++j;
    if (j < n && t[j] == '"') {
      const int64_t field_line = line_;
      const size_t start = ++j;
      bool escaped = false;
      for (;;) {
        if (j >= n) {
          record_line_ = field_line;
          return kUnterminatedQuote;
        }
        if (t[j] == '"') {
          if (j + 1 < n && t[j + 1] == '"') {
            escaped = true;
            j += 2;
            continue;
          }
          break;
        }
        if (t[j] == '\n') ++line_;
        ++j;
      }
      const std::string_view raw(t + start, j - start);
      ++j;  // closing quote
      if (escaped) {
        std::string v;
        v.reserve(raw.size());
        for (size_t k = 0; k < raw.size(); ++k) {
          v.push_back(raw[k]);
          if (raw[k] == '"') ++k;
        }
        arena.push_back(std::move(v));
        out.push_back(arena.back());
      } else {
        out.push_back(raw);
      }
      while (j < n && t[j] != delim_ && t[j] != '\n') ++j;  // anything after the quote is ignored
    } else {
      const size_t start = i;
      while (j < n && t[j] != delim_ && t[j] != '\n') ++j;
      std::string_view v(t + start, j - start);
      while (!v.empty() && v.back() == '\r') v.remove_suffix(1);
      out.push_back(trim(v));
    }
    if (j < n && t[j] == delim_) {
      i = j + 1;
      continue;
    }
    if (j < n) ++line_;  // the record's '\n'
    pos_ = j < n ? j + 1 : n;
    return kRecord;
  }
}

void append_csv_field(std::string& out, std::string_view s) {
  const bool quote = s.find_first_of(",\"\r\n") != std::string_view::npos ||
                     (!s.empty() && (s.front() == ' ' || s.back() == ' ' || s.front() == '\t' ||
                                     s.back() == '\t'));
  if (!quote) {
    out.append(s);
    return;
  }
  out.push_back('"');
  for (char c : s) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
}

bool parse_int64(std::string_view s, int64_t& v) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

bool parse_double(std::string_view s, double& v) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ptr != s.data() + s.size()) return false;
  if (r.ec == std::errc::result_out_of_range) {
    // Overflow reads as infinity (rejected by callers that need finite values);
    // underflow as zero.
    const bool neg = s[0] == '-';
    const size_t e = s.find_first_of("eE");
    const bool small = e != std::string_view::npos && e + 1 < s.size() && s[e + 1] == '-';
    v = small ? 0.0 : (neg ? -HUGE_VAL : HUGE_VAL);
    return true;
  }
  return r.ec == std::errc();
}

void append_float(std::string& out, float v) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void append_int(std::string& out, int64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

}  // namespace towerrec::data_detail

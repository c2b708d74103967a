#include "host/data/text.h"

#include <sys/stat.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cmath>
#include <cstring>

#include "towerrec/error.h"

namespace towerrec::data_detail {

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

bool split_csv(std::string_view line, std::vector<std::string_view>& out,
               std::deque<std::string>& arena) {
  out.clear();
  if (line.find('"') == std::string_view::npos) {
    split(line, ",", out);
    return true;
  }
  size_t i = 0;
  const size_t n = line.size();
  for (;;) {
    while (i < n && (line[i] == ' ' || line[i] == '\t')) ++i;
    if (i < n && line[i] == '"') {
      // Quoted field.
      const size_t start = ++i;
      bool escaped = false;
      for (;;) {
        if (i >= n) return false;
        if (line[i] == '"') {
          if (i + 1 < n && line[i + 1] == '"') {
            escaped = true;
            i += 2;
            continue;
          }
          break;
        }
        ++i;
      }
      std::string_view raw = line.substr(start, i - start);
      ++i;  // closing quote
      if (escaped) {
        std::string s;
        s.reserve(raw.size());
        for (size_t k = 0; k < raw.size(); ++k) {
          s.push_back(raw[k]);
          if (raw[k] == '"') ++k;
        }
        arena.push_back(std::move(s));
        out.push_back(arena.back());
      } else {
        out.push_back(raw);
      }
      while (i < n && line[i] != ',') ++i;  // ignore anything between quote and comma
    } else {
      const size_t start = i;
      while (i < n && line[i] != ',') ++i;
      out.push_back(trim(line.substr(start, i - start)));
    }
    if (i >= n) break;
    ++i;  // comma
  }
  return true;
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

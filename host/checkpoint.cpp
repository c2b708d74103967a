#include "towerrec/checkpoint.h"

#include <zlib.h>

#include <cstring>
#include <new>

#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {
namespace {

constexpr char kMagic[8] = {'T', 'O', 'W', 'E', 'R', 'R', 'E', 'C'};

class Writer {
 public:
  void raw(const void* p, size_t n) {
    if (n) buf_.append(static_cast<const char*>(p), n);
  }
  void u32(uint32_t x) { raw(&x, 4); }
  void u64(uint64_t x) { raw(&x, 8); }
  void i32(int32_t x) { raw(&x, 4); }
  void f32(float x) { raw(&x, 4); }
  void str(const std::string& s) { u64(s.size()); raw(s.data(), s.size()); }
  template <typename T>
  void vec(const std::vector<T>& v) { u64(v.size()); raw(v.data(), v.size() * sizeof(T)); }
  std::string& buf() { return buf_; }

 private:
  std::string buf_;
};

class Reader {
 public:
  Reader(const char* p, size_t n, std::string file, std::string section)
      : p_(p), n_(n), file_(std::move(file)), section_(std::move(section)) {}
  void raw(void* dst, size_t n) {
    if (n > n_ - at_) fail("truncated");
    if (n) std::memcpy(dst, p_ + at_, n);  // an empty vector's data() may be null
    at_ += n;
  }
  uint32_t u32() { uint32_t x; raw(&x, 4); return x; }
  uint64_t u64() { uint64_t x; raw(&x, 8); return x; }
  int32_t i32() { int32_t x; raw(&x, 4); return x; }
  float f32() { float x; raw(&x, 4); return x; }
  std::string str() {
    const uint64_t n = u64();
    if (n > n_ - at_) fail("truncated string");
    std::string s(p_ + at_, n);
    at_ += n;
    return s;
  }
  template <typename T>
  std::vector<T> vec() {
    const uint64_t n = u64();
    if (n > (n_ - at_) / sizeof(T)) fail("truncated array");
    std::vector<T> v(n);
    raw(v.data(), n * sizeof(T));
    return v;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(file_ + ": corrupt checkpoint (section '" + section_ + "': " + what + ")");
  }
  bool done() const { return at_ == n_; }

 private:
  const char* p_;
  size_t n_, at_ = 0;
  std::string file_, section_;
};

void put_ids(Writer& w, const IdMap& m) {
  w.u64(static_cast<uint64_t>(m.size()));
  for (const auto& id : m.ids()) w.str(id);
}

IdMap get_ids(Reader& r) {
  IdMap m;
  const uint64_t n = r.u64();
  for (uint64_t j = 0; j < n; ++j) {
    const std::string id = r.str();
    if (m.add(id) != static_cast<int32_t>(j)) r.fail("duplicate ID '" + id + "'");
  }
  return m;
}

void put_features(Writer& w, const EntityFeatures& f) {
  w.i32(f.n_entities);
  w.u64(f.dense_names.size());
  for (const auto& n : f.dense_names) w.str(n);
  w.vec(f.dense);
  w.vec(f.dense_min);
  w.vec(f.dense_max);
  w.u64(f.categorical.size());
  for (const auto& c : f.categorical) {
    w.str(c.name);
    put_ids(w, c.vocab);
    w.vec(c.offsets);
    w.vec(c.values);
  }
}

EntityFeatures get_features(Reader& r) {
  EntityFeatures f;
  f.n_entities = r.i32();
  const uint64_t nd = r.u64();
  if (nd > (1u << 20)) r.fail("too many dense columns");
  for (uint64_t j = 0; j < nd; ++j) f.dense_names.push_back(r.str());
  f.dense = r.vec<float>();
  f.dense_min = r.vec<float>();
  f.dense_max = r.vec<float>();
  if (f.n_entities < 0 || f.dense.size() != nd * static_cast<uint64_t>(f.n_entities) ||
      f.dense_min.size() != nd || f.dense_max.size() != nd)
    r.fail("dense feature sizes disagree");
  const uint64_t nc = r.u64();
  if (nc > (1u << 20)) r.fail("too many categorical fields");
  for (uint64_t j = 0; j < nc; ++j) {
    CategoricalField c;
    c.name = r.str();
    c.vocab = get_ids(r);
    c.offsets = r.vec<int32_t>();
    c.values = r.vec<int32_t>();
    if (c.offsets.size() != static_cast<size_t>(f.n_entities) + 1 || c.offsets.front() != 0 ||
        static_cast<size_t>(c.offsets.back()) != c.values.size())
      r.fail("categorical field '" + c.name + "' offsets disagree");
    for (size_t e = 0; e + 1 < c.offsets.size(); ++e)
      if (c.offsets[e] > c.offsets[e + 1]) r.fail("categorical offsets decrease");
    for (int32_t v : c.values)
      if (v < 0 || v >= c.vocab.size()) r.fail("categorical value out of range");
    f.categorical.push_back(std::move(c));
  }
  return f;
}

}  // namespace

namespace {

void write_checkpoint(const std::string& path, const Checkpoint& ck) {
  std::vector<std::pair<std::string, std::string>> sections;
  {
    Writer w;
    w.str(ck.config_json);
    sections.emplace_back("config", std::move(w.buf()));
  }
  {
    Writer w;
    w.i32(ck.epochs_done);
    w.u64(static_cast<uint64_t>(ck.state.steps));
    sections.emplace_back("meta", std::move(w.buf()));
  }
  {
    Writer w;
    w.i32(ck.epochs_done);
    w.u64(static_cast<uint64_t>(ck.step));
    w.raw(&ck.epoch_loss_sum, 8);
    sections.emplace_back("position", std::move(w.buf()));
  }
  {
    Writer w;
    put_ids(w, ck.users);
    sections.emplace_back("users", std::move(w.buf()));
  }
  {
    Writer w;
    put_ids(w, ck.items);
    sections.emplace_back("items", std::move(w.buf()));
  }
  {
    Writer w;
    put_features(w, ck.user_features);
    sections.emplace_back("user_features", std::move(w.buf()));
  }
  {
    Writer w;
    put_features(w, ck.item_features);
    sections.emplace_back("item_features", std::move(w.buf()));
  }
  {
    Writer w;
    w.u64(ck.state.names.size());
    for (size_t j = 0; j < ck.state.names.size(); ++j) {
      w.str(ck.state.names[j]);
      w.vec(ck.state.tensors[j]);
    }
    sections.emplace_back("state", std::move(w.buf()));
  }
  if (ck.has_seen()) {
    TOWERREC_CHECK(ck.seen.n_users() == ck.users.size(), "checkpoint: seen lists do not match the users");
    Writer w;
    w.vec(ck.seen.offsets);
    w.vec(ck.seen.items);
    sections.emplace_back("seen", std::move(w.buf()));
  }
  Writer head;
  head.raw(kMagic, 8);
  head.u32(kCheckpointVersion);
  head.u32(static_cast<uint32_t>(sections.size()));
  uint64_t total = head.buf().size() + 4;
  for (const auto& [name, payload] : sections) total += 4 + name.size() + 8 + payload.size();
  AtomicFile f(path);
  f.reserve(total);  // a full disk fails here, naming the size, before any write
  uLong crc = crc32(0L, Z_NULL, 0);
  auto emit = [&](const std::string& bytes) {
    f.write(bytes);
    // crc32 takes uInt lengths: feed large buffers in pieces.
    for (size_t at = 0; at < bytes.size();) {
      const size_t n = std::min<size_t>(bytes.size() - at, 1u << 30);
      crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + at), static_cast<uInt>(n));
      at += n;
    }
  };
  emit(head.buf());
  for (auto& [name, payload] : sections) {
    Writer w;
    w.u32(static_cast<uint32_t>(name.size()));
    w.raw(name.data(), name.size());
    w.u64(payload.size());
    emit(w.buf());
    emit(payload);
  }
  const uint32_t c = static_cast<uint32_t>(crc);
  f.write(&c, 4);
  f.commit();
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& ck) {
  try {
    write_checkpoint(path, ck);
  } catch (const std::bad_alloc&) {
    uint64_t floats = 0;
    for (const auto& t : ck.state.tensors) floats += t.size();
    // The file is assembled in memory (about the state's size) before writing.
    throw Error("out of host memory while writing " + path + " (the model state alone is " +
                std::to_string(floats * 4) + " bytes); " + path + " was not changed");
  }
}

Checkpoint load_checkpoint(const std::string& path) {
  if (!file_exists(path)) throw Error(path + ": no such checkpoint file");
  const std::string data = read_file(path);
  if (data.size() < 20 || std::memcmp(data.data(), kMagic, 8) != 0)
    throw Error(path + ": not a towerrec checkpoint (bad magic)");
  uint32_t stored;
  std::memcpy(&stored, data.data() + data.size() - 4, 4);
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t at = 0; at < data.size() - 4;) {
    const size_t n = std::min<size_t>(data.size() - 4 - at, 1u << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data.data() + at), static_cast<uInt>(n));
    at += n;
  }
  Reader top(data.data() + 8, data.size() - 12, path, "header");
  const uint32_t version = top.u32();
  if (version != kCheckpointVersion)
    throw Error(path + ": checkpoint version " + std::to_string(version) +
                " is not supported (this build reads version " +
                std::to_string(kCheckpointVersion) + ")");
  if (static_cast<uint32_t>(crc) != stored)
    throw Error(path + ": checksum mismatch (the file is truncated or corrupted)");
  const uint32_t n_sections = top.u32();
  Checkpoint ck;
  bool seen_state = false, seen_users = false, seen_items = false;
  int64_t seen_position_epoch = -1;
  for (uint32_t s = 0; s < n_sections; ++s) {
    const uint32_t name_len = top.u32();
    if (name_len > 256) top.fail("bad section name");
    std::string name(name_len, '\0');
    top.raw(name.data(), name_len);
    const uint64_t len = top.u64();
    std::string payload(len <= data.size() ? len : 0, '\0');
    if (len > data.size()) top.fail("section '" + name + "' longer than the file");
    top.raw(payload.data(), len);
    Reader r(payload.data(), payload.size(), path, name);
    if (name == "config") {
      ck.config_json = r.str();
    } else if (name == "meta") {
      ck.epochs_done = r.i32();
      ck.state.steps = static_cast<int64_t>(r.u64());
    } else if (name == "position") {
      const int32_t epoch = r.i32();
      const uint64_t step = r.u64();
      r.raw(&ck.epoch_loss_sum, 8);
      if (step > (uint64_t(1) << 62)) r.fail("step out of range");
      ck.step = static_cast<int64_t>(step);
      seen_position_epoch = epoch;
    } else if (name == "users") {
      ck.users = get_ids(r);
      seen_users = true;
    } else if (name == "items") {
      ck.items = get_ids(r);
      seen_items = true;
    } else if (name == "user_features") {
      ck.user_features = get_features(r);
    } else if (name == "item_features") {
      ck.item_features = get_features(r);
    } else if (name == "state") {
      const uint64_t n = r.u64();
      if (n > 4096) r.fail("too many tensors");
      for (uint64_t j = 0; j < n; ++j) {
        ck.state.names.push_back(r.str());
        ck.state.tensors.push_back(r.vec<float>());
      }
      seen_state = true;
    } else if (name == "seen") {
      ck.seen.offsets = r.vec<int64_t>();
      ck.seen.items = r.vec<int32_t>();
      const auto& o = ck.seen.offsets;
      if (o.empty() || o.front() != 0 || static_cast<uint64_t>(o.back()) != ck.seen.items.size())
        r.fail("seen offsets disagree");
      // Offsets first: a later, larger one must not index past the items.
      for (size_t u = 0; u + 1 < o.size(); ++u)
        if (o[u] > o[u + 1]) r.fail("seen offsets decrease");
      for (size_t u = 0; u + 1 < o.size(); ++u) {
        for (int64_t j = o[u] + 1; j < o[u + 1]; ++j)
          if (ck.seen.items[j - 1] >= ck.seen.items[j]) r.fail("seen items not sorted");
      }
    } else {
      continue;  // a section from a newer writer
    }
    if (!r.done()) r.fail("unexpected trailing bytes");
  }
  if (!top.done()) top.fail("unexpected bytes after the last section");
  if (!seen_state || !seen_users || !seen_items)
    throw Error(path + ": incomplete checkpoint (missing sections)");
  if (seen_position_epoch >= 0 && seen_position_epoch != ck.epochs_done)
    throw Error(path + ": corrupt checkpoint (section 'position': epoch disagrees with 'meta')");
  if (ck.epochs_done < 0 || ck.state.steps < 0)
    throw Error(path + ": corrupt checkpoint (section 'meta': negative count)");
  for (const auto* f : {&ck.user_features, &ck.item_features})
    if (f->n_entities != 0 && f->n_entities != (f == &ck.user_features ? ck.users : ck.items).size())
      throw Error(path + ": corrupt checkpoint (feature rows disagree with the ID count)");
  if (ck.has_seen()) {
    if (ck.seen.n_users() != ck.users.size())
      throw Error(path + ": corrupt checkpoint (section 'seen': user count disagrees)");
    for (int32_t it : ck.seen.items)
      if (it < 0 || it >= ck.items.size())
        throw Error(path + ": corrupt checkpoint (section 'seen': item index out of range)");
  }
  return ck;
}

}  // namespace towerrec

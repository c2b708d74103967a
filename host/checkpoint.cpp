#include "towerrec/checkpoint.h"

#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
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

using Sections = std::vector<std::pair<std::string, std::string>>;

// "user.id", "user.id_adam_m", "item.id_adam_v", ...: the row-sharded tensors.
bool is_table_tensor(const std::string& name) {
  for (const char* suffix : {".id", ".id_adam_m", ".id_adam_v"}) {
    const size_t n = std::strlen(suffix);
    if (name.size() > n && name.compare(name.size() - n, n, suffix) == 0 && name.rfind("arena.", 0) != 0)
      return true;
  }
  return false;
}

int64_t rows_of_rank(int64_t n, int rank, int ranks) {
  return n > rank ? (n - rank - 1) / ranks + 1 : 0;
}

void put_state(Writer& w, const TwoTowerModel::State& st, bool tables, bool others) {
  uint64_t n = 0;
  for (const auto& name : st.names)
    if (is_table_tensor(name) ? tables : others) ++n;
  w.u64(n);
  for (size_t j = 0; j < st.names.size(); ++j) {
    if (!(is_table_tensor(st.names[j]) ? tables : others)) continue;
    w.str(st.names[j]);
    w.vec(st.tensors[j]);
  }
}

Sections checkpoint_sections(const Checkpoint& ck, bool with_tables) {
  Sections sections;
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
    put_state(w, ck.state, with_tables, true);
    sections.emplace_back("state", std::move(w.buf()));
  }
  if (ck.has_seen()) {
    TOWERREC_CHECK(ck.seen.n_users() == ck.users.size(), "checkpoint: seen lists do not match the users");
    Writer w;
    w.vec(ck.seen.offsets);
    w.vec(ck.seen.items);
    sections.emplace_back("seen", std::move(w.buf()));
  }
  return sections;
}

// Writes the container atomically; returns its size and CRC-32 trailer.
TableShardFile write_container(const std::string& path, uint32_t version, const Sections& sections) {
  Writer head;
  head.raw(kMagic, 8);
  head.u32(version);
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
  return {std::filesystem::path(path).filename().string(), total, c};
}

void write_checkpoint(const std::string& path, const Checkpoint& ck) {
  write_container(path, kCheckpointVersion, checkpoint_sections(ck, true));
}

[[noreturn]] void out_of_memory(const std::string& path, const TwoTowerModel::State& st) {
  uint64_t floats = 0;
  for (const auto& t : st.tensors) floats += t.size();
  // The file is assembled in memory (about the state's size) before writing.
  throw Error("out of host memory while writing " + path + " (the model state alone is " +
              std::to_string(floats * 4) + " bytes); " + path + " was not changed");
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& ck) {
  try {
    write_checkpoint(path, ck);
  } catch (const std::bad_alloc&) {
    out_of_memory(path, ck.state);
  }
}

std::string table_shard_name(const std::string& path, uint64_t save_id, int rank, int ranks) {
  char id[17];
  std::snprintf(id, sizeof id, "%016llx", static_cast<unsigned long long>(save_id));
  return path + ".rows-" + std::to_string(rank) + "-of-" + std::to_string(ranks) + "." + id;
}

TableShardFile save_table_shard(const std::string& path, uint64_t save_id,
                                const TwoTowerModel::State& local, int32_t n_users, int32_t n_items) {
  const std::string file = table_shard_name(path, save_id, local.rows.rank, local.rows.ranks);
  try {
    Sections sections;
    Writer w;
    w.u64(save_id);
    w.i32(local.rows.rank);
    w.i32(local.rows.ranks);
    w.i32(n_users);
    w.i32(n_items);
    sections.emplace_back("shard", std::move(w.buf()));
    Writer st;
    put_state(st, local, true, false);
    sections.emplace_back("state", std::move(st.buf()));
    return write_container(file, kShardedCheckpointVersion, sections);
  } catch (const std::bad_alloc&) {
    out_of_memory(file, local);
  }
}

void save_sharded_checkpoint(const std::string& path, const Checkpoint& ck, uint64_t save_id,
                             const std::vector<TableShardFile>& shards) {
  try {
    Sections sections = checkpoint_sections(ck, false);
    Writer w;
    w.u64(save_id);
    w.u32(static_cast<uint32_t>(shards.size()));
    for (const auto& s : shards) {
      w.str(s.name);
      w.u64(s.size);
      w.u32(s.crc);
    }
    sections.emplace_back("table_shards", std::move(w.buf()));
    write_container(path, kShardedCheckpointVersion, sections);
  } catch (const std::bad_alloc&) {
    out_of_memory(path, ck.state);
  }
  remove_table_shards(path, shards);
}

void remove_table_shards(const std::string& path, const std::vector<TableShardFile>& keep) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const std::string prefix = p.filename().string() + ".rows-";
  std::error_code ec;
  std::vector<fs::path> doomed;
  std::vector<std::string> stale;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    if (const size_t tmp = name.find(".tmp."); tmp != std::string::npos) {
      // A writer's temporary file: removed only when its process is gone.
      stale.push_back((dir / name.substr(0, tmp)).string());
      continue;
    }
    bool kept = false;
    for (const auto& k : keep) kept = kept || k.name == name;
    if (!kept) doomed.push_back(it->path());
  }
  for (const auto& f : doomed) fs::remove(f, ec);  // best effort: never read without the main file
  for (const auto& f : stale) remove_stale_temp_files(f);
}

namespace {

struct Container {
  uint32_t version = 0;
  uint32_t crc = 0;
  uint64_t size = 0;
  Sections sections;
};

// Reads and checks (magic, version, CRC-32) a whole container file.
Container read_container(const std::string& path) {
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
  Container c;
  c.version = top.u32();
  c.crc = stored;
  c.size = data.size();
  if (c.version != kCheckpointVersion && c.version != kShardedCheckpointVersion)
    throw Error(path + ": checkpoint version " + std::to_string(c.version) +
                " is not supported (this build reads versions " + std::to_string(kCheckpointVersion) +
                " and " + std::to_string(kShardedCheckpointVersion) + ")");
  if (static_cast<uint32_t>(crc) != stored)
    throw Error(path + ": checksum mismatch (the file is truncated or corrupted)");
  const uint32_t n_sections = top.u32();
  for (uint32_t s = 0; s < n_sections; ++s) {
    const uint32_t name_len = top.u32();
    if (name_len > 256) top.fail("bad section name");
    std::string name(name_len, '\0');
    top.raw(name.data(), name_len);
    const uint64_t len = top.u64();
    std::string payload(len <= data.size() ? len : 0, '\0');
    if (len > data.size()) top.fail("section '" + name + "' longer than the file");
    top.raw(payload.data(), len);
    c.sections.emplace_back(std::move(name), std::move(payload));
  }
  if (!top.done()) top.fail("unexpected bytes after the last section");
  return c;
}

void get_state(Reader& r, TwoTowerModel::State& st) {
  const uint64_t n = r.u64();
  if (n > 4096) r.fail("too many tensors");
  for (uint64_t j = 0; j < n; ++j) {
    st.names.push_back(r.str());
    st.tensors.push_back(r.vec<float>());
  }
}

// The entities of a table tensor's tower.
int64_t table_rows(const std::string& name, const Checkpoint& ck) {
  return name.rfind("user.", 0) == 0 ? ck.users.size() : ck.items.size();
}

// Keeps the rows of `want` of each whole table tensor (a version-1 file).
void slice_tables(Checkpoint& ck, TableShard want, const std::string& path) {
  if (want.ranks <= 1) return;
  for (size_t j = 0; j < ck.state.names.size(); ++j) {
    if (!is_table_tensor(ck.state.names[j])) continue;
    auto& t = ck.state.tensors[j];
    const int64_t n = table_rows(ck.state.names[j], ck);
    if (n == 0) continue;
    if (t.size() % static_cast<size_t>(n) != 0)
      throw Error(path + ": corrupt checkpoint (tensor '" + ck.state.names[j] + "' does not fit " +
                  std::to_string(n) + " rows)");
    const size_t dim = t.size() / static_cast<size_t>(n);
    const int64_t local = rows_of_rank(n, want.rank, want.ranks);
    std::vector<float> mine(static_cast<size_t>(local) * dim);
    for (int64_t l = 0; l < local; ++l)
      std::copy_n(t.data() + (l * want.ranks + want.rank) * dim, dim, mine.data() + l * dim);
    t = std::move(mine);
  }
  ck.state.rows = want;
}

// Reads the shard files a version-2 checkpoint names; keeps the rows of `want`.
void load_table_shards(Checkpoint& ck, const std::string& path, const std::vector<TableShardFile>& shards,
                       TableShard want) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const std::string dir = p.has_parent_path() ? p.parent_path().string() + "/" : std::string();
  const int N = static_cast<int>(shards.size());
  std::vector<std::string> names;
  std::vector<std::vector<float>> out;
  std::vector<size_t> dims;
  for (int q = 0; q < N; ++q) {
    const std::string file = dir + shards[q].name;
    const std::string of = " (table shard " + std::to_string(q) + " of " + std::to_string(N) + " of " + path + ")";
    if (!file_exists(file)) throw Error(file + ": missing" + of);
    std::error_code ec;
    const uint64_t size = fs::file_size(file, ec);
    if (ec || size != shards[q].size)
      throw Error(file + ": " + std::to_string(ec ? 0 : size) + " bytes, " + path + " records " +
                  std::to_string(shards[q].size) + " (truncated, or from another save)" + of);
    Container c = read_container(file);
    if (c.crc != shards[q].crc)
      throw Error(file + ": its checksum is not the one " + path + " records (from another save)" + of);
    bool head = false;
    TwoTowerModel::State st;
    for (auto& [name, payload] : c.sections) {
      Reader r(payload.data(), payload.size(), file, name);
      if (name == "shard") {
        const uint64_t id = r.u64();
        const int32_t rank = r.i32(), ranks = r.i32(), nu = r.i32(), ni = r.i32();
        if (id != ck.save_id || rank != q || ranks != N)
          throw Error(file + ": holds shard " + std::to_string(rank) + " of " + std::to_string(ranks) +
                      " of another save" + of);
        if (nu != ck.users.size() || ni != ck.items.size())
          throw Error(file + ": corrupt checkpoint shard (user or item count disagrees)" + of);
        head = true;
      } else if (name == "state") {
        get_state(r, st);
      } else {
        continue;
      }
      if (!r.done()) r.fail("unexpected trailing bytes");
    }
    if (!head) throw Error(file + ": not a checkpoint table shard" + of);
    if (q == 0) {
      names = st.names;
      for (const auto& n : names)
        if (!is_table_tensor(n)) throw Error(file + ": corrupt checkpoint shard (tensor '" + n + "')" + of);
      out.resize(names.size());
      dims.assign(names.size(), 0);
    } else if (st.names != names) {
      throw Error(file + ": corrupt checkpoint shard (its tensors differ from shard 0's)" + of);
    }
    for (size_t j = 0; j < names.size(); ++j) {
      const int64_t n = table_rows(names[j], ck);
      const int64_t have = rows_of_rank(n, q, N);
      const auto& t = st.tensors[j];
      if (q == 0) {
        // Shard 0 holds a row whenever the table has one.
        if (n > 0 && (t.empty() || t.size() % static_cast<size_t>(have) != 0))
          throw Error(file + ": corrupt checkpoint shard (tensor '" + names[j] + "' size)" + of);
        dims[j] = n > 0 ? t.size() / static_cast<size_t>(have) : 0;
        out[j].assign(static_cast<size_t>(rows_of_rank(n, want.rank, want.ranks)) * dims[j], 0.0f);
      }
      const size_t dim = dims[j];
      if (t.size() != static_cast<size_t>(have) * dim)
        throw Error(file + ": corrupt checkpoint shard (tensor '" + names[j] + "' size)" + of);
      for (int64_t l = 0; l < have; ++l) {
        const int64_t r = l * N + q;
        if (r % want.ranks != want.rank) continue;
        std::copy_n(t.data() + l * dim, dim, out[j].data() + (r / want.ranks) * dim);
      }
    }
  }
  for (size_t j = 0; j < names.size(); ++j) {
    ck.state.names.push_back(names[j]);
    ck.state.tensors.push_back(std::move(out[j]));
  }
  ck.state.rows = want;
  ck.table_shards = N;
}

}  // namespace

Checkpoint load_checkpoint(const std::string& path, TableShard rows) {
  if (!file_exists(path)) throw Error(path + ": no such checkpoint file");
  Container c = read_container(path);
  Checkpoint ck;
  bool seen_state = false, seen_users = false, seen_items = false, seen_shards = false;
  std::vector<TableShardFile> shards;
  int64_t seen_position_epoch = -1;
  for (auto& [name, payload] : c.sections) {
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
      get_state(r, ck.state);
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
    } else if (name == "table_shards") {
      ck.save_id = r.u64();
      const uint32_t n = r.u32();
      if (n == 0 || n > (1u << 20)) r.fail("bad shard count");
      for (uint32_t q = 0; q < n; ++q) {
        TableShardFile f;
        f.name = r.str();
        f.size = r.u64();
        f.crc = r.u32();
        if (f.name.empty() || f.name.find('/') != std::string::npos) r.fail("bad shard file name");
        shards.push_back(std::move(f));
      }
      seen_shards = true;
    } else if (name == "shard") {
      throw Error(path + ": a table shard of a row-sharded checkpoint, not the checkpoint itself: give "
                         "the main file (model.ckpt) it belongs to");
    } else {
      continue;  // a section from a newer writer
    }
    if (!r.done()) r.fail("unexpected trailing bytes");
  }
  if (!seen_state || !seen_users || !seen_items || (c.version == kShardedCheckpointVersion) != seen_shards)
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
  if (rows.ranks < 1 || rows.rank < 0 || rows.rank >= rows.ranks) throw Error("load_checkpoint: bad table shard");
  if (seen_shards) {
    for (const auto& name : ck.state.names)
      if (is_table_tensor(name))
        throw Error(path + ": corrupt checkpoint (tensor '" + name + "' in a row-sharded main file)");
    load_table_shards(ck, path, shards, rows);
  } else {
    slice_tables(ck, rows, path);
  }
  return ck;
}

}  // namespace towerrec

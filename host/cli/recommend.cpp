#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>

#include "host/cli/cli.h"
#include "host/data/text.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/recommend.h"

namespace towerrec::cli {

namespace {

// User IDs, one per line; a first line "user" or "user_id" is a header, blank
// lines are skipped, surrounding spaces and a trailing '\r' are ignored.
std::vector<int32_t> read_user_list(const std::string& path, const IdMap& users) {
  if (!file_exists(path)) throw Error(path + ": no such file");
  const std::string text = read_file(path);
  std::vector<int32_t> out;
  int64_t line = 0;
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string id = text.substr(at, end - at);
    at = end + 1;
    ++line;
    while (!id.empty() && (id.back() == '\r' || id.back() == ' ' || id.back() == '\t')) id.pop_back();
    size_t b = 0;
    while (b < id.size() && (id[b] == ' ' || id[b] == '\t')) ++b;
    id.erase(0, b);
    if (id.empty()) continue;
    if (line == 1 && (id == "user" || id == "user_id")) continue;
    const int32_t u = users.find(id);
    if (u < 0) throw InputError(path, line, "user", "unknown user ID '" + id + "'");
    out.push_back(u);
  }
  if (out.empty()) throw InputError(path, 0, "", "no user IDs");
  return out;
}

// Refuses, before the model is loaded or any user ranked, an --out that
// cannot be written: a directory, or a file in a missing or read-only directory.
void check_writable(const std::string& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(fs::status(out, ec))) throw Error("--out " + out + ": is a directory");
  const fs::path dir = fs::path(out).has_parent_path() ? fs::path(out).parent_path() : fs::path(".");
  if (!fs::is_directory(fs::status(dir, ec)))
    throw Error("--out " + out + ": no directory " + dir.string());
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw Error("--out " + out + ": cannot write in " + dir.string() + " (" + std::strerror(errno) + ")");
  const auto st = fs::status(out, ec);
  if (fs::exists(st) && ::access(out.c_str(), W_OK) != 0)
    throw Error("--out " + out + ": cannot be replaced (" + std::strerror(errno) + ")");
}

}  // namespace

int cmd_recommend(const Args& args) {
  CLI::App app(
      "Writes each user's top-k items as CSV user,item,rank,score (original IDs,\n"
      "rank from 1, ties: higher score first, then the item that came first in the\n"
      "data). Users are ranked in blocks and rows written as blocks finish; the\n"
      "file appears only when complete. --out - writes the CSV to standard output\n"
      "(and the closing line to standard error).",
      "towerrec recommend");
  configure_app(app);
  std::string model, out, users_file, seen_file;
  std::vector<std::string> user_ids;
  int k = 10;
  int64_t block = 0;
  bool include_seen = false;
  DeviceOptions dev;
  app.add_option("--model", model, "directory with model.ckpt (or the checkpoint file)")->required();
  app.add_option("--out", out, "output CSV (-: standard output)")->required();
  app.add_option("--k", k, "items per user")->check(CLI::Range(1, 100000))->capture_default_str();
  auto* users_opt = app.add_option("--users", users_file, "user IDs, one per line (default: every user)");
  app.add_option_function<std::string>("--user", [&](const std::string& id) { user_ids.push_back(id); },
                                        "one user (repeatable; with or instead of --users)")
      ->trigger_on_parse();
  auto* seen_opt = app.add_option("--seen", seen_file,
                                  "interaction CSV of items to exclude, instead of the training "
                                  "interactions stored in the checkpoint");
  app.add_flag("--include-seen", include_seen, "exclude nothing");
  app.add_option("--block-users", block, "users ranked per block (0: from a memory budget)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30))
      ->capture_default_str();
  add_device_options(app, dev);
  if (!parse_args(app, args)) return 0;
  if (seen_opt->count() && include_seen) throw Error("--seen and --include-seen exclude each other");
  if (out != "-") check_writable(out);

  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel lm = load_model(model, dev.device, dev.threads);
  const IdMap& users = lm.ck.users;
  const IdMap& items = lm.ck.items;
  std::vector<int32_t> who;
  if (users_opt->count()) who = read_user_list(users_file, users);
  for (const auto& id : user_ids) {
    const int32_t u = users.find(id);
    if (u < 0) throw Error("--user: unknown user ID '" + id + "'");
    who.push_back(u);
  }
  UserItems seen;
  const UserItems* exclude = &seen;
  if (include_seen) {
    exclude = nullptr;
  } else if (seen_opt->count()) {
    seen = group_by_user(read_known_interactions(seen_file, users, items, -1e30f), lm.n_users());
  } else if (lm.ck.has_seen()) {
    exclude = &lm.ck.seen;
  } else {
    throw Error(lm.path + " stores no training interactions: give --seen FILE or --include-seen");
  }

  DeviceArray<float> U, V;
  lm.model->embed_all_users(U);
  lm.model->embed_all_items(V);
  // --out -: the CSV on stdout, the closing line on stderr.
  const bool to_stdout = out == "-";
  std::optional<AtomicFile> file;
  if (!to_stdout) file.emplace(out);
  const auto write = [&](const std::string& text) {
    if (!to_stdout) return file->write(text);
    if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size())
      throw Error("standard output: write failed");
  };
  std::string buf = "user,item,rank,score\n";
  int64_t rows = 0, n_users = 0;
  recommend_topk(*lm.be, U, V, lm.n_users(), lm.n_items(), lm.model->out_dim(), who, k, exclude,
                 [&](const TopKBlock& b) {
                   for (size_t r = 0; r < b.users.size(); ++r) {
                     const std::string& uid = users.id(b.users[r]);
                     for (int q = 0; q < b.k; ++q) {
                       const int32_t it = b.items[r * b.k + q];
                       if (it < 0) break;
                       data_detail::append_csv_field(buf, uid);
                       buf += ',';
                       data_detail::append_csv_field(buf, items.id(it));
                       char tail[48];
                       std::snprintf(tail, sizeof tail, ",%d,%.7g\n", q + 1, b.scores[r * b.k + q]);
                       buf += tail;
                       ++rows;
                     }
                   }
                   n_users += static_cast<int64_t>(b.users.size());
                   write(buf);
                   buf.clear();
                 },
                 block);
  write(buf);
  if (to_stdout) {
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) throw Error("standard output: write failed");
  } else {
    file->commit();
  }
  std::fprintf(to_stdout ? stderr : stdout, "wrote %s: %lld rows for %lld users (k %d, %s) in %s\n", to_stdout ? "standard output" : out.c_str(),
              static_cast<long long>(rows), static_cast<long long>(n_users), k,
              exclude ? "seen items excluded" : "seen items included",
              format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
  return 0;
}

}  // namespace towerrec::cli

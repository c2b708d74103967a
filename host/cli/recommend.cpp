#include <chrono>
#include <cstdio>

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

}  // namespace

int cmd_recommend(const Args& args) {
  if (wants_help(args)) {
    std::printf(
        "usage: towerrec recommend --model DIR --out FILE [options]\n\n"
        "Writes each user's top-k items as CSV user,item,rank,score (original IDs,\n"
        "rank from 1, ties: higher score first, then the item that came first in the\n"
        "data). Users are ranked in blocks and rows written as blocks finish; the\n"
        "file appears only when complete.\n\n"
        "options:\n"
        "  --model DIR           directory with model.ckpt (or the checkpoint file) (required)\n"
        "  --out FILE            output CSV (required)\n"
        "  --k N                 items per user [10]\n"
        "  --users FILE          user IDs, one per line (default: every user)\n"
        "  --user ID             one user (repeatable; with or instead of --users)\n"
        "  --seen FILE           interaction CSV of items to exclude, instead of the\n"
        "                        training interactions stored in the checkpoint\n"
        "  --include-seen        exclude nothing\n"
        "  --block-users N       users ranked per block (0: from a memory budget) [0]\n"
        "  --device D            auto, cpu, cuda or cuda:N [auto]\n"
        "  --threads N           CPU threads (0: all cores) [0]\n");
    return 0;
  }
  const Options o(args, {{"model"}, {"out"}, {"k"}, {"users"}, {"user", false, true}, {"seen"},
                         {"include-seen", true}, {"block-users"}, {"device"}, {"threads"}});
  const std::string out = o.require("out");
  const int k = static_cast<int>(o.get_int("k", 10, 1, 100000));
  const int64_t block = o.get_int("block-users", 0, 0, int64_t(1) << 30);
  if (o.has("seen") && o.has("include-seen")) throw Error("--seen and --include-seen exclude each other");

  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel lm = load_model(o.require("model"), o.get("device", "auto"),
                              static_cast<int>(o.get_int("threads", 0, 0, 4096)));
  const IdMap& users = lm.ck.users;
  const IdMap& items = lm.ck.items;
  std::vector<int32_t> who;
  if (o.has("users")) who = read_user_list(o.get("users"), users);
  for (const auto& id : o.all("user")) {
    const int32_t u = users.find(id);
    if (u < 0) throw Error("--user: unknown user ID '" + id + "'");
    who.push_back(u);
  }
  UserItems seen;
  const UserItems* exclude = &seen;
  if (o.has("include-seen")) {
    exclude = nullptr;
  } else if (o.has("seen")) {
    seen = group_by_user(read_known_interactions(o.get("seen"), users, items, -1e30f), lm.n_users());
  } else if (lm.ck.has_seen()) {
    exclude = &lm.ck.seen;
  } else {
    throw Error(lm.path + " stores no training interactions: give --seen FILE or --include-seen");
  }

  DeviceArray<float> U, V;
  lm.model->embed_all_users(U);
  lm.model->embed_all_items(V);
  AtomicFile f(out);
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
                   f.write(buf);
                   buf.clear();
                 },
                 block);
  f.write(buf);
  f.commit();
  std::printf("wrote %s: %lld rows for %lld users (k %d, %s) in %s\n", out.c_str(),
              static_cast<long long>(rows), static_cast<long long>(n_users), k,
              exclude ? "seen items excluded" : "seen items included",
              format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
  return 0;
}

}  // namespace towerrec::cli

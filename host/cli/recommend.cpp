#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <algorithm>

#include "host/cli/cli.h"
#include "host/data/text.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/recommend.h"

namespace towerrec::cli {

namespace {

// --shard items: this rank embeds and ranks only its item shard (item_shard:
// contiguous ranges), for every requested user. The users are split into
// contiguous owner ranges as with --shard users; they go by in steps, step t
// taking up to `per_rank` users of each owner's range, so each rank's top-k
// op ranks at most ranks x per_rank users at once. After a step, all_to_allv
// hands each owner its users' per-shard lists, which it merges (merge_topk:
// the tie rule of rank_topk) and appends to its CSV; memory stays bounded by
// the step whatever the user count. Returns rows and users written here.
struct ShardedCounts {
  int64_t rows = 0, users = 0;
};
ShardedCounts rank_item_shards(Communicator& comm, LoadedModel& lm, const DeviceArray<float>& U,
                               int32_t n_queries, std::vector<int32_t> who, int k, const RankFilter& rf,
                               int64_t block, const IdMap& users, CsvOutput& csv, Progress& progress) {
  const int rank = comm.rank(), ranks = comm.size();
  Backend& be = *lm.be;
  const int d = lm.model->out_dim();
  if (who.empty()) {
    who.resize(static_cast<size_t>(n_queries));
    std::iota(who.begin(), who.end(), 0);
  }
  const ItemShard shard = item_shard(lm.n_items(), rank, ranks);
  DeviceArray<float> V;
  lm.model->embed_items(shard.first, shard.size(), V);
  UserItems local_excl;
  const RankFilter local = shard_filter(rf, shard, n_queries, who, local_excl);

  // Owner ranges, and a step size every rank agrees on (the smallest wanted).
  const auto n = static_cast<int64_t>(who.size());
  auto owned_first = [&](int r) { return n * r / ranks; };
  auto owned_size = [&](int r) { return owned_first(r + 1) - owned_first(r); };
  int64_t want = block > 0 ? block : be.preferred_topk_users(std::max(shard.size(), 1), d, k);
  uint64_t agreed = UINT64_MAX;
  for (uint64_t w : comm.all_gather_u64(static_cast<uint64_t>(std::max<int64_t>(want, 1))))
    agreed = std::min(agreed, w);
  const int64_t per_rank = std::max<int64_t>(1, static_cast<int64_t>(agreed) / ranks);
  int64_t longest = 0;
  for (int r = 0; r < ranks; ++r) longest = std::max(longest, owned_size(r));
  const int64_t steps = (longest + per_rank - 1) / per_rank;
  auto step_size = [&](int r, int64_t t) {
    return std::clamp<int64_t>(owned_size(r) - t * per_rank, 0, per_rank);
  };
  // The queries in step order: step t holds each owner's next users, owners in rank order.
  std::vector<int32_t> order;
  order.reserve(who.size());
  std::vector<int64_t> step_total(static_cast<size_t>(steps), 0);
  for (int64_t t = 0; t < steps; ++t)
    for (int r = 0; r < ranks; ++r) {
      const int64_t b = owned_first(r) + t * per_rank, m = step_size(r, t);
      order.insert(order.end(), who.begin() + b, who.begin() + b + m);
      step_total[static_cast<size_t>(t)] += m;
    }

  ShardedCounts counts;
  std::vector<ScoredItem> pending, recv;  // this shard's lists of the steps not yet exchanged
  TopKBlock merged;
  merged.k = k;
  std::string buf;
  std::vector<int64_t> send_counts(static_cast<size_t>(ranks)), recv_counts(static_cast<size_t>(ranks));
  const auto row = static_cast<size_t>(k);
  int64_t t = 0;
  auto exchange = [&] {
    while (t < steps && static_cast<int64_t>(pending.size() / row) >= step_total[static_cast<size_t>(t)]) {
      const int64_t mine = step_size(rank, t);
      for (int r = 0; r < ranks; ++r) {
        send_counts[static_cast<size_t>(r)] = step_size(r, t) * k * static_cast<int64_t>(sizeof(ScoredItem));
        recv_counts[static_cast<size_t>(r)] = mine * k * static_cast<int64_t>(sizeof(ScoredItem));
      }
      recv.resize(static_cast<size_t>(ranks * mine) * row);
      comm.all_to_allv(pending.data(), send_counts, recv.data(), recv_counts);
      pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(
                                                         static_cast<size_t>(step_total[static_cast<size_t>(t)]) * row));
      if (mine > 0) {
        const int64_t b = owned_first(rank) + t * per_rank;
        merged.users.assign(who.begin() + b, who.begin() + b + mine);
        merged.items.resize(static_cast<size_t>(mine) * row);
        merged.scores.resize(static_cast<size_t>(mine) * row);
        merge_topk(recv.data(), ranks, mine, k, merged.items.data(), merged.scores.data());
        counts.rows += append_topk_rows(buf, merged, users, lm.ck.items);
        counts.users += mine;
        csv.write(buf);
        buf.clear();
        progress.set(counts.users);
      }
      ++t;
    }
  };
  auto take = [&](const TopKBlock& b) {
    for (size_t j = 0; j < b.items.size(); ++j)
      pending.push_back({b.scores[j], b.items[j] < 0 ? -1 : b.items[j] + shard.first});
    exchange();
  };
  if (shard.size() > 0 && !order.empty()) {
    rank_topk(be, U, n_queries, V, shard.size(), d, order, k, local, take,
              static_cast<int64_t>(agreed));
  } else {
    // No items here (more ranks than items): every list is padding.
    TopKBlock pad;
    pad.k = k;
    for (int64_t s = 0; s < static_cast<int64_t>(order.size()); s += per_rank) {
      const int64_t m = std::min<int64_t>(per_rank, static_cast<int64_t>(order.size()) - s);
      pad.users.assign(order.begin() + s, order.begin() + s + m);
      pad.items.assign(static_cast<size_t>(m) * row, -1);
      pad.scores.assign(static_cast<size_t>(m) * row, -std::numeric_limits<float>::infinity());
      take(pad);
    }
  }
  exchange();
  TOWERREC_CHECK(t == steps && pending.empty(), "item-sharded ranking lost a step");
  return counts;
}

}  // namespace

int cmd_recommend(const Args& args) {
  CLI::App app(
      "Writes each user's top-k items as CSV user,item,rank,score (original IDs,\n"
      "rank from 1, ties: higher score first, then the item that came first in the\n"
      "data). Users are ranked in blocks and rows written as blocks finish; the\n"
      "file appears only when complete. --out - writes the CSV to standard output\n"
      "(and the closing line to standard error). --items, --exclude and --where\n"
      "filter inside the ranking: each user gets the k best items that pass.\n"
      "--histories FILE ranks the users listed there (known to the model or not)\n"
      "from those items alone, for a model trained with --history N.",
      "towerrec recommend");
  configure_app(app);
  std::string model, out, users_file, seen_file;
  std::vector<std::string> user_ids;
  int k = 10;
  int64_t block = 0;
  bool include_seen = false;
  DeviceOptions dev;
  ItemFilterOptions filter;
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
  std::string histories_file;
  auto* hist_opt = app.add_option(
      "--histories", histories_file,
      "interaction CSV (user,item[,...]) of users to embed from their items alone (pooled "
      "history, no ID embedding): new user IDs welcome, items must be known; each gets its "
      "history items excluded (unless --include-seen). A known user listed there is embedded "
      "the same way: the given history replaces the stored one. Needs a model trained with "
      "--history N and no user features")
      ->option_text("FILE");
  app.add_flag("--include-seen", include_seen, "exclude nothing");
  add_item_filter_options(app, filter);
  app.add_option("--block-users", block, "users ranked per block (0: from a memory budget)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30))
      ->capture_default_str();
  char delimiter = ',';
  add_delimiter_option(app, delimiter);
  add_device_options(app, dev);
  bool quiet = false;
  add_quiet_option(app, quiet);
  bool distributed = false;
  double comm_timeout = 300;
  add_distributed_options(app, distributed, comm_timeout);
  std::string shard = "users";
  app.add_option("--shard", shard,
                 "with --distributed: what the ranks split, users (each rank ranks its users "
                 "against every item) or items (each rank embeds and ranks only its slice of the "
                 "catalogue, and the per-rank top-k lists are merged exactly)")
      ->check(CLI::IsMember({"users", "items"}))
      ->capture_default_str();
  app.footer(
      "With --distributed under mpirun -np N, the users are split into N contiguous\n"
      "shards, each rank ranks its own and writes OUT.part-R, and rank 0 merges the\n"
      "parts in rank order into OUT (one atomic rename): the same file one rank\n"
      "writes. OUT must be on a file system every rank sees.\n"
      "--shard items splits the catalogue instead, for one too large for a device:\n"
      "rank R embeds and ranks only items [n*R/N, n*(R+1)/N) (filters and exclusions\n"
      "applied there), users go by in blocks, and after each block every rank sends\n"
      "each user's top-k of its slice to the rank that owns the user (the same\n"
      "contiguous user shards), which merges them (higher score first, then the\n"
      "item that came first) into the user's top-k and writes OUT.part-R as above:\n"
      "again the file one rank writes.");
  if (!parse_args(app, args)) return 0;
  if (seen_opt->count() && include_seen) throw Error("--seen and --include-seen exclude each other");
  if (hist_opt->count() && (users_opt->count() || !user_ids.empty()))
    throw Error("--histories names its own users: leave out --users and --user");
  if (hist_opt->count() && seen_opt->count())
    throw Error("--histories excludes each user's history items: leave out --seen");
  check_writable(out);
  DistributedRun dist;
  if (distributed) dist = start_distributed(dev.device, comm_timeout, true, false);
  if (dist.size() > 1 && out == "-")
    throw Error("--distributed writes a file: give --out FILE, not standard output");
  return run_on_ranks(dist, "recommend", [&] {
    const auto t0 = std::chrono::steady_clock::now();
    LoadedModel lm = load_model(model, dev.device, dev.threads);
    const IdMap& items = lm.ck.items;
    if (hist_opt->count()) {
      const std::string problem = lm.model->history_input_problem();
      if (!problem.empty()) throw Error("--histories: " + lm.path + ": " + problem);
    }
    HistoryFile hist;
    if (hist_opt->count()) hist = read_histories(histories_file, lm, delimiter);
    const IdMap& users = hist_opt->count() ? hist.users : lm.ck.users;
    const int32_t n_queries = users.size();
    std::vector<int32_t> who;
    if (users_opt->count()) who = read_id_list(users_file, users, "user");
    for (const auto& id : user_ids) {
      const int32_t u = users.find(data_detail::trim(id));
      if (u < 0) throw Error("--user: unknown user ID '" + id + "'");
      who.push_back(u);
    }
    UserItems seen;
    const UserItems* exclude = &seen;
    if (include_seen) {
      exclude = nullptr;
    } else if (hist_opt->count()) {
      exclude = &hist.items;
    } else if (seen_opt->count()) {
      seen = group_by_user(read_known_interactions(seen_file, users, items, -1e30f, delimiter), lm.n_users());
    } else if (lm.ck.has_seen()) {
      exclude = &lm.ck.seen;
    } else {
      throw Error(lm.path + " stores no training interactions: give --seen FILE or --include-seen");
    }
    RankFilter rf = make_item_filter(lm, filter, quiet);
    rf.exclude = exclude;

    // Several ranks: this rank's contiguous shard of the users, in the order one
    // rank ranks them (every user when none is named).
    const int rank = dist.rank(), ranks = dist.size();
    const bool by_items = shard == "items";
    if (ranks > 1 && !by_items) {
      if (who.empty()) {
        who.resize(static_cast<size_t>(n_queries));
        std::iota(who.begin(), who.end(), 0);
      }
      const auto n = static_cast<int64_t>(who.size());
      who = std::vector<int32_t>(who.begin() + n * rank / ranks, who.begin() + n * (rank + 1) / ranks);
    }
    const std::string part = out + ".part-" + std::to_string(rank);
    DeviceArray<float> U, V;
    if (hist_opt->count()) lm.model->embed_histories(hist.items.offsets, hist.items.items, U);
    else lm.model->embed_all_users(U);
    CsvOutput csv(ranks > 1 ? part : out);
    std::string buf = ranks > 1 ? "" : "user,item,rank,score\n";
    int64_t rows = 0, n_users = 0;
    const int64_t n_who = who.empty() ? n_queries : static_cast<int64_t>(who.size());
    Progress progress("recommend", "users",
                      by_items ? n_who * (rank + 1) / ranks - n_who * rank / ranks : n_who,
                      quiet || rank != 0);
    if (by_items) {
      SingleRankCommunicator one;
      csv.write(buf);
      buf.clear();
      const ShardedCounts c = rank_item_shards(ranks > 1 ? *dist.control : one, lm, U, n_queries, who, k,
                                               rf, block, users, csv, progress);
      rows = c.rows;
      n_users = c.users;
    } else if (ranks == 1 || !who.empty()) {  // an empty shard ranks nobody (an empty list means everyone)
      lm.model->embed_all_items(V);
      rank_topk(*lm.be, U, n_queries, V, lm.n_items(), lm.model->out_dim(), who, k, rf,
                [&](const TopKBlock& b) {
                  rows += append_topk_rows(buf, b, users, items);
                  n_users += static_cast<int64_t>(b.users.size());
                  csv.write(buf);
                  buf.clear();
                  progress.set(n_users);
                },
                block);
    }
    csv.write(buf);
    csv.commit();
    progress.finish();
    if (ranks > 1) {
      // Every part is complete once all ranks pass the sum; rank 0 merges them.
      double counts[2] = {static_cast<double>(rows), static_cast<double>(n_users)};
      dist.control->all_reduce_sum_host(counts, 2);
      rows = static_cast<int64_t>(counts[0]);
      n_users = static_cast<int64_t>(counts[1]);
      if (rank == 0) {
        AtomicFile merged(out);
        merged.write(std::string("user,item,rank,score\n"));
        std::vector<char> chunk(size_t{1} << 20);
        for (int r = 0; r < ranks; ++r) {
          const std::string p = out + ".part-" + std::to_string(r);
          std::ifstream in(p, std::ios::binary);
          if (!in) throw Error(p + ": cannot read rank " + std::to_string(r) + "'s part (is " + out +
                               " on a file system every rank sees?)");
          while (in) {
            in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
            merged.write(chunk.data(), static_cast<size_t>(in.gcount()));
          }
        }
        merged.commit();
        for (int r = 0; r < ranks; ++r) std::filesystem::remove(out + ".part-" + std::to_string(r));
      }
      dist.control->barrier();
      if (rank != 0) return 0;
    }
    if (quiet) return 0;
    std::string what = exclude ? (hist_opt->count() ? "history items excluded" : "seen items excluded")
                               : (hist_opt->count() ? "history items included" : "seen items included");
    if (hist_opt->count()) {
      what = "from the histories in " + histories_file + ", " + what;
      if (hist.users_dropped > 0)
        what += ", " + std::to_string(hist.users_dropped) + " users without a positive left out";
    }
    if (rf.restrict) what += ", " + std::to_string(rf.candidates.size()) + " items pass the filters";
    std::fprintf(csv.to_stdout() ? stderr : stdout, "wrote %s: %lld rows for %lld users (k %d, %s) in %s\n",
                 (ranks > 1 ? out : csv.name()).c_str(), static_cast<long long>(rows), static_cast<long long>(n_users), k,
                 what.c_str(),
                 format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
    return 0;
  });
}

}  // namespace towerrec::cli

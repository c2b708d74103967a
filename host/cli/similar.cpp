#include <chrono>
#include <cstdio>

#include "host/cli/cli.h"
#include "host/data/text.h"
#include "towerrec/error.h"
#include "towerrec/recommend.h"

namespace towerrec::cli {

int cmd_similar(const Args& args) {
  CLI::App app(
      "Writes each item's (or with --users, each user's) k most similar items (users)\n"
      "by the model's score of their embeddings (the dot product, or the cosine for a\n"
      "model trained with --normalize), the query itself left out, as CSV\n"
      "item,similar,rank,score (user,similar,rank,score with --users; original IDs,\n"
      "rank from 1, ties: higher score first, then the entity that came first in the\n"
      "data). Queries are ranked in blocks and rows written as blocks finish; the\n"
      "file appears only when complete. --out - writes the CSV to standard output.\n"
      "--items FILE, --exclude and --where filter the similar items inside the\n"
      "ranking: each query gets the k best items that pass.",
      "towerrec similar");
  configure_app(app);
  std::string model, out, ids = "all";
  std::vector<std::string> one_ids;
  int k = 10;
  int64_t block = 0;
  bool by_users = false;
  DeviceOptions dev;
  ItemFilterOptions filter;
  app.add_option("--model", model, "directory with model.ckpt (or the checkpoint file)")->required();
  app.add_option("--out", out, "output CSV (-: standard output)")->required();
  app.add_option("--k", k, "similar entities per query")->check(CLI::Range(1, 100000))->capture_default_str();
  auto* items_opt = app.add_option_function<std::string>(
                           "--items",
                           [&](const std::string& p) {
                             if (p.empty()) return;  // bare --items: the mode only
                             filter.allow_file = p;
                             filter.has_allow = true;
                           },
                           "item-to-item (the default); with FILE, only the item IDs in FILE may be "
                           "returned (an allow list, one ID per line)")
                       ->expected(0, 1)
                       ->option_text("[FILE]");
  auto* users_flag = app.add_flag("--users", by_users, "user-to-user instead of item-to-item");
  app.add_option("--ids", ids, "query IDs, one per line, or all")->option_text("FILE|all")->capture_default_str();
  app.add_option_function<std::string>("--id", [&](const std::string& id) { one_ids.push_back(id); },
                                        "one query (repeatable; with or instead of --ids FILE)")
      ->trigger_on_parse();
  add_item_filter_options(app, filter, false);
  app.add_option("--block-queries", block, "queries ranked per block (0: from a memory budget)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30))
      ->capture_default_str();
  add_device_options(app, dev);
  bool quiet = false;
  add_quiet_option(app, quiet);
  if (!parse_args(app, args)) return 0;
  if (by_users && items_opt->count()) throw Error("--items and --users exclude each other");
  if (by_users && filter.any())
    throw Error("--exclude and --where filter items: not with --users");
  (void)users_flag;
  check_writable(out);

  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel lm = load_model(model, dev.device, dev.threads);
  const std::string kind = by_users ? "user" : "item";
  const IdMap& map = by_users ? lm.ck.users : lm.ck.items;
  const int32_t n = by_users ? lm.n_users() : lm.n_items();
  std::vector<int32_t> queries;
  const bool explicit_ids = ids != "all" || !one_ids.empty();
  if (ids != "all") queries = read_id_list(ids, map, kind);
  for (const auto& id : one_ids) {
    const int32_t q = map.find(data_detail::trim(id));
    if (q < 0) throw Error("--id: unknown " + kind + " ID '" + id + "'");
    queries.push_back(q);
  }
  RankFilter rf = by_users ? RankFilter{} : make_item_filter(lm, filter, quiet);
  rf.exclude_self = true;

  DeviceArray<float> E;
  if (by_users) lm.model->embed_all_users(E);
  else lm.model->embed_all_items(E);
  CsvOutput csv(out);
  std::string buf = kind + ",similar,rank,score\n";
  int64_t rows = 0, n_queries = 0;
  Progress progress("similar", kind + "s", explicit_ids ? static_cast<int64_t>(queries.size()) : n, quiet);
  if (!explicit_ids || !queries.empty())
    rank_topk(*lm.be, E, n, E, n, lm.model->out_dim(), queries, k, rf,
              [&](const TopKBlock& b) {
                rows += append_topk_rows(buf, b, map, map);
                n_queries += static_cast<int64_t>(b.users.size());
                csv.write(buf);
                buf.clear();
                progress.set(n_queries);
              },
              block);
  csv.write(buf);
  csv.commit();
  progress.finish();
  if (quiet) return 0;
  std::string what = by_users ? "users" : "items";
  if (rf.restrict) what += ", " + std::to_string(rf.candidates.size()) + " items pass the filters";
  std::fprintf(csv.to_stdout() ? stderr : stdout, "wrote %s: %lld rows for %lld %ss (k %d, similar %s) in %s\n",
               csv.name().c_str(), static_cast<long long>(rows), static_cast<long long>(n_queries),
               kind.c_str(), k, what.c_str(),
               format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
  return 0;
}

}  // namespace towerrec::cli

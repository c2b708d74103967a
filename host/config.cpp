#include "towerrec/config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "towerrec/error.h"
#include "towerrec/options.h"

namespace towerrec {
namespace {

using json = nlohmann::json;

int64_t parse_int(const std::string& key, const std::string& v) {
  int64_t x = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  if (ec != std::errc() || p != v.data() + v.size())
    throw Error("--" + key + ": expected an integer, got '" + v + "'");
  return x;
}

float parse_float(const std::string& key, const std::string& v) {
  char* end = nullptr;
  const float x = std::strtof(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || !std::isfinite(x))
    throw Error("--" + key + ": expected a finite number, got '" + v + "'");
  return x;
}

bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  throw Error("--" + key + ": expected true or false, got '" + v + "'");
}

std::vector<int> parse_int_list(const std::string& key, const std::string& v) {
  std::vector<int> out;
  if (v.empty() || v == "none") return out;
  std::stringstream ss(v);
  std::string part;
  while (std::getline(ss, part, ',')) {
    const int64_t x = parse_int(key, part);
    if (x <= 0) throw Error("--" + key + ": widths must be positive, got '" + part + "'");
    out.push_back(static_cast<int>(x));
  }
  return out;
}

std::string quote(const std::string& s) { return json(s).dump(); }

// The JSON type each key takes in a file: i integer, f number, b boolean,
// s string; n integer or "auto", t number or "none", h "W,W" or [W, W],
// B boolean or string.
std::map<std::string, char>& json_kinds() {
  static std::map<std::string, char> kinds;
  return kinds;
}
char json_kind(const char* name, char kind) {
  json_kinds()[name] = kind;
  return kind;
}
// The shortest text that reads back as the same value: of the float when x
// holds a float's value (every float key, and the double keys parsed as
// floats), else of the double. "0.1", never "0.100000001".
std::string num(double x) {
  // -0 would read back from JSON as the integer 0, i.e. +0: write 0 for both.
  if (x == 0) x = 0;
  char buf[64];
  const float f = static_cast<float>(x);
  const auto r = static_cast<double>(f) == x ? std::to_chars(buf, buf + sizeof buf, f)
                                             : std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

}  // namespace

char parse_delimiter(const std::string& flag, const std::string& v) {
  if (v == "tab" || v == "\\t") return '\t';
  if (v.size() != 1 || v[0] == '"' || v[0] == '\n' || v[0] == '\r')
    throw Error(flag + ": '" + v + "' is not a delimiter (one character other than a quote or line "
                "break; tab or \\t for a tab)");
  return v[0];
}

namespace {

ConfigKey str_key(const char* name, const char* help, std::string Config::*m) {
  json_kind(name, 's');
  return {name, help, [m](Config& c, const std::string& v) { c.*m = v; },
          [m](const Config& c) { return quote(c.*m); }, false, "TEXT"};
}

template <typename Get>
ConfigKey int_key(const char* name, const char* help, Get ref, int64_t lo, int64_t hi) {
  json_kind(name, 'i');
  return {name, help,
          [=](Config& c, const std::string& v) {
            const int64_t x = parse_int(name, v);
            if (x < lo || x > hi)
              throw Error(std::string("--") + name + ": " + v + " is outside [" +
                          std::to_string(lo) + ", " + std::to_string(hi) + "]");
            ref(c) = static_cast<std::remove_reference_t<decltype(ref(c))>>(x);
          },
          [=](const Config& c) { return std::to_string(ref(const_cast<Config&>(c))); }, false, "N"};
}

// lo_open: lo itself is refused too (a learning rate of 0 trains nothing).
template <typename Get>
ConfigKey float_key(const char* name, const char* help, Get ref, float lo, float hi,
                    bool lo_open = false) {
  json_kind(name, 'f');
  return {name, help,
          [=](Config& c, const std::string& v) {
            const float x = parse_float(name, v);
            if (lo_open && x <= lo)
              throw Error(std::string("--") + name + ": " + v + " cannot train: it must be > " +
                          num(lo) + " (and at most " + num(hi) + ")");
            if (x < lo || x > hi)
              throw Error(std::string("--") + name + ": " + v + " is outside [" + num(lo) +
                          ", " + num(hi) + "]");
            ref(c) = x;
          },
          [=](const Config& c) { return num(ref(const_cast<Config&>(c))); }, false, "X"};
}

template <typename Get>
ConfigKey bool_key(const char* name, const char* help, Get ref) {
  json_kind(name, 'b');
  return {name, help, [=](Config& c, const std::string& v) { ref(c) = parse_bool(name, v); },
          [=](const Config& c) { return std::string(ref(const_cast<Config&>(c)) ? "true" : "false"); },
          true, "[true|false]"};
}

template <typename Get>
ConfigKey choice_key(const char* name, const char* help, Get ref, std::vector<std::string> choices) {
  json_kind(name, 's');
  return {name, help,
          [=](Config& c, const std::string& v) {
            for (const auto& ch : choices)
              if (v == ch) {
                ref(c) = v;
                return;
              }
            std::string all;
            for (const auto& ch : choices) all += (all.empty() ? "" : ", ") + ch;
            throw Error(std::string("--") + name + ": '" + v + "' is not one of " + all);
          },
          [=](const Config& c) { return quote(ref(const_cast<Config&>(c))); }, false,
          [&] {
            std::string names;
            for (const auto& ch : choices) names += (names.empty() ? "" : "|") + ch;
            return names;
          }()};
}

// A key whose values are the names of enum E (options.h).
template <typename E, typename Get>
ConfigKey enum_key(const char* name, const char* help, Get ref) {
  json_kind(name, 's');
  return {name, help,
          [=](Config& c, const std::string& v) {
            for (size_t i = 0; i < EnumNames<E>::names.size(); ++i)
              if (v == EnumNames<E>::names[i]) {
                ref(c) = static_cast<E>(i);
                return;
              }
            throw Error(std::string("--") + name + ": '" + v + "' is not one of " + enum_choices<E>());
          },
          [=](const Config& c) { return quote(to_string(ref(const_cast<Config&>(c)))); }, false,
          [] {
            std::string names;
            for (const char* n : EnumNames<E>::names) names += (names.empty() ? "" : "|") + std::string(n);
            return names;
          }()};
}

// A key that may also be "auto": its default then comes from the training
// data (Config::data_auto, resolve_data_defaults).
ConfigKey data_auto_key(ConfigKey k) {
  const std::string name = k.name;
  auto set = k.set;
  auto get = k.get;
  k.set = [=](Config& c, const std::string& v) {
    if (v == "auto") {
      c.data_auto.insert(name);
      return;
    }
    set(c, v);
    c.data_auto.erase(name);
  };
  k.get = [=](const Config& c) { return c.data_auto.count(name) ? quote("auto") : get(c); };
  k.help += " (auto: from the training data's density, see README)";
  return k;
}

// The keys in the order of config.json: data and model, training, the run.
void add_data_and_model_keys(std::vector<ConfigKey>& k) {
  const float inf = 1e30f;
  k.push_back(str_key("data", "input: MovieLens dir, `towerrec synth` dir, or interactions CSV", &Config::data));
  k.push_back(str_key("user-features", "user feature CSV (with a CSV --data)", &Config::user_features));
  k.push_back(str_key("item-features", "item feature CSV (with a CSV --data)", &Config::item_features));
  json_kind("delimiter", 's');
  k.push_back({"delimiter", "field separator of the CSV inputs (--data, features, --train-file, --validation-file; tab: \\t)",
               [](Config& c, const std::string& v) { c.delimiter = parse_delimiter("--delimiter", v); },
               [](const Config& c) { return quote(std::string(1, c.delimiter)); }, false, "C"});
  // -1e30 (the default) keeps every rating: shown and accepted as "none".
  k.push_back({"rating-threshold", "keep interactions with rating >= this as positives (none: all)",
               [inf](Config& c, const std::string& v) {
                 if (v == "none") {
                   c.rating_threshold = -inf;
                   return;
                 }
                 const float x = parse_float("rating-threshold", v);
                 if (x < -inf || x > inf)
                   throw Error("--rating-threshold: " + v + " is outside [" + num(-inf) + ", " +
                               num(inf) + "] (none: keep every rating)");
                 c.rating_threshold = x;
               },
               [inf](const Config& c) {
                 return c.rating_threshold <= -inf ? quote("none") : num(c.rating_threshold);
               }});
  k.push_back(bool_key("features", "feed entity features to the towers",
                       [](Config& c) -> bool& { return c.features; }));
  k.push_back(str_key("train-file", "training interactions CSV (e.g. from `towerrec split`); IDs and features still come from --data", &Config::train_file));
  k.push_back(str_key("validation-file", "evaluate on this CSV's interactions (IDs known to --data; none trained on) instead of a --validation split", &Config::validation_file));
  k.push_back(int_key("eval-every", "evaluate the held-out (validation) split every N epochs (0: only at the end)",
                      [](Config& c) -> int& { return c.eval_every; }, 0, 1000000));
  k.push_back(int_key("early-stopping", "stop after N evaluations without a better validation nDCG@10 and keep the best epoch (0: off)",
                      [](Config& c) -> int& { return c.early_stopping; }, 0, 1000000));
  k.push_back({"holdout", "per-user fraction of interactions held out and evaluated after training (0: none)",
               [](Config& c, const std::string& v) {
                 const float x = parse_float("holdout", v);
                 if (x < 0 || x >= 1) throw Error("--holdout: must be in [0, 1)");
                 c.holdout = x;
               },
               [](const Config& c) { return num(c.holdout); }});
  k.push_back({"split-seed", "seed of the holdout split",
               [](Config& c, const std::string& v) {
                 const int64_t x = parse_int("split-seed", v);
                 if (x < 0) throw Error("--split-seed: must be >= 0");
                 c.split_seed = static_cast<uint64_t>(x);
               },
               [](const Config& c) { return std::to_string(c.split_seed); }});
  k.push_back(data_auto_key(int_key("id-dim", "ID embedding width (0: no ID embedding)",
                      [](Config& c) -> int& { return c.tower.id_dim; }, 0, 4096)));
  k.push_back(data_auto_key({"hidden", "hidden layer widths, comma-separated (none: a single linear layer)",
               [](Config& c, const std::string& v) { c.tower.hidden = parse_int_list("hidden", v); },
               [](const Config& c) {
                 std::string s;
                 for (int w : c.tower.hidden) s += (s.empty() ? "" : ",") + std::to_string(w);
                 return quote(s.empty() ? "none" : s);
               }}));
  k.push_back(data_auto_key(int_key("dim", "output embedding width of both towers",
                      [](Config& c) -> int& { return c.tower.out_dim; }, 1, 4096)));
  k.push_back(int_key("cat-dim", "embedding width of each categorical feature field",
                      [](Config& c) -> int& { return c.tower.cat_dim; }, 1, 1024));
  k.push_back(int_key("history", "user tower: pool the mean history embedding of up to N of the "
                      "user's training items (the batch's targets left out in training; 0: off)",
                      [](Config& c) -> int& { return c.tower.history; }, 0, 1 << 20));
  k.push_back(int_key("history-dim", "width of the history item embeddings",
                      [](Config& c) -> int& { return c.tower.history_dim; }, 1, 4096));
  json_kind("history-table", 's');
  k.push_back({"history-table",
               "the table the pooled history reads: the user tower's own (history-dim wide, dense "
               "updates) or the item tower's ID rows (id-dim wide, updated sparsely with the batch's items)",
               [](Config& c, const std::string& v) {
                 if (v != "own" && v != "items")
                   throw Error("--history-table: '" + v + "' is not one of own, items");
                 c.tower.history_shared = v == "items";
               },
               [](const Config& c) { return quote(c.tower.history_shared ? "items" : "own"); }, false,
               "own|items"});
  json_kind("history-pool", 's');
  k.push_back({"history-pool",
               "how the history's embeddings are pooled: their mean, or softmax weights of a learned "
               "logit per item (starting from the mean)",
               [](Config& c, const std::string& v) {
                 if (v != "mean" && v != "weighted")
                   throw Error("--history-pool: '" + v + "' is not one of mean, weighted");
                 c.tower.history_weighted = v == "weighted";
               },
               [](const Config& c) { return quote(c.tower.history_weighted ? "weighted" : "mean"); }, false,
               "mean|weighted"});
  k.push_back(float_key("init-std", "std of embedding initialisation",
                        [](Config& c) -> float& { return c.tower.init_std; }, 0.0f, 10.0f));
}

void add_training_keys(std::vector<ConfigKey>& k) {
  k.push_back(data_auto_key(int_key("epochs", "training epochs",
                                    [](Config& c) -> int& { return c.train.epochs; }, 0, 100000)));
  k.push_back(int_key("batch-size", "positives per batch",
                      [](Config& c) -> int64_t& { return c.train.batch_size; }, 1, 1 << 24));
  k.push_back({"negatives", "sampled negatives per positive (auto: 0 for softmax and ccl, " + std::to_string(kSparseNegatives) +
                              " there on sparse data, see README; 4 otherwise)",
               [](Config& c, const std::string& v) {
                 if (v == "auto") {
                   c.negatives_auto = true;
                   return;
                 }
                 const int64_t x = parse_int("negatives", v);
                 if (x < 0 || x > 4096) throw Error("--negatives: " + v + " is outside [0, 4096]");
                 c.train.negatives = static_cast<int>(x);
                 c.negatives_auto = false;
               },
               [](const Config& c) {
                 return c.negatives_auto ? quote("auto") : std::to_string(c.train.negatives);
               }});
  k.push_back(enum_key<Sampler>("sampler", "negative sampler: uniform or popularity (count^alpha)",
                              [](Config& c) -> Sampler& { return c.train.sampler; }));
  k.push_back(float_key("pop-alpha", "exponent of the popularity sampler",
                        [](Config& c) -> float& { return c.train.pop_alpha; }, 0.0f, 2.0f));
  k.push_back(int_key("planner-threads", "host threads planning batches ahead of the running step (-1: auto, 0 on cpu, up to 4 on cuda; 0: inline)",
                      [](Config& c) -> int& { return c.train.planner_threads; }, -1, 64));
  k.push_back(enum_key<MatmulPrecision>("matmul-precision", "tower products in training: fp32, or bf16 (bfloat16 operands, float32 sums; 2x the CPU's float32 rate with AVX512-BF16/AMX)",
                                      [](Config& c) -> MatmulPrecision& { return c.train.matmul_precision; }));
  k.push_back(bool_key("reject-hits", "resample negatives that are training positives of the user",
                       [](Config& c) -> bool& { return c.train.reject_hits; }));
  k.push_back(enum_key<Loss>("loss", "logistic (pointwise), bpr (pairwise), softmax (sampled softmax over the batch's items) or ccl (cosine contrastive over them)",
                           [](Config& c) -> Loss& { return c.train.loss; }));
  k.push_back(float_key("temperature", "softmax: logits are scores / temperature",
                        [](Config& c) -> float& { return c.train.temperature; }, 1e-4f, 1e4f));
  k.push_back(int_key("logits-scratch-mb", "softmax, ccl: cap on the logits scratch, MiB; a batch whose pairs x items exceed it takes the items in blocks (softmax: one more GEMM; 0: no cap)",
                      [](Config& c) -> int64_t& { return c.train.logits_scratch_mb; }, 0, int64_t{1} << 30));
  k.push_back(float_key("bucket-mb", "distributed training: the dense gradients are summed in buckets of this many MiB, the item tower's while the user tower's backward runs (0: one sum after the backward; the same bits either way)",
                        [](Config& c) -> float& { return c.train.bucket_mb; }, 0.0f, 4096.0f));
  k.push_back(float_key("margin", "ccl: a negative adds to the loss once its score exceeds the margin",
                        [](Config& c) -> float& { return c.train.margin; }, -1.0f, 1.0f));
  k.push_back(float_key("negative-weight", "ccl: weight of the mean negative hinge against the positive's 1 - s",
                        [](Config& c) -> float& { return c.train.negative_weight; }, 0.0f, 1e6f));
  k.push_back(bool_key("logq", "softmax: correct logits by each item's log sampling rate; ccl: weigh negatives by its inverse",
                       [](Config& c) -> bool& { return c.train.logq; }));
  k.push_back(choice_key("normalize", "L2-normalise output embeddings: cosine scores, softmax loss only (auto: on for softmax)",
                         [](Config& c) -> std::string& { return c.normalize; }, {"auto", "true", "false"}));
  // true and false as JSON booleans, auto as a string.
  k.back().get = [](const Config& c) { return c.normalize == "auto" ? quote("auto") : c.normalize; };
  json_kind("normalize", 'B');
  k.push_back(float_key("dropout", "dropout rate after each hidden layer while training",
                        [](Config& c) -> float& { return c.tower.dropout; }, 0.0f, 0.95f));
  k.push_back(enum_key<LrSchedule>("lr-schedule", "constant, cosine (decay to 0) or step",
                                 [](Config& c) -> LrSchedule& { return c.train.lr_schedule; }));
  k.push_back(float_key("warmup-epochs", "linear learning-rate warm-up, in epochs",
                        [](Config& c) -> float& { return c.train.warmup_epochs; }, 0.0f, 1e6f));
  k.push_back(int_key("lr-step-epochs", "step schedule: epochs between decays",
                      [](Config& c) -> int& { return c.train.lr_step_epochs; }, 1, 1000000));
  k.push_back(float_key("lr-gamma", "step schedule: decay factor",
                        [](Config& c) -> float& { return c.train.lr_gamma; }, 1e-6f, 1.0f));
  k.push_back(enum_key<OptimizerKind>("optimizer", "adam or sgd",
                                    [](Config& c) -> OptimizerKind& { return c.train.optimizer.kind; }));
  k.push_back(float_key("lr", "learning rate", [](Config& c) -> float& { return c.train.optimizer.lr; }, 0.0f, 100.0f,
                        true));
  k.push_back(float_key("weight-decay", "decoupled weight decay of tower layers and feature tables",
                        [](Config& c) -> float& { return c.train.optimizer.weight_decay; }, 0.0f, 10.0f));
  k.push_back(data_auto_key(float_key("embedding-decay", "decoupled weight decay of ID-embedding rows used in a batch",
                        [](Config& c) -> float& { return c.train.optimizer.embedding_decay; }, 0.0f, 10.0f)));
  k.push_back({"seed", "random seed (initialisation, shuffling, negatives)",
               [](Config& c, const std::string& v) {
                 const int64_t x = parse_int("seed", v);
                 if (x < 0) throw Error("--seed: must be >= 0");
                 c.train.seed = static_cast<uint64_t>(x);
               },
               [](const Config& c) { return std::to_string(c.train.seed); }});
}

void add_run_keys(std::vector<ConfigKey>& k) {
  k.push_back(int_key("threads", "CPU threads (0: all cores)", [](Config& c) -> int& { return c.threads; }, 0, 4096));
  k.push_back({"device", "auto, cpu, cuda or cuda:N",
               [](Config& c, const std::string& v) {
                 if (v != "auto" && v != "cpu" && v != "cuda" && v.rfind("cuda:", 0) != 0)
                   throw Error("--device: '" + v + "' is not one of auto, cpu, cuda, cuda:N");
                 c.device = v;
               },
               [](const Config& c) { return quote(c.device); }});
  k.push_back(choice_key("table-sharding", "ID-embedding tables under --distributed: replicated on every rank, rows "
                         "(row r and its optimizer state on rank r mod N only) or auto (rows when the tables with "
                         "their Adam state exceed 1 GiB; README)",
                         [](Config& c) -> std::string& { return c.table_sharding; }, {"auto", "replicated", "rows"}));
  k.push_back(str_key("out", "output directory (model, config.json)", &Config::out));
  k.push_back(bool_key("quiet", "no progress output", [](Config& c) -> bool& { return c.quiet; }));
  k.push_back(int_key("log-every", "progress line every N steps",
                      [](Config& c) -> int64_t& { return c.log_every; }, 1, int64_t(1) << 40));
  k.push_back(int_key("checkpoint-every-steps", "also write OUT/model.ckpt every N training steps within an epoch (0: off)",
                      [](Config& c) -> int64_t& { return c.checkpoint_every_steps; }, 0, int64_t(1) << 40));
  k.push_back({"checkpoint-every-minutes", "also write OUT/model.ckpt every M minutes of training within an epoch (0: off)",
               [](Config& c, const std::string& v) {
                 const float x = parse_float("checkpoint-every-minutes", v);
                 if (x < 0 || x > 1e6f) throw Error("--checkpoint-every-minutes: must be in [0, 1e6]");
                 c.checkpoint_every_minutes = x;
               },
               [](const Config& c) { return num(c.checkpoint_every_minutes); }});
}

std::vector<ConfigKey> build_keys() {
  std::vector<ConfigKey> k;
  add_data_and_model_keys(k);
  add_training_keys(k);
  add_run_keys(k);
  // The JSON types and value names of the keys with their own parsers.
  const std::pair<const char*, char> kinds[] = {
      {"holdout", 'f'}, {"split-seed", 'i'}, {"rating-threshold", 't'}, {"hidden", 'h'},
      {"negatives", 'n'}, {"id-dim", 'n'}, {"dim", 'n'}, {"epochs", 'n'}, {"embedding-decay", 'F'}, {"seed", 'i'}, {"device", 's'}, {"checkpoint-every-minutes", 'f'}};
  for (const auto& [name, kind] : kinds) json_kind(name, kind);
  const std::pair<const char*, const char*> value_names[] = {
      {"holdout", "X"}, {"split-seed", "N"}, {"rating-threshold", "X|none"}, {"hidden", "W,W,..|none|auto"}, {"negatives", "N|auto"},
      {"id-dim", "N|auto"}, {"dim", "N|auto"}, {"epochs", "N|auto"}, {"embedding-decay", "X|auto"},
      {"seed", "N"}, {"device", "auto|cpu|cuda|cuda:N"}, {"checkpoint-every-minutes", "X"}};
  for (auto& key : k)
    for (const auto& [name, value] : value_names)
      if (key.name == name) key.value_name = value;
  return k;
}

const ConfigKey* find_key(const std::string& name) {
  for (const auto& k : config_keys())
    if (k.name == name) return &k;
  return nullptr;
}

// "" when `v` has the JSON type of kind `kind` (json_kinds), else what it should be.
std::string type_error(char kind, const json& v) {
  const bool integer = v.is_number_integer();
  switch (kind) {
    case 'i': return integer ? "" : "an integer";
    case 'f': return v.is_number() ? "" : "a number";
    case 'b': return v.is_boolean() ? "" : "true or false";
    case 's': return v.is_string() ? "" : "a string";
    case 'n': return integer || v == "auto" ? "" : "an integer or \"auto\"";
    case 'F': return v.is_number() || v == "auto" ? "" : "a number or \"auto\"";
    case 't': return v.is_number() || v == "none" ? "" : "a number or \"none\"";
    case 'h': return v.is_string() || v.is_array() ? "" : "\"W,W,...\", [W, W, ...] or \"none\"";
    case 'B': return v.is_boolean() || v.is_string() ? "" : "true, false or \"auto\"";
    default: return "";
  }
}

// The line of `"key":` in a JSON text (0 when not found), for errors.
int64_t key_line(const std::string& text, const std::string& key) {
  const std::string quoted = json(key).dump();
  for (size_t at = text.find(quoted); at != std::string::npos; at = text.find(quoted, at + 1)) {
    size_t e = at + quoted.size();
    while (e < text.size() && std::isspace(static_cast<unsigned char>(text[e]))) ++e;
    if (e < text.size() && text[e] == ':')
      return 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n');
  }
  return 0;
}

}  // namespace

void resolve_defaults(Config& cfg) {
  // The softmax and ccl losses score each positive against all the batch's items.
  const bool in_batch = cfg.train.loss == Loss::kSoftmax || cfg.train.loss == Loss::kCcl;
  if (cfg.negatives_auto) {
    cfg.train.negatives = in_batch ? 0 : 4;
    cfg.negatives_auto = false;
    // The in-batch losses' pool of sampled negatives also depends on the data.
    if (in_batch) cfg.data_auto.insert("negatives");
  }
  if (cfg.normalize == "auto") cfg.normalize = in_batch ? "true" : "false";
  cfg.tower.normalize = cfg.normalize == "true";
  // Combinations of keys that cannot train, refused before any work.
  if (cfg.train.loss == Loss::kBpr && cfg.train.negatives < 1)
    throw Error("--loss bpr compares each positive with sampled negatives: --negatives 0 cannot "
                "train (give --negatives 1 or more)");
  if (cfg.tower.normalize && !in_batch)
    throw Error("--normalize true needs --loss softmax or ccl (cosine scores in [-1, 1] need "
                "the softmax's --temperature or the ccl's --margin)");
}

std::string resolve_data_defaults(Config& cfg, const DataShape& shape) {
  if (cfg.data_auto.empty()) return "";
  const bool sparse = shape.density() < kSparseDensity;
  // Measured on MovieLens-100k (dense) and the Gowalla validation split
  // (sparse): hidden layers over the ID embedding help the dense data and
  // cost the sparse data about a quarter of its Recall@20, where a wider
  // linear map and fewer epochs do better in a third of the time.
  // A key still "auto" whose field code has changed from the built-in default
  // (a program filling Config directly) keeps that value.
  const Config def;
  std::set<std::string> filled;
  auto fill = [&](const char* key, auto& field, const auto& built_in, auto value) {
    if (!cfg.data_auto.count(key) || field != built_in) return;
    field = value;
    filled.insert(key);
  };
  fill("hidden", cfg.tower.hidden, def.tower.hidden, sparse ? std::vector<int>{} : std::vector<int>{128, 64});
  fill("id-dim", cfg.tower.id_dim, def.tower.id_dim, sparse ? 128 : 64);
  fill("dim", cfg.tower.out_dim, def.tower.out_dim, sparse ? 128 : 64);
  fill("epochs", cfg.train.epochs, def.train.epochs, sparse ? 20 : 30);
  fill("embedding-decay", cfg.train.optimizer.embedding_decay, def.train.optimizer.embedding_decay,
       sparse ? kSparseEmbeddingDecay : 2.0f);
  // Set by resolve_defaults for the softmax and ccl losses only (0 there).
  fill("negatives", cfg.train.negatives, 0, sparse ? kSparseNegatives : 0);
  cfg.data_auto.clear();
  if (filled.empty()) return "";
  std::string names;
  for (const auto& n : filled) {
    std::string v = find_key(n)->get(cfg);
    if (v.size() >= 2 && v.front() == '"') v = v.substr(1, v.size() - 2);
    names += (names.empty() ? "" : ", ") + n + " " + v;
  }
  char dens[32];
  std::snprintf(dens, sizeof dens, "%.3g%%", 100.0 * shape.density());
  return std::string("defaults for ") + (sparse ? "sparse" : "dense") + " data (density " + dens +
         (sparse ? " < " : " >= ") + num(100.0 * kSparseDensity) + "%): " + names;
}

const std::vector<ConfigKey>& config_keys() {
  static const std::vector<ConfigKey> keys = build_keys();
  return keys;
}

void apply_json(Config& cfg, const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    // e.byte is the 1-based offset of the error; turn it into a line number.
    int64_t line = 1;
    for (size_t i = 0; i < e.byte && i < text.size(); ++i) line += text[i] == '\n';
    throw InputError(source, line, "", std::string("invalid JSON: ") + e.what());
  } catch (const json::exception& e) {
    // Valid syntax the library cannot hold, e.g. a number beyond double range.
    throw InputError(source, 0, "", std::string("invalid JSON: ") + e.what());
  }
  if (!j.is_object()) throw InputError(source, 1, "", "expected a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const ConfigKey* k = find_key(it.key());
    if (!k) throw InputError(source, key_line(text, it.key()), it.key(), "unknown configuration key");
    if (const std::string want = type_error(json_kinds().at(k->name), *it); !want.empty())
      throw InputError(source, key_line(text, it.key()), it.key(),
                       "expected " + want + ", got " + it->dump());
    std::string v;
    if (it->is_string()) v = it->get<std::string>();
    else if (it->is_boolean()) v = it->get<bool>() ? "true" : "false";
    else if (it->is_number_integer()) v = std::to_string(it->get<int64_t>());
    else if (it->is_number()) v = num(it->get<double>());
    else if (it->is_array()) {
      for (const auto& e : *it) v += (v.empty() ? "" : ",") + (e.is_string() ? e.get<std::string>() : e.dump());
      if (v.empty()) v = "none";
    } else throw InputError(source, 0, it.key(), "unsupported value " + it->dump());
    try {
      k->set(cfg, v);
    } catch (const Error& e) {
      throw InputError(source, key_line(text, it.key()), it.key(), e.what());
    }
  }
}

std::string to_json(const Config& cfg) {
  std::string s = "{\n";
  const auto& keys = config_keys();
  for (size_t i = 0; i < keys.size(); ++i)
    s += "  " + quote(keys[i].name) + ": " + keys[i].get(cfg) + (i + 1 < keys.size() ? ",\n" : "\n");
  return s + "}\n";
}

}  // namespace towerrec

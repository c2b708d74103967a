// Configuration: flags, JSON files, defaults, and rejection of bad values.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "towerrec/config.h"
#include "tests/work_dir.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {
namespace {

TEST(Config, FlagsOverrideDefaults) {
  Config c;
  const auto pos = apply_flags(c, {"--epochs", "3", "--lr=0.01", "--hidden", "32,16", "--quiet",
                                   "--device", "cpu", "extra"});
  EXPECT_EQ(c.train.epochs, 3);
  EXPECT_FLOAT_EQ(c.train.optimizer.lr, 0.01f);
  EXPECT_EQ(c.tower.hidden, (std::vector<int>{32, 16}));
  EXPECT_TRUE(c.quiet);
  EXPECT_EQ(c.device, "cpu");
  EXPECT_EQ(pos, (std::vector<std::string>{"extra"}));
}

TEST(Config, JsonRoundTripsEveryKey) {
  Config c;
  apply_flags(c, {"--epochs", "7", "--hidden", "none", "--sampler", "popularity", "--features",
                  "false", "--seed", "99", "--holdout", "0.25"});
  const std::string text = to_json(c);
  Config d;
  apply_json(d, text, "cfg.json");
  EXPECT_EQ(to_json(d), text);
  EXPECT_TRUE(d.tower.hidden.empty());
  EXPECT_EQ(d.train.sampler, Sampler::kPopularity);
  EXPECT_FALSE(d.features);
  EXPECT_EQ(d.train.seed, 99u);
  // Every key appears in the JSON.
  const auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j.size(), config_keys().size());
}

// hidden, id-dim, dim and epochs default to "auto": the training data's
// density picks them; a value given by flag or JSON stays as given.
TEST(Config, DataShapedDefaultsFollowTheDensityRule) {
  const DataShape sparse{29858, 40981, 647063};  // Gowalla's validation split: 0.05%
  const DataShape dense{943, 1682, 75000};       // MovieLens-100k's 75% split: 4.7%
  ASSERT_LT(sparse.density(), kSparseDensity);
  ASSERT_GE(dense.density(), kSparseDensity);
  Config c;
  const auto before = nlohmann::json::parse(to_json(c));
  for (const char* k : {"hidden", "id-dim", "dim", "epochs", "embedding-decay"})
    EXPECT_EQ(before[k], "auto") << k;
  const std::string said = resolve_data_defaults(c, sparse);
  EXPECT_TRUE(c.tower.hidden.empty());
  EXPECT_EQ(c.tower.id_dim, 128);
  EXPECT_EQ(c.tower.out_dim, 128);
  EXPECT_EQ(c.train.epochs, 20);
  EXPECT_NE(said.find("sparse"), std::string::npos) << said;
  EXPECT_NE(said.find("hidden none"), std::string::npos) << said;
  EXPECT_TRUE(c.data_auto.empty());
  const auto after = nlohmann::json::parse(to_json(c));
  EXPECT_EQ(after["hidden"], "none");
  EXPECT_EQ(after["epochs"], 20);
  EXPECT_EQ(resolve_data_defaults(c, dense), "") << "resolved once";
  EXPECT_EQ(c.train.epochs, 20);

  Config d;
  resolve_data_defaults(d, dense);
  EXPECT_EQ(d.tower.hidden, (std::vector<int>{128, 64}));
  EXPECT_EQ(d.tower.id_dim, 64);
  EXPECT_EQ(d.tower.out_dim, 64);
  EXPECT_EQ(d.train.epochs, 30);

  // Given values win over the rule, by flag or JSON; "auto" hands a key back.
  Config e;
  apply_flags(e, {"--epochs", "3", "--dim", "16"});
  apply_json(e, R"({"hidden": "32", "id-dim": "auto"})", "e.json");
  EXPECT_EQ(e.data_auto, (std::set<std::string>{"embedding-decay", "id-dim"}));
  resolve_data_defaults(e, sparse);
  EXPECT_EQ(e.train.epochs, 3);
  EXPECT_EQ(e.tower.out_dim, 16);
  EXPECT_EQ(e.tower.hidden, (std::vector<int>{32}));
  EXPECT_EQ(e.tower.id_dim, 128);
  // The in-batch losses' sampled negatives and the ID-row decay follow the
  // data too; other losses keep their 4 negatives.
  Config g;
  resolve_defaults(g);
  resolve_data_defaults(g, sparse);
  EXPECT_EQ(g.train.negatives, kSparseNegatives);
  EXPECT_FLOAT_EQ(g.train.optimizer.embedding_decay, kSparseEmbeddingDecay);
  Config h;
  apply_flags(h, {"--loss", "logistic"});
  resolve_defaults(h);
  resolve_data_defaults(h, sparse);
  EXPECT_EQ(h.train.negatives, 4);
  Config dn;
  resolve_defaults(dn);
  resolve_data_defaults(dn, dense);
  EXPECT_EQ(dn.train.negatives, 0);
  EXPECT_FLOAT_EQ(dn.train.optimizer.embedding_decay, 2.0f);
  Config given;
  apply_flags(given, {"--negatives", "0", "--embedding-decay", "1"});
  resolve_defaults(given);
  resolve_data_defaults(given, sparse);
  EXPECT_EQ(given.train.negatives, 0);
  EXPECT_FLOAT_EQ(given.train.optimizer.embedding_decay, 1.0f);
  // "auto" is the only word these integer keys take.
  Config f;
  EXPECT_THROW(apply_flags(f, {"--epochs", "many"}), Error);
  EXPECT_THROW(apply_json(f, R"({"dim": "8"})", "f.json"), InputError);
}

TEST(Config, RejectsBadValues) {
  Config c;
  EXPECT_THROW(apply_flags(c, {"--epochs", "three"}), Error);
  EXPECT_THROW(apply_flags(c, {"--epochs", "-1"}), Error);
  EXPECT_THROW(apply_flags(c, {"--lr", "nan"}), Error);
  EXPECT_THROW(apply_flags(c, {"--sampler", "magic"}), Error);
  EXPECT_THROW(apply_flags(c, {"--no-such-key", "1"}), Error);
  EXPECT_THROW(apply_flags(c, {"--hidden", "32,0"}), Error);
  EXPECT_THROW(apply_flags(c, {"--epochs"}), Error);
}

TEST(Config, UnknownFlagNamesTheNearestKey) {
  Config c;
  try {
    apply_flags(c, {"--epohcs", "3"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean --epochs?"), std::string::npos) << e.what();
  }
  try {
    apply_flags(c, {"--zzzzzzzz", "3"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("did you mean"), std::string::npos) << e.what();
  }
}

// In command-line order: a flag before --config FILE is overridden by the
// file, one after it overrides the file.
TEST(Config, FlagsAfterConfigOverrideIt) {
  const std::string file = testing::work_path("c.json");
  write_file_atomic(file, "{\"epochs\": 5, \"lr\": 0.5}");
  Config c;
  apply_flags(c, {"--epochs", "3", "--lr", "0.1", "--config", file, "--lr=0.25"});
  EXPECT_EQ(c.train.epochs, 5);
  EXPECT_FLOAT_EQ(c.train.optimizer.lr, 0.25f);
}

TEST(Config, JsonErrorsNameTheSourceAndKey) {
  Config c;
  try {
    apply_json(c, "{\"epochs\": \"x\"}", "run.json");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(e.file(), "run.json");
    EXPECT_EQ(e.field(), "epochs");
  }
  try {
    apply_json(c, "{\n\"epochs\": 3,\n oops}", "run.json");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(e.line(), 3);
  }
  EXPECT_THROW(apply_json(c, "{\"bogus\": 1}", "run.json"), InputError);
  EXPECT_THROW(apply_json(c, "[1, 2]", "run.json"), InputError);
}

// Numbers are written as the shortest text that reads back as the same float:
// no float noise in config.json, --help defaults or range errors.
TEST(Config, NumbersPrintWithoutFloatNoise) {
  Config c;
  apply_flags(c, {"--holdout", "0.1"});
  const auto j = nlohmann::json::parse(to_json(c));
  EXPECT_EQ(j["lr"].dump(), "0.005");
  EXPECT_EQ(j["init-std"].dump(), "0.1");
  EXPECT_EQ(j["holdout"].dump(), "0.1");
  EXPECT_TRUE(j["lr"].is_number());
  EXPECT_EQ(to_json(c).find("0000000"), std::string::npos) << to_json(c);
  try {
    apply_flags(c, {"--temperature", "0"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside [1e-04, 10000]"), std::string::npos) << e.what();
  }
}

// The rating threshold's "keep everything" default is shown and accepted as none.
TEST(Config, RatingThresholdNone) {
  Config c;
  EXPECT_EQ(nlohmann::json::parse(to_json(c))["rating-threshold"], "none");
  apply_flags(c, {"--rating-threshold", "3.5"});
  EXPECT_FLOAT_EQ(c.rating_threshold, 3.5f);
  EXPECT_EQ(nlohmann::json::parse(to_json(c))["rating-threshold"].dump(), "3.5");
  apply_flags(c, {"--rating-threshold", "none"});
  EXPECT_EQ(c.rating_threshold, Config().rating_threshold);
  Config d;
  apply_json(d, to_json(c), "c.json");
  EXPECT_EQ(d.rating_threshold, Config().rating_threshold);
  apply_json(d, "{\"rating-threshold\": 4}", "c.json");
  EXPECT_FLOAT_EQ(d.rating_threshold, 4.0f);
}

// Values that cannot train are refused when parsed, saying why.
TEST(Config, RejectsValuesThatCannotTrain) {
  const auto message = [](const std::vector<std::string>& flags) {
    Config c;
    try {
      apply_flags(c, flags);
      resolve_defaults(c);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({"--lr", "0"}).find("--lr: 0 cannot train: it must be > 0"), std::string::npos)
      << message({"--lr", "0"});
  EXPECT_NE(message({"--lr", "-0.01"}).find("--lr: -0.01"), std::string::npos);
  EXPECT_NE(message({"--batch-size", "0"}).find("--batch-size: 0 is outside [1,"), std::string::npos);
  EXPECT_NE(message({"--epochs", "-1"}).find("--epochs: -1 is outside [0,"), std::string::npos);
  EXPECT_NE(message({"--loss", "bpr", "--negatives", "0"}).find("--negatives 0 cannot train"),
            std::string::npos);
  EXPECT_NE(message({"--normalize", "true", "--loss", "bpr"}).find("--normalize true needs --loss softmax"),
            std::string::npos);
  EXPECT_EQ(message({"--lr", "1e-6", "--loss", "bpr", "--negatives", "1"}), "no error");
  Config c;
  EXPECT_THROW(apply_json(c, "{\"lr\": 0}", "c.json"), InputError);
}

// A file's values must have the key's JSON type; booleans are written as booleans.
TEST(Config, JsonTypesAreChecked) {
  Config c;
  try {
    apply_json(c, "{\n  \"lr\": 0.01,\n  \"epochs\": \"3\"\n}", "run.json");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(e.field(), "epochs");
    EXPECT_EQ(e.line(), 3);
    EXPECT_NE(std::string(e.what()).find("expected an integer or \"auto\", got \"3\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(apply_json(c, "{\"lr\": \"0.1\"}", "run.json"), InputError);
  EXPECT_THROW(apply_json(c, "{\"quiet\": \"true\"}", "run.json"), InputError);
  EXPECT_THROW(apply_json(c, "{\"loss\": 1}", "run.json"), InputError);
  EXPECT_THROW(apply_json(c, "{\"epochs\": 2.5}", "run.json"), InputError);
  apply_json(c, "{\"negatives\": \"auto\", \"hidden\": [32, 16], \"normalize\": false, \"quiet\": true}", "run.json");
  resolve_defaults(c);
  const auto j = nlohmann::json::parse(to_json(c));
  EXPECT_TRUE(j["normalize"].is_boolean());
  EXPECT_TRUE(j["quiet"].is_boolean());
  EXPECT_TRUE(j["features"].is_boolean());
  EXPECT_TRUE(j["negatives"].is_number_integer());
  // Files written before booleans were booleans still read.
  apply_json(c, "{\"normalize\": \"false\"}", "old.json");
}

}  // namespace
}  // namespace towerrec

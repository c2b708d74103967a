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

}  // namespace
}  // namespace towerrec

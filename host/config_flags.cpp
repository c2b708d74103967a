#include "host/config_flags.h"

#include <algorithm>
#include <cstdio>

#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {

namespace {

// Levenshtein distance, for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The known long option nearest to `name` (without dashes), or "" when none
// is close enough to be what was meant.
std::string nearest_option(const CLI::App& app, const std::string& name) {
  std::string best;
  size_t best_d = std::max<size_t>(2, name.size() / 3) + 1;
  for (const CLI::Option* opt : app.get_options())
    for (const std::string& n : opt->get_lnames()) {
      const size_t d = edit_distance(name, n);
      if (d < best_d) best_d = d, best = n;
    }
  return best;
}

[[noreturn]] void unexpected(const CLI::App& app, const std::string& arg) {
  if (arg.rfind("--", 0) != 0 || arg == "--") throw Error("unexpected argument '" + arg + "'");
  std::string name = arg.substr(2);
  name = name.substr(0, name.find('='));
  std::string msg = "unknown option --" + name + " (see --help)";
  if (const std::string near = nearest_option(app, name); !near.empty())
    msg += "; did you mean --" + near + "?";
  throw Error(msg);
}

}  // namespace

void configure_app(CLI::App& app) {
  app.set_help_flag("-h,--help", "show this help and exit");
  app.get_formatter()->column_width(34);
}

void add_config_options(CLI::App& app, Config& cfg) {
  const Config def;
  for (const ConfigKey& k : config_keys()) {
    CLI::Option* opt = app.add_option_function<std::string>(
        "--" + k.name,
        [&cfg, &k](const std::string& v) {
          // A bare boolean key (no value follows) means true.
          k.set(cfg, k.is_bool && v.empty() ? "true" : v);
        },
        k.help + " [" + k.get(def) + "]");
    opt->trigger_on_parse()->option_text(k.value_name);
    if (k.is_bool) opt->expected(0, 1);
  }
  app.add_option_function<std::string>(
         "--config", [&cfg](const std::string& file) { apply_json(cfg, read_file(file), file); },
         "JSON file with any of the keys above (flags after it override it)")
      ->trigger_on_parse()
      ->option_text("FILE");
}

bool parse_args(CLI::App& app, const std::vector<std::string>& args) {
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return false;
  } catch (const CLI::ExtrasError&) {
    unexpected(app, app.remaining(false).at(0));
  } catch (const CLI::ParseError& e) {
    throw Error(e.what());
  }
  return true;
}

std::vector<std::string> apply_flags(Config& cfg, const std::vector<std::string>& args) {
  CLI::App app;
  configure_app(app);
  add_config_options(app, cfg);
  std::vector<std::string> positional;
  app.add_option("positional", positional)->expected(0, -1);
  parse_args(app, args);
  return positional;
}

}  // namespace towerrec

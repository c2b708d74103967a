// The command-line side of the configuration: every configuration key as a
// CLI11 option, and argument parsing with errors as towerrec::Error. Shared
// by apply_flags (config.h) and the towerrec commands.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "towerrec/config.h"

namespace towerrec {

// Adds every configuration key as --KEY VALUE (a bare --KEY for the boolean
// keys) and --config FILE to `app`. The options act in command-line order as
// they are parsed, so flags after --config FILE override the file and a later
// flag overrides an earlier one; values are checked by the key's own parser,
// the one JSON files go through.
void add_config_options(CLI::App& app, Config& cfg);

// Parses `args` (without the program and command names). Returns false when
// --help was given: the generated help is then on stdout. A usage error
// throws Error; an unknown option names the nearest known one.
bool parse_args(CLI::App& app, const std::vector<std::string>& args);

// A CLI11 app with the towerrec commands' conventions: --help / -h, long
// option names, help in a wide column.
void configure_app(CLI::App& app);

}  // namespace towerrec

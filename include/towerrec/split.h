// Train/test splits of an interaction log. Every split is deterministic (the
// random one from its seed) and returns ordinary Interactions in the input's
// row order, so it can be written out with write_interactions_csv and shared.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "towerrec/data.h"

namespace towerrec {

struct Split {
  Interactions train, test;
};

// For each user, a random `test_fraction` of their interactions (rounded to the
// nearest count, at least one left in train when the user has two or more) goes
// to test. Reproducible from the seed.
Split split_per_user_ratio(const Interactions& x, int32_t n_users, double test_fraction,
                           uint64_t seed);

// Leave-one-out: each user's latest interaction (largest timestamp; among equal
// timestamps the one that comes last in row order) goes to test. Users with a
// single interaction keep it in train. Throws Error when x has no timestamps.
Split split_leave_one_out(const Interactions& x, int32_t n_users);

// Global temporal split: rows ordered by timestamp (ties by row order); the last
// round(test_fraction x rows) go to test, so every test interaction is at least
// as recent as every training one (the cut sits at the 1 - test_fraction
// quantile of the timestamps). Throws Error when x has no timestamps.
Split split_temporal(const Interactions& x, double test_fraction);

// Dispatch by name: "ratio", "loo" or "temporal" (Error otherwise).
Split split_by_method(const std::string& method, const Interactions& x, int32_t n_users,
                      double test_fraction, uint64_t seed);

// Subset of x by row indices (keeps rating and timestamp columns when present).
Interactions select_rows(const Interactions& x, const std::vector<int64_t>& rows);

}  // namespace towerrec

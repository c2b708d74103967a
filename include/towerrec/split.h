// Train/test splits of an interaction log. Every split is seeded and returns
// ordinary Interactions, so it can be written out and shared.
#pragma once

#include <cstdint>

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

// Subset of x by row indices (keeps rating and timestamp columns when present).
Interactions select_rows(const Interactions& x, const std::vector<int64_t>& rows);

}  // namespace towerrec

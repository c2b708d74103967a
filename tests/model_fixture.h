// A small two-tower model on a tiny data set with features on both sides,
// shared by the model, trainer and cross-backend training tests.
#pragma once

#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tests/test_util.h"
#include "towerrec/backend.h"
#include "towerrec/data.h"
#include "towerrec/model.h"
#include "towerrec/recommend.h"

namespace towerrec::testing {

// A small data set with features on both sides: 3 dense user columns, one
// one-hot and one multi-hot field per side, some empty bags.
inline Dataset tiny_dataset(uint64_t seed, int32_t n_users = 23, int32_t n_items = 17) {
  std::mt19937_64 g(seed);
  Dataset ds;
  for (int32_t u = 0; u < n_users; ++u) ds.users.add("u" + std::to_string(u));
  for (int32_t i = 0; i < n_items; ++i) ds.items.add("i" + std::to_string(i));
  for (int32_t u = 0; u < n_users; ++u)
    for (int j = 0; j < 4; ++j) {
      ds.interactions.user.push_back(u);
      ds.interactions.item.push_back(static_cast<int32_t>(g() % n_items));
    }
  auto make = [&](int32_t n, int dense) {
    EntityFeatures f;
    f.n_entities = n;
    for (int c = 0; c < dense; ++c) f.dense_names.push_back("d" + std::to_string(c));
    f.dense = testing::random_floats(g, static_cast<size_t>(n) * dense, 0.0f, 1.0f);
    f.dense_min.assign(dense, 0.0f);
    f.dense_max.assign(dense, 1.0f);
    for (int field = 0; field < 2; ++field) {
      CategoricalField c;
      c.name = "c" + std::to_string(field);
      for (int v = 0; v < 5; ++v) c.vocab.add("v" + std::to_string(v));
      c.offsets.push_back(0);
      for (int32_t e = 0; e < n; ++e) {
        const int count = field == 0 ? 1 : static_cast<int>(g() % 3);  // multi-hot: 0..2
        for (int q = 0; q < count; ++q) c.values.push_back(static_cast<int32_t>(g() % 5));
        c.offsets.push_back(static_cast<int32_t>(c.values.size()));
      }
      f.categorical.push_back(std::move(c));
    }
    return f;
  };
  ds.user_features = make(n_users, 3);
  ds.item_features = make(n_items, 2);
  return ds;
}

inline TowerConfig small_tower() {
  TowerConfig t;
  t.id_dim = 6;
  t.hidden = {9, 7};
  t.out_dim = 5;
  t.cat_dim = 3;
  t.init_std = 0.5f;
  return t;
}

struct ModelFixture {
  std::unique_ptr<Backend> be;
  Dataset ds;
  std::unique_ptr<TwoTowerModel> model;
  ModelFixture(uint64_t seed, const TowerConfig& tc,
               std::unique_ptr<Backend> backend = make_cpu_backend(1))
      : be(std::move(backend)), ds(tiny_dataset(seed)) {
    TowerInputSpec us = make_input_spec(ds.user_features, ds.users.size(), true);
    if (tc.history > 0) us.history_vocab = ds.items.size();
    model = std::make_unique<TwoTowerModel>(
        *be, tc, us, make_input_spec(ds.item_features, ds.items.size(), true), seed);
    model->set_features(ds.user_features, ds.item_features);
    if (tc.history > 0) {
      const UserItems h = group_by_user(ds.interactions, ds.users.size());
      model->set_history(h.offsets, h.items);
    }
  }
};

// Every parameter and optimizer moment of the model, flattened.
inline std::vector<float> all_state(TwoTowerModel& m) {
  std::vector<float> v;
  for (const auto& t : m.save_state().tensors) v.insert(v.end(), t.begin(), t.end());
  return v;
}

}  // namespace towerrec::testing

// towerrec._core: the engine for the Python package (python/towerrec). The
// Python layer maps original IDs to dense indices and back; this module works
// in dense indices and releases the GIL while it trains or scores.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <csignal>
#include <string>
#include <vector>

#include "towerrec/api.h"
#include "towerrec/error.h"
#include "towerrec/session.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using namespace towerrec;

// Python classes for the engine's errors (towerrec.Error, towerrec.InputError),
// set by the package at import time.
PyObject* g_error = nullptr;
PyObject* g_input_error = nullptr;

void set_error_types(nb::handle error, nb::handle input_error) {
  Py_XDECREF(g_error);
  Py_XDECREF(g_input_error);
  g_error = error.inc_ref().ptr();
  g_input_error = input_error.inc_ref().ptr();
}

void translate(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const InputError& e) {
    if (!g_input_error) throw;
    nb::object args = nb::make_tuple(e.what(), e.file(), e.line(), e.field());
    PyErr_SetObject(g_input_error, args.ptr());
  } catch (const Error& e) {
    if (!g_error) throw;
    PyErr_SetString(g_error, e.what());
  }
}

using IntArray = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

std::vector<int32_t> to_vector(const IntArray& a) { return {a.data(), a.data() + a.shape(0)}; }

// A numpy array that owns a moved-in vector.
template <typename T>
nb::ndarray<nb::numpy, T, nb::ndim<2>> owned(std::vector<T>&& v, size_t rows, size_t cols) {
  auto* p = new std::vector<T>(std::move(v));
  nb::capsule owner(p, [](void* q) noexcept { delete static_cast<std::vector<T>*>(q); });
  return nb::ndarray<nb::numpy, T, nb::ndim<2>>(p->data(), {rows, cols}, owner);
}

nb::tuple topk_arrays(TopK&& t) {
  const size_t rows = static_cast<size_t>(t.rows), k = static_cast<size_t>(t.k);
  return nb::make_tuple(owned(std::move(t.ids), rows, k), owned(std::move(t.scores), rows, k));
}

nb::dict ranking_dict(const RankingMetrics& m) {
  nb::dict d;
  for (size_t j = 0; j < m.ks.size(); ++j) {
    const std::string at = "@" + std::to_string(m.ks[j]);
    d[("precision" + at).c_str()] = m.precision[j];
    d[("recall" + at).c_str()] = m.recall[j];
    d[("ndcg" + at).c_str()] = m.ndcg[j];
    d[("map" + at).c_str()] = m.map[j];
    d[("hit_rate" + at).c_str()] = m.hit_rate[j];
  }
  if (!m.ks.empty()) {
    const std::string at = "@" + std::to_string(m.ks.back());
    d[("mrr" + at).c_str()] = m.mrr;
    d[("coverage" + at).c_str()] = m.coverage;
  }
  d["users_evaluated"] = m.users_evaluated;
  d["users_skipped"] = m.users_skipped;
  return d;
}

Interactions make_interactions(const IntArray& users, const IntArray& items) {
  if (users.shape(0) != items.shape(0)) throw Error("users and items differ in length");
  Interactions x;
  x.user = to_vector(users);
  x.item = to_vector(items);
  return x;
}

nb::dict progress_dict(const TrainProgress& p, int64_t done, int64_t total, double secs) {
  nb::dict d;
  d["event"] = "step";
  d["epoch"] = p.epoch;
  d["epochs"] = p.epochs;
  d["step"] = p.step;
  d["steps"] = p.steps;
  d["loss"] = p.loss;
  d["samples"] = p.samples;
  d["steps_done"] = done;
  d["steps_total"] = total;
  d["seconds"] = secs;
  return d;
}

// Trains as `towerrec train` does, with the GIL released. `callback(dict)` is
// called (with the GIL) every log-every steps, after each epoch and after
// each validation; it returning False asks for a stop. Pending signals
// (Ctrl-C) are checked at the same points: a KeyboardInterrupt stops the run
// after the current step with the checkpoint written. Returns
// (checkpoint path, info dict); info["exception"] holds the exception that
// stopped the run (KeyboardInterrupt or one the callback raised), else None.
nb::tuple py_train(const std::string& config_json, nb::object callback) {
  Config cfg;
  apply_json(cfg, config_json, "TwoTower() configuration");
  resolve_defaults(cfg);
  TrainingSession* session = nullptr;
  nb::object pending = nb::none();
  nb::list history;
  // With the GIL held: checks signals and calls the callback; on an exception
  // keeps it and asks the session to stop.
  auto report = [&](nb::object event) {
    if (!pending.is_none()) return;
    PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
    bool failed = PyErr_CheckSignals() != 0;
    if (!failed && callback.is_valid() && !callback.is_none()) {
      PyObject* r = PyObject_CallOneArg(callback.ptr(), event.ptr());
      if (!r) failed = true;
      else {
        if (r == Py_False) session->request_stop(0);
        Py_DECREF(r);
      }
    }
    if (failed) {
      PyErr_Fetch(&type, &value, &tb);
      PyErr_NormalizeException(&type, &value, &tb);
      if (tb) PyException_SetTraceback(value, tb);
      pending = nb::steal(value);
      Py_XDECREF(type);
      Py_XDECREF(tb);
      session->request_stop(SIGINT);
    }
  };
  SessionCallbacks cb;
  cb.progress = [&](const TrainProgress& p, int64_t done, int64_t total, double secs) {
    nb::gil_scoped_acquire gil;
    report(progress_dict(p, done, total, secs));
  };
  cb.epoch_done = [&](const EpochStats& s, double secs, int64_t left) {
    nb::gil_scoped_acquire gil;
    nb::dict d;
    d["event"] = "epoch";
    d["epoch"] = s.epoch;
    d["epochs"] = session ? session->config().train.epochs : cfg.train.epochs;
    d["loss"] = s.loss;
    d["samples_per_s"] = s.samples_per_s;
    d["seconds"] = secs;
    d["steps_left"] = left;
    history.append(s.loss);
    report(d);
  };
  cb.metrics = [&](const std::string& label, const RankingMetrics& m) {
    nb::gil_scoped_acquire gil;
    nb::dict d = ranking_dict(m);
    d["event"] = label;
    report(d);
  };
  std::vector<std::string> warnings;
  cb.warn = [&](const std::string& line) { warnings.push_back(line); };
  SessionResult result;
  HoldoutEvaluation ev;
  std::string path;
  {
    nb::gil_scoped_release release;
    TrainingSession s(cfg, {}, cb);
    session = &s;
    result = s.run();
    if (result.end != SessionResult::End::kStopped) ev = s.evaluate();
    path = s.checkpoint_path();
    session = nullptr;
  }
  nb::dict info;
  info["checkpoint"] = path;
  info["stopped"] = result.end == SessionResult::End::kStopped;
  info["epoch"] = result.position.epoch;
  info["step"] = result.position.step;
  info["steps_per_epoch"] = result.steps_per_epoch;
  info["seconds"] = result.seconds;
  info["loss_history"] = history;
  info["warnings"] = warnings;
  info["exception"] = pending;
  if (ev.done) {
    nb::dict v = ranking_dict(ev.model);
    v["popularity_recall@10"] = ev.popularity.recall[0];
    v["popularity_ndcg@10"] = ev.popularity.ndcg[0];
    info["validation"] = v;
  } else {
    info["validation"] = nb::none();
  }
  return nb::make_tuple(path, info);
}

nb::list config_keys_list() {
  nb::list out;
  for (const auto& k : config_keys()) out.append(nb::make_tuple(k.name, k.help, k.is_bool, k.value_name));
  return out;
}

// The effective configuration (defaults resolved) of JSON text, as JSON.
std::string check_config(const std::string& json, const std::string& source) {
  Config cfg;
  apply_json(cfg, json, source);
  resolve_defaults(cfg);
  return to_json(cfg);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "towerrec engine (C++); use the towerrec package rather than this module";
  nb::register_exception_translator(translate);
  m.def("_set_error_types", &set_error_types);
  m.def("version", [] { return std::string(TOWERREC_VERSION); });
  m.def("cuda_available", &cuda_available);
  m.def("config_keys", &config_keys_list);
  m.def("check_config", &check_config, "json"_a, "source"_a);
  m.def("train", &py_train, "config_json"_a, "callback"_a = nb::none());

  nb::class_<TrainedModel>(m, "Model")
      .def_static(
          "load",
          [](const std::string& path, const std::string& device, int threads) {
            nb::gil_scoped_release release;
            return TrainedModel::load(path, device, threads);
          },
          "path"_a, "device"_a = "auto", "threads"_a = 0)
      .def_prop_ro("n_users", &TrainedModel::n_users)
      .def_prop_ro("n_items", &TrainedModel::n_items)
      .def_prop_ro("dim", &TrainedModel::dim)
      .def_prop_ro("path", [](const TrainedModel& t) { return t.path(); })
      .def_prop_ro("config_json", [](const TrainedModel& t) { return t.checkpoint().config_json; })
      .def_prop_ro("epochs_done", [](const TrainedModel& t) { return t.checkpoint().epochs_done; })
      .def_prop_ro("has_seen", [](const TrainedModel& t) { return t.checkpoint().has_seen(); })
      .def_prop_ro("backend", [](TrainedModel& t) { return t.backend().describe(); })
      .def_prop_ro("user_ids", [](const TrainedModel& t) { return t.users().ids(); })
      .def_prop_ro("item_ids", [](const TrainedModel& t) { return t.items().ids(); })
      .def("seen",
           [](const TrainedModel& t) {
             const UserItems& s = t.seen();
             std::vector<int64_t> off = s.offsets;
             std::vector<int32_t> items = s.items;
             const size_t no = off.size(), ni = items.size();
             auto o = owned(std::move(off), 1, no);
             auto i = owned(std::move(items), 1, ni);
             return nb::make_tuple(o, i);
           })
      // Views onto the model's own embedding memory: read-only, alive as long
      // as any view is (each keeps the model object alive).
      .def(
          "user_embeddings",
          [](nb::handle self) {
            TrainedModel& t = nb::cast<TrainedModel&>(self);
            const float* p;
            {
              nb::gil_scoped_release release;
              p = t.user_embeddings();
            }
            return nb::ndarray<nb::numpy, const float, nb::ndim<2>>(
                p, {static_cast<size_t>(t.n_users()), static_cast<size_t>(t.dim())}, self);
          })
      .def(
          "item_embeddings",
          [](nb::handle self) {
            TrainedModel& t = nb::cast<TrainedModel&>(self);
            const float* p;
            {
              nb::gil_scoped_release release;
              p = t.item_embeddings();
            }
            return nb::ndarray<nb::numpy, const float, nb::ndim<2>>(
                p, {static_cast<size_t>(t.n_items()), static_cast<size_t>(t.dim())}, self);
          })
      .def(
          "recommend",
          [](TrainedModel& t, const IntArray& users, int k, bool exclude_seen, const IntArray& deny,
             const IntArray& allow, bool has_allow) {
            RecommendFilter f;
            f.exclude_seen = exclude_seen;
            f.deny = to_vector(deny);
            f.allow = to_vector(allow);
            f.has_allow = has_allow;
            std::vector<int32_t> u = to_vector(users);
            TopK r;
            {
              nb::gil_scoped_release release;
              r = t.recommend(u, k, f);
            }
            return topk_arrays(std::move(r));
          },
          "users"_a, "k"_a, "exclude_seen"_a, "deny"_a, "allow"_a, "has_allow"_a)
      .def(
          "recommend_histories",
          [](TrainedModel& t, const IntArray& counts, const IntArray& items, int k,
             bool exclude_seen, const IntArray& deny, const IntArray& allow, bool has_allow) {
            RecommendFilter f;
            f.exclude_seen = exclude_seen;
            f.deny = to_vector(deny);
            f.allow = to_vector(allow);
            f.has_allow = has_allow;
            UserItems h;
            h.offsets.assign(counts.shape(0) + 1, 0);
            for (size_t r = 0; r < counts.shape(0); ++r) h.offsets[r + 1] = h.offsets[r] + counts.data()[r];
            h.items = to_vector(items);
            if (h.offsets.back() != static_cast<int64_t>(h.items.size()))
              throw Error("recommend_histories: the counts do not add up to the items");
            TopK r;
            {
              nb::gil_scoped_release release;
              r = t.recommend_histories(h, k, f);
            }
            r.rows = static_cast<int64_t>(counts.shape(0));
            return topk_arrays(std::move(r));
          },
          "counts"_a, "items"_a, "k"_a, "exclude_seen"_a, "deny"_a, "allow"_a, "has_allow"_a)
      .def(
          "similar_items",
          [](TrainedModel& t, const IntArray& items, int k) {
            std::vector<int32_t> q = to_vector(items);
            TopK r;
            {
              nb::gil_scoped_release release;
              r = t.similar_items(q, k);
            }
            r.rows = static_cast<int64_t>(q.size());
            return topk_arrays(std::move(r));
          },
          "items"_a, "k"_a)
      .def(
          "similar_users",
          [](TrainedModel& t, const IntArray& users, int k) {
            std::vector<int32_t> q = to_vector(users);
            TopK r;
            {
              nb::gil_scoped_release release;
              r = t.similar_users(q, k);
            }
            r.rows = static_cast<int64_t>(q.size());
            return topk_arrays(std::move(r));
          },
          "users"_a, "k"_a)
      .def(
          "evaluate",
          [](TrainedModel& t, const IntArray& users, const IntArray& items, std::vector<int> ks,
             bool exclude_seen) {
            const Interactions test = make_interactions(users, items);
            UserItems none;
            none.offsets.assign(static_cast<size_t>(t.n_users()) + 1, 0);
            RankingMetrics m, pop;
            {
              nb::gil_scoped_release release;
              m = t.evaluate(test, ks, exclude_seen ? nullptr : &none);
              pop = t.evaluate_popularity(test, ks, exclude_seen ? nullptr : &none);
            }
            nb::dict d = ranking_dict(m);
            for (size_t j = 0; j < pop.ks.size(); ++j) {
              const std::string at = "@" + std::to_string(pop.ks[j]);
              d[("popularity_recall" + at).c_str()] = pop.recall[j];
              d[("popularity_ndcg" + at).c_str()] = pop.ndcg[j];
            }
            return d;
          },
          "users"_a, "items"_a, "ks"_a, "exclude_seen"_a)
      .def(
          "save",
          [](const TrainedModel& t, const std::string& path) {
            nb::gil_scoped_release release;
            t.save(path);
          },
          "path"_a);
}

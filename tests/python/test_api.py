"""The Python API on a small synthetic set."""
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import towerrec
from conftest import synthetic


def numpy_topk(scores, N, exclude_rows):
    """Top-N by score, higher first, ties by the lower index; excluded items left out."""
    out_ids, out_scores = [], []
    for r, excl in enumerate(exclude_rows):
        s = scores[r].astype(np.float64).copy()
        s[list(excl)] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))
        order = [j for j in order if j not in excl][:N]
        out_ids.append(order)
        out_scores.append(scores[r][order])
    return out_ids, out_scores


def liked(df, model):
    """Each user's training items as item rows."""
    rows = {}
    irow = {v: j for j, v in enumerate(model.item_ids)}
    for u, g in df.groupby("user"):
        rows[u] = {irow[i] for i in g["item"]}
    return rows


def test_fit_recommend_shapes(fitted, synth_df):
    users = [0, 5, 7]
    ids, scores = fitted.recommend(users, N=5)
    assert ids.shape == (3, 5) and scores.shape == (3, 5)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    for r, u in enumerate(users):
        seen = set(synth_df.loc[synth_df.user == u, "item"])
        assert not seen & set(ids[r])
    one_ids, one_scores = fitted.recommend(5, N=5)
    assert one_ids.shape == (5,)
    np.testing.assert_array_equal(one_ids, ids[1])


def test_recommend_matches_numpy_topk(fitted, synth_df):
    U, V = fitted.user_embeddings, fitted.item_embeddings
    users = list(fitted.user_ids[:20])
    ids, scores = fitted.recommend(users, N=10)
    lk = liked(synth_df, fitted)
    urow = {v: j for j, v in enumerate(fitted.user_ids)}
    S = U[[urow[u] for u in users]] @ V.T
    want_rows, want_scores = numpy_topk(S, 10, [lk[u] for u in users])
    for r in range(len(users)):
        np.testing.assert_allclose(scores[r], want_scores[r], rtol=1e-5, atol=1e-5)
        # Same items, apart from swaps among near-equal scores.
        got = list(ids[r])
        want = list(fitted.item_ids[want_rows[r]])
        for g, w, a, b in zip(got, want, scores[r], want_scores[r]):
            assert g == w or abs(a - b) < 1e-5
    # Seen items included: the plain top-K of the scores.
    ids2, _ = fitted.recommend(users, N=10, filter_already_liked_items=False)
    want2, _ = numpy_topk(S, 10, [set() for _ in users])
    assert np.mean([list(ids2[r]) == list(fitted.item_ids[want2[r]]) for r in range(len(users))]) > 0.9


def test_allow_and_deny_lists(fitted):
    ids, _ = fitted.recommend([0, 1], N=10, filter_already_liked_items=False)
    deny = list(ids[0][:3])
    d_ids, _ = fitted.recommend([0, 1], N=10, filter_already_liked_items=False, filter_items=deny)
    assert not set(deny) & set(d_ids[0]) and not set(deny) & set(d_ids[1])
    np.testing.assert_array_equal(d_ids[0][:7], ids[0][3:10])
    allow = [3, 10, 20, 30, 41]
    a_ids, a_scores = fitted.recommend([0, 1], N=8, filter_already_liked_items=False, items=allow)
    for r in range(2):
        valid = a_ids[r][~np.isnan(a_scores[r])]
        assert set(valid) == set(allow)          # all five, nothing else
        assert list(a_ids[r][5:]) == [towerrec.PAD_ID] * 3   # padded
        assert np.all(np.isnan(a_scores[r][5:]))
        # Ranked as in the unrestricted list.
        full, _ = fitted.recommend(fitted.user_ids[r], N=60, filter_already_liked_items=False)
        assert list(valid) == [i for i in full if i in allow]
    both, _ = fitted.recommend(0, N=5, filter_already_liked_items=False, items=allow, filter_items=[3])
    assert 3 not in both and set(both[both != towerrec.PAD_ID]) == set(allow) - {3}
    empty_ids, empty_scores = fitted.recommend(0, N=3, items=[])
    assert list(empty_ids) == [towerrec.PAD_ID] * 3 and np.all(np.isnan(empty_scores))


def test_similar_items_and_users(fitted):
    V = fitted.item_embeddings
    ids, scores = fitted.similar_items([0, 1, 2], N=5)
    assert ids.shape == (3, 5)
    for r, q in enumerate([0, 1, 2]):
        row = list(fitted.item_ids).index(q)
        s = V @ V[row]
        want, want_s = numpy_topk(s[None, :], 5, [{row}])
        assert q not in ids[r]
        np.testing.assert_allclose(scores[r], want_s[0], rtol=1e-5, atol=1e-5)
    U = fitted.user_embeddings
    uids, uscores = fitted.similar_users(0, N=4)
    s = U @ U[0]
    want, _ = numpy_topk(s[None, :], 4, [{0}])
    np.testing.assert_allclose(uscores, s[want[0]], rtol=1e-5, atol=1e-5)


def test_embeddings_are_views(fitted):
    U1, U2 = fitted.user_embeddings, fitted.user_embeddings
    assert U1.dtype == np.float32 and U1.shape == (len(fitted.user_ids), 64)
    assert not U1.flags.writeable
    assert np.shares_memory(U1, U2)  # the engine's buffer, not a copy
    assert len(fitted.item_ids) == fitted.item_embeddings.shape[0]


def test_recommend_all(fitted):
    df = fitted.recommend_all(N=3)
    assert list(df.columns) == ["user", "item", "rank", "score"]
    assert len(df) == 3 * len(fitted.user_ids)
    ids, scores = fitted.recommend(fitted.user_ids[4], N=3)
    part = df[df.user == fitted.user_ids[4]]
    assert list(part["item"]) == list(ids) and list(part["rank"]) == [1, 2, 3]


def test_string_ids_features_and_sparse():
    df = synthetic(string_ids=True)
    users = pd.unique(df.user)
    items = pd.unique(df.item)
    uf = pd.DataFrame({"age": np.arange(len(users)) % 50 + 18,
                       "segment": ["s%d" % (i % 3) for i in range(len(users))]}, index=users)
    itf = pd.DataFrame({"tags": [["a", "b"] if i % 2 else ["c"] for i in range(len(items))]},
                       index=items)
    itf.loc["not-an-item"] = [["x"]]  # ignored: no interactions
    m = towerrec.TwoTower(epochs=2, device="cpu", threads=1).fit(
        df, user_features=uf, item_features=itf, validation=0.2, show_progress=False)
    assert m.item_ids.dtype == object and m.item_ids[0] == df.item[0]
    ids, _ = m.recommend(["user-3"], N=4)
    assert all(isinstance(i, str) and i.startswith("item,") for i in ids[0])
    assert m.validation_metrics_ is not None and "ndcg@10" in m.validation_metrics_
    assert m.checkpoint_config["features"] is True

    # CSR: rows are user IDs, columns item IDs.
    x = synthetic()
    csr = sp.csr_matrix((np.ones(len(x)), (x.user, x.item)))
    m2 = towerrec.TwoTower(epochs=1, device="cpu", threads=1).fit(csr, show_progress=False)
    assert set(m2.user_ids) == set(x.user) and m2.item_ids.dtype == np.int64


def test_validation_frame_is_evaluated_not_trained(synth_df):
    # Held-out rows given as a DataFrame: never trained on, evaluated as
    # towerrec.evaluate does with the training items excluded.
    rng = np.random.default_rng(3)
    held = rng.random(len(synth_df)) < 0.2
    train, val = synth_df[~held], synth_df[held]
    val = val[val.user.isin(train.user) & val.item.isin(train.item)]
    m = towerrec.TwoTower(epochs=2, device="cpu", threads=1).fit(
        train, validation=val, show_progress=False)
    assert m.validation_metrics_ is not None
    again = towerrec.evaluate(m, val, k=(10, 20))
    for key in ("recall@10", "ndcg@10", "recall@20"):
        assert m.validation_metrics_[key] == pytest.approx(again[key], abs=1e-12), key
    assert m.validation_metrics_["users_evaluated"] == again["users_evaluated"]
    with pytest.raises(towerrec.InputError, match="validation"):
        towerrec.TwoTower(epochs=1, device="cpu", threads=1).fit(
            train, validation=pd.DataFrame({"user": [train.user.iloc[0]], "item": [-12345]}),
            show_progress=False)


def test_save_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "m.ckpt")
    back = towerrec.TwoTower.load(tmp_path / "m.ckpt", device="cpu")
    a = fitted.recommend([0, 1, 2], N=5)
    b = back.recommend([0, 1, 2], N=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])
    assert back.get_params()["epochs"] == 4
    s = towerrec.TwoTower.load(tmp_path / "m.ckpt", device="cpu", id_type=str)
    assert s.user_ids[0] == str(fitted.user_ids[0])
    os.makedirs(tmp_path / "d")
    fitted.save(tmp_path / "d")
    assert os.path.isfile(tmp_path / "d" / "model.ckpt")
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]


def test_evaluate(fitted, synth_df):
    test = synthetic(seed=9)
    test = test[test.user.isin(fitted.user_ids) & test.item.isin(fitted.item_ids)]
    m = towerrec.evaluate(fitted, test, k=(5, 10))
    for key in ("precision@5", "recall@10", "ndcg@10", "map@5", "hit_rate@10", "mrr@10",
                "coverage@10", "users_evaluated", "popularity_ndcg@10"):
        assert key in m
    assert 0 <= m["ndcg@10"] <= 1 and m["users_evaluated"] > 0


def test_bad_input_raises_with_message(fitted, synth_df):
    with pytest.raises(TypeError, match="did you mean 'epochs'"):
        towerrec.TwoTower(epohcs=3)
    with pytest.raises(towerrec.InputError) as e:
        towerrec.TwoTower(epochs=-1).fit(synth_df, show_progress=False)
    assert e.value.field == "epochs" and "epochs" in str(e.value)
    with pytest.raises(towerrec.InputError) as e:
        fitted.recommend(["nobody"])
    assert "unknown user ID 'nobody'" in str(e.value) and e.value.field == "user"
    assert isinstance(e.value, ValueError) and isinstance(e.value, towerrec.Error)
    with pytest.raises(towerrec.InputError, match="unknown item ID 999"):
        fitted.recommend(0, filter_items=[999])
    bad = pd.DataFrame({"age": [1.0, np.inf]}, index=[0, 1])
    with pytest.raises(towerrec.InputError) as e:
        towerrec.TwoTower(epochs=1).fit(synth_df, user_features=bad, show_progress=False)
    assert e.value.file == "user_features" and e.value.field == "age"
    assert "user_features, row 1" in str(e.value) and "non-finite" in str(e.value)
    with pytest.raises(TypeError, match="integers or strings"):
        towerrec.TwoTower(epochs=1).fit(synth_df.astype({"user": float}), show_progress=False)
    with pytest.raises(towerrec.InputError, match="missing column"):
        towerrec.TwoTower(epochs=1).fit(synth_df.rename(columns={"item": "thing"}), show_progress=False)
    with pytest.raises(towerrec.Error, match="no such file|cannot open|model.ckpt"):
        towerrec.TwoTower.load("/nonexistent/model.ckpt")
    with pytest.raises(towerrec.Error, match="not fitted"):
        towerrec.TwoTower().recommend([1])


def test_callback_events_and_stop(synth_df):
    events = []
    def cb(ev):
        events.append(ev)
        return not (ev["event"] == "epoch" and ev["epoch"] == 2)  # stop after epoch 2
    m = towerrec.TwoTower(epochs=5, batch_size=64, log_every=2, device="cpu", threads=1)
    m.fit(synth_df, callback=cb, show_progress=False)
    kinds = {e["event"] for e in events}
    assert {"step", "epoch"} <= kinds
    assert max(e["epoch"] for e in events if e["event"] == "epoch") == 2
    assert len(m.loss_history_) == 2
    assert m.recommend(0, N=3)[0].shape == (3,)


def test_ctrl_c_stops_cleanly(synth_df, tmp_path):
    # Python's own Ctrl-C handler, as in an interactive session: a process
    # started in the background of a non-interactive shell inherits SIGINT
    # ignored, and Python then installs no handler of its own.
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    def cb(ev):
        if ev["event"] == "step" and ev["steps_done"] >= 4:
            os.kill(os.getpid(), signal.SIGINT)   # as Ctrl-C does
    m = towerrec.TwoTower(epochs=50, batch_size=32, log_every=2, device="cpu", threads=1)
    try:
        with pytest.raises(KeyboardInterrupt):
            m.fit(synth_df, callback=cb, show_progress=False)
    finally:
        signal.signal(signal.SIGINT, saved)
    ids, scores = m.recommend([0, 1], N=5)        # usable after the interrupt
    assert ids.shape == (2, 5) and np.isfinite(scores).all()
    m.save(tmp_path / "stopped.ckpt")
    assert towerrec.TwoTower.load(tmp_path / "stopped.ckpt").recommend(0, N=5)[0].tolist() == ids[0].tolist()


def test_gil_released_while_training(synth_df):
    big = pd.concat([synth_df.assign(user=synth_df.user + 1000 * k) for k in range(8)])
    m = towerrec.TwoTower(epochs=6, batch_size=128, device="cpu", threads=1)
    t = threading.Thread(target=lambda: m.fit(big, show_progress=False))
    ticks = 0
    t.start()
    t0 = time.perf_counter()
    while t.is_alive():
        ticks += 1
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    t.join()
    # This thread kept running while the engine trained.
    assert elapsed < 0.05 or ticks > elapsed * 100


def test_params(fitted):
    p = fitted.get_params()
    assert p["epochs"] == 4 and p["device"] == "cpu"
    clone = towerrec.TwoTower(**p).set_params(epochs=1)
    assert clone.epochs == 1 and "epochs=1" in repr(clone)
    cfg = clone.effective_config()
    assert cfg["epochs"] == 1 and "batch_size" in cfg
    assert "batch_size" in towerrec.config_keys()

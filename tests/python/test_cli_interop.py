"""The CLI and the Python package read and write the same checkpoints and give
the same recommendations and metrics for them."""
import io
import subprocess

import numpy as np
import pandas as pd
import pytest

import towerrec
from conftest import synthetic


def run(cli, *args):
    r = subprocess.run([cli, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def parse_eval(text):
    """`towerrec eval` lines 'test@10  precision 0.1 ...' into metrics@k."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0].startswith("test@"):
            k = parts[0].split("@")[1]
            for name, value in zip(parts[1::2], parts[2::2]):
                out[f"{name.replace('-', '_')}@{k}"] = float(value)
        elif parts[0] == "test" and "mrr@" in line:
            out[parts[1]] = float(parts[2])
            out[parts[3]] = float(parts[4])
    return out


def same_lists(py_ids, py_scores, cli_df, users):
    for r, u in enumerate(users):
        part = cli_df[cli_df.user == u].sort_values("rank")
        np.testing.assert_allclose(part["score"].to_numpy(), py_scores[r][: len(part)], rtol=1e-5, atol=1e-6)
        assert list(part["item"]) == list(py_ids[r][: len(part)])


def test_cli_checkpoint_in_python(cli, tmp_path):
    run(cli, "synth", "--out", str(tmp_path / "data"), "--users", "300", "--items", "150",
        "--interactions-per-user", "12", "--seed", "5")
    run(cli, "train", "--data", str(tmp_path / "data"), "--epochs", "2", "--quiet", "--device", "cpu",
        "--out", str(tmp_path / "model"))
    run(cli, "recommend", "--model", str(tmp_path / "model"), "--k", "7", "--device", "cpu",
        "--out", str(tmp_path / "recs.csv"))
    cli_df = pd.read_csv(tmp_path / "recs.csv", dtype={"user": str, "item": str})
    m = towerrec.TwoTower.load(tmp_path / "model", device="cpu")
    assert m.user_ids.dtype == object  # synth IDs are u0, i1, ...
    users = list(m.user_ids[:25])
    ids, scores = m.recommend(users, N=7)
    same_lists(ids, scores, cli_df, users)
    assert len(m.recommend_all(7)) == len(cli_df)
    # evaluate == towerrec eval on the same checkpoint and test file.
    test = pd.read_csv(tmp_path / "data" / "interactions.csv", dtype={"user": str, "item": str}).sample(
        frac=0.3, random_state=1)
    test.to_csv(tmp_path / "test.csv", index=False)
    cli_m = parse_eval(run(cli, "eval", "--model", str(tmp_path / "model"), "--test",
                           str(tmp_path / "test.csv"), "--include-seen", "--k", "5,10", "--device", "cpu"))
    py_m = towerrec.evaluate(m, test, k=(5, 10), filter_already_liked_items=False)
    for key, value in cli_m.items():
        assert py_m[key] == pytest.approx(value, abs=6e-5), key


def test_python_checkpoint_in_cli(cli, tmp_path):
    df = synthetic(string_ids=True)
    m = towerrec.TwoTower(epochs=2, device="cpu", threads=1).fit(df, show_progress=False)
    m.save(tmp_path / "py.ckpt")
    run(cli, "recommend", "--model", str(tmp_path / "py.ckpt"), "--k", "5", "--device", "cpu",
        "--out", str(tmp_path / "recs.csv"))
    cli_df = pd.read_csv(tmp_path / "recs.csv", dtype={"user": str, "item": str})
    users = list(m.user_ids[:20])
    ids, scores = m.recommend(users, N=5)
    same_lists(ids, scores, cli_df, users)
    run(cli, "export", "--model", str(tmp_path / "py.ckpt"), "--out", str(tmp_path / "emb"), "--device", "cpu")
    np.testing.assert_allclose(np.load(tmp_path / "emb" / "item_embeddings.npy"), m.item_embeddings,
                               rtol=1e-6, atol=1e-6)


def test_movielens_cli_and_python_agree(cli, ml100k, tmp_path):
    run(cli, "train", "--data", ml100k, "--epochs", "2", "--quiet", "--device", "cpu",
        "--out", str(tmp_path / "ml"))
    run(cli, "recommend", "--model", str(tmp_path / "ml"), "--k", "10", "--device", "cpu",
        "--out", str(tmp_path / "recs.csv"))
    cli_df = pd.read_csv(tmp_path / "recs.csv")
    m = towerrec.TwoTower.load(tmp_path / "ml", device="cpu")
    assert m.user_ids.dtype == np.int64  # MovieLens IDs are integers
    users = list(m.user_ids[:50])
    ids, scores = m.recommend(users, N=10)
    same_lists(ids, scores, cli_df, users)


def test_recommend_from_history_matches_the_cli(cli, tmp_path):
    """New users embedded from item lists: the same lists and scores as
    `towerrec recommend --histories`, their own items left out."""
    run(cli, "synth", "--out", str(tmp_path / "data"), "--users", "200", "--items", "120",
        "--interactions-per-user", "10", "--seed", "3")
    run(cli, "train", "--data", str(tmp_path / "data"), "--epochs", "2", "--quiet", "--device", "cpu",
        "--features", "false", "--history", "4", "--out", str(tmp_path / "model"))
    m = towerrec.TwoTower.load(tmp_path / "model", device="cpu")
    items = list(m.item_ids)
    hist = [items[:3], items[10:16], [items[7]]]  # the second is past the cap of 4
    rows = [(f"new{r}", i) for r, h in enumerate(hist) for i in h]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(tmp_path / "hist.csv", index=False)
    out = run(cli, "recommend", "--model", str(tmp_path / "model"), "--histories",
              str(tmp_path / "hist.csv"), "--k", "6", "--device", "cpu", "--out", "-")
    cli_df = pd.read_csv(io.StringIO(out), dtype={"user": str, "item": str})
    ids, scores = m.recommend_from_history(hist, N=6)
    same_lists(ids, scores, cli_df, [f"new{r}" for r in range(len(hist))])
    for r, h in enumerate(hist):
        assert not set(ids[r]) & set(h)
    one_ids, one_scores = m.recommend_from_history(hist[0], N=6)
    assert list(one_ids) == list(ids[0])
    np.testing.assert_array_equal(one_scores, scores[0])
    with pytest.raises(towerrec.InputError):
        m.recommend_from_history(["no-such-item"], N=3)
    run(cli, "train", "--data", str(tmp_path / "data"), "--epochs", "1", "--quiet", "--device", "cpu",
        "--out", str(tmp_path / "plain"))
    plain = towerrec.TwoTower.load(tmp_path / "plain", device="cpu")
    with pytest.raises(Exception, match="history"):
        plain.recommend_from_history(hist[0], N=3)

"""towerrec.spark: batch scoring over a local Spark session (local[2]) against
TwoTower.recommend and similar_items on the same checkpoint. Skipped with a
message where pyspark (pip install '.[spark]') or Java is absent; the model
cache tests need neither."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import towerrec
from towerrec import spark as trs
from conftest import synthetic

K = 10
# pyspark's own warnings about pandas 3 (the tests check the results themselves).
pytestmark = [pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def model_path(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("spark-model") / "model.ckpt"
    fitted.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def ref(model_path):
    # One thread, as the Spark tasks run (spark.task.cpus = 1): bit-identical scores.
    return towerrec.TwoTower.load(model_path, device="cpu", threads=1)


def java_missing():
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") \
        else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        return "no Java runtime (java on PATH or JAVA_HOME)"
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{java} -version failed: {e}"
    return None


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark", reason="pyspark not installed (pip install '.[spark]'; "
                        "scripts/install-python installs it where Java is present)")
    pytest.importorskip("pyarrow", reason="pyarrow not installed (pip install '.[spark]')")
    why = java_missing()
    if why:
        pytest.skip(f"Spark needs Java: {why}")
    from pyspark.sql import SparkSession
    with pytest.MonkeyPatch.context() as mp:
        # The Python workers run this interpreter, which has towerrec installed.
        mp.setenv("PYSPARK_PYTHON", sys.executable)
        mp.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        session = (SparkSession.builder.master("local[2]").appName("towerrec-test")
                   .config("spark.ui.enabled", "false")
                   .config("spark.sql.shuffle.partitions", "2")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   # Several Arrow batches per partition.
                   .config("spark.sql.execution.arrow.maxRecordsPerBatch", "16")
                   .getOrCreate())
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            session.stop()


def users_df(spark, users, partitions=3, dtype="long"):
    df = spark.createDataFrame([(u,) for u in users], f"user {dtype}")
    return df.repartition(partitions) if partitions else df


def by_key(pdf, key, value="item"):
    """{key: (values in rank order, scores)} of a collected result."""
    out = {}
    for kv, g in pdf.groupby(key, sort=False):
        g = g.sort_values("rank")
        assert list(g["rank"]) == list(range(1, len(g) + 1))
        out[kv] = (list(g[value]), g["score"].to_numpy())
    return out


def check_equal(got, users, ids, scores):
    assert set(got) == set(users)
    for r, u in enumerate(users):
        want_ids = [int(x) for x, s in zip(ids[r], scores[r]) if not np.isnan(s)]
        g_ids, g_scores = got[u]
        assert g_ids == want_ids, u
        np.testing.assert_allclose(g_scores, scores[r][:len(want_ids)], rtol=1e-6, atol=1e-6)


def test_recommend_equals_package(spark, model_path, ref):
    users = [int(u) for u in ref.user_ids]
    df = users_df(spark, users, partitions=3)
    assert df.rdd.getNumPartitions() == 3
    # batch_size 7: several engine calls per Arrow batch, and a short last one.
    recs = trs.recommend(df, model_path, k=K, batch_size=7, device="cpu", threads=1)
    assert recs.columns == ["user", "item", "rank", "score"]
    pdf = recs.toPandas()
    assert len(pdf) == len(users) * K
    ids, scores = ref.recommend(users, N=K)
    check_equal(by_key(pdf, "user"), users, ids, scores)


def test_model_loaded_once_per_worker(spark, model_path, ref):
    users = [int(u) for u in ref.user_ids]
    df = users_df(spark, users, partitions=8)
    assert trs.recommend(df, model_path, k=3, device="cpu", threads=1).count() == 3 * len(users)

    def probe(batches):
        for _ in batches:
            pass
        info = trs.cache_info()
        held = [m for m in info["models"] if m[0] == model_path and m[1:] == ("cpu", 1)]
        yield pd.DataFrame({"pid": [os.getpid()], "loads": [info["loads"].get(model_path, 0)],
                            "held": [len(held)]})

    # Python workers are reused (spark.python.worker.reuse): 8 tasks on at most
    # 2 workers per job, and each worker read the checkpoint at most once.
    seen = df.mapInPandas(probe, "pid long, loads long, held long").toPandas()
    assert len(seen) == 8 and seen["pid"].nunique() <= 2
    assert (seen["loads"] <= 1).all(), seen
    assert (seen["held"] == seen["loads"]).all() and (seen["held"] == 1).any(), seen


def test_recommend_options_equal_package(spark, model_path, ref):
    users = [int(u) for u in ref.user_ids[:30]]
    allow = [int(i) for i in ref.item_ids[:8]]
    deny = [int(i) for i in ref.item_ids[:3]]
    df = users_df(spark, users, partitions=2)
    got = trs.recommend(df, model_path, k=K, filter_seen=False, filter_items=deny, items=allow,
                        device="cpu", threads=1).toPandas()
    ids, scores = ref.recommend(users, N=K, filter_already_liked_items=False,
                                filter_items=deny, items=allow)
    assert np.isnan(scores).any()  # 5 candidates for 10 slots: padded in the package...
    assert len(got) == 5 * len(users)  # ...and left out in Spark
    check_equal(by_key(got, "user"), users, ids, scores)


def test_empty_dataframe(spark, model_path):
    recs = trs.recommend(users_df(spark, [], partitions=0), model_path, k=K, device="cpu")
    assert recs.columns == ["user", "item", "rank", "score"]
    assert recs.count() == 0
    sims = trs.similar_items(spark.createDataFrame([], "item long"), model_path, device="cpu")
    assert sims.count() == 0


def test_unknown_user_fails_the_job(spark, model_path):
    df = users_df(spark, [1, 2, 999999], partitions=2)
    recs = trs.recommend(df, model_path, k=K, device="cpu")
    with pytest.raises(Exception, match="unknown user ID 999999"):
        recs.collect()
    # As TwoTower.recommend does:
    with pytest.raises(towerrec.InputError, match="unknown user ID 999999"):
        towerrec.TwoTower.load(model_path, device="cpu").recommend([1, 2, 999999])


def test_unknown_user_skipped(spark, model_path, ref):
    df = spark.createDataFrame([(1,), (999999,), (None,), (2,)], "user long")
    got = trs.recommend(df, model_path, k=K, on_unknown="skip", device="cpu",
                        threads=1).toPandas()
    ids, scores = ref.recommend([1, 2], N=K)
    check_equal(by_key(got, "user"), [1, 2], ids, scores)
    with pytest.raises(Exception, match="unknown user ID null"):
        trs.recommend(df.where("user is null"), model_path, device="cpu").collect()


def test_bad_arguments_fail_on_the_driver(spark, model_path, tmp_path):
    df = users_df(spark, [1, 2], partitions=0)
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        trs.recommend(df, str(tmp_path / "nowhere"), k=K)
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        trs.recommend(df, str(tmp_path), k=K)  # a directory without model.ckpt
    with pytest.raises(ValueError, match="no column 'uid'"):
        trs.recommend(df, model_path, user_col="uid")
    with pytest.raises(TypeError, match="cast"):
        trs.recommend(spark.createDataFrame([("1",)], "user string"), model_path)
    with pytest.raises(towerrec.InputError, match="unknown item ID 12345"):
        trs.recommend(df, model_path, items=[1, 12345])
    with pytest.raises(ValueError, match="k must be positive"):
        trs.recommend(df, model_path, k=0)
    with pytest.raises(TypeError, match="Spark DataFrame"):
        trs.recommend(pd.DataFrame({"user": [1]}), model_path)


def test_similar_items_equal_package(spark, model_path, ref):
    items = [int(i) for i in ref.item_ids]
    df = spark.createDataFrame([(i,) for i in items], "item long").repartition(2)
    got = trs.similar_items(df, model_path, k=5, batch_size=9, device="cpu", threads=1)
    assert got.columns == ["item", "similar", "rank", "score"]
    ids, scores = ref.similar_items(items, N=5)
    check_equal(by_key(got.toPandas(), "item", "similar"), items, ids, scores)


def test_string_ids(spark, tmp_path):
    df = synthetic(n_users=40, n_items=30, per_user=8, seed=1, string_ids=True)
    model = towerrec.TwoTower(epochs=1, batch_size=128, device="cpu", threads=1, seed=2)
    model.fit(df, show_progress=False)
    path = str(tmp_path / "model.ckpt")
    model.save(path)
    ref = towerrec.TwoTower.load(path, device="cpu", threads=1)
    users = list(ref.user_ids[:12])
    sdf = spark.createDataFrame([(u,) for u in users], "user string").repartition(2)
    got = trs.recommend(sdf, path, k=4, device="cpu", threads=1).toPandas()
    ids, scores = ref.recommend(users, N=4)
    g = by_key(got, "user")
    for r, u in enumerate(users):
        assert g[u][0] == list(ids[r])
        np.testing.assert_allclose(g[u][1], scores[r], rtol=1e-6, atol=1e-6)


def test_model_cache(model_path, tmp_path):
    trs.clear_cache()
    a = trs.load_model(model_path, device="cpu", threads=1)
    assert trs.load_model(model_path, device="cpu", threads=1) is a
    assert trs.load_model(os.path.dirname(model_path), device="cpu", threads=1) is a  # the dir
    assert trs.load_model(model_path, device="cpu", threads=2) is not a
    # A rewritten checkpoint at the same path is read again.
    copy = tmp_path / "model.ckpt"
    shutil.copyfile(model_path, copy)
    b = trs.load_model(str(copy), device="cpu", threads=1)
    a.save(str(copy))
    os.utime(copy, ns=(1, 1))
    assert trs.load_model(str(copy), device="cpu", threads=1) is not b
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        trs.load_model(str(tmp_path / "missing.ckpt"))
    trs.clear_cache()


def test_package_imports_without_pyspark():
    # towerrec.spark imports pyspark only when a Spark function is called.
    code = ("import sys; sys.modules['pyspark'] = None; import towerrec, towerrec.spark\n"
            "try:\n    towerrec.spark.recommend(None, 'model.ckpt')\n"
            "except ImportError as e:\n    assert 'towerrec[spark]' in str(e), e\n"
            "    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

"""Batch scoring over Apache Spark: a DataFrame of user IDs in, a DataFrame of
recommendations out, scored by the towerrec engine on the executors::

    from towerrec import spark as trs
    recs = trs.recommend(users_df, "out/model", k=10)    # user, item, rank, score

Each Python worker process loads the checkpoint once (:func:`load_model`, a
cache keyed by the checkpoint's path, modification time and size) and scores
the rows of its partitions through :meth:`towerrec.TwoTower.recommend`, in
blocks of ``batch_size`` users, via ``DataFrame.mapInPandas``. The results are
the package's own: the same items, in the same order, with the same scores as
``TwoTower.recommend`` on the same users.

The checkpoint must be readable at ``model_path`` by the driver (which loads
it once to check it and to learn the ID types of the output) and by every
executor (a shared file system, or a path that ``SparkContext.addFile``
shipped: pass ``SparkFiles.get(name)``'s path as it reads on the executors).
towerrec must be installed in the executors' Python (``PYSPARK_PYTHON``).

pyspark (and pyarrow, which ``mapInPandas`` needs) is imported only when a
function here is called: ``import towerrec`` never needs it. Install it with
``pip install 'towerrec[spark]'``.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import pandas as pd

from . import InputError, TwoTower

__all__ = ["recommend", "similar_items", "load_model", "clear_cache", "cache_info"]

_PathLike = Union[str, "os.PathLike[str]"]

# Checkpoint file -> ((mtime_ns, size), {(device, threads, id_type): _Loaded}).
_CACHE: dict = {}
_LOCK = threading.Lock()
_LOADS: dict = {}  # checkpoint file -> times this process read it


class _Loaded:
    """A loaded model and the pandas indexes of its IDs (built once)."""

    def __init__(self, model: TwoTower):
        self.model = model
        self.users = pd.Index(model.user_ids)
        self.items = pd.Index(model.item_ids)
        self.user_kind = "int" if model.user_ids.dtype.kind in "iu" else "object"
        self.item_kind = "int" if model.item_ids.dtype.kind in "iu" else "object"


def _checkpoint_file(path: _PathLike) -> str:
    p = os.path.abspath(os.fspath(path))
    if os.path.isdir(p):
        p = os.path.join(p, "model.ckpt")
    return p


def _load(path: _PathLike, device: str, threads: int, id_type: Optional[type]) -> _Loaded:
    f = _checkpoint_file(path)
    try:
        st = os.stat(f)
    except OSError as e:
        raise FileNotFoundError(
            f"towerrec.spark: no model checkpoint at {os.fspath(path)!r} ({f}: {e.strerror}; "
            "expected a model.ckpt file or a directory holding one, as `towerrec train` "
            "and TwoTower.save write them)") from None
    stamp = (st.st_mtime_ns, st.st_size)
    key = (device, int(threads), id_type)
    with _LOCK:
        entry = _CACHE.get(f)
        if entry is None or entry[0] != stamp:  # new, or the file was rewritten
            entry = (stamp, {})
            _CACHE[f] = entry
        loaded = entry[1].get(key)
        if loaded is None:
            loaded = _Loaded(TwoTower.load(f, device=device, threads=threads, id_type=id_type))
            _LOADS[f] = _LOADS.get(f, 0) + 1
            entry[1][key] = loaded
    return loaded


def load_model(path: _PathLike, device: str = "auto", threads: int = 0,
               id_type: Optional[type] = None) -> TwoTower:
    """:meth:`TwoTower.load` through this process's cache: a second call with
    the same checkpoint (path, modification time and size) and arguments
    returns the same model without reading the file again. For functions of
    one's own run on executors (``mapInPandas``, ``pandas_udf``)."""
    return _load(path, device, threads, id_type).model


def cache_info() -> dict:
    """This process's cache: ``loads`` (checkpoint file -> times read so far)
    and ``models`` (a list of (checkpoint file, device, threads) now held)."""
    with _LOCK:
        return {"loads": dict(_LOADS),
                "models": [(f, d, t) for f, (_s, by) in _CACHE.items() for d, t, _i in by]}


def clear_cache() -> None:
    """Forgets every model :func:`load_model` holds in this process."""
    with _LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------------------


def _spark_types():
    try:
        from pyspark.sql import types as T
    except ImportError as e:  # pragma: no cover - exercised where pyspark is absent
        raise ImportError("towerrec.spark needs pyspark (pip install 'towerrec[spark]')") from e
    return T


def _task_threads(threads: Optional[int]) -> int:
    """``threads``, or the CPUs Spark gives each task (spark.task.cpus)."""
    if threads is not None:
        return int(threads)
    try:
        from pyspark import TaskContext
        tc = TaskContext.get()
        if tc is not None and hasattr(tc, "cpus"):
            return max(1, int(tc.cpus()))
    except Exception:  # pragma: no cover - an older pyspark
        pass
    return 1


def _key_type(T, loaded_kind: str, column: str, dtype, what: str):
    """Checks that a Spark column can hold the model's IDs of one kind."""
    integral = isinstance(dtype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType))
    if loaded_kind == "int" and not integral:
        raise TypeError(
            f"towerrec.spark.{what}: column '{column}' is {dtype.simpleString()}, but the "
            f"model's IDs are integers: cast it (df.withColumn('{column}', "
            f"F.col('{column}').cast('long')))")
    if loaded_kind == "object" and not (integral or isinstance(dtype, T.StringType)):
        raise TypeError(
            f"towerrec.spark.{what}: column '{column}' is {dtype.simpleString()}; the "
            "model's IDs are strings (an integer column is compared by its decimal text)")
    return integral


def _lookup(index: pd.Index, kind: str, values: pd.Series, integral: bool,
            column: str, on_unknown: str, what: str, entity: str):
    """Rows of ``values`` in ``index`` (-1: null or unknown), checked per
    ``on_unknown``. Returns (known mask, the model's IDs of the known rows,
    the input values of the known rows as the Spark column holds them)."""
    null = values.isna().to_numpy()
    keys = values.to_numpy()
    if integral and keys.dtype.kind == "f":  # nulls make pandas widen ints to float
        keys = np.where(null, 0, keys).astype(np.int64)
    if kind == "object":
        keys = np.array([str(v) for v in keys], dtype=object)
    rows = index.get_indexer(keys)
    rows[null] = -1
    known = rows >= 0
    if on_unknown == "error" and not known.all():
        bad = int(np.flatnonzero(~known)[0])
        v = values.iloc[bad]
        shown = "null" if null[bad] else repr(v.item() if isinstance(v, np.generic) else v)
        raise InputError(
            f"towerrec.spark.{what}: column '{column}': unknown {entity} ID {shown} "
            "(not in the model; on_unknown='skip' leaves such rows out)",
            "df", 0, column)
    orig = values.to_numpy()[known]
    if integral and orig.dtype.kind == "f":
        orig = orig.astype(np.int64)
    return known, index.to_numpy()[rows[known]], orig


def _known_items(loaded: _Loaded, values: Iterable[Any], arg: str) -> list:
    """An item list argument, checked on the driver as TwoTower.recommend checks it."""
    values = list(values)
    rows = loaded.items.get_indexer(values) if values else np.empty(0, dtype=np.intp)
    bad = np.flatnonzero(rows < 0)
    if len(bad):
        raise InputError(f"{arg}[{bad[0]}]: field 'item': unknown item ID {values[bad[0]]!r}",
                         arg, int(bad[0]), "item")
    return values


def _frames(result_ids: np.ndarray, scores: np.ndarray, keys: np.ndarray,
            names: tuple) -> pd.DataFrame:
    n, k = scores.shape
    keep = ~np.isnan(scores.ravel())  # padded slots (fewer candidates than k) have NaN
    return pd.DataFrame({
        names[0]: np.repeat(keys, k)[keep],
        names[1]: result_ids.ravel()[keep],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep],
        "score": scores.ravel()[keep].astype(np.float32),
    })


def _check_common(df, model_path, k: int, column: str, batch_size: int, on_unknown: str,
                  what: str, out_name: str):
    T = _spark_types()
    from pyspark.sql import DataFrame
    if not isinstance(df, DataFrame):
        raise TypeError(f"towerrec.spark.{what}: expected a Spark DataFrame, got "
                        f"{type(df).__name__}")
    if int(k) <= 0:
        raise ValueError(f"towerrec.spark.{what}: k must be positive, got {k}")
    if int(batch_size) <= 0:
        raise ValueError(f"towerrec.spark.{what}: batch_size must be positive, got {batch_size}")
    if on_unknown not in ("error", "skip"):
        raise ValueError(f"towerrec.spark.{what}: on_unknown must be 'error' or 'skip', "
                         f"got {on_unknown!r}")
    if column not in df.columns:
        raise ValueError(f"towerrec.spark.{what}: no column '{column}' (have {df.columns})")
    if column in (out_name, "rank", "score"):
        raise ValueError(f"towerrec.spark.{what}: the ID column may not be named '{column}' "
                         f"(an output column): rename it")
    # The driver loads the checkpoint once (cached): a bad path or file fails
    # here, before any job, and the ID types give the output schema.
    loaded = _load(model_path, "cpu", 1, None)
    return T, loaded, df.schema[column].dataType


def recommend(df, model_path: _PathLike, k: int = 10, user_col: str = "user",
              filter_seen: bool = True, filter_items: Optional[Iterable[Any]] = None,
              items: Optional[Iterable[Any]] = None, *, on_unknown: str = "error",
              batch_size: int = 4096, device: str = "auto", threads: Optional[int] = None):
    """Top-``k`` items for each row of ``df`` (a Spark DataFrame with a user ID
    column ``user_col``; other columns are ignored) as a Spark DataFrame
    ``user_col, item, rank, score``: rank from 1, best first, ties by the item
    that came first in the training data, ``score`` float32. Users with fewer
    than ``k`` candidates get fewer rows (no padding). A user that occurs in
    several rows is scored once per row.

    ``filter_seen`` leaves out each user's training items stored in the
    checkpoint (``filter_already_liked_items``); ``filter_items`` is a deny
    list and ``items`` an allow list of item IDs, as in
    :meth:`TwoTower.recommend`.

    A user ID the model does not know (or a null) fails the job with
    :class:`towerrec.InputError` naming it, as ``TwoTower.recommend`` raises;
    ``on_unknown="skip"`` leaves such rows out instead. The column's type must
    match the model's IDs: integers for integer IDs; strings, or integers
    compared by their decimal text, for string IDs.

    Each Python worker loads the model once (``device``; ``threads`` CPU
    threads, default spark.task.cpus) and scores ``batch_size`` users per
    engine call. The driver loads it once as well, to check it: a path with
    no checkpoint is a ``FileNotFoundError`` before any job runs.
    """
    T, loaded, utype = _check_common(df, model_path, k, user_col, batch_size, on_unknown,
                                     "recommend", "item")
    integral = _key_type(T, loaded.user_kind, user_col, utype, "recommend")
    if filter_items is not None:
        filter_items = _known_items(loaded, filter_items, "filter_items")
    if items is not None:
        items = _known_items(loaded, items, "items")
    item_type = T.LongType() if loaded.item_kind == "int" else T.StringType()
    schema = T.StructType([
        T.StructField(user_col, utype, False),
        T.StructField("item", item_type, False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("score", T.FloatType(), False),
    ])
    path = _checkpoint_file(model_path)
    k, batch_size, filter_seen = int(k), int(batch_size), bool(filter_seen)

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        lm = None
        for pdf in batches:
            if len(pdf) == 0:
                continue
            if lm is None:
                lm = _load(path, device, _task_threads(threads), None)
            known, ids, orig = _lookup(lm.users, lm.user_kind, pdf[user_col], integral,
                                       user_col, on_unknown, "recommend", "user")
            for s in range(0, len(ids), batch_size):
                rec, sc = lm.model.recommend(ids[s:s + batch_size], N=k,
                                             filter_already_liked_items=filter_seen,
                                             filter_items=filter_items, items=items)
                yield _frames(rec, sc, orig[s:s + batch_size], (user_col, "item"))

    return df.select(user_col).mapInPandas(score, schema)


def similar_items(df, model_path: _PathLike, k: int = 10, item_col: str = "item", *,
                  on_unknown: str = "error", batch_size: int = 4096, device: str = "auto",
                  threads: Optional[int] = None):
    """The ``k`` items with the highest model score with each item of ``df``
    (column ``item_col``; the item itself left out) as a Spark DataFrame
    ``item_col, similar, rank, score``, as :meth:`TwoTower.similar_items`.
    Unknown IDs, types, caching and batching as in :func:`recommend`."""
    T, loaded, itype = _check_common(df, model_path, k, item_col, batch_size, on_unknown,
                                     "similar_items", "similar")
    integral = _key_type(T, loaded.item_kind, item_col, itype, "similar_items")
    out_type = T.LongType() if loaded.item_kind == "int" else T.StringType()
    schema = T.StructType([
        T.StructField(item_col, itype, False),
        T.StructField("similar", out_type, False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("score", T.FloatType(), False),
    ])
    path = _checkpoint_file(model_path)
    k, batch_size = int(k), int(batch_size)

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        lm = None
        for pdf in batches:
            if len(pdf) == 0:
                continue
            if lm is None:
                lm = _load(path, device, _task_threads(threads), None)
            known, ids, orig = _lookup(lm.items, lm.item_kind, pdf[item_col], integral,
                                       item_col, on_unknown, "similar_items", "item")
            for s in range(0, len(ids), batch_size):
                sim, sc = lm.model.similar_items(ids[s:s + batch_size], N=k)
                yield _frames(sim, sc, orig[s:s + batch_size], (item_col, "similar"))

    return df.select(item_col).mapInPandas(score, schema)

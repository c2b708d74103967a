"""towerrec: a two-tower recommender engine (C++/CUDA) for Python.

The same engine and checkpoint format as the ``towerrec`` command line, with an
API in the conventions of ``implicit`` and scikit-learn::

    import towerrec
    model = towerrec.TwoTower(epochs=10, dim=64)
    model.fit(df)                               # columns user, item[, rating][, timestamp]
    ids, scores = model.recommend([1, 2, 3], N=10)
    model.save("model.ckpt")                    # `towerrec eval --model model.ckpt` reads it

Rankings order items by score, higher first, ties by the lower item row (the
order in which items first appear in the training data). Rows with fewer
candidates than N are padded: the item ID with ``PAD_ID`` (-1) for integer IDs
or ``None`` for other IDs, the score with NaN (the engine never returns NaN: a
NaN score ranks, and is reported, as -inf).
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from . import _core

__all__ = [
    "TwoTower",
    "evaluate",
    "Error",
    "InputError",
    "PAD_ID",
    "cuda_available",
    "config_keys",
    "__version__",
]

__version__: str = _core.version()

#: Item ID that pads result rows with fewer than N candidates (integer IDs);
#: rows of models with string IDs are padded with None. Scores there are NaN.
PAD_ID: int = -1


class Error(RuntimeError):
    """An error reported by the engine (bad arguments, I/O, device errors).

    The message is the engine's own; for malformed input it names the file
    (or the argument), the line (or row) and the field.
    """


class InputError(Error, ValueError):
    """Malformed input: ``file``, ``line`` (0 when the whole input is at fault)
    and ``field`` say where."""

    def __init__(self, message: str, file: str = "", line: int = 0, field: str = ""):
        super().__init__(message)
        self.file = file
        self.line = line
        self.field = field


_core._set_error_types(Error, InputError)


def cuda_available() -> bool:
    """True when the package was built with the CUDA backend and a GPU is usable."""
    return bool(_core.cuda_available())


# Configuration keys of `towerrec train`, dashes as underscores.
_KEYS = {name.replace("-", "_"): name for name, _help, _is_bool, _value in _core.config_keys()}
# Keys fit() fills in itself from its arguments.
# Keys about the input files, which fit() writes itself (comma-separated).
_DATA_KEYS = {"data", "user_features", "item_features", "train_file", "delimiter"}


def config_keys() -> dict:
    """Every configuration keyword of TwoTower, with its help text."""
    return {name.replace("-", "_"): help_ for name, help_, _b, _v in _core.config_keys()}


# ---------------------------------------------------------------------------
# IDs


def _id_kind(values: np.ndarray, what: str) -> str:
    kind = values.dtype.kind
    if kind in "iu":
        return "int"
    if kind == "f":
        raise TypeError(f"{what} IDs must be integers or strings, not {values.dtype} "
                        "(a float column usually means missing values)")
    return "object"


class _IdMap:
    """Original IDs in row order, and their rows."""

    def __init__(self, ids: Sequence[Any], kind: str):
        self.kind = kind
        if kind == "int":
            self.ids = np.asarray(ids, dtype=np.int64)
        else:
            self.ids = np.empty(len(ids), dtype=object)
            self.ids[:] = list(ids)
        self.ids.setflags(write=False)
        self.index = pd.Index(self.ids)

    @classmethod
    def from_engine(cls, ids: list, id_type) -> "_IdMap":
        if id_type is None:
            # Integer IDs when every ID is a canonical decimal integer.
            try:
                as_int = [int(s) for s in ids]
                if all(str(v) == s for v, s in zip(as_int, ids)):
                    return cls(as_int, "int")
            except ValueError:
                pass
            return cls(ids, "object")
        if id_type is int:
            return cls([int(s) for s in ids], "int")
        if id_type is str:
            return cls(ids, "object")
        raise TypeError("id_type must be None, int or str")

    def rows(self, values, what: str, field: str) -> np.ndarray:
        values = list(values) if not isinstance(values, (np.ndarray, pd.Index, pd.Series)) else values
        if len(values) == 0:
            return np.empty(0, dtype=np.int32)
        r = self.index.get_indexer(values)
        bad = np.flatnonzero(r < 0)
        if len(bad):
            v = np.asarray(values, dtype=object)[bad[0]]
            raise InputError(f"{what}[{bad[0]}]: field '{field}': unknown {field} ID {v!r}",
                             what, int(bad[0]), field)
        return r.astype(np.int32)

    def to_ids(self, rows: np.ndarray) -> np.ndarray:
        valid = rows >= 0
        if self.kind == "int":
            out = np.full(rows.shape, PAD_ID, dtype=np.int64)
        else:
            out = np.full(rows.shape, None, dtype=object)
        out[valid] = self.ids[rows[valid]]
        return out


def _interactions_frame(x, what: str = "interactions") -> pd.DataFrame:
    """A DataFrame user, item[, rating][, timestamp] from a DataFrame or a
    scipy.sparse matrix (users x items: row and column indices are the IDs)."""
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover
        sp = None
    if sp is not None and sp.issparse(x):
        coo = sp.coo_matrix(x)
        order = np.lexsort((coo.col, coo.row))  # CSR order: by user, then item
        return pd.DataFrame({"user": coo.row[order].astype(np.int64),
                             "item": coo.col[order].astype(np.int64),
                             "rating": coo.data[order].astype(np.float64)})
    if not isinstance(x, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame (columns user, item[, rating]"
                        f"[, timestamp]) or a scipy.sparse matrix, got {type(x).__name__}")
    missing = [c for c in ("user", "item") if c not in x.columns]
    if missing:
        raise InputError(f"{what}: field '{missing[0]}': missing column (have {list(x.columns)})",
                         what, 0, missing[0])
    cols = [c for c in ("user", "item", "rating", "timestamp") if c in x.columns]
    return x[cols].reset_index(drop=True)


def _write_features(df: pd.DataFrame, known: pd.Index, path: str, what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame indexed by ID, got {type(df).__name__}")
    df = df[df.index.isin(known)]
    out = pd.DataFrame(index=df.index.astype(str))
    for c in df.columns:
        col = df[c]
        if col.dtype == object and col.map(lambda v: isinstance(v, (list, tuple, set))).any():
            # Multi-hot: a list of values per entity, '|'-separated in the CSV.
            col = col.map(lambda v: "|".join(map(str, v)) if isinstance(v, (list, tuple, set)) else v)
        out[str(c)] = col.to_numpy()
    out.index.name = "id"
    out.to_csv(path)


def _rewrite_input_error(e: InputError, files: dict) -> InputError:
    """An error in a temporary CSV of fit() named by its argument and row."""
    label = files.get(e.file)
    if label is None:
        return e
    row = e.line - 2 if e.line >= 2 else -1
    where = f"{label}, row {row}" if row >= 0 else label
    msg = str(e)
    prefix = e.file + (f":{e.line}" if e.line > 0 else "")
    msg = where + msg[len(prefix):] if msg.startswith(prefix) else msg
    return InputError(msg, label, row if row >= 0 else 0, e.field)


def _scalar(x) -> bool:
    return np.isscalar(x) or isinstance(x, (str, bytes))


# ---------------------------------------------------------------------------
# The model


class TwoTower:
    """A two-tower model: user and item towers over ID embeddings and
    features; score(u, i) is the dot product of their outputs (the cosine
    when outputs are normalised).

    Every ``towerrec train`` configuration key is a keyword argument, dashes
    as underscores (``epochs=10``, ``batch_size=2048``, ``loss="bpr"``,
    ``hidden=[128, 64]``; see :func:`config_keys`), plus ``device`` ("auto",
    "cpu", "cuda", "cuda:N") and ``threads`` (CPU threads, 0: all cores).
    ``out=DIR`` keeps the training checkpoints in DIR (default: a temporary
    directory, removed after fit).
    """

    def __init__(self, *, device: str = "auto", threads: int = 0, **config: Any):
        for k in config:
            if k == "delimiter":
                raise TypeError("TwoTower: 'delimiter' does not apply (fit() passes the data itself)")
            if k in _DATA_KEYS:
                raise TypeError(f"TwoTower: '{k}' is given to fit(), not as a keyword")
            if k not in _KEYS:
                near = difflib.get_close_matches(k, list(_KEYS), n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise TypeError(f"TwoTower: unknown configuration key '{k}'{hint}")
        self.device = device
        self.threads = threads
        self._config = dict(config)
        self._model = None
        self._users: Optional[_IdMap] = None
        self._items: Optional[_IdMap] = None
        self.loss_history_: list = []
        self.validation_metrics_: Optional[dict] = None

    # -- scikit-learn conventions --------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        return {"device": self.device, "threads": self.threads, **self._config}

    def set_params(self, **params: Any) -> "TwoTower":
        for k, v in params.items():
            if k in ("device", "threads"):
                setattr(self, k, v)
            elif k in _KEYS and k not in _DATA_KEYS:
                self._config[k] = v
            else:
                raise TypeError(f"TwoTower: unknown configuration key '{k}'")
        return self

    def __getattr__(self, name: str):
        cfg = self.__dict__.get("_config", {})
        if name in cfg:
            return cfg[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"TwoTower({args})"

    def _config_json(self, extra: dict) -> str:
        cfg = {_KEYS[k]: v for k, v in self._config.items()}
        cfg["device"] = self.device
        cfg["threads"] = self.threads
        cfg.update(extra)
        return json.dumps(cfg)

    def effective_config(self) -> dict:
        """The configuration with every default filled in, as the CLI prints it.

        Keys whose default depends on the training data (hidden, id_dim, dim,
        epochs) read "auto" until fit() has seen the data; after fit(),
        checkpoint_config() holds the values used."""
        text = _core.check_config(self._config_json({}), "TwoTower() configuration")
        return {k.replace("-", "_"): v for k, v in json.loads(text).items()}

    # -- training --------------------------------------------------------------
    def fit(self, interactions, user_features: Optional[pd.DataFrame] = None,
            item_features: Optional[pd.DataFrame] = None, validation=None,
            *, callback: Optional[Callable[[dict], Optional[bool]]] = None,
            show_progress: bool = True) -> "TwoTower":
        """Trains on ``interactions``: a DataFrame with columns ``user, item[, rating]
        [, timestamp]`` (IDs of any integer or string type) or a scipy.sparse
        matrix (users x items; row and column indices are the IDs, values the
        ratings). Feature DataFrames are indexed by ID: numeric columns are dense
        features (min-max normalised), others categorical, lists multi-hot;
        rows of IDs without interactions are ignored.

        ``validation`` is a per-user fraction of the interactions held out and
        evaluated after training (``validation_metrics_``), as ``towerrec train
        --validation F``, or held-out interactions in the form of
        ``interactions`` (DataFrame or matrix; its IDs must occur in
        ``interactions``), as ``--validation-file``: nothing of it is trained on. ``callback(event)`` gets a dict every ``log_every``
        steps (event "step"), after each epoch ("epoch") and each validation
        ("validation"); returning False stops training. A tqdm bar shows
        progress when tqdm is installed and ``show_progress`` is true.

        Ctrl-C (KeyboardInterrupt), or an exception raised by the callback,
        stops training after the current step; the model then holds the state
        reached (usable and savable) and the exception is raised again.
        """
        df = _interactions_frame(interactions)
        if len(df) == 0:
            raise InputError("interactions: no rows", "interactions", 0, "")
        ukind = _id_kind(df["user"].to_numpy(), "user")
        ikind = _id_kind(df["item"].to_numpy(), "item")
        extra: dict = {}
        vdf = None
        if validation is not None:
            if isinstance(validation, bool):
                raise TypeError("validation: expected a fraction of each user's interactions "
                                "(e.g. 0.2) or held-out interactions")
            if isinstance(validation, (int, float)):
                extra["holdout"] = float(validation)
            else:
                vdf = _interactions_frame(validation)
        tmp = tempfile.mkdtemp(prefix="towerrec-fit-")
        bar = None
        try:
            u_str = df["user"].astype(str)
            i_str = df["item"].astype(str)
            u_orig = pd.unique(df["user"].to_numpy())
            i_orig = pd.unique(df["item"].to_numpy())
            u_by_str = dict(zip((str(v) for v in u_orig), u_orig))
            i_by_str = dict(zip((str(v) for v in i_orig), i_orig))
            if len(u_by_str) != len(u_orig) or len(i_by_str) != len(i_orig):
                raise InputError("interactions: two different IDs have the same text "
                                 "(e.g. 1 and '1')", "interactions", 0, "")
            files = {}
            inter = os.path.join(tmp, "interactions.csv")
            out = df.copy()
            out["user"] = u_str
            out["item"] = i_str
            if "timestamp" in out.columns and out["timestamp"].dtype.kind == "M":
                out["timestamp"] = out["timestamp"].astype("int64") // 10**9
            out.to_csv(inter, index=False)
            files[inter] = "interactions"
            extra["data"] = inter
            if vdf is not None:
                vpath = os.path.join(tmp, "validation.csv")
                vout = vdf[["user", "item"] + (["rating"] if "rating" in vdf.columns else [])].copy()
                vout["user"] = vout["user"].astype(str)
                vout["item"] = vout["item"].astype(str)
                vout.to_csv(vpath, index=False)
                files[vpath] = "validation"
                extra["validation-file"] = vpath
            for arg, name, orig in (("user_features", user_features, u_orig),
                                    ("item_features", item_features, i_orig)):
                if name is None:
                    continue
                path = os.path.join(tmp, arg + ".csv")
                _write_features(name, pd.Index(orig), path, arg)
                files[path] = arg
                extra[arg.replace("_", "-")] = path
            if "out" not in self._config:
                extra["out"] = os.path.join(tmp, "model")
            extra.setdefault("quiet", True)

            tqdm = None
            if show_progress:
                try:
                    from tqdm.auto import tqdm
                except ImportError:
                    tqdm = None

            def on_event(ev: dict):
                nonlocal bar
                if tqdm is not None:
                    if bar is None and "steps_total" in ev:
                        bar = tqdm(total=int(ev["steps_total"]), unit="step", desc="towerrec")
                    if bar is not None and ev["event"] == "step":
                        bar.n = int(ev["steps_done"])
                        bar.set_postfix(epoch=ev["epoch"], loss=f"{ev['loss']:.4f}", refresh=False)
                        bar.refresh()
                if callback is not None:
                    return callback(ev)
                return None

            try:
                path, info = _core.train(self._config_json(extra), on_event)
                model = _core.Model.load(path, self.device, self.threads)
            except InputError as e:
                raise _rewrite_input_error(e, files) from None
        finally:
            if bar is not None:
                bar.close()
            shutil.rmtree(tmp, ignore_errors=True)
        self._attach(model,
                     _IdMap([u_by_str[s] for s in model.user_ids], ukind),
                     _IdMap([i_by_str[s] for s in model.item_ids], ikind))
        self.loss_history_ = list(info["loss_history"])
        self.validation_metrics_ = info["validation"]
        for w in info["warnings"]:
            warnings.warn(w, stacklevel=2)
        if info["exception"] is not None:
            raise info["exception"]
        return self

    def _attach(self, model, users: _IdMap, items: _IdMap) -> None:
        self._model = model
        self._users = users
        self._items = items

    def _need(self):
        if self._model is None:
            raise Error("this TwoTower is not fitted: call fit() or TwoTower.load() first")
        return self._model

    # -- checkpoints -----------------------------------------------------------
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the model as a towerrec checkpoint (the CLI's format; atomic).
        A directory gets ``model.ckpt`` inside, as ``towerrec train`` writes it."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "model.ckpt")
        self._need().save(path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: str = "auto", threads: int = 0,
             id_type: Optional[type] = None) -> "TwoTower":
        """Loads a checkpoint (a file, or a directory holding model.ckpt) written by
        ``towerrec train`` or :meth:`save`. Checkpoints store IDs as text:
        ``id_type=None`` gives integer IDs when every ID is a decimal integer,
        else strings; ``int`` or ``str`` forces one."""
        model = _core.Model.load(os.fspath(path), device, threads)
        cfg = json.loads(model.config_json)
        params = {}
        for k, v in cfg.items():
            key = k.replace("-", "_")
            if key in _KEYS and key not in _DATA_KEYS and key not in ("device", "threads"):
                params[key] = v
        self = cls(device=device, threads=threads, **params)
        self._attach(model, _IdMap.from_engine(model.user_ids, id_type),
                     _IdMap.from_engine(model.item_ids, id_type))
        return self

    # -- attributes ------------------------------------------------------------
    @property
    def user_ids(self) -> np.ndarray:
        """Original user IDs, in the row order of user_embeddings."""
        self._need()
        return self._users.ids

    @property
    def item_ids(self) -> np.ndarray:
        """Original item IDs, in the row order of item_embeddings."""
        self._need()
        return self._items.ids

    @property
    def user_embeddings(self) -> np.ndarray:
        """float32 [users x dim], read-only; on the CPU backend a view of the
        engine's own memory (no copy)."""
        return self._need().user_embeddings()

    @property
    def item_embeddings(self) -> np.ndarray:
        """float32 [items x dim], read-only; a view as user_embeddings."""
        return self._need().item_embeddings()

    @property
    def backend(self) -> str:
        return self._need().backend

    @property
    def checkpoint_config(self) -> dict:
        """The configuration the model was trained with (from its checkpoint)."""
        return json.loads(self._need().config_json)

    # -- scoring ---------------------------------------------------------------
    def recommend(self, users, N: int = 10, filter_already_liked_items: bool = True,
                  filter_items: Optional[Iterable] = None, items: Optional[Iterable] = None):
        """Top-N items for each user: ``(ids, scores)`` of shape (len(users), N),
        original item IDs, best first (ties: the item that came first in the
        training data). A single user gives 1-D arrays. Liked items are the
        training interactions stored in the model; ``filter_items`` is a deny
        list and ``items`` an allow list of item IDs. Short rows are padded
        (PAD_ID or None, score NaN)."""
        m = self._need()
        single = _scalar(users)
        u = self._users.rows([users] if single else users, "users", "user")
        deny = self._items.rows(filter_items if filter_items is not None else [], "filter_items", "item")
        allow = self._items.rows(items if items is not None else [], "items", "item")
        N = int(N)
        if N <= 0:
            raise ValueError("N must be positive")
        if len(u) == 0:
            return self._empty(N)
        rows, scores = m.recommend(u, N, bool(filter_already_liked_items), deny, allow,
                                   items is not None)
        return self._result(rows, scores, single)

    def recommend_from_history(self, histories, N: int = 10, filter_already_liked_items: bool = True,
                               filter_items: Optional[Iterable] = None,
                               items: Optional[Iterable] = None):
        """Top-N items for users embedded from item histories alone, e.g. users
        who arrived after training: ``histories`` is one list of item IDs (1-D
        result) or a list of such lists (one row each). Needs a model trained
        with ``history`` > 0 whose user tower reads no user features; the pooled
        mean of up to ``history`` of each list's items goes through the user
        tower with the unknown-user ID embedding, as ``towerrec recommend
        --histories`` does. ``filter_already_liked_items`` leaves out each
        row's own history items; ``filter_items`` and ``items`` as in
        recommend()."""
        m = self._need()
        if _scalar(histories):
            raise TypeError("histories: give a list of item IDs or a list of such lists")
        hs = list(histories)
        single = len(hs) > 0 and all(_scalar(x) for x in hs)  # one flat list of IDs
        if not single and any(_scalar(x) for x in hs):
            raise TypeError("histories: mixes item IDs and lists")
        rows_in = [hs] if single else [list(h) for h in hs]
        counts = np.array([len(h) for h in rows_in], dtype=np.int32)
        flat = [i for h in rows_in for i in h]
        it = self._items.rows(flat, "histories", "item")
        deny = self._items.rows(filter_items if filter_items is not None else [], "filter_items", "item")
        allow = self._items.rows(items if items is not None else [], "items", "item")
        N = int(N)
        if N <= 0:
            raise ValueError("N must be positive")
        if len(rows_in) == 0:
            return self._empty(N)
        rows, scores = m.recommend_histories(counts, it, N, bool(filter_already_liked_items), deny,
                                             allow, items is not None)
        return self._result(rows, scores, single)

    def recommend_all(self, N: int = 10, filter_already_liked_items: bool = True) -> pd.DataFrame:
        """Every user's top-N as a DataFrame ``user, item, rank, score`` (rank from
        1), as ``towerrec recommend`` writes it (no padded rows)."""
        m = self._need()
        rows, scores = m.recommend(np.arange(m.n_users, dtype=np.int32), int(N),
                                   bool(filter_already_liked_items), np.empty(0, np.int32),
                                   np.empty(0, np.int32), False)
        k = rows.shape[1]
        keep = rows.ravel() >= 0
        users = np.repeat(np.arange(m.n_users), k)[keep]
        return pd.DataFrame({
            "user": self._users.ids[users],
            "item": self._items.ids[rows.ravel()[keep]],
            "rank": np.tile(np.arange(1, k + 1), m.n_users)[keep],
            "score": scores.ravel()[keep],
        })

    def similar_items(self, items, N: int = 10):
        """The N items with the highest model score with each given item (the
        item itself left out): ``(ids, scores)``."""
        m = self._need()
        single = _scalar(items)
        q = self._items.rows([items] if single else items, "items", "item")
        if len(q) == 0:
            return self._empty(int(N))
        rows, scores = m.similar_items(q, int(N))
        return self._result(rows, scores, single)

    def similar_users(self, users, N: int = 10):
        """The N users with the highest score with each given user: ``(ids, scores)``
        in user IDs."""
        m = self._need()
        single = _scalar(users)
        q = self._users.rows([users] if single else users, "users", "user")
        if len(q) == 0:
            return self._empty(int(N), self._users)
        rows, scores = m.similar_users(q, int(N))
        return self._result(rows, scores, single, self._users)

    def _result(self, rows, scores, single, ids: Optional[_IdMap] = None):
        ids = ids or self._items
        out = ids.to_ids(np.asarray(rows))
        s = np.array(scores, dtype=np.float32)
        s[np.asarray(rows) < 0] = np.nan
        if single:
            return out[0], s[0]
        return out, s

    def _empty(self, N, ids: Optional[_IdMap] = None):
        ids = ids or self._items
        dtype = np.int64 if ids.kind == "int" else object
        return np.empty((0, N), dtype=dtype), np.empty((0, N), dtype=np.float32)


def evaluate(model: TwoTower, test, k: Union[int, Sequence[int]] = (10, 20),
             filter_already_liked_items: bool = True) -> dict:
    """Full-ranking metrics of ``model`` on held-out interactions (a DataFrame
    ``user, item[, rating]`` or a sparse matrix), as ``towerrec eval`` computes
    them: precision, recall, ndcg, map, hit_rate at each k, mrr and coverage at
    the largest, the users evaluated and skipped, and the popularity baseline's
    recall and ndcg. Every ID must be known to the model; rows rated below the
    model's rating_threshold are dropped; the model's training interactions
    are excluded from the ranking unless ``filter_already_liked_items`` is false."""
    m = model._need()
    df = _interactions_frame(test, "test")
    ks = [int(k)] if np.isscalar(k) else [int(x) for x in k]
    if not ks or any(x <= 0 for x in ks):
        raise ValueError("k: expected positive cutoffs like (10, 20)")
    if "rating" in df.columns:
        thr = model.checkpoint_config.get("rating-threshold")
        if thr is not None and thr != "none":
            df = df[df["rating"].to_numpy(dtype=np.float64) >= float(thr)]
    u = model._users.rows(df["user"].to_numpy(), "test", "user")
    i = model._items.rows(df["item"].to_numpy(), "test", "item")
    return dict(m.evaluate(u, i, ks, bool(filter_already_liked_items)))

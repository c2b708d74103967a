"""Shared fixtures of the Python suite: a small synthetic data set with planted
structure, the towerrec CLI (for the interoperability tests) and MovieLens-100k
where present."""
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def synthetic(n_users=120, n_items=60, per_user=12, seed=0, string_ids=False):
    """Users and items with 4 latent groups: users mostly pick items of their group."""
    rng = np.random.default_rng(seed)
    ug = rng.integers(0, 4, n_users)
    ig = np.arange(n_items) % 4
    rows = []
    for u in range(n_users):
        same = np.flatnonzero(ig == ug[u])
        other = np.flatnonzero(ig != ug[u])
        picks = np.concatenate([rng.choice(same, per_user - 2, replace=False),
                                rng.choice(other, 2, replace=False)])
        for t, i in enumerate(picks):
            rows.append((u, int(i), float(rng.integers(1, 6)), 1000 + 10 * u + t))
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    if string_ids:
        df["user"] = "user-" + df["user"].astype(str)
        df["item"] = "item," + df["item"].astype(str)  # a comma: quoted in the CSV
    return df


@pytest.fixture(scope="session")
def synth_df():
    return synthetic()


@pytest.fixture(scope="session")
def fitted(synth_df):
    import towerrec
    return towerrec.TwoTower(epochs=4, batch_size=256, device="cpu", threads=1, seed=3).fit(
        synth_df, show_progress=False)


@pytest.fixture(scope="session")
def cli():
    path = os.environ.get("TOWERREC_CLI")
    if not path:
        path = str(ROOT / os.environ.get("BUILD_DIR", "build") / "towerrec")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        found = shutil.which("towerrec")
        if not found:
            pytest.skip(f"towerrec CLI not found at {path} (set TOWERREC_CLI)")
        path = found
    return path


@pytest.fixture(scope="session")
def ml100k():
    path = os.environ.get("TOWERREC_ML100K") or str(ROOT.parent / "shared" / "data" / "ml-100k")
    if not os.path.isfile(os.path.join(path, "u.data")):
        pytest.skip(f"MovieLens-100k not found at {path} (set TOWERREC_ML100K)")
    return path

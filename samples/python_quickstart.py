"""Sample: the towerrec Python package in a few steps.

    pip install .                       # from the checkout (scripts/test does it in .venv)
    python samples/python_quickstart.py [OUT_DIR]

Trains on a small synthetic data set held in pandas, recommends, finds similar
items, hands the embeddings to a nearest-neighbour index, and writes a
checkpoint that the command line reads (`towerrec recommend --model ...`).
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import towerrec

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
out.mkdir(parents=True, exist_ok=True)

# 1. Interactions: one row per (user, item), IDs of any integer or string type;
#    rating and timestamp columns are optional. Here users of 4 tastes pick
#    items of their taste.
rng = np.random.default_rng(0)
rows = [(f"u{u}", f"i{i}") for u in range(300)
        for i in rng.choice(np.arange(u % 4, 120, 4), 10, replace=False)]
interactions = pd.DataFrame(rows, columns=["user", "item"])
# Features: a DataFrame indexed by ID; numbers are dense, text categorical.
item_features = pd.DataFrame({"shelf": [f"s{int(i[1:]) % 4}" for i in interactions.item.unique()]},
                             index=interactions.item.unique())

# 2. Configure and train: every `towerrec train` option is a keyword argument
#    (dashes as underscores). A tqdm bar shows progress when tqdm is installed;
#    Ctrl-C stops after the current step and leaves the model usable.
model = towerrec.TwoTower(epochs=5, dim=32, device="auto")
model.fit(interactions, item_features=item_features, validation=0.2, show_progress=False)
print("validation ndcg@10: %.3f" % model.validation_metrics_["ndcg@10"])

# 3. Recommend: (ids, scores) arrays of shape (users, N), best first; the
#    users' training items are left out; `items=` restricts to an allow list,
#    `filter_items=` removes a deny list.
ids, scores = model.recommend(["u0", "u1"], N=5)
print("u0 ->", list(ids[0]))

# 4. Similar items, by the model's own score between item embeddings.
similar, _ = model.similar_items("i0", N=5)
print("like i0:", list(similar))

# 5. Embeddings for other tools: float32 arrays, rows in `item_ids` order. With
#    FAISS installed, an inner-product index serves the same ranking.
V = model.item_embeddings
try:
    import faiss  # optional
    index = faiss.IndexFlatIP(V.shape[1])
    index.add(np.ascontiguousarray(V))
    _, nn = index.search(model.user_embeddings[:1], 5)
    print("faiss top-5 for", model.user_ids[0], "->", list(model.item_ids[nn[0]]))
except ImportError:
    top = np.argsort(-(V @ model.user_embeddings[0]))[:5]
    print("numpy top-5 for", model.user_ids[0], "->", list(model.item_ids[top]))

# 6. Save: the CLI's checkpoint format (`towerrec eval/recommend/export
#    --model` read it), and back.
model.save(out / "model.ckpt")
again = towerrec.TwoTower.load(out / "model.ckpt")
assert list(again.recommend("u0", N=5)[0]) == list(ids[0])
print("saved", out / "model.ckpt")

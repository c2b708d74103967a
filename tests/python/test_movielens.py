"""MovieLens-100k (where present): fit from pandas with features, beat the
popularity baseline, and rank as a numpy top-K over the embeddings."""
import os

import numpy as np
import pandas as pd

import towerrec


def load(path):
    df = pd.read_csv(os.path.join(path, "u.data"), sep="\t", names=["user", "item", "rating", "timestamp"])
    users = pd.read_csv(os.path.join(path, "u.user"), sep="|", names=["id", "age", "gender", "occupation", "zip"],
                        index_col="id")
    return df, users[["age", "gender", "occupation"]]


def test_movielens_fit_evaluate(ml100k):
    df, user_features = load(ml100k)
    rng = np.random.default_rng(42)
    test_mask = rng.random(len(df)) < 0.2
    train, test = df[~test_mask], df[test_mask]
    m = towerrec.TwoTower(epochs=6, device="cpu", threads=2).fit(train, user_features=user_features,
                                                                 show_progress=False)
    test = test[test.user.isin(m.user_ids) & test.item.isin(m.item_ids)]
    metrics = towerrec.evaluate(m, test, k=10)
    assert metrics["ndcg@10"] > metrics["popularity_ndcg@10"]
    # recommend == numpy top-K over the embeddings, seen items excluded.
    U, V = m.user_embeddings, m.item_embeddings
    irow = pd.Index(m.item_ids)
    ids, scores = m.recommend(m.user_ids[:30], N=10)
    for r, u in enumerate(m.user_ids[:30]):
        s = V @ U[r]
        s[irow.get_indexer(train.item[train.user == u])] = -np.inf
        top = np.lexsort((np.arange(len(s)), -s))[:10]
        np.testing.assert_allclose(scores[r], s[top], rtol=1e-5, atol=1e-5)
        assert np.mean(ids[r] == m.item_ids[top]) >= 0.8

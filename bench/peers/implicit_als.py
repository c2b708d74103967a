#!/usr/bin/env python3
"""implicit's ALS (PyPI `implicit`) on an interactions split, scored like towerrec.

Reads TRAIN and TEST CSVs with a `user,item` header (the Gowalla validation split,
or a `towerrec split` directory's files), fits implicit.als.AlternatingLeastSquares
on the user x item matrix of the training rows (confidence 1 + alpha per
interaction), then ranks every item a user has not interacted with in training
and reports, over users with at least one test item, the metrics of towerrec's
README: recall@K = hits@K / |R_u|, nDCG@K with IDCG over min(K, |R_u|).

The fit time is measured around `fit` alone (BLAS threads pinned to --threads).
With --curve the model is evaluated after each of the listed iteration counts
(evaluation time excluded from the clock), for a time-to-quality picture.

    python bench/peers/implicit_als.py --train T.csv --test V.csv --threads 2 \
        --factors 256 --regularization 100 --alpha 16 --json als.json
"""
import argparse
import json
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--factors", type=int, default=256)
    p.add_argument("--regularization", type=float, default=100.0)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--curve", default="", help="iteration counts to evaluate at, e.g. 1,2,4,8,15")
    p.add_argument("--json", default="")
    return p.parse_args()


def main():
    a = parse_args()
    # Pin every BLAS the process may load before numpy is imported.
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(a.threads)
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    import implicit
    from implicit.cpu.als import AlternatingLeastSquares

    tr = pd.read_csv(a.train, dtype=str)
    te = pd.read_csv(a.test, dtype=str)
    for df, name in ((tr, a.train), (te, a.test)):
        if not {"user", "item"} <= set(df.columns):
            sys.exit(f"{name}: header must have user and item columns")
    users = pd.Index(pd.unique(pd.concat([tr["user"], te["user"]])))
    items = pd.Index(pd.unique(pd.concat([tr["item"], te["item"]])))
    tu, ti = users.get_indexer(tr["user"]), items.get_indexer(tr["item"])
    R = sp.csr_matrix((np.ones(len(tr), np.float32), (tu, ti)), shape=(len(users), len(items)))
    R.sum_duplicates()
    R.data[:] = 1.0
    vu, vi = users.get_indexer(te["user"]), items.get_indexer(te["item"])
    test = {}
    for u, i in zip(vu, vi):
        test.setdefault(u, set()).add(i)
    # Test items the user also has in training are not rankable: drop them.
    for u in list(test):
        seen = set(R.indices[R.indptr[u]:R.indptr[u + 1]])
        test[u] -= seen
        if not test[u]:
            del test[u]
    eval_users = np.array(sorted(test), dtype=np.int64)
    disc = 1.0 / np.log2(np.arange(2, a.k + 2))

    def evaluate(model):
        rec, ndcg = 0.0, 0.0
        for lo in range(0, len(eval_users), 4096):
            us = eval_users[lo:lo + 4096]
            ids, _ = model.recommend(us, R[us], N=a.k, filter_already_liked_items=True)
            for row, u in zip(ids, us):
                rel = test[u]
                hits = np.array([i in rel for i in row], dtype=np.float64)
                rec += hits.sum() / len(rel)
                ndcg += (hits * disc[:len(row)]).sum() / disc[:min(a.k, len(rel))].sum()
        return rec / len(eval_users), ndcg / len(eval_users)

    curve_at = sorted({int(x) for x in a.curve.split(",") if x}) if a.curve else []
    points = []
    model = AlternatingLeastSquares(factors=a.factors, regularization=a.regularization,
                                    alpha=a.alpha, iterations=a.iterations, num_threads=a.threads,
                                    random_state=a.seed)
    clock = {"fit": 0.0, "t": time.perf_counter()}

    def callback(it, elapsed, loss):
        if it + 1 in curve_at:
            clock["fit"] += time.perf_counter() - clock["t"]
            r, n = evaluate(model)
            points.append({"iteration": it + 1, "seconds": clock["fit"], f"recall@{a.k}": r, f"ndcg@{a.k}": n})
            print(f"  iteration {it + 1}: {clock['fit']:.1f}s recall@{a.k} {r:.4f} ndcg@{a.k} {n:.4f}",
                  file=sys.stderr)
            clock["t"] = time.perf_counter()

    clock["t"] = time.perf_counter()
    model.fit(R, show_progress=False, callback=callback if curve_at else None)
    clock["fit"] += time.perf_counter() - clock["t"]
    r, n = evaluate(model)
    res = {
        "engine": f"implicit {implicit.__version__} ALS",
        "factors": a.factors, "regularization": a.regularization, "alpha": a.alpha,
        "iterations": a.iterations, "threads": a.threads,
        "users": len(users), "items": len(items), "train_rows": int(R.nnz),
        "eval_users": int(len(eval_users)), "fit_seconds": clock["fit"],
        f"recall@{a.k}": r, f"ndcg@{a.k}": n, "curve": points,
    }
    print(f"implicit ALS | factors {a.factors} reg {a.regularization} alpha {a.alpha} it {a.iterations} | "
          f"recall@{a.k} {r:.4f} ndcg@{a.k} {n:.4f} | fit {clock['fit']:.1f}s ({a.threads} threads)")
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()

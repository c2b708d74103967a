#!/usr/bin/env python3
"""Recall@20 against training seconds for towerrec (OUT/history.jsonl) and
implicit ALS (implicit_als.py --curve --json), as a table and a PNG."""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--als", required=True)
    p.add_argument("--towerrec", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--title", default="")
    a = p.parse_args()
    als = json.load(open(a.als))
    tr = [json.loads(line) for line in open(a.towerrec) if line.strip()]
    tr = [r for r in tr if "recall@20" in r]
    print("engine    step   seconds   recall@20  ndcg@20")
    for q in als["curve"]:
        print(f"ALS       {q['iteration']:4d}  {q['seconds']:8.1f}   {q['recall@20']:.4f}    {q['ndcg@20']:.4f}")
    for r in tr:
        print(f"towerrec  {r['epoch']:4d}  {r['train_seconds']:8.1f}   {r['recall@20']:.4f}    {r['ndcg@20']:.4f}")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot([q["seconds"] for q in als["curve"]], [q["recall@20"] for q in als["curve"]], "o-",
            label=als["engine"])
    ax.plot([r["train_seconds"] for r in tr], [r["recall@20"] for r in tr], "s-", label="towerrec")
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("Recall@20")
    ax.set_title(a.title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = a.png + ".tmp.png"
    fig.savefig(tmp)
    import os
    os.replace(tmp, a.png)
    print("wrote", a.png)


if __name__ == "__main__":
    main()

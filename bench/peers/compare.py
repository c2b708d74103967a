#!/usr/bin/python3
"""Side-by-side table of towerrec_e2e and the PyTorch peer (scripts/bench-e2e).

usage: compare.py OUT_DIR CONFIG... [--markdown FILE] [--meta JSON]
Training rates compare the median epoch of each engine (load bursts on a shared
machine hit single epochs). Reads OUT_DIR/CONFIG/towerrec-P.r*.json and
OUT_DIR/CONFIG/torch-P.r*.json (and torch-compile-P.r*.json where present) for
each matmul precision P (fp32, bf16), taking each engine's best run, prints the
speed ratios (like for like, and towerrec bf16 against the peer's fp32) and both
engines' quality, checks the issue's floors (training >= 2x the peer's
samples/s with equal or better nDCG@10; all-users scoring >= 2x the peer's users/s), and can
append the table to a markdown file.
"""
import glob
import json
import os
import sys

PRECISIONS = ("fp32", "bf16")


def load(pattern):
    """The best of the runs matching pattern (highest median-epoch training rate
    and highest scoring rate, each from its own run), or None."""
    runs = [load_one(p) for p in sorted(glob.glob(pattern))]
    if not runs:
        return None
    best = dict(max(runs, key=lambda r: r["train_rate"]))
    best["score_users_per_s"] = max(r["score_users_per_s"] for r in runs)
    best["runs"] = len(runs)
    return best


def load_one(path):
    r = json.load(open(path))
    # Headline training rate: the median epoch, robust to load bursts on a
    # shared machine (the all-epochs mean stays in the JSON as train_samples_per_s).
    rates = sorted(e["samples_per_s"] for e in r.get("epochs", []))
    r["train_rate"] = rates[len(rates) // 2] if rates else r["train_samples_per_s"]
    return r


def main():
    args = sys.argv[1:]
    md_path = None
    if "--markdown" in args:
        j = args.index("--markdown")
        md_path = args[j + 1]
        del args[j:j + 2]
    out_dir, configs = args[0], args[1:]
    rows, floors = [], []
    head = ("| config | engine | precision | train samples/s | score users/s | nDCG@10 | Recall@10 | "
            "train x | score x |")
    sep = "|---|---|---|---:|---:|---:|---:|---:|---:|"

    def verdict(c, label, t, p):
        rt = t["train_rate"] / p["train_rate"]
        rs = t["score_users_per_s"] / p["score_users_per_s"]
        floors.append(f"{c}, {label}: training {rt:.2f}x (floor 2x: "
                      f"{'met' if rt >= 2 else 'NOT met'}), nDCG@10 {t['ndcg10']:.4f} vs "
                      f"{p['ndcg10']:.4f} ({'equal or better' if t['ndcg10'] >= p['ndcg10'] - 1e-4 else 'worse'}); "
                      f"scoring {rs:.2f}x (floor 2x: {'met' if rs >= 2 else 'NOT met'})")
        return rt, rs

    for c in configs:
        d = os.path.join(out_dir, c)
        tw = {pr: load(os.path.join(d, f"towerrec-{pr}.r*.json")) for pr in PRECISIONS}
        peers = {pr: [(n, load(os.path.join(d, f"{f}-{pr}.r*.json"))) for n, f in
                      (("pytorch", "torch"), ("pytorch compile", "torch-compile"))]
                 for pr in PRECISIONS}
        for pr in PRECISIONS:
            t = tw[pr]
            if not t:
                continue
            pct = ""
            if "train_pct_of_ceiling" in t:
                pct_at_rate = t["train_pct_of_ceiling"] * t["train_rate"] / t["train_samples_per_s"]
                pct = f" ({pct_at_rate:.0f}% of {t['train_ceiling']})"
            rows.append(f"| {c} | towerrec ({t['backend']}) | {pr} | {t['train_rate']:,.0f}{pct} | "
                        f"{t['score_users_per_s']:,.0f} | {t['ndcg10']:.4f} | {t['recall10']:.4f} | | |")
            for n, p in peers[pr]:
                if not p:
                    continue
                rt, rs = verdict(c, f"towerrec {pr} vs {n} {pr}", t, p)
                rows.append(f"| {c} | {n} {p['torch']} ({p['device']}, {p['threads']} threads) | {pr} | "
                            f"{p['train_rate']:,.0f} | {p['score_users_per_s']:,.0f} | "
                            f"{p['ndcg10']:.4f} | {p['recall10']:.4f} | {rt:.2f} | {rs:.2f} |")
        # Each engine's fastest setting against the peer's float32 default.
        if tw["bf16"]:
            for n, p in peers["fp32"]:
                if p:
                    verdict(c, f"towerrec bf16 vs {n} fp32", tw["bf16"], p)
    text = "\n".join([head, sep] + rows) + "\n\n" + "\n".join(f"- {f}" for f in floors) + "\n"
    text += ("\n(train x, score x: towerrec's rate divided by the peer's; score = all-users "
             "top-10 with training items excluded, embeddings precomputed)\n")
    print(text)
    if md_path:
        with open(md_path, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Peers of towerrec_topk_bench: the all-users top-K by inner product over the
same grid of users, items, d and k, with

  torch  torch.matmul + torch.topk on CUDA, users in blocks so that one block's
         users x items score matrix stays under a memory cap (at most 2 GiB);
         fp32 (torch.backends.cuda.matmul.allow_tf32 = False) and, when asked
         for, tf32 (allow_tf32 = True). bf16 is not run: torch.matmul on bf16
         tensors returns bf16 scores, not the fp32 scores towerrec ranks.
  faiss  FAISS GPU brute-force inner-product search: faiss.GpuIndexFlatIP
         (fp32) holding the items, searched with all users in one call. With
         torch present the queries and results stay on the GPU
         (faiss.contrib.torch_utils); without it they are numpy arrays and the
         time includes copying them in and out.

No seen-item mask: every item is ranked (towerrec_topk_bench excludes nothing
either). U and V are uniform in [-1, 1) from --seed: the same distribution as
towerrec_topk_bench, not the same values. Times are wall clock around the
calls with the device synchronized before and after; one warm-up call, then
repeats until about --min-time-s (median). Cells run in increasing order of
work; no cell starts once --budget-s is spent, and a cell whose estimate
exceeds the time left is skipped (both are said in the output). Each peer is
skipped with the reason when it cannot run (no torch, no CUDA device, no faiss,
faiss without GPU support); the script then still exits 0.

The flags are those of towerrec_topk_bench, so one command line serves both;
--paths and --ceiling-n are accepted and ignored. --device also takes `cpu`,
which runs the same code on the CPU (faiss.IndexFlatIP) to check the script
on a machine without a GPU; those figures are not GPU results.

usage: /usr/bin/python3 bench/peers/topk_peers.py [--users LIST] [--items LIST]
         [--dims LIST] [--ks LIST] [--precisions fp32,tf32,bf16] [--peers torch,faiss]
         [--budget-s S] [--seed N] [--min-time-s S] [--max-reps N]
         [--recall-users N] [--device N|cuda|cpu] [--json FILE] [--csv FILE]
LIST is comma-separated; counts take a k or M suffix (100k, 10M).
"""
import argparse
import json
import math
import os
import sys
import time

PRECISIONS = ("fp32", "tf32", "bf16")
PEERS = ("torch", "faiss")
SCORE_CAP_BYTES = 2 << 30


def counts(text):
    out = []
    for item in text.split(","):
        s = item.strip()
        mult = 1
        if s[-1:] in ("k", "K"):
            mult, s = 1000, s[:-1]
        elif s[-1:] in ("m", "M"):
            mult, s = 1000000, s[:-1]
        if not s.isdigit() or int(s) <= 0:
            raise argparse.ArgumentTypeError(f"'{item}' is not a positive count")
        out.append(int(s) * mult)
    return sorted(set(out))


def names(allowed):
    def parse(text):
        out = [s.strip() for s in text.split(",")]
        for s in out:
            if s not in allowed:
                raise argparse.ArgumentTypeError(f"'{s}': expected one of {', '.join(allowed)}")
        return [a for a in allowed if a in out]
    return parse


def device_arg(text):
    if text in ("cpu", "cuda"):
        return text
    if text.isdigit():
        return f"cuda:{int(text)}"
    raise argparse.ArgumentTypeError(f"'{text}': expected a device index, cuda or cpu")


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="topk_peers.py", description=__doc__.split("\n\n")[0],
        epilog="See the header of bench/peers/topk_peers.py for what is measured.")
    ap.add_argument("--users", type=counts, default=[4096, 65536])
    ap.add_argument("--items", type=counts, default=[100000, 1000000, 10000000])
    ap.add_argument("--dims", type=counts, default=[64, 128])
    ap.add_argument("--ks", type=counts, default=[10, 100, 1000])
    ap.add_argument("--precisions", type=names(PRECISIONS), default=list(PRECISIONS))
    ap.add_argument("--peers", type=names(PEERS), default=list(PEERS))
    ap.add_argument("--paths", default=None, help="accepted and ignored (towerrec_topk_bench's flag)")
    ap.add_argument("--ceiling-n", default=None, help="accepted and ignored")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-time-s", type=float, default=0.2)
    ap.add_argument("--max-reps", type=int, default=10)
    ap.add_argument("--recall-users", type=int, default=4096,
                    help="users over which faiss and torch tf32 are compared with torch fp32")
    ap.add_argument("--device", type=device_arg, default="cuda",
                    help="device index (as towerrec_topk_bench), cuda, or cpu (script check only)")
    ap.add_argument("--json", help="write the results here (atomically)")
    ap.add_argument("--csv", help="write the results here as CSV (atomically)")
    a = ap.parse_args(argv)
    if a.max_reps < 1 or a.recall_users < 1 or a.min_time_s < 0 or a.budget_s < 0:
        ap.error("--max-reps and --recall-users must be positive, times non-negative")
    return a


def write_atomic(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- the peers' environment ---------------------------------------------------------------

class Env:
    """What can run here: torch (and on which device), faiss (and with a GPU)."""

    def __init__(self, args):
        self.args = args
        self.cpu = args.device == "cpu"
        self.torch = None
        self.dev = None
        self.faiss = None
        self.faiss_torch = False  # faiss.contrib.torch_utils works: torch tensors in and out
        self.faiss_torch_error = None
        self.skip = {}            # peer -> reason
        self.device_name = "cpu" if self.cpu else "unknown"
        self.versions = {}
        try:
            import torch
            self.torch = torch
            self.versions["torch"] = torch.__version__
            if self.cpu:
                self.dev = torch.device("cpu")
            elif not torch.cuda.is_available():
                self.skip["torch"] = f"torch {torch.__version__} sees no CUDA device"
            else:
                self.dev = torch.device(args.device)
                self.device_name = torch.cuda.get_device_name(self.dev)
        except Exception as e:  # ImportError, or a broken install
            self.skip["torch"] = f"torch not importable ({type(e).__name__}: {e})"
        if "torch" in self.skip:
            self.versions.setdefault("torch", None)
        try:
            import faiss
            self.faiss = faiss
            self.versions["faiss"] = getattr(faiss, "__version__", "?")
            if not self.cpu:
                if not hasattr(faiss, "StandardGpuResources"):
                    self.skip["faiss"] = "this faiss build has no GPU support (faiss-cpu)"
                elif faiss.get_num_gpus() < 1:
                    self.skip["faiss"] = "faiss sees no GPU"
        except Exception as e:
            self.skip["faiss"] = f"faiss not importable ({type(e).__name__}: {e})"
            self.versions["faiss"] = None
        self.gpu_res = None
        if "faiss" in args.peers and "faiss" not in self.skip and self.dev is not None:
            # torch tensors straight into faiss (faiss.contrib.torch_utils), if this
            # pair of versions supports it: tried on a tiny index.
            try:
                import faiss.contrib.torch_utils  # noqa: F401  (patches add/search)
                x = self.torch.rand((4, 8), dtype=self.torch.float32, device=self.dev)
                index = self.new_flat_ip(8)
                index.add(x)
                _, ids = index.search(x[:2], 2)
                self.faiss_torch = isinstance(ids, self.torch.Tensor) and tuple(ids.shape) == (2, 2)
                index.reset()
            except Exception as e:
                self.faiss_torch_error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        if "torch" in self.skip and "faiss" not in self.skip and not self.cpu:
            # Without torch there is no device name; numpy carries the data.
            self.device_name = "GPU (name unknown without torch)"
        self.np = None
        try:
            import numpy
            self.np = numpy
        except Exception as e:
            if "faiss" not in self.skip:
                self.skip["faiss"] = f"numpy not importable ({e})"

    def new_flat_ip(self, d):
        """An exact inner-product index: on the GPU, or on the CPU with --device cpu."""
        faiss = self.faiss
        if self.cpu:
            return faiss.IndexFlatIP(d)
        if self.gpu_res is None:
            self.gpu_res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = int(self.args.device.split(":")[1]) if ":" in self.args.device else 0
        return faiss.GpuIndexFlatIP(self.gpu_res, d, cfg)

    def can(self, peer):
        return peer in self.args.peers and peer not in self.skip

    def sync(self):
        if self.torch is not None and self.dev is not None and self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)

    def free_bytes(self):
        if self.dev is None or self.dev.type != "cuda":
            return 8 << 30
        try:
            free, _ = self.torch.cuda.mem_get_info(self.dev)
            return int(free)
        except Exception:
            props = self.torch.cuda.get_device_properties(self.dev)
            return int(props.total_memory - self.torch.cuda.memory_reserved(self.dev))


# ---- timing ------------------------------------------------------------------------------

def measure(env, fn, args):
    """Median seconds per call: one warm-up call, then reps x inner calls."""
    env.sync()
    t = time.perf_counter()
    fn()
    env.sync()
    warm = max(time.perf_counter() - t, 1e-6)
    reps, inner = 1, 1
    if warm < args.min_time_s:
        reps = int(min(max(args.min_time_s / warm, 1), args.max_reps))
        inner = int(min(max(args.min_time_s / (reps * warm), 1), 1000))
    ts = []
    for _ in range(reps):
        env.sync()
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        env.sync()
        ts.append((time.perf_counter() - t) / inner)
    ts.sort()
    n = len(ts)
    med = ts[n // 2] if n % 2 else 0.5 * (ts[n // 2 - 1] + ts[n // 2])
    return med, reps, inner


def recall(env, ref, got, rows):
    """Mean over the first rows users of |got & ref| / |ref| (both [users x k] int)."""
    np = env.np
    ref = np.asarray(ref[:rows])
    got = np.asarray(got[:rows])
    total, counted = 0.0, 0
    for a, b in zip(ref, got):
        a = a[a >= 0]
        if a.size == 0:
            continue
        total += np.intersect1d(a, b[b >= 0]).size / a.size
        counted += 1
    return total / counted if counted else None


def host_ints(env, x):
    if env.torch is not None and isinstance(x, env.torch.Tensor):
        return x.cpu().numpy()
    return x


# ---- the peers ---------------------------------------------------------------------------

def torch_topk(env, U, V, k, block, out_idx):
    torch = env.torch
    Vt = V.t()
    for u0 in range(0, U.shape[0], block):
        S = torch.matmul(U[u0:u0 + block], Vt)
        _, idx = torch.topk(S, k, dim=1)
        out_idx[u0:u0 + idx.shape[0]].copy_(idx)


class Faiss:
    """One flat inner-product index over V, built per (items, d) and reused over k."""

    def __init__(self, env, V):
        self.index = env.new_flat_ip(V.shape[1])
        self.index.add(V)

    def search(self, U, k):
        _, I = self.index.search(U, k)
        return I

    def close(self):
        self.index.reset()
        self.index = None


def fmt_ms(s):
    ms = s * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def fmt_rate(v):
    return (f"{v / 1e9:.2f}G" if v >= 1e9 else f"{v / 1e6:.2f}M" if v >= 1e6
            else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}")


def fmt_count(v):
    if v >= 1000000 and v % 1000000 == 0:
        return f"{v // 1000000}M"
    if v >= 1000 and v % 1000 == 0:
        return f"{v // 1000}k"
    return str(v)


def fmt_recall(r):
    if r is None:
        return "-"
    if r == "reference":
        return "ref"
    return "1" if r >= 1.0 else f"{math.floor(r * 1e5) / 1e5:.5f}"


class Run:
    def __init__(self, args, env):
        self.args = args
        self.env = env
        self.t0 = time.perf_counter()
        self.cells = []
        self.budget_spent = False
        self.header = False
        self.failed = 0
        self.calib = 1.0

    def elapsed(self):
        return time.perf_counter() - self.t0

    def record(self, cell):
        self.cells.append(cell)
        self.write()

    def skip(self, cell, reason):
        cell.update(status="skipped", reason=reason)
        self.record(cell)

    def row(self, c):
        if not self.header:
            print("| users | items | d | k | peer | prec | ms | users/s | TFLOP/s | recall@k vs torch fp32 | notes |")
            print("|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|")
            self.header = True
        print(f"| {fmt_count(c['users'])} | {fmt_count(c['items'])} | {c['d']} | {c['k']} | {c['peer']} | "
              f"{c['precision']} | {fmt_ms(c['seconds'])} | {fmt_rate(c['users_per_s'])} | "
              f"{c['tflops']:.2f} | {fmt_recall(c.get('recall_vs_torch_fp32'))} | {c.get('notes', '')} |",
              flush=True)

    def report(self, complete):
        a = self.args
        return {
            "tool": "topk_peers",
            "device": self.env.device_name,
            "versions": self.env.versions,
            "faiss_inputs": ("torch tensors on the device" if self.env.faiss_torch else
                             "numpy arrays (copies included in the time)"),
            "skipped_peers": {p: r for p, r in self.env.skip.items() if p in a.peers},
            "grid": {"users": a.users, "items": a.items, "dims": a.dims, "ks": a.ks,
                     "precisions": a.precisions, "peers": a.peers},
            "seed": a.seed,
            "inputs": "U, V uniform in [-1, 1) from the seed; no seen-item mask",
            "budget_s": a.budget_s,
            "elapsed_s": round(self.elapsed(), 3),
            "budget_spent": self.budget_spent,
            "complete": complete,
            "cells": self.cells,
        }

    def write(self, complete=False):
        a = self.args
        if a.json:
            write_atomic(a.json, json.dumps(self.report(complete), indent=1) + "\n")
        if a.csv:
            cols = ["users", "items", "d", "k", "peer", "precision", "status", "reason", "seconds",
                    "users_per_s", "tflops", "recall_vs_torch_fp32", "notes"]
            lines = [",".join(cols)]
            for c in self.cells:
                vals = []
                for col in cols:
                    v = c.get(col, "")
                    v = "" if v is None else str(v)
                    if any(ch in v for ch in ',"\n'):
                        v = '"' + v.replace('"', '""') + '"'
                    vals.append(v)
                lines.append(",".join(vals))
            write_atomic(a.csv, "\n".join(lines) + "\n")

    def estimate(self, peer, prec, users, items, d, k, first_of_triple):
        flops = 2.0 * users * items * d
        if self.env.cpu:
            rate = 5e10
        else:
            rate = 4e13 if prec == "tf32" else 1e13
        run = self.calib * (flops / rate + 8.0 * users * items / 1e12)
        s = 2 * run + self.args.min_time_s
        if first_of_triple:
            s += 8.0 * (users + items) * d / 1e9  # generating the inputs
        return s, run

    # One (users, items, d): inputs, then every k, precision and peer.
    def triple(self, users, items, d):
        a, env = self.args, self.env
        cells = []
        for k in a.ks:
            for prec in a.precisions:
                for peer in a.peers:
                    cells.append(dict(users=users, items=items, d=d, k=k, peer=peer, precision=prec))
        todo = []
        for c in cells:
            peer, prec = c["peer"], c["precision"]
            if peer in env.skip:
                self.skip(c, env.skip[peer])
            elif prec == "bf16" and peer == "torch":
                self.skip(c, "torch: bf16 matmul returns bf16 scores, not fp32 as towerrec ranks")
            elif prec != "fp32" and peer == "faiss":
                self.skip(c, "faiss: GpuIndexFlatIP searches in fp32 only")
            elif prec == "tf32" and env.cpu:
                self.skip(c, "tf32 is a GPU mode (running with --device cpu)")
            elif c["k"] > items:
                self.skip(c, "k > items")
            else:
                todo.append(c)
        if not todo:
            return
        if self.budget_spent or self.elapsed() >= a.budget_s:
            self.budget_spent = True
            for c in todo:
                self.skip(c, "not started: the time budget was spent")
            return

        torch = env.torch
        state = {"ref": {}}  # inputs, index and torch fp32 item lists of this triple
        try:
            for c in todo:
                try:
                    self.cell(c, state)
                except Exception as e:
                    # Out of memory or a library error: this cell fails, the next ones try.
                    msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                    print(f"topk_peers: {fmt_count(users)} users x {fmt_count(items)} items, d={d}, "
                          f"k={c['k']}, {c['peer']} {c['precision']}: {msg}", file=sys.stderr, flush=True)
                    c.update(status="failed", reason=msg)
                    self.failed += 1
                    self.record(c)
                finally:
                    if torch is not None:
                        torch.backends.cuda.matmul.allow_tf32 = False
        finally:
            if state.get("index") is not None:
                state["index"].close()
            state.clear()
            if torch is not None and env.dev is not None and env.dev.type == "cuda":
                torch.cuda.empty_cache()

    def inputs(self, c, st):
        """U and V of the cell's triple, made on its first measured cell."""
        a, env = self.args, self.env
        torch, np = env.torch, env.np
        users, items, d = c["users"], c["items"], c["d"]
        if "U" in st or "Uh" in st:
            return
        if torch is not None and env.dev is not None:
            gu = torch.Generator(device=env.dev)
            gu.manual_seed(2 * a.seed)
            gv = torch.Generator(device=env.dev)
            gv.manual_seed(2 * a.seed + 1)
            st["U"] = torch.empty((users, d), dtype=torch.float32, device=env.dev).uniform_(-1, 1, generator=gu)
            st["V"] = torch.empty((items, d), dtype=torch.float32, device=env.dev).uniform_(-1, 1, generator=gv)
        else:
            rng = np.random.default_rng(a.seed)
            st["Uh"] = rng.random((users, d), dtype=np.float32) * 2 - 1
            st["Vh"] = rng.random((items, d), dtype=np.float32) * 2 - 1

    def cell(self, c, st):
        a, env = self.args, self.env
        torch = env.torch
        users, items, d = c["users"], c["items"], c["d"]
        peer, prec, k = c["peer"], c["precision"], c["k"]
        rows = min(users, a.recall_users)
        if self.budget_spent or self.elapsed() >= a.budget_s:
            self.budget_spent = True
            self.skip(c, "not started: the time budget was spent")
            return
        first = "U" not in st and "Uh" not in st
        est, est_run = self.estimate(peer, prec, users, items, d, k, first)
        left = a.budget_s - self.elapsed()
        if est > left:
            self.skip(c, f"estimated {est:.1f} s, more than the {left:.1f} s left of the time budget")
            return
        self.inputs(c, st)
        notes = []
        if peer == "torch":
            U, V = st["U"], st["V"]
            torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
            block = max(1, min(users, min(SCORE_CAP_BYTES, env.free_bytes() // 8) // (4 * items)))
            out = torch.empty((users, k), dtype=torch.int64, device=env.dev)
            sec, reps, inner = measure(env, lambda: torch_topk(env, U, V, k, block, out), a)
            torch.backends.cuda.matmul.allow_tf32 = False
            got = host_ints(env, out[:rows])
            del out
            notes.append(f"{(users + block - 1) // block} blocks of {block} users")
        else:
            if st.get("index") is None:
                if env.faiss_torch:
                    st["index"] = Faiss(env, st["V"])
                else:
                    if "Vh" not in st:
                        st["Uh"], st["Vh"] = st["U"].cpu().numpy(), st["V"].cpu().numpy()
                    st["index"] = Faiss(env, st["Vh"])
            index = st["index"]
            q = st["U"] if env.faiss_torch else st["Uh"]
            holder = {}
            sec, reps, inner = measure(env, lambda: holder.__setitem__("I", index.search(q, k)), a)
            got = host_ints(env, holder.pop("I")[:rows])
            if not env.faiss_torch and not env.cpu:
                notes.append("numpy in/out: includes the copies")
            if env.faiss_torch_error:
                notes.append("torch tensors not accepted by faiss here: numpy instead")
        ref = st["ref"]
        if peer == "torch" and prec == "fp32":
            ref[k] = got
            c["recall_vs_torch_fp32"] = "reference"
        elif k in ref:
            c["recall_vs_torch_fp32"] = recall(env, ref[k], got, rows)
        else:
            c["recall_vs_torch_fp32"] = None
        c.update(status="ok", seconds=sec, reps=reps, calls_per_rep=inner,
                 users_per_s=users / sec, tflops=2.0 * users * items * d / sec * 1e-12,
                 recall_users=rows, estimated_s=round(est, 3), notes="; ".join(notes))
        if sec >= 0.05 and est_run > 0:
            self.calib = max(self.calib, sec / (est_run / self.calib))
        self.row(c)
        self.record(c)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env = Env(args)
    libs = ", ".join(f"{k} {v}" for k, v in env.versions.items() if v) or "no peer library"
    print(f"topk_peers: all-users top-K peers on {env.device_name}; {libs}")
    for peer in args.peers:
        if peer in env.skip:
            print(f"topk_peers: {peer}: skipped: {env.skip[peer]}")
    if env.cpu:
        print("topk_peers: --device cpu: a check of this script, not GPU results")
    if env.faiss_torch_error and "faiss" in args.peers:
        print(f"topk_peers: faiss: torch tensors not accepted ({env.faiss_torch_error}); numpy arrays instead")
    run = Run(args, env)
    if not any(env.can(p) for p in args.peers):
        print("topk_peers: nothing to run")
        run.write(complete=True)
        return 0
    print(f"U, V uniform in [-1, 1) (seed {args.seed}); no seen-item mask (every item ranked); "
          f"time budget {args.budget_s:.0f} s\n", flush=True)
    triples = sorted(((u, i, d) for u in args.users for i in args.items for d in args.dims),
                     key=lambda t: t[0] * t[1] * t[2])
    for t in triples:
        run.triple(*t)
    if not run.header:
        print("(no cell was measured)")
    print("\nms = median wall time per call, device synchronized; users/s = users / time; "
          "TFLOP/s = 2 users items d / time.\nrecall@k vs torch fp32 = mean overlap of each "
          f"user's k items with torch fp32 on the same inputs, first {args.recall_users} users.")
    reasons = {}
    for c in run.cells:
        if c["status"] != "ok":
            reasons.setdefault(f"{c['status']}: {c['reason']}", []).append(c)
    if reasons:
        print("\nNot measured:")
        for why, cs in reasons.items():
            print(f"- {len(cs)}: {why}")
    measured = sum(c["status"] == "ok" for c in run.cells)
    line = f"\n{measured} of {len(run.cells)} cells measured in {run.elapsed():.1f} s"
    if run.budget_spent:
        line += f"; the time budget of {args.budget_s:.0f} s was spent: the cells after it were not started"
    print(line)
    run.write(complete=True)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())

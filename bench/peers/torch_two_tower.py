#!/usr/bin/python3
"""The towerrec two-tower model in PyTorch: the peer of bench/e2e.cpp.

It reads a directory exported by `towerrec_e2e --export DIR` (meta.json, the
same 75/25 split as train.csv/test.csv in dense indices, and the feature arrays
towerrec built), so both engines train and are evaluated on identical data.

Same model and training as towerrec:
  * each tower's input is [ID embedding | dense features | categorical fields
    mean-pooled (EmbeddingBag, mode='mean', empty bag = 0)], then Linear+ReLU
    hidden layers and a linear output layer; score = <user, item>;
  * init: ID and categorical tables N(0, init_std); hidden layers He-uniform
    (bound sqrt(6/in)), output layer Glorot-uniform (sqrt(6/(in+out))), biases 0;
  * loss: logistic, softplus(-y s), over each positive and k uniformly sampled
    negatives, mean over pairs;
  * optimizers: Adam (foreach) over the MLP weights and categorical tables;
    SparseAdam over the ID tables, whose gradients are sparse (sparse=True);
  * batches: a torch.randperm shuffle of the training positives per epoch,
    negatives drawn with torch.randint for the whole batch at once;
  * each tower runs once per unique user/item of a batch (torch.unique, as
    towerrec does; --no-dedup runs it per pair instead).
Evaluation: full ranking over all items with training items masked, top-10 by
torch.matmul + torch.topk, nDCG@10 and Recall@10 as towerrec defines them
(Recall = hits / |test items|; ideal DCG over min(10, |test items|)).

usage: /usr/bin/python3 bench/peers/torch_two_tower.py --data DIR [--threads N]
         [--device cpu|cuda] [--compile] [--no-dedup] [--epochs N] [--seed S]
         [--profile] [--bf16] [--json FILE]
--bf16 runs the towers under torch.autocast(bfloat16) (their matmuls in
bfloat16, float32 sums; embeddings, loss and optimizers float32): the
counterpart of towerrec's --matmul-precision bf16.
--profile runs the training under torch.profiler and prints the time per op
(the peer's counterpart of `towerrec_e2e --profile`; its rates then include the
profiler's overhead and are not for comparison).
"""
import argparse
import json
import math
import os
import sys
import time


def _threads_from_argv(argv):
    """--threads N from the command line, before argparse runs (see below)."""
    for j, a in enumerate(argv):
        if a == "--threads" and j + 1 < len(argv):
            return argv[j + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return str(os.cpu_count())


# torch.set_num_threads() does not reach the BLAS library torch links: Debian's
# torch (and numpy) call the system OpenBLAS (pthread build), which starts its
# own threads, one per core, when it loads. Its thread count comes from the
# environment only, so set it before numpy or torch is imported; otherwise a
# "1 thread" peer runs its GEMMs on every core.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _threads_from_argv(sys.argv[1:])

import numpy as np  # noqa: E402  (after the thread environment above)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def read_pairs(path):
    a = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return torch.from_numpy(a[:, 0].copy()), torch.from_numpy(a[:, 1].copy())


class Tower(nn.Module):
    def __init__(self, data_dir, side, n, spec, m, device):
        super().__init__()
        self.id_dim = m["id_dim"]
        self.id = None
        if self.id_dim > 0:
            self.id = nn.Embedding(n, self.id_dim, sparse=True)
            nn.init.normal_(self.id.weight, 0.0, m["init_std"])
        dd = spec["dense_dim"]
        dense = np.fromfile(os.path.join(data_dir, f"{side}_dense.f32"), dtype=np.float32).reshape(n, dd) \
            if dd > 0 else np.zeros((n, 0), np.float32)
        self.register_buffer("dense", torch.from_numpy(dense))
        self.bags = nn.ModuleList()
        self.bag_offsets, self.bag_values = [], []
        for c, vocab in enumerate(spec["cat_vocab"]):
            bag = nn.EmbeddingBag(vocab, m["cat_dim"], mode="mean")
            nn.init.normal_(bag.weight, 0.0, m["init_std"])
            self.bags.append(bag)
            off = np.fromfile(os.path.join(data_dir, f"{side}_cat{c}_offsets.i32"), dtype=np.int32)
            val = np.fromfile(os.path.join(data_dir, f"{side}_cat{c}_values.i32"), dtype=np.int32)
            self.bag_offsets.append(torch.from_numpy(off.astype(np.int64)).to(device))
            self.bag_values.append(torch.from_numpy(val.astype(np.int64)).to(device))
        in_dim = self.id_dim + dd + len(self.bags) * m["cat_dim"]
        widths = list(m["hidden"]) + [m["out_dim"]]
        self.layers = nn.ModuleList()
        for j, w in enumerate(widths):
            lin = nn.Linear(in_dim, w)
            relu = j + 1 < len(widths)
            bound = math.sqrt(6.0 / in_dim) if relu else math.sqrt(6.0 / (in_dim + w))
            nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(lin.bias)
            self.layers.append(lin)
            in_dim = w

    def bag_input(self, c, idx):
        # The flattened values and start offsets of the bags of entities idx.
        off, val = self.bag_offsets[c], self.bag_values[c]
        starts = off[idx]
        lens = off[idx + 1] - starts
        seg = torch.cumsum(lens, 0) - lens
        total = int(lens.sum())
        pos = torch.arange(total, device=idx.device) + torch.repeat_interleave(starts - seg, lens)
        return val[pos], seg

    def forward(self, idx):
        parts = []
        if self.id is not None:
            parts.append(self.id(idx))
        if self.dense.shape[1] > 0:
            parts.append(self.dense[idx])
        for c, bag in enumerate(self.bags):
            inp, off = self.bag_input(c, idx)
            parts.append(bag(inp, off))
        x = torch.cat(parts, 1)
        for j, lin in enumerate(self.layers):
            x = lin(x)
            if j + 1 < len(self.layers):
                x = F.relu(x)
        return x


def embed_all(tower, n, device, chunk=8192):
    out = []
    for s in range(0, n, chunk):
        out.append(tower(torch.arange(s, min(n, s + chunk), device=device)))
    return torch.cat(out)


def csr(users, items, n_users):
    order = torch.argsort(users * (items.max() + 1 if len(items) else 1) + items)
    u, i = users[order], items[order]
    offsets = torch.zeros(n_users + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(u, minlength=n_users), 0)
    return offsets, u, i


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="directory written by towerrec_e2e --export")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the towers (PyTorch >= 2)")
    ap.add_argument("--no-dedup", action="store_true", help="run the towers per pair, not per unique entity")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--profile", action="store_true", help="time per op under torch.profiler")
    ap.add_argument("--bf16", action="store_true",
                    help="towers under torch.autocast(bfloat16): the counterpart of towerrec's "
                         "--matmul-precision bf16 (embeddings and loss stay float32)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    meta = json.load(open(os.path.join(args.data, "meta.json")))
    m, tc = meta["model"], meta["train"]
    epochs = tc["epochs"] if args.epochs is None else args.epochs
    B, k = tc["batch_size"], tc["negatives"]
    nu, ni = meta["n_users"], meta["n_items"]

    tr_u, tr_i = read_pairs(os.path.join(args.data, "train.csv"))
    te_u, te_i = read_pairs(os.path.join(args.data, "test.csv"))
    user_t = Tower(args.data, "user", nu, meta["user"], m, device).to(device)
    item_t = Tower(args.data, "item", ni, meta["item"], m, device).to(device)
    fwd_u, fwd_i = user_t, item_t
    if args.compile:
        if not hasattr(torch, "compile"):
            sys.exit(f"torch.compile needs PyTorch >= 2 (this is {torch.__version__})")
        fwd_u, fwd_i = torch.compile(user_t, dynamic=True), torch.compile(item_t, dynamic=True)

    sparse_params = [t.id.weight for t in (user_t, item_t) if t.id is not None]
    sparse_ids = {id(p) for p in sparse_params}
    dense_params = [p for t in (user_t, item_t) for p in t.parameters() if id(p) not in sparse_ids]
    betas = (tc["beta1"], tc["beta2"])
    opt_dense = torch.optim.Adam(dense_params, lr=tc["lr"], betas=betas, eps=tc["eps"], foreach=True)
    opt_sparse = torch.optim.SparseAdam(sparse_params, lr=tc["lr"], betas=betas, eps=tc["eps"]) \
        if sparse_params else None

    tr_u_d, tr_i_d = tr_u.to(device), tr_i.to(device)
    n_train = len(tr_u)
    steps = (n_train + B - 1) // B
    labels = torch.full((1, 1 + k), -1.0, device=device)
    labels[0, 0] = 1.0
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    epoch_out, samples, train_s = [], 0, 0.0
    prof = None
    if args.profile:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=acts)
        prof.__enter__()
    for e in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n_train, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        for s in range(steps):
            sel = perm[s * B:(s + 1) * B]
            b = len(sel)
            u = tr_u_d[sel]
            items = torch.cat([tr_i_d[sel].unsqueeze(1),
                               torch.randint(ni, (b, k), generator=gen, device=device)], 1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                if args.no_dedup:
                    U = fwd_u(u)
                    V = fwd_i(items.reshape(-1))
                else:
                    uu, uinv = torch.unique(u, return_inverse=True)
                    ii, iinv = torch.unique(items.reshape(-1), return_inverse=True)
                    U = fwd_u(uu)[uinv]
                    V = fwd_i(ii)[iinv]
            U, V = U.float(), V.float()
            scores = (U.unsqueeze(1) * V.view(b, 1 + k, -1)).sum(-1)
            loss = F.softplus(-labels * scores).mean()
            opt_dense.zero_grad(set_to_none=True)
            if opt_sparse:
                opt_sparse.zero_grad(set_to_none=True)
            loss.backward()
            opt_dense.step()
            if opt_sparse:
                opt_sparse.step()
            loss_sum += loss.detach()
            samples += b
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        train_s += dt
        el = float(loss_sum) / steps
        epoch_out.append({"epoch": e + 1, "loss": el, "seconds": dt, "samples_per_s": n_train / dt})
        print(f"  epoch {e + 1}: loss {el:.4f}, {dt:.1f} s, {n_train / dt:.0f} samples/s", file=sys.stderr)

    if prof is not None:
        prof.__exit__(None, None, None)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"training time by op ({train_s:.2f} s under the profiler):", file=sys.stderr)
        print(prof.key_averages().table(sort_by=key, row_limit=15), file=sys.stderr)

    # ---- embeddings, scoring (matmul + mask of training items + topk), evaluation
    K = 10
    with torch.no_grad():
        t0 = time.perf_counter()
        U_all = embed_all(user_t, nu, device)
        V_all = embed_all(item_t, ni, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        embed_s = time.perf_counter() - t0
        tr_off, tr_su, tr_si = csr(tr_u, tr_i, nu)
        te_off, te_su, te_si = csr(te_u, te_i, nu)
        tr_su, tr_si = tr_su.to(device), tr_si.to(device)
        block = max(1, min(4096, (64 << 20) // max(ni, 1)))
        VT = V_all.t().contiguous()

        def top_block(b0, b1):
            S = U_all[b0:b1] @ VT
            o0, o1 = int(tr_off[b0]), int(tr_off[b1])
            S[tr_su[o0:o1] - b0, tr_si[o0:o1]] = float("-inf")
            return torch.topk(S, K, dim=1).indices

        n_score = meta["eval"]["score_users"]
        t0 = time.perf_counter()
        for b0 in range(0, n_score, block):
            top_block(b0, min(n_score, b0 + block))
        if device.type == "cuda":
            torch.cuda.synchronize()
        score_s = time.perf_counter() - t0

        n_eval = meta["eval"]["eval_users"]
        disc = 1.0 / torch.log2(torch.arange(2, K + 2, dtype=torch.float64))
        ndcg_sum, recall_sum, evaluated = 0.0, 0.0, 0
        t0 = time.perf_counter()
        for b0 in range(0, n_eval, block):
            b1 = min(n_eval, b0 + block)
            top = top_block(b0, b1).cpu()
            n_rel = (te_off[b0 + 1:b1 + 1] - te_off[b0:b1])
            rel = torch.zeros(b1 - b0, ni, dtype=torch.bool)
            o0, o1 = int(te_off[b0]), int(te_off[b1])
            rel[te_su[o0:o1] - b0, te_si[o0:o1]] = True
            hits = rel.gather(1, top).double()
            has = n_rel > 0
            dcg = (hits * disc).sum(1)
            idcg = torch.cumsum(disc, 0)[(n_rel.clamp(1, K) - 1)]
            ndcg_sum += float((dcg / idcg)[has].sum())
            recall_sum += float((hits.sum(1) / n_rel.clamp(min=1))[has].sum())
            evaluated += int(has.sum())
        eval_s = time.perf_counter() - t0

    r = {
        "engine": "pytorch",
        "torch": torch.__version__,
        "device": str(device),
        "compile": args.compile,
        "dedup": not args.no_dedup,
        "matmul_precision": "bf16" if args.bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "config": meta["config"],
        "train_seconds": train_s,
        "train_samples": samples,
        "train_samples_per_s": samples / train_s if train_s > 0 else 0,
        "epochs": epoch_out,
        "final_loss": epoch_out[-1]["loss"] if epoch_out else 0,
        "embed_seconds": embed_s,
        "score_users": n_score,
        "score_seconds": score_s,
        "score_users_per_s": n_score / score_s if score_s > 0 else 0,
        "eval_users": evaluated,
        "eval_seconds": eval_s,
        "ndcg10": ndcg_sum / max(evaluated, 1),
        "recall10": recall_sum / max(evaluated, 1),
    }
    print(f"pytorch {torch.__version__} {meta['config']} on {device} ({r['threads']} threads, "
          f"{'dedup' if r['dedup'] else 'per pair'}{', compiled' if args.compile else ''}"
          f"{', bf16 autocast' if args.bf16 else ''})")
    print(f"  train   {r['train_samples_per_s']:10.0f} samples/s  ({samples} samples, {train_s:.1f} s)")
    print(f"  score   {r['score_users_per_s']:10.0f} users/s    ({n_score} users x {ni} items, top-10, {score_s:.2f} s)")
    print(f"  quality nDCG@10 {r['ndcg10']:.4f}  Recall@10 {r['recall10']:.4f}  ({evaluated} users)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()

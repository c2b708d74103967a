"""Pictures of training runs and benchmarks, as PNG files (matplotlib)::

    python -m towerrec.plot history OUT [OUT2 ...] -o curves.png [--label NAME ...]
    python -m towerrec.plot bench results.json [other.json ...] -o bench.png [--filter REGEX]
    python -m towerrec.plot table bench/results/FILE.md --list
    python -m towerrec.plot table bench/results/FILE.md --table N --column NAME ... -o t.png

``history`` draws the training curves of one or more runs from their
``history.jsonl`` (``towerrec train`` and ``TwoTower(out=DIR).fit`` write it
in the output directory; a directory or the file itself): the loss, and the
validation metrics of the epochs evaluated when there are any (recall@K and
ndcg@K), against the epoch (left) and the training seconds (right,
evaluations left out).

``bench`` draws Google Benchmark JSON files (``towerrec_bench
--benchmark_out=FILE --benchmark_out_format=json``) as horizontal bars, one bar
per benchmark and file: the time per iteration (``--metric time``, default) or
a counter such as ``flops`` or ``bytes`` (per second where the suite reports a
rate).

``table`` draws a Markdown table of a results file (``bench/results/*.md``)
as horizontal bars: one group per row, labelled by its first column (or
``--label-column``, repeatable), one bar per ``--column``; a cell's value is the first
number in it (``**0.4656**``, ``148,380 (42% of sgemm)`` and ``17 s`` read
0.4656, 148380 and 17), a cell without one is left empty. ``--list`` prints
the file's tables with their numbers and columns.

matplotlib is imported when a picture is drawn (``pip install 'towerrec[plot]'``);
the Agg backend is used, so no display is needed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Optional, Sequence

__all__ = ["read_history", "plot_history", "read_benchmarks", "plot_benchmarks",
           "read_tables", "plot_table", "main"]

_METRIC = re.compile(r"^(recall|ndcg|precision|map|hit_rate|mrr)@(\d+)$")
# Metrics drawn by default (the ones history.jsonl holds for K = 10, 20).
_DEFAULT_METRICS = ("recall", "ndcg")


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("towerrec.plot needs matplotlib (pip install 'towerrec[plot]')") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _history_file(path: str) -> str:
    return os.path.join(path, "history.jsonl") if os.path.isdir(path) else path


def read_history(path: str) -> list:
    """The records of a history.jsonl (a file, or the directory holding it),
    in file order. Lines that do not parse are skipped, as the engine does
    when it resumes; a file without any record is an error."""
    f = _history_file(os.fspath(path))
    records = []
    with open(f, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and "epoch" in r:
                records.append(r)
    if not records:
        raise ValueError(f"{f}: no training records (expected one JSON object per epoch "
                         "with 'epoch' and 'loss')")
    return records


def _save(fig, out: str) -> None:
    tmp = out + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, out)


def plot_history(paths: Sequence[str], out: str, labels: Optional[Sequence[str]] = None,
                 title: str = "", metrics: Sequence[str] = _DEFAULT_METRICS) -> str:
    """Draws the runs' curves (see the module's text) into the PNG ``out``
    and returns its path."""
    if not paths:
        raise ValueError("plot_history: no history given")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"plot_history: {len(labels)} labels for {len(paths)} runs")
    runs = [read_history(p) for p in paths]
    if labels is None:
        labels = [os.path.basename(os.path.dirname(os.path.abspath(_history_file(p)))) or p
                  for p in paths]
    names = sorted({k for run in runs for r in run for k in r
                    if _METRIC.match(k) and _METRIC.match(k).group(1) in metrics},
                   key=lambda k: (metrics.index(_METRIC.match(k).group(1)),
                                  int(_METRIC.match(k).group(2))))
    plt = _pyplot()
    nrows = 2 if names else 1
    fig, axes = plt.subplots(nrows, 2, figsize=(10, 3.4 * nrows), dpi=110, squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ri, (run, label) in enumerate(zip(runs, labels)):
        for col, xkey in enumerate(("epoch", "train_seconds")):
            pts = [(r[xkey], r["loss"]) for r in run if xkey in r and "loss" in r]
            ax = axes[0][col]
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, color=f"C{ri}", label=label)
            if not names:
                continue
            ax = axes[1][col]
            for mi, name in enumerate(names):
                pts = [(r[xkey], r[name]) for r in run if xkey in r and name in r]
                if pts:
                    ax.plot(*zip(*pts), styles[mi % len(styles)], marker="s", ms=3,
                            color=f"C{(ri * len(names) + mi) % 10}",
                            label=f"{label} {name}" if len(runs) > 1 else name)
    for col, xlabel in enumerate(("epoch", "training seconds (evaluations left out)")):
        axes[0][col].set_ylabel("training loss")
        for row in range(nrows):
            axes[row][col].set_xlabel(xlabel)
            axes[row][col].grid(alpha=0.3)
        if names:
            axes[1][col].set_ylabel("validation metric")
    if len(runs) > 1:
        axes[0][0].legend(fontsize=8)
    if names:
        axes[1][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def read_benchmarks(path: str, pattern: str = "") -> list:
    """The iteration runs of a Google Benchmark JSON file whose name matches
    ``pattern`` (a regular expression, searched), as dicts."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError(f"{path}: not a Google Benchmark JSON file (no 'benchmarks' list)")
    rx = re.compile(pattern) if pattern else None
    return [b for b in data["benchmarks"]
            if b.get("run_type", "iteration") == "iteration" and "name" in b
            and (rx is None or rx.search(b["name"]))]


_UNIT_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}


def _short(name: str) -> str:
    return "/".join(p for p in name.split("/")
                    if not p.startswith(("min_time:", "repeats:")) and p not in
                    ("manual_time", "real_time", "process_time"))


def plot_benchmarks(paths: Sequence[str], out: str, labels: Optional[Sequence[str]] = None,
                    pattern: str = "", metric: str = "time", title: str = "",
                    log: bool = True) -> str:
    """Draws the benchmarks of one or more JSON files as grouped horizontal
    bars into the PNG ``out`` and returns its path: one group per benchmark
    name (in the first file's order, then the others'), one bar per file."""
    if not paths:
        raise ValueError("plot_benchmarks: no file given")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"plot_benchmarks: {len(labels)} labels for {len(paths)} files")
    labels = list(labels) if labels is not None else [os.path.basename(p) for p in paths]
    tables = []
    order: list = []
    for p in paths:
        values = {}
        for b in read_benchmarks(p, pattern):
            if metric == "time":
                v = float(b["real_time"]) * _UNIT_US.get(b.get("time_unit", "ns"), 1e-3)
            elif metric in b:
                v = float(b[metric])
            else:
                continue
            name = _short(b["name"])
            values[name] = v
            if name not in order:
                order.append(name)
        tables.append(values)
    if not order:
        what = f"matching '{pattern}' " if pattern else ""
        raise ValueError(f"plot_benchmarks: no benchmark {what}with '{metric}' in {list(paths)}")
    plt = _pyplot()
    n, m = len(order), len(paths)
    height = 0.8 / m
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.28 * n * max(1, m * 0.7)), dpi=110)
    for j, (values, label) in enumerate(zip(tables, labels)):
        ys = [i + (j - (m - 1) / 2) * height for i in range(n)]
        ax.barh(ys, [values.get(name, float("nan")) for name in order], height=height,
                color=f"C{j}", label=label)
    ax.set_yticks(range(n))
    ax.set_yticklabels(order, fontsize=7)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("microseconds per iteration (lower is better)" if metric == "time"
                  else metric)
    ax.grid(axis="x", alpha=0.3)
    if m > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _cells(line: str) -> list:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [c.strip() for c in line.split("|")]


def read_tables(path: str) -> list:
    """The Markdown tables of a file, in order: dicts with ``heading`` (the
    last heading above the table), ``columns`` and ``rows`` (lists of cell
    texts)."""
    tables = []
    heading = ""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.startswith("|") and re.fullmatch(r"\|?(\s*:?-+:?\s*\|)*\s*:?-+:?\s*\|?", nxt):
            columns = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = _cells(lines[i])
                rows.append((cells + [""] * len(columns))[:len(columns)])
                i += 1
            tables.append({"heading": heading, "columns": columns, "rows": rows})
            continue
        i += 1
    return tables


def _value(cell: str) -> float:
    m = _NUMBER.search(cell.replace(",", "").replace("`", ""))
    return float(m.group(0)) if m else float("nan")


def _clean(cell: str) -> str:
    return cell.replace("**", "").replace("`", "")


def plot_table(path: str, out: str, table: int, columns: Sequence[str],
               label_columns: Sequence[str] = (), title: Optional[str] = None,
               log: bool = False) -> str:
    """Draws columns of the ``table``-th Markdown table of ``path`` (from 1)
    as grouped horizontal bars into the PNG ``out`` and returns its path."""
    tables = read_tables(path)
    if not 1 <= table <= len(tables):
        raise ValueError(f"{path}: no table {table} (the file has {len(tables)}; --list shows them)")
    t = tables[table - 1]
    cols = t["columns"]
    if not columns:
        raise ValueError("plot_table: no column given (--column NAME)")
    for c in list(columns) + list(label_columns):
        if c not in cols:
            raise ValueError(f"{path}: table {table} has no column '{c}' (columns: {cols})")
    li = [cols.index(c) for c in label_columns] or [0]
    labels = [" / ".join(_clean(r[j]) for j in li) for r in t["rows"]]
    values = [[_value(r[cols.index(c)]) for r in t["rows"]] for c in columns]
    if all(math.isnan(v) for vs in values for v in vs):
        raise ValueError(f"{path}: table {table}: no numbers in {list(columns)}")
    plt = _pyplot()
    n, m = len(labels), len(columns)
    height = 0.8 / m
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.3 * n * max(1, m * 0.7)), dpi=110)
    for j, (c, vs) in enumerate(zip(columns, values)):
        ys = [i + (j - (m - 1) / 2) * height for i in range(n)]
        ax.barh(ys, vs, height=height, color=f"C{j}", label=c)
    ax.set_yticks(range(n))
    ax.set_yticklabels([x if len(x) <= 60 else x[:57] + "..." for x in labels], fontsize=7)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.grid(axis="x", alpha=0.3)
    if m > 1:
        ax.legend(fontsize=8)
    else:
        ax.set_xlabel(columns[0])
    ax.set_title(t["heading"] if title is None else title, fontsize=10)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m towerrec.plot",
                                description="Draws training curves or benchmark results "
                                            "into a PNG file.")
    sub = p.add_subparsers(dest="command", required=True)
    h = sub.add_parser("history", help="training curves from history.jsonl")
    h.add_argument("runs", nargs="+", help="model directories or history.jsonl files")
    h.add_argument("-o", "--out", required=True, help="the PNG to write")
    h.add_argument("--label", action="append", help="a run's name (once per run)")
    h.add_argument("--title", default="")
    h.add_argument("--metrics", default=",".join(_DEFAULT_METRICS),
                   help="metric families to draw, comma-separated (default: recall,ndcg)")
    b = sub.add_parser("bench", help="Google Benchmark JSON files as bars")
    b.add_argument("files", nargs="+")
    b.add_argument("-o", "--out", required=True, help="the PNG to write")
    b.add_argument("--label", action="append", help="a file's name (once per file)")
    b.add_argument("--filter", default="", help="regular expression the names must match")
    b.add_argument("--metric", default="time",
                   help="'time' (real time per iteration) or a counter (flops, bytes, ...)")
    b.add_argument("--linear", action="store_true", help="a linear axis (default: log)")
    b.add_argument("--title", default="")
    t = sub.add_parser("table", help="a Markdown table of a results file as bars")
    t.add_argument("file")
    t.add_argument("--list", action="store_true", help="print the file's tables and exit")
    t.add_argument("--table", type=int, default=1, help="which table (from 1; default 1)")
    t.add_argument("--column", action="append", default=[], help="a column to draw (repeatable)")
    t.add_argument("--label-column", action="append", default=[],
                   help="a column naming the rows (repeatable, joined; default: the first)")
    t.add_argument("-o", "--out", help="the PNG to write")
    t.add_argument("--log", action="store_true", help="a log axis (default: linear)")
    t.add_argument("--title", help="default: the heading above the table")
    a = p.parse_args(argv)
    try:
        if a.command == "history":
            out = plot_history(a.runs, a.out, a.label, a.title,
                               tuple(x for x in a.metrics.split(",") if x))
        elif a.command == "table":
            if a.list:
                for n, tb in enumerate(read_tables(a.file), 1):
                    print(f"{n}: {tb['heading'] or '(no heading)'}: {len(tb['rows'])} rows; "
                          f"columns {tb['columns']}")
                return 0
            if not a.out:
                p.error("table: -o/--out is required (or --list)")
            out = plot_table(a.file, a.out, a.table, a.column, a.label_column, a.title, a.log)
        else:
            out = plot_benchmarks(a.files, a.out, a.label, a.filter, a.metric, a.title,
                                  log=not a.linear)
    except (OSError, ValueError, ImportError) as e:
        print(f"towerrec.plot: {e}", file=sys.stderr)
        return 1
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m towerrec.plot: training curves and benchmark bars into PNG files
(skipped with a message where matplotlib is absent)."""
import json
import subprocess
import sys

import pytest

from towerrec import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def need_matplotlib():
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install '.[plot]')")


def write_history(path, epochs=3, metrics_from=2):
    with open(path, "w") as f:
        for e in range(1, epochs + 1):
            r = {"epoch": e, "loss": 5.0 / e, "lr": 1e-3, "samples_per_s": 1e5,
                 "train_seconds": 1.5 * e}
            if e >= metrics_from:
                for k in (10, 20):
                    r.update({f"recall@{k}": 0.1 * e, f"ndcg@{k}": 0.05 * e,
                              f"precision@{k}": 0.02 * e})
            f.write(json.dumps(r) + "\n")
        f.write("not json: a log line is skipped\n")


def is_png(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC
    width = int.from_bytes(head[16:20], "big")
    height = int.from_bytes(head[20:24], "big")
    assert width > 100 and height > 100
    return True


def test_history_command_writes_png(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_history(run / "history.jsonl")
    out = tmp_path / "curves.png"
    r = subprocess.run([sys.executable, "-m", "towerrec.plot", "history", str(run), "-o", str(out),
                        "--title", "tiny"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert is_png(out)
    assert not list(tmp_path.glob("*.tmp.*"))


def test_history_records_and_several_runs(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_history(a)
    write_history(b, epochs=2, metrics_from=99)  # loss only
    assert [r["epoch"] for r in plot.read_history(str(a))] == [1, 2, 3]
    out = plot.plot_history([str(a), str(b)], str(tmp_path / "two.png"), labels=["a", "b"])
    assert is_png(out)
    out = plot.plot_history([str(b)], str(tmp_path / "loss.png"))  # one row of panels
    assert is_png(out)


def test_history_errors(tmp_path):
    empty = tmp_path / "history.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no training records"):
        plot.read_history(str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "towerrec.plot", "history", str(tmp_path / "none"),
                        "-o", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode == 1 and "towerrec.plot:" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_bench_bars(tmp_path):
    def bench(path, scale):
        rows = [{"name": f"dense_forward/cpu/n={n}/min_time:0.200/manual_time",
                 "run_type": "iteration", "real_time": scale * n, "time_unit": "ns",
                 "flops": 1e9 / scale} for n in (64, 1024)]
        rows.append({"name": "dense_forward/cpu/n=64_mean", "run_type": "aggregate",
                     "real_time": 1.0, "time_unit": "ns"})
        path.write_text(json.dumps({"context": {}, "benchmarks": rows}))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    bench(a, 1.0)
    bench(b, 2.0)
    assert len(plot.read_benchmarks(str(a))) == 2  # the aggregate left out
    assert len(plot.read_benchmarks(str(a), "n=1024")) == 1
    assert is_png(plot.plot_benchmarks([str(a), str(b)], str(tmp_path / "t.png")))
    assert is_png(plot.plot_benchmarks([str(a)], str(tmp_path / "f.png"), metric="flops"))
    with pytest.raises(ValueError, match="no benchmark matching 'topk'"):
        plot.plot_benchmarks([str(a)], str(tmp_path / "n.png"), pattern="topk")


def test_markdown_table(tmp_path):
    md = tmp_path / "results.md"
    md.write_text("# Results\n\ntext\n\n## Quality\n\n"
                  "| loss | nDCG@10 | time |\n|---|---:|---:|\n"
                  "| softmax | **0.4656** | 17 s |\n| bpr `--loss bpr` | 0.3741 | 1,210 s |\n"
                  "| popularity | 0.2525 | |\n\nafter\n\n| a | b |\n| :- | -: |\n| x | 1 |\n")
    tables = plot.read_tables(str(md))
    assert [t["heading"] for t in tables] == ["Quality", "Quality"]
    assert tables[0]["columns"] == ["loss", "nDCG@10", "time"] and len(tables[0]["rows"]) == 3
    assert plot._value("148,380 (42% of sgemm)") == 148380 and plot._value("**0.4656**") == 0.4656
    out = tmp_path / "t.png"
    r = subprocess.run([sys.executable, "-m", "towerrec.plot", "table", str(md), "--table", "1",
                        "--column", "nDCG@10", "--column", "time", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert is_png(out)
    r = subprocess.run([sys.executable, "-m", "towerrec.plot", "table", str(md), "--list"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "2: Quality: 1 rows" in r.stdout, r.stdout
    with pytest.raises(ValueError, match="no column 'recall'"):
        plot.plot_table(str(md), str(tmp_path / "n.png"), 1, ["recall"])
    with pytest.raises(ValueError, match="no table 3"):
        plot.plot_table(str(md), str(tmp_path / "n.png"), 3, ["b"])

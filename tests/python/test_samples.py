"""The Python sample runs as written."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_python_quickstart(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "samples" / "python_quickstart.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "like i0:" in r.stdout and (tmp_path / "model.ckpt").is_file()

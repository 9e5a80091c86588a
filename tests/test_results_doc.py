"""docs/results.md is what bench/results_doc.py makes of the committed raw results: a number cannot go stale."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_doc_is_current(tmp_path):
    out = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "results_doc.py"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes() == (ROOT / "docs" / "results.md").read_bytes(), "run python bench/results_doc.py"

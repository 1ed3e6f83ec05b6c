"""bench/ledger.py's write figures keep running as the ledger changes. Not a timing test: tiny sizes, no verdicts read.

Its end-to-end part starts hub serve, workers and ledger processes in three vhosts, like bench/e2e.py, and is
run by hand as bench/e2e.py is.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ledger_write_bench_runs_and_prints_its_figures(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ledger.py"), "--part", "write", "--exams", "100", "--rounds", "1"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SQLite (WAL)  Ledger.record" in result.stdout
    assert "plain INSERT" in result.stdout

"""bench/ledger.py's write figures keep running as the ledger changes. Not a timing test: tiny sizes, no verdicts read.

Its end-to-end part starts hub serve, workers and ledger processes in three vhosts, like bench/e2e.py, and is
run by hand as bench/e2e.py is.
"""

from pathlib import Path

from benches import run_bench


def test_ledger_write_bench_runs_and_prints_its_figures(tmp_path: Path) -> None:
    result = run_bench("ledger.py", "--part", "write", "--exams", "100", "--rounds", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SQLite (WAL)  Ledger.record" in result.stdout
    assert "plain INSERT" in result.stdout

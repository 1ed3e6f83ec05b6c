"""bench/registry.py keeps running as the registry changes. Not a timing test: tiny sizes, no figures read."""

import subprocess
import sys
from pathlib import Path

from databases import POSTGRES_URL, postgres_database

REPO = Path(__file__).resolve().parents[1]


def test_registry_bench_runs_on_both_databases(tmp_path: Path) -> None:
    with postgres_database():  # skips (or fails under CI) where PostgreSQL is missing
        pass
    tiny = ["--results", "2000", "--lookups", "200", "--postgres", POSTGRES_URL]
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "registry.py"), *tiny],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("sqlite ") for line in lines), result.stdout
    assert any(line.startswith("postgresql ") for line in lines), result.stdout

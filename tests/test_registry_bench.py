"""bench/registry.py keeps running as the registry changes. Not a timing test: tiny sizes, no figures read."""

from pathlib import Path

from benches import run_bench
from databases import POSTGRES_URL, postgres_database


def test_registry_bench_runs_on_both_databases(tmp_path: Path) -> None:
    with postgres_database():  # skips (or fails under CI) where PostgreSQL is missing
        pass
    tiny = ["--results", "2000", "--lookups", "200", "--postgres", POSTGRES_URL]
    result = run_bench("registry.py", *tiny, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("sqlite ") for line in lines), result.stdout
    assert any(line.startswith("postgresql ") for line in lines), result.stdout

"""Running a bench script as its user does, for the tests that keep the benches working (no timing read)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python bench/<script> args`` in ``cwd``, its output captured; the caller reads it."""
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=300,
    )

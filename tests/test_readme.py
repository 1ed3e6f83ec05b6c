"""The README's example runs as written, from the repository root."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no Python example"
    monkeypatch.chdir(REPO)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert b"ORU^R01" in namespace["oru"]  # type: ignore[operator]
    assert namespace["diagnostic_report"]["resourceType"] == "DiagnosticReport"  # type: ignore[index]
    assert b"MSA|AA|" in namespace["reply"]  # type: ignore[operator]
    assert len(namespace["exams"]) == 3  # type: ignore[arg-type]

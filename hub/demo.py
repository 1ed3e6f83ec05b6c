"""``hub demo``: the sample set through the adapters, both directions.

Each sample is decoded into exams; each exam gets a templated final report,
written back in the sender's own format. Known-bad samples (``bad-*``) must be
refused with a located error. Exit status 0 means every sample did what it
should.

A sample whose sender needs a setting, such as a fallback charset for a
modality that omits SpecificCharacterSet, has it as ``read_kwargs`` in the
``EXPECTED.toml`` beside it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import adapters
from adapters import fhir, hl7v2
from hub.envelope import Exam, Performer, Report
from hub.errors import AdapterError

__all__ = ["DemoRow", "run_demo", "sample_files"]

LEAD_HOSPITAL = "12330112470101234B"  # 临安区人民医院 in examples/
_NOT_SAMPLES = {".md", ".toml", ".py"}


@dataclass(frozen=True)
class DemoRow:
    sample: str
    outcome: str  # "accepted" or "rejected"
    detail: str
    as_expected: bool


def sample_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix not in _NOT_SAMPLES:
            yield path


def _report_for(exam: Exam) -> Report:
    return Report.answering(
        exam,
        status="final",
        issued_at=datetime.now(UTC),
        conclusion="演示报告：未见明显异常（模板）",
        performer=Performer(name="演示医师", id="D0001"),
        performer_institution=LEAD_HOSPITAL,
    )


def _write_back(exam: Exam, report: Report) -> tuple[str, int]:
    if exam.source.format == "fhir":
        return "DiagnosticReport", len(json.dumps(fhir.write_report(report), ensure_ascii=False).encode())
    # Members' RIS/LIS take reports over HL7 v2, DICOM senders included.
    return "ORU^R01", len(hl7v2.write_report(report, charset=exam.source.charset or "utf-8"))


@cache
def _documented(folder: Path) -> dict[str, Any]:
    expected = folder / "EXPECTED.toml"
    return tomllib.loads(expected.read_text("utf-8")) if expected.is_file() else {}


def _sender_settings(path: Path) -> dict[str, Any]:
    settings: dict[str, Any] = _documented(path.parent).get(path.name, {}).get("read_kwargs", {})
    return settings


def _row(path: Path, folder: Path) -> DemoRow:
    name = str(path.relative_to(folder))
    expect_reject = path.name.startswith("bad-")
    try:
        exams = adapters.read(path.read_bytes(), **_sender_settings(path))
    except AdapterError as exc:
        return DemoRow(name, "rejected", f"{type(exc).__name__} at {exc.location}: {exc.message}", expect_reject)
    parts = []
    for exam in exams:
        kind, size = _write_back(exam, _report_for(exam))
        notices = f", {len(exam.notices)} notice(s)" if exam.notices else ""
        parts.append(
            f"{exam.centre}/{exam.priority} {exam.service.display or exam.service.code} "
            f"obs={len(exam.observations)}{notices} -> {kind} {size} B"
        )
    return DemoRow(name, "accepted", "; ".join(parts), not expect_reject)


def run_demo(folder: Path, out: TextIO) -> int:
    out.write("hub demo: adapters only (broker stages arrive with the transport issue)\n")
    out.write(f"samples: {folder}\n\n")
    rows = [_row(path, folder) for path in sample_files(folder)]
    width = max((len(r.sample) for r in rows), default=10)
    for row in rows:
        mark = "ok " if row.as_expected else "!! "
        out.write(f"{mark}{row.sample:<{width}}  {row.outcome:<8}  {row.detail}\n")
    wrong = [r for r in rows if not r.as_expected]
    accepted = sum(r.outcome == "accepted" for r in rows)
    out.write(f"\n{len(rows)} samples: {accepted} accepted, {len(rows) - accepted} rejected, {len(wrong)} unexpected\n")
    return 1 if wrong or not rows else 0

"""Handlers for worker tests, importable by a `hub worker` subprocess."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from hub.envelope import Exam, Performer, Report


def read_ecg(exam: Exam) -> Report:
    return Report.answering(
        exam,
        status="final",
        issued_at=datetime.now(UTC),
        conclusion="窦性心律，正常心电图",
        performer=Performer(name="王建华"),
        performer_institution="12330112470101234B",
    )


def slow_read(exam: Exam) -> Report:
    """Marks that it started, then takes HUB_TEST_HANDLER_SECONDS to read."""
    marker = os.environ.get("HUB_TEST_MARKER")
    if marker:
        Path(marker).write_text(exam.exam_id)
    time.sleep(float(os.environ.get("HUB_TEST_HANDLER_SECONDS", "3")))
    return read_ecg(exam)

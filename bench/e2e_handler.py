"""The worker handler bench/e2e.py runs: a final report for every exam, as cheap as a real one gets."""

from __future__ import annotations

from datetime import UTC, datetime

from hub.envelope import Exam, Performer, Report

PERFORMER = Performer(name="检验审核", id="BENCH")


def answer(exam: Exam) -> Report:
    return Report.answering(
        exam,
        status="final",
        issued_at=datetime.now(UTC),
        conclusion="白细胞显著升高，请结合临床",
        observations=exam.observations,
        performer=PERFORMER,
        performer_institution="12330112470101234B",
    )

"""Imaging reader: stands in for a radiologist with a templated report, so the round trip shows.

    hub worker imaging --config examples/consortium.toml --handler examples/workers/imaging.py:read_imaging

A real centre returns None here (the exam is on a radiologist's worklist) and
submits the signed report later with ``hub.publish.submit_report``;
``await_pathologist`` below does exactly that for pathology.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hub.envelope import Exam, Performer, Report

__all__ = ["await_pathologist", "read_imaging"]

LEAD_CENTRE = "12330112470101234B"  # 临安区人民医院影像中心


def read_imaging(exam: Exam) -> Report:
    images = sum(1 for a in exam.attachments if a.media_type == "application/dicom")
    received = f"共接收 {images} 幅图像。" if images else "按申请单登记，待图像到达。"
    service = exam.service.display or exam.service.code
    return Report.answering(
        exam,
        status="final",
        issued_at=datetime.now(UTC),
        findings=f"{service}：{received}（模板所见，示例阅片程序生成）",
        conclusion="未见明显异常（示例模板报告，正式报告以放射科医师签发为准）",
        performer=Performer(name="影像示例阅片", id="RAD-TEMPLATE"),
        performer_institution=LEAD_CENTRE,
    )


def await_pathologist(exam: Exam) -> None:
    """Pathology is read by a person: accept the exam; its report comes later via submit_report."""
    return

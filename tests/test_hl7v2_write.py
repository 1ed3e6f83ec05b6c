"""adapters.hl7v2.write_report: an ORU^R01 v2.5.1 that hl7apy validates and our reader reads back unchanged."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import hl7v2
from adapters._common import CHINA_TZ
from adapters.hl7v2._er7 import DEFAULT_DELIMITERS, unescape
from adapters.hl7v2._writer import control_id
from hub.envelope import Attachment, Coding, Exam, Identifier, Observation, Patient, Performer, Report

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "messages" / "hl7v2"
LEAD = "12330112470101234B"  # 临安区人民医院
ISSUED = datetime(2024, 3, 1, 9, 40, tzinfo=CHINA_TZ)


def cbc_exam() -> Exam:
    (exam,) = hl7v2.read((SAMPLES / "lab-cbc-gb18030.hl7").read_bytes())
    return exam


def cbc_report(**changes: Any) -> Report:
    fields: dict[str, Any] = {
        "findings": "白细胞显著升高，中性粒细胞比例升高\n淋巴细胞比例降低 | 提示细菌感染^可能",
        "conclusion": "危急值：WBC 35.2×10^9/L，已电话通知於潜镇中心卫生院刘建华医生",
        "observations": cbc_exam().observations,
        "performer": Performer(name="陈晓明", id="L0031"),
        "performer_institution": LEAD,
        "issued_at": ISSUED,
        "critical": True,
        "critical_items": ("WBC 35.2×10^9/L",),
        "attachments": (
            Attachment(
                uri="https://lab.linan.example/report?id=7&fmt=pdf", media_type="application/pdf", title="报告单"
            ),
        ),
    }
    return Report.answering(cbc_exam(), status="final", **(fields | changes))


def hl7apy_message(raw: bytes, codec: str) -> Any:
    message = parse_message(raw.decode(codec), validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    return message


def text_of(element: Any) -> str:
    return unescape(element.to_er7(), DEFAULT_DELIMITERS)


def test_the_report_validates_with_hl7apy_and_carries_the_header() -> None:
    report = cbc_report()
    message = hl7apy_message(hl7v2.write_report(report), "utf-8")
    msh = message.msh
    assert msh.msh_4.to_er7() == LEAD
    assert msh.msh_6.to_er7() == "12330112472334561L"
    assert msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msh.msh_10.to_er7() == control_id(report.report_id)
    assert len(control_id(report.report_id)) == 20
    assert msh.msh_12.to_er7() == "2.5.1"
    assert msh.msh_18.to_er7() == "UNICODE UTF-8"


def test_hl7apy_sees_the_patient_order_and_results() -> None:
    message = hl7apy_message(hl7v2.write_report(cbc_report()), "utf-8")
    result = message.oru_r01_patient_result
    pid = result.oru_r01_patient.pid
    assert [r.to_er7() for r in pid.pid_3] == [
        "33011219650312043X^^^&2.16.156.10011.1.3&ISO^NI",
        "YQ0012345^^^YQZX-HIS^MR",
    ]
    assert (pid.pid_5.to_er7(), pid.pid_7.to_er7(), pid.pid_8.to_er7()) == ("张伟", "19650312", "M")
    order = result.oru_r01_order_observation
    assert order.orc.orc_2.to_er7() == order.obr.obr_2.to_er7() == "YQ-LAB-20240301-0007"
    assert order.orc.orc_3.to_er7() == order.obr.obr_3.to_er7() == "LA-LAB-240301-1123"
    assert order.obr.obr_4.to_er7() == "58410-2^血常规^LN"
    assert order.obr.obr_22.to_er7() == "20240301094000+0800"
    assert order.obr.obr_25.to_er7() == "F"
    assert order.obr.obr_32.to_er7() == "L0031&陈晓明"
    observations = order.oru_r01_observation
    codes = [o.obx.obx_3.to_er7().split("^")[0] for o in observations]
    assert codes[:2] == ["FINDINGS", "IMPRESSION"]
    assert codes[-2:] == ["CRITICAL", "ATTACHMENT"]
    findings = observations[0].obx
    assert [text_of(r) for r in findings.obx_5] == [
        "白细胞显著升高，中性粒细胞比例升高",
        "淋巴细胞比例降低 | 提示细菌感染^可能",
    ]
    wbc = observations[2].obx
    assert wbc.obx_2.to_er7() == "NM"
    assert (wbc.obx_5.to_er7(), text_of(wbc.obx_6), wbc.obx_8.to_er7()) == ("35.2", "10^9/L", "HH")
    critical = observations[-2].obx
    assert (text_of(critical.obx_5), critical.obx_8.to_er7()) == ("WBC 35.2×10^9/L", "AA")


def test_our_reader_reads_the_report_back() -> None:
    report = cbc_report()
    (exam,) = hl7v2.read(hl7v2.write_report(report))
    assert exam.patient == report.patient
    assert exam.origin == LEAD  # MSH-4: the report's sender is the lead hospital
    assert (exam.placer_order, exam.accession, exam.centre) == (report.placer_order, report.accession, "lab")
    assert exam.service == report.service
    by_code = {o.code.code: o for o in exam.observations}
    assert by_code["FINDINGS"].value == report.findings
    assert by_code["IMPRESSION"].value == report.conclusion
    assert by_code["CRITICAL"].value == "WBC 35.2×10^9/L"
    assert by_code["CRITICAL"].flag == "AA"
    assert [by_code[o.code.code] for o in report.observations] == list(report.observations)
    assert [(a.uri, a.media_type) for a in exam.attachments] == [
        ("https://lab.linan.example/report?id=7&fmt=pdf", "application/pdf")
    ]


def test_gb18030_output() -> None:
    raw = hl7v2.write_report(cbc_report(), charset="GB18030")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    message = hl7apy_message(raw, "gb18030")
    assert message.msh.msh_18.to_er7() == "GB 18030-2000"
    (exam,) = hl7v2.read(raw)
    assert exam.source.charset == "gb18030"
    assert exam.patient.name == "张伟"


def test_only_utf8_and_gb18030_are_written() -> None:
    with pytest.raises(ValueError, match="UTF-8 or GB 18030"):
        hl7v2.write_report(cbc_report(), charset="latin-1")


@pytest.mark.parametrize(
    ("status", "code"), [("preliminary", "P"), ("final", "F"), ("amended", "C"), ("cancelled", "X")]
)
def test_result_status_in_obr25(status: str, code: str) -> None:
    report = Report.answering(cbc_exam(), status=status, issued_at=ISSUED, conclusion="见报告")
    message = hl7apy_message(hl7v2.write_report(report), "utf-8")
    assert message.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.to_er7() == code


def test_a_sparse_imaging_report() -> None:
    exam = Exam.decode(cbc_exam().encode())
    patient = Patient(local_ids=(Identifier(value="TH00045678", system="urn:oid:1.2.156.112604", type="MR"),))
    report = Report(
        report_id="rp-1",
        exam_id=exam.exam_id,
        origin="123301124745767837",
        centre="imaging",
        status="preliminary",
        patient=patient,
        service=Coding(code="CT-CHEST"),
        accession="LA-CT-240303-0456",
        findings="右下肺见斑片状高密度影。",
        issued_at=datetime(2024, 3, 3, 2, 0, tzinfo=UTC),
        critical=True,
        observations=(Observation(code=Coding(code="NODULE-MM", display="结节直径"), value=None, status="unknown"),),
    )
    raw = hl7v2.write_report(report)
    hl7apy_message(raw, "utf-8")
    (back,) = hl7v2.read(raw, origin="12330112470101234B")
    assert back.centre == "imaging"
    assert back.patient.local_ids == patient.local_ids
    assert back.patient.birth_date is None
    assert back.placer_order is None and back.accession == "LA-CT-240303-0456"
    by_code = {o.code.code: o for o in back.observations}
    assert by_code["CRITICAL"].value == "危急值"
    assert by_code["NODULE-MM"].value is None
    assert by_code["NODULE-MM"].status == "preliminary"  # unknown is written as the report's status


TEXT = st.text(alphabet=st.sampled_from("张伟王秀英检查所见 |^~\\&\r\nABC123.,；（）×μ"), max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(findings=TEXT, conclusion=TEXT, value=st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_text_and_numbers_round_trip(findings: str, conclusion: str, value: float) -> None:
    observation = Observation(code=Coding(code="X|1^2", display="项目&名称"), value=value, unit="10^9/L")
    report = cbc_report(findings=findings, conclusion=conclusion, observations=(observation,))
    raw = hl7v2.write_report(report)
    hl7apy_message(raw, "utf-8")
    (exam,) = hl7v2.read(raw)
    by_code = {o.code.code: o for o in exam.observations}

    def normal(text: str) -> str | None:
        lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        return "\n".join(lines).strip() or None

    assert getattr(by_code.get("FINDINGS"), "value", None) == normal(findings)
    assert getattr(by_code.get("IMPRESSION"), "value", None) == normal(conclusion)
    assert by_code["X|1^2"].value == float(value)
    assert by_code["X|1^2"].code.display == "项目&名称"
    assert by_code["X|1^2"].unit == "10^9/L"


def test_a_birth_date_and_national_id_round_trip() -> None:
    patient = Patient(national_id="330112198302140281", name="赵丽华", sex="female", birth_date=date(1983, 2, 14))
    (exam,) = hl7v2.read(hl7v2.write_report(cbc_report(patient=patient)))
    assert exam.patient == patient


def test_a_patient_without_identifiers_gets_the_exam_id_in_pid3() -> None:
    report = cbc_report(patient=Patient())
    raw = hl7v2.write_report(report)
    pid = hl7apy_message(raw, "utf-8").oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == f"{report.exam_id}^^^CONSORTIUM-HUB^PI"
    (exam,) = hl7v2.read(raw)
    assert (exam.patient.name, exam.patient.sex, exam.patient.national_id) == (None, "unknown", None)

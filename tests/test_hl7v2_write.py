"""adapters.hl7v2.write_report: an ORU^R01 v2.5.1 that hl7apy validates and our reader reads back unchanged.

The default ER7 writer is checked against the hl7apy build (``strict=True``) byte for byte on generated reports.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import MaxLengthReached
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adapters import hl7v2
from adapters._common import CHINA_TZ
from adapters.hl7v2._er7 import DEFAULT_DELIMITERS, escape, unescape
from adapters.hl7v2._oru import control_id
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


def hl7apy_message(raw: bytes, codec: str, level: int = VALIDATION_LEVEL.STRICT) -> Any:
    message = parse_message(raw.decode(codec), validation_level=level)
    message.validate()
    return message


def text_of(element: Any) -> str:
    return unescape(element.to_er7(), DEFAULT_DELIMITERS)


def normal(text: str) -> str | None:
    """Text as the reader gives back a TX value: line breaks as LF, each line and the whole stripped."""
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip() or None


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


# Generated reports for checking the ER7 writer against the hl7apy build. Values stay within what hl7apy's
# strict mode accepts (ST and every OBX-5 line 199 characters, IS 20): beyond that only the ER7 writer writes.
# Line breaks are in the texts written one line per repetition; inside a single value, see the test below.
GB18030_ONLY = "𠀀𪚥䶮"  # CJK extensions B and A: in GB 18030, not in GBK
WORDS = ("张伟", "王秀英", "检查所见", "右下肺", "×10^9/L", "；", "μmol", *GB18030_ONLY, "ABC", "123", ".")
DELIMITERS = ("|", "^", "~", "\\", "&", "\\F\\", "\\.br\\", "\\X0D\\")
LINE_BREAKS = ("\r", "\n", "\r\n")


def words(*extra: str, max_size: int = 8) -> st.SearchStrategy[str]:
    """Text without line breaks or surrounding blanks, as a reader gives back a single value."""
    parts = st.lists(st.sampled_from((*WORDS, *DELIMITERS, " ", *extra)), min_size=1, max_size=max_size)
    return parts.map("".join).map(str.strip).filter(bool)


PROSE = st.lists(st.sampled_from((*WORDS, *DELIMITERS, *LINE_BREAKS, " ")), max_size=30).map("".join)
SHORT = words(max_size=4).filter(lambda text: len(escape(text)) <= 20)  # fits an IS
WHEN = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2035, 12, 31),
    timezones=st.sampled_from([CHINA_TZ, UTC, timezone(timedelta(hours=-5))]),
).map(lambda moment: moment.replace(microsecond=0))
NATIONAL_IDS = ("33011219650312043X", "330112198302140281")
ORIGINS = ("12330112472334561L", "YQZX", "Y|Q^Z&X")
SYSTEMS = (None, "http://loinc.org", "urn:oid:2.16.156.10011.2.3.2", "L", "99LIS")
ID_SYSTEMS = (None, "urn:oid:1.2.156.112604", "http://his.example/mrn")
MEDIA_TYPES = ("application/pdf", "image/jpeg", "image/png", "text/plain", "audio/wav")
FLAGS = ("L", "H", "LL", "HH", "N", "A", "AA")
UNITS = ("10^9/L", "g/L", "%", "μmol/L", "×10^12/L", "mmHg")
RANGES = ("3.5-9.5", "<5", "阴性", "0^1", "10-20 | 儿童 5-15")
NON_FINITE = (float("nan"), float("inf"), float("-inf"))

codings = st.builds(
    Coding,
    code=words(max_size=4),
    display=st.none() | words(),
    system=st.sampled_from(SYSTEMS),
)
identifiers = st.builds(
    Identifier,
    value=words("0123456789", max_size=5),
    system=st.sampled_from(ID_SYSTEMS) | SHORT,
    type=st.sampled_from((None, "MR", "PI", "PN", "门诊号")),
)
patients = st.builds(
    Patient,
    national_id=st.none() | st.sampled_from(NATIONAL_IDS),
    local_ids=st.lists(identifiers, max_size=2).map(tuple),
    name=st.none() | words(max_size=4),
    sex=st.sampled_from(["male", "female", "other", "unknown"]),
    birth_date=st.none() | st.dates(min_value=date(1900, 1, 1), max_value=date(2024, 12, 31)),
)
observations = st.builds(
    Observation,
    code=codings,
    value=st.none()
    | st.floats(min_value=-1e6, max_value=1e6).map(lambda number: round(number, 4))
    | st.sampled_from(NON_FINITE)
    | words()
    | PROSE,
    unit=st.none() | st.sampled_from(UNITS),
    reference_range=st.none() | st.sampled_from(RANGES),
    flag=st.none() | st.sampled_from(FLAGS),
    status=st.sampled_from(
        ["registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"]
    ),
    observed_at=st.none() | WHEN,
)
attachments = st.builds(
    Attachment,
    uri=st.sampled_from(("https://lab.example/r?id=7&fmt=pdf", "urn:sha256:" + "ab" * 32, "ftp://pacs/一|二")),
    media_type=st.sampled_from(MEDIA_TYPES),
    title=st.none() | words(),
)


@st.composite
def reports(draw: st.DrawFn) -> Report:
    critical = draw(st.booleans())
    return Report(
        report_id=draw(words(max_size=3)),
        exam_id=draw(words(max_size=3)),
        origin=draw(st.sampled_from(ORIGINS)),
        centre=draw(st.sampled_from(["imaging", "ecg", "lab", "pathology"])),
        status=draw(st.sampled_from(["preliminary", "final", "amended", "cancelled"])),
        patient=draw(patients),
        service=draw(codings),
        placer_order=draw(st.none() | words(max_size=4)),
        accession=draw(st.none() | words(max_size=4)),
        findings=draw(st.none() | PROSE),
        conclusion=draw(st.none() | PROSE),
        observations=tuple(draw(st.lists(observations, max_size=4))),
        attachments=tuple(draw(st.lists(attachments, max_size=2))),
        performer=draw(st.none() | st.builds(Performer, name=words(max_size=3), id=st.none() | SHORT)),
        performer_institution=draw(st.none() | st.sampled_from(ORIGINS)),
        issued_at=draw(WHEN),
        critical=critical,
        critical_items=tuple(draw(st.lists(words(), max_size=2))) if critical else (),
    )


CHARSETS = st.sampled_from(["utf-8", "GB18030", "GBK"])
CODECS = {"utf-8": "utf-8", "GB18030": "gb18030", "GBK": "gb18030"}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report=reports(), charset=CHARSETS)
def test_the_er7_writer_writes_what_hl7apy_builds(report: Report, charset: str) -> None:
    fast = hl7v2.write_report(report, charset=charset)
    reference = hl7v2.write_report(report, charset=charset, strict=True)
    # Segment by segment first, so a failure shows the segment that differs.
    assert fast.split(b"\r") == reference.split(b"\r")
    assert fast == reference
    message = hl7apy_message(fast, CODECS[charset])
    assert message.msh.msh_10.to_er7() == control_id(report.report_id)


# OBX-11 holds no "amended"; an observation with status unknown is sent with the report's status.
READ_BACK_STATUS = {"amended": "corrected"}


def expected_value(value: float | str | None) -> float | str | None:
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return None if value is None else normal(value)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report=reports(), charset=CHARSETS)
def test_generated_reports_read_back(report: Report, charset: str) -> None:
    assume(report.placer_order or report.accession)  # the reader needs an order number
    raw = hl7v2.write_report(report, charset=charset)
    (exam,) = hl7v2.read(raw, origin=None if report.performer_institution else "12330112470101234B")
    assert exam.source.charset == CODECS[charset]
    assert exam.origin == (report.performer_institution or "12330112470101234B")
    assert (exam.placer_order, exam.accession, exam.centre) == (report.placer_order, report.accession, report.centre)
    assert exam.service == report.service
    if report.patient.national_id or report.patient.local_ids:
        assert exam.patient == report.patient
    else:
        assert exam.patient.local_ids == (Identifier(value=report.exam_id, system="CONSORTIUM-HUB", type="PI"),)

    texts = [(code, text) for code, text in (("FINDINGS", report.findings), ("IMPRESSION", report.conclusion)) if text]
    back = list(exam.observations)
    assert [(o.code.code, o.value) for o in back[: len(texts)]] == [(code, normal(text)) for code, text in texts]
    measured = back[len(texts) : len(texts) + len(report.observations)]
    report_status = READ_BACK_STATUS.get(report.status, report.status)
    for got, sent in zip(measured, report.observations, strict=True):
        assert got.code == sent.code
        assert got.value == expected_value(sent.value)
        assert (got.unit, got.reference_range, got.flag) == (sent.unit, sent.reference_range, sent.flag)
        status = report_status if sent.status == "unknown" else READ_BACK_STATUS.get(sent.status, sent.status)
        assert got.status == status
        assert got.observed_at == sent.observed_at
    critical = back[len(texts) + len(report.observations) :]
    if report.critical:
        items = list(report.critical_items) or ["危急值"]
        assert [(o.code.code, o.value, o.flag) for o in critical] == [("CRITICAL", item, "AA") for item in items]
    else:
        assert critical == []
    assert [(a.uri, a.media_type, a.title) for a in exam.attachments] == [
        (a.uri, a.media_type, a.title or "附件") for a in report.attachments
    ]


def test_strict_mode_builds_the_same_message_with_hl7apy() -> None:
    report = cbc_report(patient=cbc_report().patient.model_copy(update={"name": "张𠀀"}))
    for charset in ("utf-8", "GB18030"):
        assert hl7v2.write_report(report, charset=charset, strict=True) == hl7v2.write_report(report, charset=charset)
    raw = hl7v2.write_report(report, charset="GB18030")
    with pytest.raises(UnicodeEncodeError):
        "𠀀".encode("gbk")
    assert raw.decode("gb18030").split("\r")[1].split("|")[5] == "张𠀀"


def test_one_instant_in_two_offsets_keeps_each_offset() -> None:
    moment = datetime(2024, 3, 1, 9, 15, tzinfo=CHINA_TZ)
    values = [Observation(code=Coding(code=code), value=1.0, observed_at=moment) for code in ("A", "B")]
    values[1] = values[1].model_copy(update={"observed_at": moment.astimezone(UTC)})
    report = cbc_report(observations=tuple(values))
    raw = hl7v2.write_report(report)
    assert raw == hl7v2.write_report(report, strict=True)
    assert b"|20240301091500+0800\r" in raw and b"|20240301011500+0000\r" in raw


def test_a_long_paragraph_is_written_where_hl7apy_refuses_it() -> None:
    # hl7apy caps each OBX-5 value at 199 characters whatever OBX-2 says (HL7 2.5.1 allows 65536 for a TX).
    paragraph = "双肺纹理增多，右下肺见斑片状高密度影，边界模糊，" * 12
    item = "肌钙蛋白I 12.5 ng/mL，" * 12
    report = cbc_report(findings=paragraph + "\n心影不大。", critical_items=(item,))
    assert len(paragraph) > 199 and len(item) > 199
    with pytest.raises(MaxLengthReached):
        hl7v2.write_report(report, strict=True)
    raw = hl7v2.write_report(report)
    hl7apy_message(raw, "utf-8", VALIDATION_LEVEL.TOLERANT)  # the structure still validates
    (exam,) = hl7v2.read(raw)
    by_code = {o.code.code: o for o in exam.observations}
    assert by_code["FINDINGS"].value == paragraph + "\n心影不大。"
    assert by_code["CRITICAL"].value == item.strip()


def test_a_line_break_inside_one_value_is_sent_as_a_line_break() -> None:
    wbc = Observation(code=Coding(code="6690-2"), value=35.2, reference_range="男 3.5-9.5\r\n儿童 5-12")
    report = cbc_report(observations=(wbc,), critical_items=("WBC 35.2\n已电话通知",))
    raw = hl7v2.write_report(report)
    hl7apy_message(raw, "utf-8")
    assert b"|\xe7\x94\xb7 3.5-9.5\\.br\\\xe5\x84\xbf\xe7\xab\xa5 5-12|" in raw
    (exam,) = hl7v2.read(raw)
    by_code = {o.code.code: o for o in exam.observations}
    assert by_code["6690-2"].reference_range == "男 3.5-9.5\n儿童 5-12"
    assert by_code["CRITICAL"].value == "WBC 35.2\n已电话通知"
    # hl7apy escapes the escape character of \.br\ once more (it keeps only \H\ \N\ \F\ \S\ \T\ \R\ \E\),
    # so a member would read the letters "\.br\"; that is the one place the two writers differ.
    strict = hl7v2.write_report(report, strict=True)
    assert strict.replace(b"\\E\\.br\\E\\", b"\\.br\\") == raw
    (mangled,) = hl7v2.read(strict)
    assert {o.code.code: o.value for o in mangled.observations}["CRITICAL"] == "WBC 35.2\\.br\\已电话通知"


def test_strict_mode_refuses_a_charset_too() -> None:
    with pytest.raises(ValueError, match="UTF-8 or GB 18030"):
        hl7v2.write_report(cbc_report(), charset="big5", strict=True)

"""adapters.hl7v2.read: PID onto Patient, OBX onto Observation and Attachment."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, date, datetime

import pytest

from adapters import hl7v2
from adapters._common import RESIDENT_ID_SYSTEM
from hub.envelope import Exam
from hub.errors import InvalidMessage

HEADER = (
    "MSH|^~\\&|LIS|12330112473455672X|CONSORTIUM-HUB|12330112470101234B|20240302101800+0800||ORU^R01^ORU_R01"
    "|MSG0002|P|2.5.1|||AL|NE|CHN|UNICODE UTF-8"
)
LI_JIANGUO_ID = "330112195211080814"
BAD_CHECK_DIGIT = "330112195211080815"
ORC = "ORC|RE|CH-ECG-0001"
OBR = "OBR|1|CH-ECG-0001||11524-6^十二导联心电图^LN|||20240302101500+0800|||||||||||||||||EC|F"
PID = f"PID|1||{LI_JIANGUO_ID}^^^^NI||李建国||19521108|M"


def read_one(*segments: str) -> Exam:
    raw = "\r".join([HEADER, *segments]).encode() + b"\r"
    (exam,) = hl7v2.read(raw)
    return exam


def with_pid(pid: str) -> Exam:
    return read_one(pid, ORC, OBR)


def with_obx(*obx: str) -> Exam:
    return read_one(PID, ORC, OBR, *obx)


# --- patient ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cx",
    [
        f"{LI_JIANGUO_ID}^^^^NI",
        f"{LI_JIANGUO_ID}^^^^ID",
        f"{LI_JIANGUO_ID}^^^^身份证",
        f"{LI_JIANGUO_ID}^^^&2.16.156.10011.1.3&ISO",
        f"{LI_JIANGUO_ID}^^^2.16.156.10011.1.3",
        f"{LI_JIANGUO_ID}^^^&urn:oid:2.16.156.10011.1.3&URI",
    ],
)
def test_a_cx_labelled_as_resident_id_becomes_the_national_id(cx: str) -> None:
    exam = with_pid(f"PID|1||CH0088231^^^CH-HIS^MR~{cx}||李建国||19521108|M")
    assert exam.patient.national_id == LI_JIANGUO_ID
    assert [(i.value, i.system, i.type) for i in exam.patient.local_ids] == [("CH0088231", "CH-HIS", "MR")]
    assert exam.notices == ()


def test_an_unlabelled_number_stays_a_local_id_even_when_it_is_a_valid_resident_id() -> None:
    exam = with_pid(f"PID|1||{LI_JIANGUO_ID}^^^CH-HIS^MR||李建国")
    assert exam.patient.national_id is None
    assert [i.value for i in exam.patient.local_ids] == [LI_JIANGUO_ID]


def test_pid19_holds_the_resident_id_in_many_chinese_his() -> None:
    exam = with_pid(f"PID|1||CH0088231^^^CH-HIS^MR||李建国||19521108|M|||||||||||{LI_JIANGUO_ID}")
    assert exam.patient.national_id == LI_JIANGUO_ID
    assert [i.value for i in exam.patient.local_ids] == ["CH0088231"]


def test_a_resident_id_failing_the_check_digit_is_kept_as_a_local_id_with_a_notice() -> None:
    exam = with_pid(f"PID|1||CH0088231^^^CH-HIS^MR~{BAD_CHECK_DIGIT}^^^&2.16.156.10011.1.3&ISO^NI||李建国")
    assert exam.patient.national_id is None
    assert [(i.value, i.system, i.type) for i in exam.patient.local_ids] == [
        ("CH0088231", "CH-HIS", "MR"),
        (BAD_CHECK_DIGIT, RESIDENT_ID_SYSTEM, "NI"),
    ]
    assert [n.location for n in exam.notices] == ["PID-3[2]"]
    assert "GB 11643" in exam.notices[0].message
    assert BAD_CHECK_DIGIT not in exam.notices[0].message  # no ID numbers in messages that may be logged


def test_the_same_number_in_pid3_and_pid19_is_one_identifier() -> None:
    exam = with_pid(f"PID|1||{BAD_CHECK_DIGIT}^^^^NI||李建国|||||||||||||{BAD_CHECK_DIGIT}")
    assert [i.value for i in exam.patient.local_ids] == [BAD_CHECK_DIGIT]
    assert len(exam.notices) == 1


@pytest.mark.parametrize(
    ("xpn", "name"),
    [
        ("李建国", "李建国"),
        ("欧阳^娜娜", "欧阳娜娜"),
        ("LI^JIANGUO", "LI JIANGUO"),
        ("EVERYMAN&&&&Aniston^ADAM^A^III^Dr.", "EVERYMAN ADAM"),
        ("^建国", "建国"),
        ("张伟~ZHANG^WEI", "张伟"),
        ("", None),
    ],
)
def test_names(xpn: str, name: str | None) -> None:
    assert with_pid(f"PID|1||CH0088231^^^CH-HIS^MR||{xpn}").patient.name == name


@pytest.mark.parametrize(
    ("code", "sex"),
    [("M", "male"), ("F", "female"), ("O", "other"), ("U", "unknown"), ("1", "male"), ("2", "female"),
     ("男", "male"), ("女", "female"), ("", "unknown"), ("X", "unknown")],
)  # fmt: skip
def test_sex(code: str, sex: str) -> None:
    assert with_pid(f"PID|1||CH0088231^^^CH-HIS^MR||李建国||19521108|{code}").patient.sex == sex


def test_birth_dates() -> None:
    assert with_pid("PID|1||C1^^^H^MR||李建国||195211081230+0800").patient.birth_date == date(1952, 11, 8)
    partial = with_pid("PID|1||C1^^^H^MR||李建国||1952")
    assert partial.patient.birth_date is None
    assert [n.location for n in partial.notices] == ["PID-7"]
    with pytest.raises(InvalidMessage) as caught:
        with_pid("PID|1||C1^^^H^MR||李建国||1952-11-08")
    assert caught.value.location == "PID-7"


# --- observations ------------------------------------------------------------------------------------


def test_a_numeric_result_with_unit_range_flag_status_and_time() -> None:
    (obs,) = with_obx("OBX|1|NM|8867-4^心率^LN||102|/min^次/分^UCUM|60-100|H|||F|||20240302101500+0800").observations
    assert (obs.code.code, obs.code.display, obs.code.system) == ("8867-4", "心率", "http://loinc.org")
    assert (obs.value, obs.unit, obs.reference_range, obs.flag, obs.status) == (102.0, "/min", "60-100", "H", "final")
    assert obs.observed_at == datetime(2024, 3, 2, 2, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value_type", "value", "expected"),
    [
        ("NM", "-1.25", -1.25),
        ("NM", " 7 ", 7.0),
        ("SN", "=^1.8", 1.8),
        ("SN", "^42", 42.0),
        ("SN", "<^5", "<5"),
        ("SN", "^1^:^128", "1:128"),
        ("SN", "^10^-^20", "10-20"),
        ("ST", "阴性", "阴性"),
        ("TX", "窦性心律~正常心电图", "窦性心律\n正常心电图"),
        ("FT", r"第一行\.br\第二行", "第一行\n第二行"),
        ("CE", "NEG^阴性^L", "阴性"),
        ("CWE", "27268008^^SCT^^^^^^沙门菌属", "沙门菌属"),
        ("CWE", "NEG", "NEG"),
        ("CWE", "POS^阳性^L~A^A型^L", "阳性; A型"),
        ("DT", "20240302", "20240302"),
        ("", "未分类", "未分类"),
        ("NM", "", None),
    ],
)
def test_values_by_type(value_type: str, value: str, expected: float | str | None) -> None:
    (obs,) = with_obx(f"OBX|1|{value_type}|X-1^项目^L||{value}||||||F").observations
    assert obs.value == expected


def test_a_non_numeric_nm_is_kept_as_text_with_a_notice() -> None:
    exam = with_obx("OBX|1|NM|X-1^项目^L||<0.1||||||F", "OBX|2|NM|X-2^项目^L||1e400||||||F")
    assert [o.value for o in exam.observations] == ["<0.1", "1e400"]
    assert [n.location for n in exam.notices] == ["OBX-5", "OBX[2]-5"]


@pytest.mark.parametrize(
    ("code", "status"),
    [("F", "final"), ("P", "preliminary"), ("C", "corrected"), ("X", "cancelled"), ("R", "registered"),
     ("I", "registered"), ("D", "entered-in-error"), ("W", "entered-in-error"), ("S", "unknown"), ("", "unknown")],
)  # fmt: skip
def test_result_status(code: str, status: str) -> None:
    (obs,) = with_obx(f"OBX|1|NM|X-1^项目^L||1||||||{code}").observations
    assert obs.status == status


def test_an_observation_needs_an_identifier() -> None:
    with pytest.raises(InvalidMessage) as caught:
        with_obx("OBX|1|NM|X-1^项目^L||1||||||F", "OBX|2|NM|^无代码||2||||||F")
    assert caught.value.location == "OBX[2]-3"


def test_a_malformed_observation_time_is_invalid_there() -> None:
    with pytest.raises(InvalidMessage) as caught:
        with_obx("OBX|1|NM|X-1^项目^L||1||||||F|||2024-03-02")
    assert caught.value.location == "OBX-14"


# --- attachments -------------------------------------------------------------------------------------

PDF = b"%PDF-1.4\n% 12-lead resting ECG\n%%EOF\n"


def test_an_encapsulated_pdf_is_an_attachment_pointing_into_the_message() -> None:
    encoded = base64.b64encode(PDF).decode()
    raw = "\r".join(
        [
            HEADER,
            PID,
            ORC,
            OBR,
            "OBX|1|NM|8867-4^心率^LN||72",
            f"OBX|2|ED|ECG-PDF^心电图报告单^L||^AP^PDF^Base64^{encoded}",
        ]
    )
    (exam,) = hl7v2.read(raw.encode())
    assert len(exam.observations) == 1
    (attachment,) = exam.attachments
    assert attachment.uri == "#OBX[2]-5"  # inside the source message
    assert attachment.media_type == "application/pdf"
    assert attachment.size == len(PDF)
    assert attachment.sha256 == hashlib.sha256(PDF).hexdigest()
    assert attachment.title == "心电图报告单"
    assert encoded not in exam.encode().decode()  # the payload is never inline


def test_hex_and_unknown_ed_encodings() -> None:
    exam = with_obx(f"OBX|1|ED|IMG^图像^L||^IM^JPEG^Hex^{PDF.hex()}", "OBX|2|ED|IMG^图像^L||^image^tiff^X-CUSTOM^abc")
    hexed, custom = exam.attachments
    assert (hexed.media_type, hexed.size) == ("image/jpeg", len(PDF))
    assert (custom.media_type, custom.size, custom.sha256) == ("image/tiff", None, None)


def test_bad_base64_is_invalid_at_obx5() -> None:
    with pytest.raises(InvalidMessage) as caught:
        with_obx("OBX|1|ED|ECG-PDF^心电图报告单^L||^AP^PDF^Base64^@@not base64@@")
    assert caught.value.location == "OBX-5"
    with pytest.raises(InvalidMessage) as caught:
        with_obx("OBX|1|ED|ECG-PDF^心电图报告单^L||only^three^parts")
    assert caught.value.location == "OBX-5"


def test_a_reference_pointer_is_an_attachment_with_its_uri() -> None:
    pointer = r"https://pacs.linan.example/wado?studyUID=1.2.156.1\T\contentType=application/pdf"
    (attachment,) = with_obx(f"OBX|1|RP|RPT^报告^L||{pointer}^PACS^AP^PDF").attachments
    assert attachment.uri == "https://pacs.linan.example/wado?studyUID=1.2.156.1&contentType=application/pdf"
    assert attachment.media_type == "application/pdf"
    assert with_obx("OBX|1|RP|RPT^报告^L||").attachments == ()

"""adapters.hl7v2.read: decoding, framing, delimiters, message types, order groups and the errors it raises."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import adapters.hl7v2
from adapters import hl7v2
from hub.errors import AdapterError, DecodeError, InvalidMessage, UnsupportedMessage
from hub.ids import derive_exam_id

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "messages" / "hl7v2"
YUQIAN = "12330112472334561L"  # 於潜镇中心卫生院
ZHANG_WEI_ID = "33011219650312043X"


def msh(charset: str = "UNICODE UTF-8", message_type: str = "ORU^R01^ORU_R01", sender: str = YUQIAN) -> str:
    return (
        f"MSH|^~\\&|LIS|{sender}|CONSORTIUM-HUB|12330112470101234B|20240301092000+0800||{message_type}"
        f"|MSG0001|P|2.5.1|||AL|NE|CHN|{charset}"
    )


PID = f"PID|1||{ZHANG_WEI_ID}^^^&2.16.156.10011.1.3&ISO^NI~YQ0012345^^^YQZX-HIS^MR||张伟||19650312|M"
ORC = "ORC|RE|YQ-LAB-0001|LA-LAB-0001"
OBR = "OBR|1|YQ-LAB-0001|LA-LAB-0001|2345-7^葡萄糖^LN|||20240301083000+0800|||||||||||||||||CH|F"
OBX = "OBX|1|NM|2345-7^葡萄糖^LN||5.6|mmol/L|3.9-6.1|N|||F|||20240301091500"


def message(*segments: str, header: str | None = None, sep: str = "\r", codec: str = "utf-8") -> bytes:
    return sep.join([header or msh(), *segments]).encode(codec) + sep.encode()


def test_public_api_is_read_write_report_ack_and_the_peeks() -> None:
    assert sorted(adapters.hl7v2.__all__) == ["Ack", "ack", "control_id", "read", "read_ack", "sender", "write_report"]
    assert all(callable(getattr(adapters.hl7v2, name)) for name in adapters.hl7v2.__all__)


def test_a_minimal_oru_gives_one_lab_exam() -> None:
    received = datetime(2024, 3, 1, 1, 30, tzinfo=UTC)
    (exam,) = hl7v2.read(message(PID, ORC, OBR, OBX), received_at=received)
    assert exam.centre == "lab"
    assert exam.origin == YUQIAN
    assert exam.exam_id == derive_exam_id(YUQIAN, placer_order="YQ-LAB-0001")
    assert exam.patient.national_id == ZHANG_WEI_ID
    assert exam.source.received_at == received
    assert exam.source.message_id == "MSG0001"
    assert exam.observations[0].value == 5.6
    # OBX-14 has no offset: China time.
    assert exam.observations[0].observed_at == datetime(2024, 3, 1, 1, 15, tzinfo=UTC)


def test_received_at_defaults_to_now_and_must_be_aware() -> None:
    before = datetime.now(UTC)
    (exam,) = hl7v2.read(message(PID, ORC, OBR))
    assert before <= exam.source.received_at <= datetime.now(UTC)
    with pytest.raises(TypeError):
        hl7v2.read(message(PID, ORC, OBR), received_at=datetime(2024, 3, 1))


# --- character sets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "codec"),
    [
        ("UNICODE UTF-8", "utf-8"),
        ("UTF-8", "utf-8"),
        ("GB 18030-2000", "gb18030"),
        ("GB18030", "gb18030"),
        ("GBK", "gb18030"),
        ("gb2312", "gb18030"),
    ],
)
def test_msh18_picks_the_codec(declared: str, codec: str) -> None:
    raw = message(PID, ORC, OBR, header=msh(declared), codec=codec)
    (exam,) = hl7v2.read(raw)
    assert exam.source.charset == codec
    assert exam.patient.name == "张伟"
    assert exam.service.display == "葡萄糖"


def test_latin1_and_ascii_are_read() -> None:
    pid = "PID|1||MRN1^^^HIS^MR||Müller^Zoë||19650312|F"
    obr = OBR.replace("葡萄糖", "Glucose")
    (exam,) = hl7v2.read(message(pid, ORC, obr, header=msh("8859/1"), codec="latin-1"))
    assert (exam.source.charset, exam.patient.name) == ("iso8859-1", "Müller Zoë")
    (exam,) = hl7v2.read(message(pid.replace("ü", "u").replace("ë", "e"), ORC, obr, header=msh("ASCII")))
    assert exam.source.charset == "ascii"


def test_the_senders_charset_is_the_fallback_when_msh18_is_empty() -> None:
    raw = message(PID, ORC, OBR, header=msh(""), codec="gb18030")
    with pytest.raises(DecodeError) as caught:
        hl7v2.read(raw)  # UTF-8 by default
    assert caught.value.location == "PID"
    assert "utf-8" in caught.value.message
    (exam,) = hl7v2.read(raw, charset="GBK")
    assert exam.patient.name == "张伟"
    assert exam.source.charset == "gb18030"


def test_msh18_wins_over_the_fallback() -> None:
    raw = message(PID, ORC, OBR, header=msh("UNICODE UTF-8"))
    (exam,) = hl7v2.read(raw, charset="GB18030")
    assert exam.patient.name == "张伟"


def test_an_unknown_charset_is_a_decode_error_at_msh18() -> None:
    with pytest.raises(DecodeError) as caught:
        hl7v2.read(message(PID, ORC, OBR, header=msh("KOI8-R")))
    assert caught.value.location == "MSH-18"
    with pytest.raises(DecodeError) as caught:
        hl7v2.read(message(PID, ORC, OBR, header=msh("")), charset="no-such-charset")
    assert caught.value.location == "MSH-18"


def test_gb18030_bytes_that_look_like_delimiters_stay_inside_their_characters() -> None:
    # 東 and 瑋 end in byte 0x7C ("|") or 0x5C ("\\") in GB 18030; a byte-level split would break them.
    assert {"東".encode("gb18030")[1], "瑋".encode("gb18030")[1]} <= {0x7C, 0x5C}
    header = msh("GB 18030-2000").replace("|LIS|", "|東華LIS|")
    pid = PID.replace("张伟", "張瑋")
    (exam,) = hl7v2.read(message(pid, ORC, OBR, header=header, codec="gb18030"))
    assert exam.patient.name == "張瑋"
    assert exam.source.charset == "gb18030"


def test_an_undecodable_byte_names_the_charset_and_the_segment() -> None:
    raw = message(PID, ORC, OBR, OBX, OBX.replace("OBX|1", "OBX|2"), header=msh("GBK"), codec="gb18030")
    broken = raw.replace(b"OBX|2|NM", b"OBX|2|\xff\xfe")
    with pytest.raises(DecodeError) as caught:
        hl7v2.read(broken)
    assert caught.value.location == "OBX[2]"
    assert "gb18030" in caught.value.message and "GBK" in caught.value.message


# --- framing and delimiters -------------------------------------------------------------------------


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_separators(sep: str) -> None:
    (exam,) = hl7v2.read(message(PID, ORC, OBR, OBX, sep=sep))
    assert exam.observations[0].value == 5.6


def test_a_utf8_bom_and_leading_blank_lines_are_skipped() -> None:
    (exam,) = hl7v2.read(b"\xef\xbb\xbf\r\n" + message(PID, ORC, OBR, header=msh(""), sep="\n"))
    assert exam.patient.name == "张伟"
    assert exam.source.charset == "utf-8"


def test_a_bare_line_feed_inside_a_text_field_is_kept_as_a_line_break() -> None:
    obx = "OBX|1|TX|COMMENT^备注^L||标本轻度溶血\n建议复查||||||F"
    (exam,) = hl7v2.read(message(PID, ORC, OBR, obx))
    assert exam.observations[0].value == "标本轻度溶血\n建议复查"


def test_a_line_that_is_not_a_segment_after_a_carriage_return_is_an_error() -> None:
    with pytest.raises(DecodeError) as caught:
        hl7v2.read(message(PID, "这不是一个段", ORC, OBR))
    assert caught.value.location == "segment 3"


@pytest.mark.parametrize("delimiters", ["|~^\\&", "$^~\\&", "#@*!%", "|^~\\&#"])
def test_custom_encoding_characters(delimiters: str) -> None:
    field, component, repetition, esc, sub = delimiters[:5]
    standard = {"|": field, "^": component, "~": repetition, "\\": esc, "&": sub}
    text = message(PID, ORC, OBR, OBX.replace("5.6", "5.6"), "OBX|2|ST|C^备注^L||A\\F\\B\\S\\C\\E\\D").decode()
    body = text[len("MSH|^~\\&") :]
    translated = "MSH" + field + delimiters[1:] + "".join(standard.get(c, c) for c in body)
    (exam,) = hl7v2.read(translated.encode())
    assert exam.patient.national_id == ZHANG_WEI_ID
    assert [i.system for i in exam.patient.local_ids] == ["YQZX-HIS"]
    assert exam.observations[0].value == 5.6
    assert exam.observations[1].value == f"A{field}B{component}C{esc}D"


@pytest.mark.parametrize(
    ("header", "location"),
    [
        (b"", "MSH"),
        (b"MSH|^~", "MSH"),
        (b"PID|1||x", "MSH"),
        (b"MSH|^^\\&|LIS|A", "MSH-2"),
        (b"MSH|^~|LIS|A|B|C|D", "MSH-2"),
        (b"MSHA^~\\&ALIS", "MSH-2"),
    ],
)
def test_a_missing_or_garbled_msh_is_a_decode_error(header: bytes, location: str) -> None:
    with pytest.raises(DecodeError) as caught:
        hl7v2.read(header)
    assert caught.value.location == location


def test_escape_sequences_in_text() -> None:
    text = r"a\F\b\S\c\T\d\R\e\E\f\X4142\g\.br\h\H\i\N\j\Zlocal\k\Q\l"
    (exam,) = hl7v2.read(message(PID, ORC, OBR, f"OBX|1|ST|C^备注^L||{text}"))
    assert exam.observations[0].value == "a|b^c&d~e\\fABg\nhijk\\Q\\l"


def test_hex_escapes_decode_in_the_message_charset() -> None:
    hex_gb = "张伟".encode("gb18030").hex().upper()
    raw = message(PID, ORC, OBR, f"OBX|1|ST|C^备注^L||\\X{hex_gb}\\", header=msh("GB18030"), codec="gb18030")
    (exam,) = hl7v2.read(raw)
    assert exam.observations[0].value == "张伟"


# --- message types and order groups ---------------------------------------------------------------


@pytest.mark.parametrize("message_type", ["ORU^R01", "ORM^O01", "OML^O21^OML_O21", "OMG^O19^OMG_O19"])
def test_supported_message_types(message_type: str) -> None:
    assert len(hl7v2.read(message(PID, ORC, OBR, header=msh(message_type=message_type)))) == 1


@pytest.mark.parametrize("message_type", ["ADT^A01^ADT_A01", "OUL^R22", "ORU^R30", "ACK^R01", "ORU", ""])
def test_other_message_types_are_unsupported_at_msh9(message_type: str) -> None:
    with pytest.raises(UnsupportedMessage) as caught:
        hl7v2.read(message(PID, ORC, OBR, header=msh(message_type=message_type)))
    assert caught.value.location == "MSH-9"


def test_a_batch_of_two_messages_is_unsupported() -> None:
    with pytest.raises(UnsupportedMessage) as caught:
        hl7v2.read(message(PID, ORC, OBR, msh(), PID, ORC, OBR))
    assert caught.value.location == "MSH[2]"


def test_each_order_group_is_an_exam_and_keeps_its_own_results() -> None:
    second_obr = "OBR|2|YQ-LAB-0002||2093-3^总胆固醇^LN||||||||||||||||||||CH"
    raw = message(PID, ORC, OBR, OBX, "NTE|1||空腹", second_obr, OBX.replace("5.6", "4.8"), "SPM|1")
    first, second = hl7v2.read(raw)
    assert (first.placer_order, first.accession, first.observations[0].value) == ("YQ-LAB-0001", "LA-LAB-0001", 5.6)
    assert (second.placer_order, second.accession, second.observations[0].value) == ("YQ-LAB-0002", None, 4.8)
    assert first.exam_id != second.exam_id


def test_an_orc_without_obr_is_not_an_exam_but_a_notice() -> None:
    exams = hl7v2.read(message(PID, "ORC|CA|YQ-LAB-0009", ORC, OBR))
    assert [e.placer_order for e in exams] == ["YQ-LAB-0001"]
    assert [n.location for n in exams[0].notices] == ["ORC"]


def test_results_before_any_order_are_not_read() -> None:
    (exam,) = hl7v2.read(message(PID, OBX, ORC, OBR))
    assert exam.observations == ()


def test_each_order_belongs_to_the_patient_before_it() -> None:
    wang = "PID|1||330112197805240626^^^^NI||王秀英||19780524|F"
    first, second = hl7v2.read(message(PID, ORC, OBR, wang, ORC.replace("0001", "0002"), OBR))
    assert (first.patient.name, second.patient.name) == ("张伟", "王秀英")


def test_a_message_without_pid_is_invalid_at_pid() -> None:
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(message(ORC, OBR, OBX))
    assert caught.value.location == "PID"
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(message(ORC, OBR, PID))
    assert caught.value.location == "PID"


def test_a_message_without_obr_is_invalid_at_obr() -> None:
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(message(PID, ORC))
    assert caught.value.location == "OBR"


# --- origin, centre, order numbers, priority --------------------------------------------------------


def test_origin_parameter_overrides_msh4() -> None:
    (exam,) = hl7v2.read(message(PID, ORC, OBR), origin="12330112473455672X")
    assert exam.origin == "12330112473455672X"
    assert exam.exam_id == derive_exam_id("12330112473455672X", placer_order="YQ-LAB-0001")


def test_origin_falls_back_to_the_universal_id_of_msh4() -> None:
    (exam,) = hl7v2.read(message(PID, ORC, OBR, header=msh(sender="^12330112473455672X^L")))
    assert exam.origin == "12330112473455672X"


def test_no_origin_anywhere_is_invalid_at_msh4() -> None:
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(message(PID, ORC, OBR, header=msh(sender="")))
    assert caught.value.location == "MSH-4"


def test_a_callers_order_code_map_comes_before_obr24() -> None:
    (exam,) = hl7v2.read(message(PID, ORC, OBR), centres={"2345-7": "pathology"})
    assert exam.centre == "pathology"


def test_an_order_code_without_a_centre_is_invalid_at_obr24() -> None:
    obr = OBR.replace("|CH|F", "|XYZ|F")
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(message(PID, ORC, obr))
    assert caught.value.location == "OBR-24"
    assert "2345-7" in caught.value.message
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(message(PID, ORC, OBR, "OBR|2|P2||X^Y^L"))
    assert caught.value.location == "OBR[2]-24"


def test_order_numbers_come_from_obr_without_orc() -> None:
    (exam,) = hl7v2.read(message(PID, OBR.replace("YQ-LAB-0001", "P-9^YQLIS").replace("LA-LAB-0001", "F-9^LALIS")))
    assert (exam.placer_order, exam.accession) == ("P-9", "F-9")


def test_accession_alone_identifies_the_exam() -> None:
    (exam,) = hl7v2.read(message(PID, "ORC|NW||LA-CT-0456", OBR.replace("YQ-LAB-0001", "").replace("LA-LAB-0001", "")))
    assert exam.placer_order is None
    assert exam.exam_id == derive_exam_id(YUQIAN, accession="LA-CT-0456")


def test_no_order_number_is_invalid_at_obr2() -> None:
    obr = OBR.replace("YQ-LAB-0001", "").replace("LA-LAB-0001", "")
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(message(PID, "ORC|NW", obr))
    assert caught.value.location == "OBR-2"


def test_an_empty_service_is_invalid_at_obr4() -> None:
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(message(PID, ORC, OBR.replace("2345-7^葡萄糖^LN", "")))
    assert caught.value.location == "OBR-4"


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        (["ORC|NW|P1|||||^^^^^S", OBR], "stat"),
        (["ORC|NW|P1", "TQ1|1||||||||A^尽快^HL70485", OBR], "urgent"),
        (["ORC|NW|P1", OBR + "||^^^^^S"], "stat"),
        (["ORC|NW|P1", OBR.replace("2345-7^葡萄糖^LN|", "2345-7^葡萄糖^LN|A")], "urgent"),
        (["ORC|NW|P1", OBR.replace("2345-7^葡萄糖^LN|", "2345-7^葡萄糖^LN|R")], "routine"),
        (["ORC|NW|P1|||||^^^^^R", OBR.replace("2345-7^葡萄糖^LN|", "2345-7^葡萄糖^LN|S")], "routine"),
        (["ORC|NW|P1", OBR], "routine"),
    ],
)
def test_priority(segments: list[str], expected: str) -> None:
    (exam,) = hl7v2.read(message(PID, *segments))
    assert exam.priority == expected


def test_a_malformed_obr7_is_invalid_there() -> None:
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(message(PID, ORC, OBR.replace("20240301083000+0800", "2024-03-01")))
    assert caught.value.location == "OBR-7"


def test_every_failure_is_an_adapter_error() -> None:
    for raw in (b"\x00\x01", message(PID, ORC, OBR, header=msh(message_type="ADT^A01")), message(ORC, OBR)):
        with pytest.raises(AdapterError):
            hl7v2.read(raw)


# --- strict mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("[!b]*.hl7")))
def test_every_good_sample_passes_strict_mode(name: str) -> None:
    raw = (SAMPLES / name).read_bytes()
    received = datetime(2024, 3, 1, tzinfo=UTC)
    assert hl7v2.read(raw, strict=True, received_at=received) == hl7v2.read(raw, received_at=received)


def test_strict_mode_reports_hl7apys_complaints_with_locations() -> None:
    pv1 = "PV1|1|O|检验科^^^於潜镇中心卫生院||||0217^刘^建华^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^EI"
    raw = message(PID, pv1, ORC, OBR, OBX)
    assert len(hl7v2.read(raw)) == 1
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(raw, strict=True)
    assert caught.value.location == "PV1-7"
    assert [p.location for p in caught.value.problems] == ["PV1-7"]


def test_strict_mode_reports_segments_out_of_place() -> None:
    raw = message(PID, ORC, OBR, "EVN|A01|20240301", OBX)
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(raw, strict=True)
    assert "EVN" in [p.location for p in caught.value.problems]


def test_strict_mode_needs_a_version_hl7apy_knows() -> None:
    raw = message(PID, ORC, OBR, header=msh().replace("|2.5.1|", "|3.0|"))
    assert len(hl7v2.read(raw)) == 1
    with pytest.raises(UnsupportedMessage) as caught:
        hl7v2.read(raw, strict=True)
    assert caught.value.location == "MSH-12"

"""adapters.hl7v2.ack: original-mode ACKs that hl7apy parses and validates, for good and bad input alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from adapters import hl7v2
from adapters.hl7v2._er7 import DEFAULT_DELIMITERS, unescape
from hub.errors import AdapterError, InvalidMessage, Problem

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "messages" / "hl7v2"
GOOD = sorted(p.name for p in SAMPLES.glob("*.hl7") if not p.name.startswith("bad-"))


def parsed(reply: bytes, codec: str = "utf-8") -> Any:
    message = parse_message(reply.decode(codec), validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    return message


def read_error(name: str) -> AdapterError:
    with pytest.raises(AdapterError) as caught:
        hl7v2.read((SAMPLES / name).read_bytes())
    return caught.value


@pytest.mark.parametrize("name", GOOD)
def test_aa_for_every_good_sample_validates_and_mirrors_the_header(name: str) -> None:
    raw = (SAMPLES / name).read_bytes()
    (exam, *_) = hl7v2.read(raw)
    codec = exam.source.charset or "utf-8"
    reply = hl7v2.ack(raw, "AA")
    message = parsed(reply, codec)
    original = parse_message(raw.decode(codec).lstrip("\ufeff").replace("\r\n", "\r").replace("\n", "\r"))
    assert message.msa.msa_1.to_er7() == "AA"
    assert message.msa.msa_2.to_er7() == original.msh.msh_10.to_er7() == exam.source.message_id
    assert message.msh.msh_3.to_er7() == original.msh.msh_5.to_er7()
    assert message.msh.msh_4.to_er7() == original.msh.msh_6.to_er7()
    assert message.msh.msh_5.to_er7() == original.msh.msh_3.to_er7()
    assert message.msh.msh_6.to_er7() == original.msh.msh_4.to_er7()
    assert message.msh.msh_12.to_er7() == original.msh.msh_12.to_er7()
    assert message.msh.msh_18.to_er7() == original.msh.msh_18.to_er7()
    trigger = original.msh.msh_9.to_er7().split(original.encoding_chars["COMPONENT"])[1]
    assert message.msh.msh_9.to_er7().split(message.encoding_chars["COMPONENT"]) == ["ACK", trigger, "ACK"]
    assert b"ERR" not in reply


def test_the_ack_uses_the_senders_encoding_characters() -> None:
    reply = hl7v2.ack((SAMPLES / "lab-crp-custom-delims.hl7").read_bytes(), "AA")
    assert reply.startswith(b"MSH$^~\\&$")
    assert parsed(reply).msa.msa_2.to_er7() == "GHLIS20240308-0019"


@pytest.mark.parametrize(
    ("name", "erl", "condition"),
    [
        ("bad-truncated-msh.hl7", "MSH^1", "100^Segment sequence error^HL70357"),
        ("bad-garbled-msh.hl7", "MSH^1^2", "102^Data type error^HL70357"),
        ("bad-adt-a01.hl7", "MSH^1^9", "200^Unsupported message type^HL70357"),
        ("bad-oru-no-pid.hl7", "PID^1", "100^Segment sequence error^HL70357"),
        ("bad-oru-unmapped-centre.hl7", "OBR^1^24", "207^Application internal error^HL70357"),
        ("bad-gbk-invalid-bytes.hl7", "OBX^3", "102^Data type error^HL70357"),
    ],
)
def test_ae_carries_the_error_location_and_table_0357_code(name: str, erl: str, condition: str) -> None:
    raw = (SAMPLES / name).read_bytes()
    error = read_error(name)
    reply = hl7v2.ack(raw, "AE", error)
    codec = "gb18030" if b"GBK" in raw else "utf-8"
    segments = reply.decode(codec).split("\r")
    err = segments[2].split("|")
    assert err[0] == "ERR"
    assert (err[2], err[3], err[4]) == (erl, condition, "E")
    assert unescape(err[8], DEFAULT_DELIMITERS) == error.message
    if not name.startswith(("bad-truncated", "bad-garbled")):
        message = parsed(reply, codec)
        assert message.msa.msa_1.to_er7() == "AE"
        assert message.err.err_2.to_er7() == erl


def test_a_missing_required_field_is_error_101() -> None:
    raw = (SAMPLES / "lab-cbc-gb18030.hl7").read_bytes().replace(b"|12330112472334561L|", b"||", 1)
    with pytest.raises(InvalidMessage) as caught:
        hl7v2.read(raw)
    message = parsed(hl7v2.ack(raw, "AE", caught.value), "gb18030")
    assert message.err.err_2.to_er7() == "MSH^1^4"
    assert message.err.err_3.to_er7() == "101^Required field missing^HL70357"


def test_the_error_text_is_encoded_in_the_acks_charset() -> None:
    raw = (SAMPLES / "lab-cbc-gb18030.hl7").read_bytes()
    reply = hl7v2.ack(raw, "AR", "於潜镇中心卫生院：消息重复，已拒收")
    with pytest.raises(UnicodeDecodeError):
        reply.decode("utf-8")
    message = parsed(reply, "gb18030")
    assert message.msh.msh_18.to_er7() == "GB 18030-2000"
    assert message.err.err_3.to_er7() == "207^Application internal error^HL70357"
    assert message.err.err_8.to_er7() == "於潜镇中心卫生院：消息重复，已拒收"


def test_the_fallback_charset_encodes_the_ack_when_msh18_is_empty() -> None:
    raw = (SAMPLES / "lab-cbc-gb18030.hl7").read_bytes().replace(b"|GB 18030-2000", b"")
    reply = hl7v2.ack(raw, "AE", "标本溶血", charset="GB18030")
    message = parsed(reply, "gb18030")
    assert message.msh.msh_18.to_er7() == ""
    assert message.err.err_8.to_er7() == "标本溶血"


def test_aa_with_a_notice_is_a_warning() -> None:
    raw = (SAMPLES / "lab-urine-gbk-badid.hl7").read_bytes()
    (exam,) = hl7v2.read(raw)
    notice = exam.notices[0]
    error = AdapterError(notice.message, location=notice.location)
    reply = hl7v2.ack(raw, "AA", error)
    err = reply.decode("gb18030").split("\r")[2]
    # v2.4 input: ERR-1 (ELD) carries the location and code, MSA-3 the text.
    assert err == "ERR|PID^1^19^0&Message accepted&HL70357"
    message = parsed(reply, "gb18030")
    assert message.msh.msh_12.to_er7() == "2.4"
    assert message.msa.msa_3.to_er7().startswith("resident ID fails")


def test_v25_warnings_use_err4_w() -> None:
    raw = (SAMPLES / "lab-liver-utf8.hl7").read_bytes()
    message = parsed(hl7v2.ack(raw, "AA", "王秀英的身份证号校验位错误，已作为本地标识保存"))
    assert message.err.err_3.to_er7() == "0^Message accepted^HL70357"
    assert message.err.err_4.to_er7() == "W"


def test_every_problem_of_an_error_is_an_err_segment() -> None:
    problems = (
        Problem("PID-7", "birth date is not an HL7 date"),
        Problem("OBX[4]-5.2", "bad unit"),
        Problem(None, "x"),
    )
    error = InvalidMessage("birth date is not an HL7 date", location="PID-7", problems=problems)
    raw = (SAMPLES / "lab-liver-utf8.hl7").read_bytes()
    message = parsed(hl7v2.ack(raw, "AE", error))
    assert [e.err_2.to_er7() for e in message.err] == ["PID^1^7", "OBX^4^5^^2", ""]
    assert message.err[2].err_8.to_er7() == "x"


@pytest.mark.parametrize(("code", "text"), [("AE", "application error"), ("AR", "message rejected")])
def test_ae_and_ar_without_an_error_still_explain(code: str, text: str) -> None:
    message = parsed(hl7v2.ack((SAMPLES / "lab-liver-utf8.hl7").read_bytes(), code))  # type: ignore[arg-type]
    assert message.msa.msa_1.to_er7() == code
    assert message.err.err_8.to_er7() == text


@pytest.mark.parametrize(
    ("raw", "control_id"),
    [
        (b"", ""),
        (b"\x00\xff\xfe garbage", ""),
        (b"MSH|^~", ""),
        (b"MSH|^^\\&|LIS|A|B|C|20240301||ORU^R01|YQ-0099|P|2.5.1", "YQ-0099"),
        (b"MSH|^^\\&|LIS|A|B|C|20240301||ORU^R01|\xe5\xbc\xa0|P|2.5.1", ""),
    ],
)
def test_garbled_input_still_gets_an_ack(raw: bytes, control_id: str) -> None:
    reply = hl7v2.ack(raw, "AR", "unreadable message")
    lines = reply.decode("utf-8").split("\r")
    assert lines[0].startswith("MSH|^~\\&|")
    assert lines[0].split("|")[11] == "2.5.1"
    assert lines[1] == f"MSA|AR|{control_id}"
    message = parse_message(reply.decode(), validation_level=VALIDATION_LEVEL.TOLERANT)
    assert message.msa.msa_2.to_er7() == control_id


def test_the_control_id_is_stable_for_the_same_answer() -> None:
    raw = (SAMPLES / "lab-liver-utf8.hl7").read_bytes()
    first, again, other = (parsed(hl7v2.ack(raw, c)).msh.msh_10.to_er7() for c in ("AA", "AA", "AE"))
    assert first == again != other
    assert len(first) <= 20

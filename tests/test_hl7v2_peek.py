"""sender() and control_id() read MSH-4 and MSH-10 before the charset is known; read_ack() reads an ACK."""

from pathlib import Path

import pytest

from adapters import hl7v2
from hub.errors import AdapterError, InvalidMessage, UnsupportedMessage

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "messages" / "hl7v2"


@pytest.mark.parametrize(
    ("name", "facility"),
    [
        ("lab-cbc-gb18030.hl7", "12330112472334561L"),  # MSH-4 namespace id, GB 18030 message
        ("ecg-resting-oru.hl7", "12330112473455672X"),  # ^code^L: the universal id
        ("lab-crp-custom-delims.hl7", "12330112475697894G"),  # $ as field separator
        ("bad-garbled-msh.hl7", None),
        ("bad-truncated-msh.hl7", None),
    ],
)
def test_sender_is_msh4(name: str, facility: str | None) -> None:
    assert hl7v2.sender((SAMPLES / name).read_bytes()) == facility


def test_sender_of_gb18030_whose_bytes_look_like_delimiters() -> None:
    # 榺 in GB 18030 is 0x98 0x7C: its trail byte is "|". The header must not split inside it.
    raw = "MSH|^~\\&|LIS|卫生院榺分院|HUB|LEAD|20240301||ORU^R01|1|P|2.5.1|||||CHN|GB 18030-2000\r".encode("gb18030")
    assert b"\x98|" in raw
    assert hl7v2.sender(raw) == "卫生院榺分院"


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.hl7")))
def test_control_id_is_what_the_hubs_own_ack_echoes(name: str) -> None:
    raw = (SAMPLES / name).read_bytes()
    assert hl7v2.read_ack(hl7v2.ack(raw, "AE", "refused")).control_id == (hl7v2.control_id(raw) or "")


def test_control_id_is_msh10_or_none() -> None:
    assert hl7v2.control_id((SAMPLES / "lab-cbc-gb18030.hl7").read_bytes()) == "YQLIS202403010007"
    assert hl7v2.control_id(b"MSH|^~\\&|LIS|X|HUB|LEAD|20240301||ORU^R01||P|2.5.1\r") is None  # empty
    assert hl7v2.control_id(b"MSH|^~\\&|LIS\r") is None  # cut short
    assert hl7v2.control_id(b"\x00\xff not hl7") is None


def test_read_ack_of_the_hubs_own_acks_in_gb18030() -> None:
    raw = (SAMPLES / "lab-cbc-gb18030.hl7").read_bytes()
    accepted = hl7v2.read_ack(hl7v2.ack(raw, "AA"))
    assert (accepted.code, accepted.control_id, accepted.accepted) == ("AA", "YQLIS202403010007", True)
    refused = hl7v2.read_ack(hl7v2.ack(raw, "AE", InvalidMessage("白细胞计数不是数字", location="OBX[1]-5")))
    assert refused.code == "AE"
    assert not refused.accepted
    assert "白细胞计数不是数字" in refused.text


def test_read_ack_refuses_what_is_not_an_ack() -> None:
    with pytest.raises(UnsupportedMessage, match="MSH-9"):
        hl7v2.read_ack((SAMPLES / "lab-liver-utf8.hl7").read_bytes())
    with pytest.raises(AdapterError):
        hl7v2.read_ack(b"MSH|^~\\&|A|B|C|D|20240301||ACK|1|P|2.5.1\rMSA||1\r")
    with pytest.raises(AdapterError):
        hl7v2.read_ack(b"not hl7")

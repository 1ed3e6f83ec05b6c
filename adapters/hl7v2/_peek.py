"""Reading just enough of an HL7 message: who sent it (before its charset is known), and ACKs.

``sender`` lets a gateway pick the member's fallback charset before decoding the
whole message; ``control_id`` is what an ACK's MSA-2 must echo. ``read_ack``
reads the reply a member sends to a report.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.hl7v2._ack import _scrape
from adapters.hl7v2._charset import UTF8_BOM, codec_for, scrape_header
from adapters.hl7v2._er7 import parse_delimiters, split_segments, unescape
from hub.errors import DecodeError, InvalidMessage, MissingField, UnsupportedMessage

__all__ = ["Ack", "control_id", "read_ack", "sender"]


def _header(raw: bytes, charset: str | None) -> tuple[str, str]:
    data = (raw[len(UTF8_BOM) :] if raw.startswith(UTF8_BOM) else raw).lstrip(b" \t\r\n\x0b")
    fallback = codec_for(charset) if charset else None
    return scrape_header(data, fallback)


def sender(raw: bytes) -> str | None:
    """MSH-4's first non-empty component (namespace, else universal id), or None; never raises."""
    line, _ = _header(raw, None)
    try:
        d = parse_delimiters(line)
    except DecodeError:
        return None
    fields = line.split(d.field)
    if len(fields) < 4:
        return None
    components = [c.strip() for c in fields[3].split(d.repetition)[0].split(d.component)]
    return next((c for c in components[:2] if c), None)


def control_id(raw: bytes) -> str | None:
    """MSH-10 as the hub's ACKs echo it in MSA-2 (read as leniently as they read it), or None; never raises."""
    return _scrape(raw, None).fields.get(10) or None


@dataclass(frozen=True, slots=True)
class Ack:
    code: str  # MSA-1: AA, AE, AR (or CA, CE, CR in enhanced mode)
    control_id: str  # MSA-2: the MSH-10 of the message acknowledged
    text: str  # MSA-3 or ERR-8, whatever explains an error

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def read_ack(raw: bytes, *, charset: str | None = None) -> Ack:
    """The MSA of an ACK; DecodeError, UnsupportedMessage or MissingField when it is not one."""
    data = (raw[len(UTF8_BOM) :] if raw.startswith(UTF8_BOM) else raw).lstrip(b" \t\r\n\x0b")
    line, declared = _header(raw, charset)
    d = parse_delimiters(line)
    codec = codec_for(declared) if declared else (codec_for(charset) if charset else "utf-8")
    text = data.decode(codec or "utf-8", "replace")
    segments = split_segments(text, d.field)
    msh = segments[0].split(d.field)
    kind = msh[8].split(d.component)[0] if len(msh) > 8 else ""
    if kind != "ACK":
        raise UnsupportedMessage(f"expected an ACK, got {kind or 'no message type'} in MSH-9", location="MSH-9")
    msa = next((s.split(d.field) for s in segments if s.startswith("MSA")), None)
    if msa is None or len(msa) < 2 or not msa[1]:
        raise MissingField("an ACK needs MSA-1 (AA, AE or AR)", location="MSA-1")
    code = msa[1].strip()
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise InvalidMessage(f"MSA-1 {code!r} is not an acknowledgment code", location="MSA-1")
    explanations = [msa[3]] if len(msa) > 3 and msa[3] else []
    for segment in segments:
        if segment.startswith("ERR"):
            err = segment.split(d.field)
            explanations += [err[8]] if len(err) > 8 and err[8] else []
    explanation = "; ".join(unescape(e, d) for e in explanations)
    return Ack(code, msa[2].strip() if len(msa) > 2 else "", explanation)

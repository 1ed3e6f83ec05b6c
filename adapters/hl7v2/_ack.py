"""Original-mode HL7 ACKs, written as ER7 text directly.

The ACK answers every MLLP message, and hl7apy builds an 8-segment ORU at only
~110 msg/s here, so this is a small writer; tests check its output against
hl7apy's parser and validator. It reads nothing but the MSH line of the input,
so it answers even messages the reader rejects, and it never raises.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from adapters._common import CHINA_TZ, utc_now
from adapters.hl7v2._charset import UTF8_BOM, codec_for, label_for, scrape_header
from adapters.hl7v2._er7 import DEFAULT_DELIMITERS, Delimiters, escape, parse_delimiters
from adapters.hl7v2._values import format_dtm
from hub.errors import AdapterError, DecodeError, InvalidMessage, MissingField, Problem, UnsupportedMessage

__all__ = ["ack"]

AckCode = Literal["AA", "AE", "AR"]

_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+)(?:\[(\d+)\])?(?:\.(\d+)(?:\.(\d+))?)?)?")
_VERSION = re.compile(r"2\.[1-9](?:\.[0-9])?")
_CONTROL_ID = re.compile(r"[!-~]{1,199}")  # printable ASCII, for an MSH-10 scraped from a broken header

# HL7 table 0357, message error condition codes.
_CONDITIONS = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    200: "Unsupported message type",
    207: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class _Header:
    """What an ACK copies from the input's MSH, each field still in the input's ER7 escaping."""

    delimiters: Delimiters
    encoding_characters: str
    fields: dict[int, str]
    codec: str
    msh18: str


def ack(
    raw: bytes,
    code: AckCode,
    error: AdapterError | str | None = None,
    *,
    charset: str | None = None,
) -> bytes:
    """An original-mode ACK to ``raw``: MSA-1 ``code``, MSA-2 its MSH-10, and ERR segments for ``error``.

    The ACK uses the input's version, encoding characters and character set.
    With AE or AR, each problem of an AdapterError becomes an ERR segment
    (location in ERR-2, HL7 table 0357 code in ERR-3, severity E); with AA, an
    error given is reported as a warning (severity W), for example a notice.
    """
    header = _scrape(raw, charset)
    d = header.delimiters
    version = header.fields.get(12, "").split(d.component, 1)[0].strip()
    if not _VERSION.fullmatch(version):
        version = "2.5.1"
    trigger = (header.fields.get(9, "").split(d.component)[1:2] or [""])[0]
    message_type = d.component.join(["ACK", trigger, "ACK"] if _at_least(version, 2, 3, 1) else ["ACK", trigger])
    msh = [
        "MSH",
        header.encoding_characters,
        header.fields.get(5, ""),
        header.fields.get(6, ""),
        header.fields.get(3, ""),
        header.fields.get(4, ""),
        format_dtm(utc_now().astimezone(CHINA_TZ)),
        "",
        message_type,
        _control_id(raw, code, error),
        header.fields.get(11, "").split(d.component, 1)[0] or "P",
        version,
    ]
    if header.msh18:
        msh += [""] * 5 + [header.msh18]
    problems = _problems(code, error)
    legacy = not _at_least(version, 2, 5)
    msa = ["MSA", code, header.fields.get(10, "")]
    if legacy and problems:
        msa.append(escape(problems[0][0].message[:80], d))
    segments = [d.field.join(msh), d.field.join(msa)]
    segments += [_err(problem, condition, code, d, legacy=legacy) for problem, condition in problems]
    return ("\r".join(segments) + "\r").encode(header.codec, "replace")


def _scrape(raw: bytes, charset: str | None) -> _Header:
    data = (raw[len(UTF8_BOM) :] if raw.startswith(UTF8_BOM) else raw).lstrip(b" \t\r\n\x0b")
    fallback = codec_for(charset) if charset else None
    line, declared = scrape_header(data, fallback)
    codec = codec_for(declared) if declared else None
    try:
        delimiters = parse_delimiters(line)
    except DecodeError:
        codec = codec or fallback or "utf-8"
        msh18 = label_for(codec) if declared else ""
        return _Header(
            DEFAULT_DELIMITERS, DEFAULT_DELIMITERS.encoding_characters, _scrape_control_id(line), codec, msh18
        )
    split = line.split(delimiters.field)
    fields = {n: split[n - 1] for n in (3, 4, 5, 6, 9, 10, 11, 12) if n - 1 < len(split)}
    if codec is None:
        # No MSH-18, or one we cannot encode: answer in the fallback and say so only if the input said anything.
        codec = fallback or "utf-8"
        msh18 = label_for(codec) if declared else ""
    else:
        msh18 = split[17]
    return _Header(delimiters, split[1], fields, codec, msh18)


def _scrape_control_id(line: str) -> dict[int, str]:
    """MSH-10 from a header whose delimiters are unusable, when it looks like a control id."""
    if not line.startswith("MSH") or len(line) < 4:
        return {}
    split = line.split(line[3])
    candidate = split[9].strip() if len(split) > 9 else ""
    if _CONTROL_ID.fullmatch(candidate) and not any(c in candidate for c in "|^~\\&"):
        return {10: candidate}
    return {}


def _at_least(version: str, *minimum: int) -> bool:
    return tuple(int(part) for part in version.split(".")) >= minimum


def _control_id(raw: bytes, code: str, error: AdapterError | str | None) -> str:
    # Deterministic, so the ACK to a redelivered message is the same ACK.
    digest = hashlib.sha256(raw + code.encode() + str(error).encode("utf-8", "replace")).hexdigest()
    return "ACK" + digest[:17]


def _problems(code: str, error: AdapterError | str | None) -> list[tuple[Problem, int]]:
    if error is None:
        if code == "AA":
            return []
        return [(Problem(None, "message rejected" if code == "AR" else "application error"), 207)]
    if isinstance(error, AdapterError):
        return [(problem, 0 if code == "AA" else _condition(error, problem)) for problem in error.problems]
    return [(Problem(None, str(error)), 0 if code == "AA" else 207)]


def _condition(error: AdapterError, problem: Problem) -> int:
    has_field = problem.location is not None and "-" in problem.location
    if isinstance(error, DecodeError):
        structural = problem.location in (None, "MSH") or problem.location.startswith("segment")
        return 100 if structural else 102
    if isinstance(error, UnsupportedMessage):
        return 200
    if isinstance(error, MissingField):
        return 101 if has_field else 100
    if isinstance(error, InvalidMessage):
        return 207
    return 207


def _err(problem: Problem, condition: int, code: str, d: Delimiters, *, legacy: bool) -> str:
    where = _LOCATION.fullmatch(problem.location or "")
    position = []
    if where:
        segment, nth, field, repetition, component, subcomponent = where.groups()
        position = [segment, nth or "1", field or "", repetition or "", component or "", subcomponent or ""]
        while position and not position[-1]:
            position.pop()
    text = str(problem) if where is None else problem.message
    if legacy:
        # Before v2.5, ERR-1 (ELD) carries segment^sequence^field^code, the code as code&text&table.
        eld_code = d.subcomponent.join([str(condition), _CONDITIONS[condition], "HL70357"])
        eld = [*[*position, "", "", ""][:3], eld_code]
        return d.field.join(["ERR", d.component.join(eld)])
    severity = "W" if code == "AA" else "E"
    fields = [
        "ERR",
        "",
        d.component.join(position),
        d.component.join([str(condition), _CONDITIONS[condition], "HL70357"]),
        severity,
        "",
        "",
        "",
        escape(text, d),
    ]
    return d.field.join(fields)

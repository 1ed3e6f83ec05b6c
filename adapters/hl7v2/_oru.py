r"""Reports as ORU^R01 v2.5.1 ER7 text, joined directly, and the field values both report writers share.

hl7apy builds a 16-result lab report at ~25 msg/s here, too slow for egress at
thousands a second, so ``write_er7`` joins strings. ``write_report(...,
strict=True)`` builds the message with hl7apy under strict validation from the
values defined here, and the tests check that both give the same bytes and that
hl7apy validates this writer's output. Where hl7apy refuses a value as too long
(ST 199 characters, IS 20, and every OBX-5 line 199, even in a TX) this writer
sends it as given. A line break inside a single value is ``\.br\`` here, as
``escape`` writes it and the reader reads it; hl7apy escapes that escape once
more, so there the two writers differ. Default delimiters (``|^~\&``) throughout.

OBX codes written (coding system "L", local):
  FINDINGS    TX  the report's findings (检查所见), one repetition per line
  IMPRESSION  TX  the conclusion (诊断意见), one repetition per line
  CRITICAL    ST  one per critical item (危急值), OBX-8 "AA"; "危急值" alone when none is listed
  <code>      NM/ST/TX  each measurement, with unit, range, flag and status
  ATTACHMENT  RP  each attachment: uri^^type of data^subtype
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from adapters._common import v2_system
from adapters.hl7v2._charset import codec_for, label_for
from adapters.hl7v2._er7 import DEFAULT_DELIMITERS, escape
from adapters.hl7v2._values import REPORT_STATUS_CODES, format_dtm, split_media_type
from hub.envelope import Coding, Identifier, Observation, ObservationStatus, Patient, Report, Sex
from hub.ids import valid_resident_id

__all__ = [
    "CENTRE_SECTIONS",
    "MESSAGE_TYPE",
    "ORDER_STATUS",
    "SENDING_APPLICATION",
    "SEX_CODES",
    "VERSION",
    "Result",
    "coding",
    "control_id",
    "escaped",
    "patient_identifiers",
    "patient_name",
    "performer",
    "report_codec",
    "results",
    "write_er7",
]

VERSION = "2.5.1"
MESSAGE_TYPE = "ORU^R01^ORU_R01"
SENDING_APPLICATION = "CONSORTIUM-HUB"
RESIDENT_AUTHORITY = "&2.16.156.10011.1.3&ISO"

# OBR-24 written for each centre, so a reader maps the report back to the same centre.
CENTRE_SECTIONS = {"imaging": "RAD", "ecg": "EC", "lab": "LAB", "pathology": "SP"}
SEX_CODES: dict[Sex, str] = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
ORDER_STATUS = {"preliminary": "IP", "final": "CM", "amended": "CM", "cancelled": "CA"}
_OBSERVATION_CODES: dict[ObservationStatus, str] = {
    "registered": "R",
    "preliminary": "P",
    "final": "F",
    "amended": "C",
    "corrected": "C",
    "cancelled": "X",
    "entered-in-error": "W",
}


# OBX-14 texts already written in this report, by instant and offset.
_Times = dict[tuple[datetime, timedelta | None], str]
_NEEDS_ESCAPING = re.compile(r"[|^~\\&\r\n]")


class Result(NamedTuple):
    """One OBX, every value already in ER7 escaping; empty strings are fields left empty."""

    value_type: str
    code: str
    values: list[str]  # OBX-5 repetitions
    status: str
    unit: str = ""
    reference_range: str = ""
    flag: str = ""
    observed_at: str = ""


def report_codec(charset: str) -> str:
    """The Python codec for a report's ``charset``; ValueError unless it is UTF-8 or GB 18030."""
    codec = codec_for(charset)
    if codec not in ("utf-8", "gb18030"):
        raise ValueError(f"reports are written in UTF-8 or GB 18030, not {charset!r}")
    return codec


def control_id(report_id: str) -> str:
    """MSH-10 for a report: 20 hex digits of SHA-256 of its report_id (MSH-10 holds at most 20)."""
    return hashlib.sha256(report_id.encode("utf-8")).hexdigest()[:20]


def escaped(text: str) -> str:
    """``text`` as one ER7 leaf value."""
    # Most values (codes, units, numbers, Chinese text) need no escaping; one regex scan says so.
    return escape(text, DEFAULT_DELIMITERS) if _NEEDS_ESCAPING.search(text) else text


def patient_identifiers(report: Report) -> list[str]:
    """PID-3 repetitions: the resident ID, then the local ids, else the hub's exam id (PID-3 is required)."""
    patient = report.patient
    identifiers = []
    if patient.national_id and valid_resident_id(patient.national_id):
        identifiers.append(f"{patient.national_id}^^^{RESIDENT_AUTHORITY}^NI")
    identifiers += [_cx(identifier) for identifier in patient.local_ids]
    if not identifiers:
        identifiers.append(f"{escaped(report.exam_id)}^^^{SENDING_APPLICATION}^PI")
    return identifiers


def patient_name(patient: Patient) -> str:
    """PID-5; it is required, so an unknown name is name type U (unspecified), which reads back as no name."""
    return escaped(patient.name) if patient.name else "^^^^^^U"


def performer(report: Report) -> str:
    """OBR-32 (principal result interpreter) as id&name, or empty."""
    if not report.performer:
        return ""
    return f"{escaped(report.performer.id or '')}&{escaped(report.performer.name)}"


def coding(value: Coding) -> str:
    """A CE: code^display^coding system."""
    return "^".join(escaped(part or "") for part in (value.code, value.display, v2_system(value.system))).rstrip("^")


def _cx(identifier: Identifier) -> str:
    authority = ""
    system = identifier.system or ""
    if system.startswith("urn:oid:"):
        authority = f"&{system.removeprefix('urn:oid:')}&ISO"
    elif ":" in system:
        authority = f"&{escaped(system)}&URI"
    elif system:
        authority = escaped(system)
    return f"{escaped(identifier.value)}^^^{authority}^{escaped(identifier.type or '')}".rstrip("^")


def results(report: Report) -> list[Result]:
    """The report's OBX segments in order: findings, conclusion, measurements, critical items, attachments."""
    status = REPORT_STATUS_CODES[report.status]
    times: _Times = {}  # lab results tend to share one observation time
    out = []
    for code, text in (("FINDINGS^检查所见^L", report.findings), ("IMPRESSION^诊断意见^L", report.conclusion)):
        if text:
            out.append(Result("TX", code, _lines(text), status))
    out += [_measurement(observation, status, times) for observation in report.observations]
    if report.critical:
        for item in report.critical_items or ("危急值",):
            out.append(Result("ST", "CRITICAL^危急值^L", [escaped(item)], status, flag="AA"))
    for attachment in report.attachments:
        kind, subtype = split_media_type(attachment.media_type)
        title = escaped(attachment.title) if attachment.title else "附件"
        out.append(Result("RP", f"ATTACHMENT^{title}^L", [f"{escaped(attachment.uri)}^^{kind}^{subtype}"], "F"))
    return out


def _lines(text: str) -> list[str]:
    return [escaped(line) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]


def _measurement(observation: Observation, report_status: str, times: _Times) -> Result:
    value = observation.value
    observed_at = ""
    if moment := observation.observed_at:
        # Equal instants in different offsets are equal keys, and are written differently: key on the offset too.
        key = (moment, moment.utcoffset())
        observed_at = times.get(key) or times.setdefault(key, format_dtm(moment))
    if isinstance(value, float) and math.isfinite(value):
        value_type, values = "NM", [_number(value)]
    elif isinstance(value, float):
        value_type, values = "ST", [repr(value)]
    elif value is None:
        value_type, values = "", []
    elif "\n" in value or "\r" in value:
        value_type, values = "TX", _lines(value)
    else:
        value_type, values = "ST", [escaped(value)]
    return Result(
        value_type,
        coding(observation.code),
        values,
        _OBSERVATION_CODES.get(observation.status, report_status),
        unit=escaped(observation.unit) if observation.unit else "",
        reference_range=escaped(observation.reference_range) if observation.reference_range else "",
        flag=escaped(observation.flag) if observation.flag else "",
        observed_at=observed_at,
    )


def _number(value: float) -> str:
    # NM allows no exponent; Decimal(repr) keeps the float's shortest exact digits.
    return format(Decimal(repr(value)), "f").removesuffix(".0")


def _segment(*fields: str) -> str:
    # Values are escaped, so a "|" at the end can only be an empty trailing field; hl7apy leaves those out too.
    return "|".join(fields).rstrip("|")


def write_er7(report: Report, *, charset: str = "utf-8") -> bytes:
    """The report as an ORU^R01 v2.5.1 message in ``charset`` (UTF-8 or GB 18030), CR after each segment."""
    codec = report_codec(charset)
    status = REPORT_STATUS_CODES[report.status]
    issued = format_dtm(report.issued_at)
    placer = escaped(report.placer_order) if report.placer_order else ""
    accession = escaped(report.accession) if report.accession else ""
    patient = report.patient
    segments = [
        _segment(
            "MSH",
            DEFAULT_DELIMITERS.encoding_characters,
            SENDING_APPLICATION,
            escaped(report.performer_institution) if report.performer_institution else "",
            "",
            escaped(report.origin),
            issued,
            "",
            MESSAGE_TYPE,
            control_id(report.report_id),
            "P",
            VERSION,
            *[""] * 5,
            label_for(codec),
        ),
        _segment(
            "PID",
            "1",
            "",
            "~".join(patient_identifiers(report)),
            "",
            patient_name(patient),
            "",
            patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "",
            SEX_CODES[patient.sex],
        ),
        _segment("ORC", "RE", placer, accession, "", ORDER_STATUS[report.status]),
    ]
    obr = ["OBR", "1", placer, accession, coding(report.service), *[""] * 28]
    obr[22], obr[24], obr[25], obr[32] = issued, CENTRE_SECTIONS[report.centre], status, performer(report)
    segments.append(_segment(*obr))
    for set_id, result in enumerate(results(report), start=1):
        segments.append(
            _segment(
                "OBX",
                str(set_id),
                result.value_type,
                result.code,
                "",
                "~".join(result.values),
                result.unit,
                result.reference_range,
                result.flag,
                "",
                "",
                result.status,
                "",
                "",
                result.observed_at,
            )
        )
    segments.append("")
    return "\r".join(segments).encode(codec)

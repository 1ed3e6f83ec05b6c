"""Reports back to member sites as ORU^R01 v2.5.1, built with hl7apy under strict validation.

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
from decimal import Decimal
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from adapters._common import v2_system
from adapters.hl7v2._charset import codec_for, label_for
from adapters.hl7v2._er7 import DEFAULT_DELIMITERS, escape
from adapters.hl7v2._values import REPORT_STATUS_CODES, format_dtm, split_media_type
from hub.envelope import Coding, Identifier, Observation, ObservationStatus, Report, Sex
from hub.ids import valid_resident_id

__all__ = ["CENTRE_SECTIONS", "control_id", "write_report"]

VERSION = "2.5.1"
SENDING_APPLICATION = "CONSORTIUM-HUB"
RESIDENT_AUTHORITY = "&2.16.156.10011.1.3&ISO"

# OBR-24 written for each centre, so a reader maps the report back to the same centre.
CENTRE_SECTIONS = {"imaging": "RAD", "ecg": "EC", "lab": "LAB", "pathology": "SP"}
_SEX_CODES: dict[Sex, str] = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_OBSERVATION_CODES: dict[ObservationStatus, str] = {
    "registered": "R",
    "preliminary": "P",
    "final": "F",
    "amended": "C",
    "corrected": "C",
    "cancelled": "X",
    "entered-in-error": "W",
}
_ORDER_STATUS = {"preliminary": "IP", "final": "CM", "amended": "CM", "cancelled": "CA"}


def control_id(report_id: str) -> str:
    """MSH-10 for a report: 20 hex digits of SHA-256 of its report_id (MSH-10 holds at most 20)."""
    return hashlib.sha256(report_id.encode("utf-8")).hexdigest()[:20]


def write_report(report: Report, *, charset: str = "utf-8") -> bytes:
    """The report as an ORU^R01 v2.5.1 message in ``charset`` (UTF-8 or GB 18030)."""
    codec = codec_for(charset)
    if codec not in ("utf-8", "gb18030"):
        raise ValueError(f"reports are written in UTF-8 or GB 18030, not {charset!r}")
    message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = message.msh
    msh.msh_3 = SENDING_APPLICATION
    if report.performer_institution:
        msh.msh_4 = _e(report.performer_institution)
    msh.msh_6 = _e(report.origin)
    msh.msh_7 = format_dtm(report.issued_at)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id(report.report_id)
    msh.msh_11 = "P"
    msh.msh_12 = VERSION
    msh.msh_18 = label_for(codec)

    result = message.add_group("ORU_R01_PATIENT_RESULT")
    _patient(result.add_group("ORU_R01_PATIENT").pid, report)
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    _order(order, report)
    set_id = 0
    for code, text in (("FINDINGS^检查所见^L", report.findings), ("IMPRESSION^诊断意见^L", report.conclusion)):
        if text:
            set_id += 1
            _obx(order, set_id, "TX", code, _lines(text), status=_status_code(report))
    for observation in report.observations:
        set_id += 1
        _observation(order, set_id, observation, report)
    if report.critical:
        for item in report.critical_items or ("危急值",):
            set_id += 1
            _obx(order, set_id, "ST", "CRITICAL^危急值^L", [_e(item)], status=_status_code(report), flag="AA")
    for attachment in report.attachments:
        set_id += 1
        kind, subtype = split_media_type(attachment.media_type)
        title = _e(attachment.title) if attachment.title else "附件"
        _obx(order, set_id, "RP", f"ATTACHMENT^{title}^L", [f"{_e(attachment.uri)}^^{kind}^{subtype}"], status="F")
    message.validate()
    er7: str = message.to_er7()
    return (er7 + "\r").encode(codec)


def _e(text: str) -> str:
    return escape(text, DEFAULT_DELIMITERS)


def _lines(text: str) -> list[str]:
    return [_e(line) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]


def _status_code(report: Report) -> str:
    return REPORT_STATUS_CODES[report.status]


def _patient(pid: Any, report: Report) -> None:
    patient = report.patient
    identifiers = []
    if patient.national_id and valid_resident_id(patient.national_id):
        identifiers.append(f"{patient.national_id}^^^{RESIDENT_AUTHORITY}^NI")
    identifiers += [_cx(identifier) for identifier in patient.local_ids]
    if not identifiers:
        # PID-3 is required; with no patient identifier at all the hub's exam id stands in.
        identifiers.append(f"{_e(report.exam_id)}^^^{SENDING_APPLICATION}^PI")
    for identifier in identifiers:
        pid.add_field("pid_3").value = identifier
    pid.pid_1 = "1"
    # PID-5 is required: an unknown name is sent as name type U (unspecified), which reads back as no name.
    pid.pid_5 = _e(patient.name) if patient.name else "^^^^^^U"
    if patient.birth_date:
        pid.pid_7 = patient.birth_date.strftime("%Y%m%d")
    pid.pid_8 = _SEX_CODES[patient.sex]


def _cx(identifier: Identifier) -> str:
    authority = ""
    system = identifier.system or ""
    if system.startswith("urn:oid:"):
        authority = f"&{system.removeprefix('urn:oid:')}&ISO"
    elif ":" in system:
        authority = f"&{_e(system)}&URI"
    elif system:
        authority = _e(system)
    return f"{_e(identifier.value)}^^^{authority}^{_e(identifier.type or '')}".rstrip("^")


def _coding(coding: Coding) -> str:
    return "^".join(_e(part or "") for part in (coding.code, coding.display, v2_system(coding.system))).rstrip("^")


def _order(order: Any, report: Report) -> None:
    orc, obr = order.orc, order.obr
    orc.orc_1 = "RE"
    obr.obr_1 = "1"
    if report.placer_order:
        orc.orc_2 = obr.obr_2 = _e(report.placer_order)
    if report.accession:
        orc.orc_3 = obr.obr_3 = _e(report.accession)
    orc.orc_5 = _ORDER_STATUS[report.status]
    obr.obr_4 = _coding(report.service)
    obr.obr_22 = format_dtm(report.issued_at)
    obr.obr_24 = CENTRE_SECTIONS[report.centre]
    obr.obr_25 = _status_code(report)
    if report.performer:
        performer_id = _e(report.performer.id or "")
        obr.obr_32 = f"{performer_id}&{_e(report.performer.name)}"


def _observation(order: Any, set_id: int, observation: Observation, report: Report) -> None:
    value = observation.value
    if isinstance(value, float) and math.isfinite(value):
        value_type, values = "NM", [_number(value)]
    elif isinstance(value, float):
        value_type, values = "ST", [repr(value)]
    elif value is None:
        value_type, values = "", []
    elif "\n" in value or "\r" in value:
        value_type, values = "TX", _lines(value)
    else:
        value_type, values = "ST", [_e(value)]
    _obx(
        order,
        set_id,
        value_type,
        _coding(observation.code),
        values,
        status=_OBSERVATION_CODES.get(observation.status, _status_code(report)),
        unit=observation.unit,
        reference_range=observation.reference_range,
        flag=observation.flag,
        observed_at=format_dtm(observation.observed_at) if observation.observed_at else None,
    )


def _number(value: float) -> str:
    # NM allows no exponent; Decimal(repr) keeps the float's shortest exact digits.
    text = format(Decimal(repr(value)), "f")
    return text.removesuffix(".0") if text.endswith(".0") else text


def _obx(
    order: Any,
    set_id: int,
    value_type: str,
    code: str,
    values: list[str],
    *,
    status: str,
    unit: str | None = None,
    reference_range: str | None = None,
    flag: str | None = None,
    observed_at: str | None = None,
) -> None:
    obx = order.add_group("ORU_R01_OBSERVATION").obx
    obx.obx_1 = str(set_id)
    if value_type:
        obx.obx_2 = value_type
    obx.obx_3 = code
    for value in values:
        # Each repetition on its own: hl7apy does not split an assigned value on "~".
        obx.add_field("obx_5").value = value
    if unit:
        obx.obx_6 = _e(unit)
    if reference_range:
        obx.obx_7 = _e(reference_range)
    if flag:
        obx.obx_8 = _e(flag)
    obx.obx_11 = status
    if observed_at:
        obx.obx_14 = observed_at

"""HL7 v2 value vocabularies and formats: dates, sex, priority, result status, media types."""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta, timezone

from adapters._common import CHINA_TZ
from hub.envelope import ObservationStatus, Priority, ReportStatus, Sex

__all__ = [
    "OBSERVATION_STATUS",
    "REPORT_STATUS_CODES",
    "SEX",
    "format_dtm",
    "media_type",
    "parse_date",
    "parse_dtm",
    "parse_number",
    "priority",
    "split_media_type",
]

# YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_DTM = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,4}))?)?)?)?)?)?"
    r"(?:([+-])([0-9]{2})([0-9]{2}))?"
)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")

# PID-8: HL7 table 0001, plus GB/T 2261.1 codes (1 male, 2 female, 0/9 unknown) and
# the characters that Chinese HIS systems send.
SEX: dict[str, Sex] = {
    "M": "male",
    "F": "female",
    "O": "other",
    "A": "other",
    "U": "unknown",
    "N": "unknown",
    "1": "male",
    "2": "female",
    "0": "unknown",
    "9": "unknown",
    "男": "male",
    "女": "female",
}

# OBX-11, HL7 table 0085, onto FHIR Observation.status.
OBSERVATION_STATUS: dict[str, ObservationStatus] = {
    "F": "final",
    "P": "preliminary",
    "C": "corrected",
    "X": "cancelled",
    "R": "registered",
    "I": "registered",
    "D": "entered-in-error",
    "W": "entered-in-error",
}

# OBR-25, HL7 table 0123, for a report's status.
REPORT_STATUS_CODES: dict[ReportStatus, str] = {
    "preliminary": "P",
    "final": "F",
    "amended": "C",
    "cancelled": "X",
}

_PRIORITY: dict[str, Priority] = {"S": "stat", "A": "urgent"}


def priority(code: str) -> Priority:
    """HL7 table 0027 priority: S is stat, A (as soon as possible) urgent, anything else routine."""
    return _PRIORITY.get(code.strip().upper(), "routine")


def parse_dtm(value: str) -> datetime | None:
    """An HL7 DTM/TS value as an aware datetime; no offset means China time. None when malformed."""
    match = _DTM.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    tz = CHINA_TZ
    if sign:
        minutes = int(off_h) * 60 + int(off_m)
        if int(off_h) > 14 or int(off_m) > 59:
            return None
        tz = timezone(timedelta(minutes=minutes if sign == "+" else -minutes))
    try:
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        return None


def parse_date(value: str) -> tuple[date | None, bool]:
    """The date in an HL7 DT/DTM value and whether the value was well formed.

    A well-formed value with only a year or a month gives no date.
    """
    text = value.strip()
    if not text:
        return None, True
    parsed = parse_dtm(text)
    if parsed is None:
        return None, False
    return (parsed.date() if len(text) >= 8 else None), True


def format_dtm(moment: datetime) -> str:
    """An aware datetime as HL7 DTM with its offset, to the second."""
    offset = moment.utcoffset() or timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return moment.strftime("%Y%m%d%H%M%S") + f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def parse_number(text: str) -> float | None:
    """An HL7 NM value as a float; None when it is not a plain decimal number."""
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        return None
    number = float(stripped)
    return number if math.isfinite(number) else None


# Type of data (ED-2, RP-3; HL7 table 0191) onto the MIME top-level type.
_MEDIA_MAJOR = {
    "IM": "image",
    "SI": "image",
    "IMAGE": "image",
    "AP": "application",
    "APPLICATION": "application",
    "NS": "application",
    "SD": "application",
    "AU": "audio",
    "AUDIO": "audio",
    "TX": "text",
    "TEXT": "text",
    "FT": "text",
    "VIDEO": "video",
    "MULTIPART": "multipart",
}
_MEDIA_CODES = {"image": "IM", "application": "AP", "audio": "AU", "text": "TEXT"}


def media_type(kind: str, subtype: str) -> str:
    """A MIME type from an ED/RP type of data and subtype (e.g. IM + JPEG -> image/jpeg)."""
    sub = subtype.strip().lower()
    if "/" in sub:
        return sub
    major = _MEDIA_MAJOR.get(kind.strip().upper())
    if major and sub and sub.replace("-", "").replace(".", "").replace("+", "").isalnum():
        return f"{major}/{sub}"
    return "application/octet-stream"


def split_media_type(media: str) -> tuple[str, str]:
    """The ED/RP type of data and subtype for a MIME type (application/pdf -> AP, PDF)."""
    major, _, sub = media.partition("/")
    return _MEDIA_CODES.get(major.lower(), "AP"), sub.upper() or "OCTET-STREAM"

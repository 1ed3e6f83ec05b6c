"""Identifiers: resident ID numbers, institution codes and stable envelope ids.

Pure functions, no I/O. Resident ID numbers (居民身份证号码) follow GB 11643-1999;
unified social credit codes (统一社会信用代码, the institution codes used by
Chinese hospitals) follow GB 32100-2015.
"""

from __future__ import annotations

import hashlib
from calendar import monthrange
from dataclasses import dataclass
from datetime import date
from operator import mul

__all__ = [
    "ResidentId",
    "derive_exam_id",
    "derive_report_id",
    "parse_resident_id",
    "resident_id_check_digit",
    "uscc_check_char",
    "valid_resident_id",
    "valid_uscc",
]

_RESIDENT_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RESIDENT_CHECK = "10X98765432"

_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


@dataclass(frozen=True, slots=True)
class ResidentId:
    """A valid 18-digit resident ID number and the facts it encodes."""

    number: str
    region: str
    birth_date: date
    sex: str  # "male" or "female": the 17th digit is odd for men


def resident_id_check_digit(first17: str) -> str:
    """The GB 11643 check digit for the first 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("need exactly 17 ASCII digits")
    return _RESIDENT_CHECK[_weighted_sum(first17) % 11]


def _weighted_sum(digits: str) -> int:
    # Every exam pays for this check, up to three times: keep it to builtins.
    return sum(map(mul, map(int, digits), _RESIDENT_WEIGHTS))


def parse_resident_id(value: str) -> ResidentId | None:
    """The resident ID in ``value``, or None when it is not a valid 18-digit number.

    Checks the length, the digits, the birth date and the check digit. A
    lower-case ``x`` is accepted and normalised.
    """
    number = value.strip().upper()
    if len(number) != 18 or not number.isascii():
        return None
    body = number[:17]
    if not body.isdigit() or _RESIDENT_CHECK[_weighted_sum(body) % 11] != number[17]:
        return None
    year, month, day = int(body[6:10]), int(body[10:12]), int(body[12:14])
    if year < 1850 or not 1 <= month <= 12 or not 1 <= day <= monthrange(year, month)[1]:
        return None
    sex = "male" if int(body[16]) % 2 else "female"
    return ResidentId(number=number, region=body[:6], birth_date=date(year, month, day), sex=sex)


def valid_resident_id(value: str) -> bool:
    return parse_resident_id(value) is not None


def uscc_check_char(first17: str) -> str:
    """The GB 32100 check character for the first 17 characters of a credit code."""
    if len(first17) != 17 or any(c not in _USCC_ALPHABET for c in first17):
        raise ValueError("need 17 characters from the GB 32100 alphabet")
    total = sum(_USCC_ALPHABET.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return _USCC_ALPHABET[(31 - total % 31) % 31]


def valid_uscc(value: str) -> bool:
    """Whether ``value`` is an 18-character unified social credit code with a good check char."""
    code = value.strip().upper()
    if len(code) != 18 or any(c not in _USCC_ALPHABET for c in code):
        return False
    return uscc_check_char(code[:17]) == code[17]


def _digest(*parts: str) -> str:
    # Unit separator between parts, so ("a", "bc") and ("ab", "c") differ.
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def derive_exam_id(
    origin: str,
    *,
    placer_order: str | None = None,
    accession: str | None = None,
    study_uid: str | None = None,
) -> str:
    """A stable exam id: the same origin and order identifier always give the same id.

    The first identifier present wins, in this order: placer order number,
    accession (filler order) number, Study Instance UID. So an HL7 order and
    the DICOM study that carries its placer order number share one exam id.
    """
    for kind, value in (("placer", placer_order), ("accession", accession), ("study", study_uid)):
        if value and value.strip():
            return "ex-" + _digest(origin.strip(), kind, value.strip())
    raise ValueError("an exam needs a placer order number, an accession number or a Study Instance UID")


def derive_report_id(exam_id: str, status: str, revision: int = 0) -> str:
    """A stable report id, so a report published twice after a crash is recognisably one report."""
    return "rp-" + _digest(exam_id, status, str(revision))

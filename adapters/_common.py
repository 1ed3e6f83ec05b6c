"""Helpers shared by the format adapters. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone

from hub.envelope import Centre, Identifier, Notice
from hub.ids import parse_resident_id

__all__ = [
    "CHINA_TZ",
    "CODE_SYSTEM_URIS",
    "DEFAULT_SECTION_CENTRES",
    "RESIDENT_ID_SYSTEM",
    "canonical_system",
    "in_source",
    "resolve_centre",
    "split_resident_ids",
    "utc_now",
    "v2_system",
]

# China has had one offset and no daylight saving since 1991; a timestamp
# without an offset from a member site is local time.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")

# OID of the resident ID number namespace in Chinese health information standards.
RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"

# HL7 table 0074 diagnostic service sections (OBR-24, FHIR category) -> centre.
DEFAULT_SECTION_CENTRES: Mapping[str, Centre] = {
    "LAB": "lab", "HM": "lab", "CH": "lab", "SR": "lab", "IMM": "lab", "BLB": "lab",
    "MB": "lab", "MCB": "lab", "MYC": "lab", "VR": "lab", "PAR": "lab", "TX": "lab",
    "SE": "lab", "SC": "lab", "URN": "lab", "HEM": "lab", "CG": "lab", "OSL": "lab",
    "RAD": "imaging", "CT": "imaging", "MR": "imaging", "RX": "imaging", "US": "imaging",
    "NMR": "imaging", "NMS": "imaging", "VUS": "imaging", "OUS": "imaging", "RUS": "imaging",
    "XRC": "imaging", "DX": "imaging", "CR": "imaging", "MG": "imaging", "IMG": "imaging",
    "EC": "ecg", "ECG": "ecg", "CTH": "ecg", "CUS": "imaging",
    "SP": "pathology", "CP": "pathology", "PAT": "pathology", "PATH": "pathology",
}  # fmt: skip


# HL7 table 0396 names and DICOM coding scheme designators -> the FHIR system URIs
# the envelope uses, so one item has one (system, code) whichever format it came in.
# Local designators ("L", "99LAYGT") stay as they are.
CODE_SYSTEM_URIS: Mapping[str, str] = {
    "LN": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM3": "http://snomed.info/sct",
    "UCUM": "http://unitsofmeasure.org",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "MDC": "urn:iso:std:iso:11073:10101",
    "RADLEX": "http://radlex.org",
}
# The first name listed for a URI is the one written back (SCT, not SNM3).
_SYSTEM_NAMES = {uri: name for name, uri in reversed(list(CODE_SYSTEM_URIS.items()))}


def canonical_system(name: str | None) -> str | None:
    """The envelope's system for an HL7 or DICOM coding system name."""
    if not name:
        return None
    return CODE_SYSTEM_URIS.get(name.upper(), name)


def v2_system(system: str | None) -> str | None:
    """The HL7 v2 coding system name for an envelope system (the inverse of canonical_system)."""
    if not system:
        return None
    return _SYSTEM_NAMES.get(system, system)


def resolve_centre(
    *,
    order_code: str | None,
    section: str | None,
    overrides: Mapping[str, Centre] | None = None,
) -> Centre | None:
    """The centre for an order: a caller's order-code override first, then the section code."""
    if overrides and order_code and order_code in overrides:
        return overrides[order_code]
    if section:
        return DEFAULT_SECTION_CENTRES.get(section.strip().upper())
    return None


def split_resident_ids(
    candidates: Iterable[tuple[Identifier, str, bool]],
) -> tuple[str | None, tuple[Identifier, ...], tuple[Notice, ...]]:
    """Pick the national id out of candidate identifiers.

    Each candidate is ``(identifier, location, claims_resident_id)``, where the
    last flag says the sender labelled it a resident ID (by type or system).
    A labelled number that fails GB 11643 stays a local id and yields a
    notice; it never becomes the national id. An unlabelled identifier is a
    local id whatever it looks like.
    """
    national: str | None = None
    local: list[Identifier] = []
    notices: list[Notice] = []
    for identifier, location, claims in candidates:
        if claims:
            parsed = parse_resident_id(identifier.value)
            if parsed is not None:
                if national is None:
                    national = parsed.number
                elif national != parsed.number:
                    notices.append(Notice(location=location, message="a second, different resident ID was ignored"))
                continue
            notices.append(
                Notice(
                    location=location,
                    message="resident ID fails the GB 11643 check digit or date; kept as a local id",
                )
            )
        local.append(identifier)
    return national, tuple(local), tuple(notices)


def in_source(location: str) -> str:
    """A reference to a payload inside the source message, such as ``#OBX[3]-5``.

    It resolves against ``Source.uri``, which whoever stores the message sets. Adapters do not
    hash the message themselves: the blob store hashes it once, and a hash here would cost as
    much as the header parse on a full-size image.
    """
    return "#" + location


def utc_now() -> datetime:
    return datetime.now(UTC)

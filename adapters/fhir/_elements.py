"""FHIR datatypes to envelope values: codings, identifiers, times, patients, organisations."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.identifier import Identifier as FhirIdentifier
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.reference import Reference

from adapters._common import CHINA_TZ, RESIDENT_ID_SYSTEM, split_resident_ids
from hub.envelope import Coding, Identifier, Notice, Patient, Sex
from hub.errors import InvalidMessage
from hub.ids import valid_uscc

__all__ = [
    "USCC_SYSTEM",
    "V2_0203",
    "codes_of",
    "coding_of",
    "identifier_type",
    "institution_code",
    "moment",
    "number",
    "patient_from_identifier",
    "read_patient",
]

# OID of the unified social credit code (统一社会信用代码) namespace, as the samples and write_report use it.
USCC_SYSTEM = "urn:oid:2.16.156.10011.1.5"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# v2-0203 identifier types that say "national person identifier": NI, and NN + ISO 3166 country code.
_RESIDENT_ID_TYPES = frozenset({"NI", "NNCHN"})
_RESIDENT_ID_TEXTS = frozenset({"ID card", "身份证", "居民身份证", "身份证号", "居民身份证号"})
_SEXES: dict[str | None, Sex] = {"male": "male", "female": "female", "other": "other", "unknown": "unknown"}
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def codes_of(concept: CodeableConcept | None) -> Iterable[str]:
    """Every coding code of ``concept``, in order."""
    if concept is None:
        return ()
    return (coding.code for coding in concept.coding or () if coding.code)


def coding_of(concept: CodeableConcept | None) -> Coding | None:
    """The first coding of ``concept`` (display falls back to the concept's text); text alone becomes the code."""
    if concept is None:
        return None
    for coding in concept.coding or ():
        if coding.code:
            return Coding(code=coding.code, system=coding.system, display=coding.display or concept.text)
    if concept.text and concept.text.strip():
        return Coding(code=concept.text.strip(), display=concept.text)
    return None


def identifier_type(identifier: FhirIdentifier) -> str | None:
    concept = identifier.type
    if concept is None:
        return None
    return next(iter(codes_of(concept)), None) or concept.text


def moment(value: object) -> datetime | None:
    """A FHIR dateTime/instant as an aware datetime; None for partial dates, which carry no time of day."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=CHINA_TZ)
    return None


def number(value: Decimal | float | int | None, location: str) -> float | None:
    if value is None:
        return None
    result = float(value)
    if not math.isfinite(result):
        raise InvalidMessage("the number is not finite", location=location)
    return result


def _claims_resident_id(identifier: FhirIdentifier) -> bool:
    if identifier.system == RESIDENT_ID_SYSTEM:
        return True
    concept = identifier.type
    if concept is None:
        return False
    return any(code in _RESIDENT_ID_TYPES for code in codes_of(concept)) or concept.text in _RESIDENT_ID_TEXTS


def _envelope_identifier(identifier: FhirIdentifier) -> Identifier | None:
    if not identifier.value or not identifier.value.strip():
        return None
    return Identifier(value=identifier.value, system=identifier.system, type=identifier_type(identifier))


def read_patient(patient: FhirPatient, path: str) -> tuple[Patient, tuple[Notice, ...]]:
    candidates = []
    for index, identifier in enumerate(patient.identifier or ()):
        local = _envelope_identifier(identifier)
        if local is not None:
            candidates.append((local, f"{path}.identifier[{index}]", _claims_resident_id(identifier)))
    national_id, local_ids, notices = split_resident_ids(candidates)
    birth = patient.birthDate
    return Patient(
        national_id=national_id,
        local_ids=local_ids,
        name=_name(patient),
        sex=_SEXES.get(patient.gender, "unknown"),
        # A partial birthDate ("1962", "1962-11") stays a string in the model: leave it out.
        birth_date=birth if isinstance(birth, date) else None,
    ), notices


def patient_from_identifier(reference: Reference, path: str) -> tuple[Patient, tuple[Notice, ...]]:
    """The patient an identifier-only subject reference names: its identifier and display name."""
    identifier = reference.identifier
    candidates = []
    if identifier is not None:
        local = _envelope_identifier(identifier)
        if local is not None:
            candidates.append((local, f"{path}.identifier", _claims_resident_id(identifier)))
    national_id, local_ids, notices = split_resident_ids(candidates)
    return Patient(national_id=national_id, local_ids=local_ids, name=reference.display), notices


def _name(patient: FhirPatient) -> str | None:
    names = patient.name or []
    chosen = next((n for n in names if n.use == "official"), None) or next((n for n in names if n.use == "usual"), None)
    chosen = chosen or (names[0] if names else None)
    if chosen is None:
        return None
    if chosen.text and chosen.text.strip():
        return chosen.text.strip()
    given = [part for part in chosen.given or () if part]
    family = chosen.family or ""
    if _CJK.search(family) or any(_CJK.search(part) for part in given):
        return (family + "".join(given)) or None  # 张伟: family name first, no space
    return " ".join([*given, family]).strip() or None


def institution_code(identifiers: Iterable[FhirIdentifier] | None) -> str | None:
    """An institution's code: the unified social credit code when there is one, else its first identifier."""
    values = [(ident.system, ident.value.strip()) for ident in identifiers or () if ident.value and ident.value.strip()]
    for system, value in values:
        if system == USCC_SYSTEM:
            return value
    for _, value in values:
        if valid_uscc(value):
            return value
    return values[0][1] if values else None

"""A Report as an R4 DiagnosticReport whose patient and observations travel as contained resources.

Where the envelope has no FHIR element of its own (all extension-free):
- findings: a contained Observation coded LOINC 59776-5 "Procedure findings Narrative" with
  ``valueString``, listed in ``result``; the conclusion goes in ``conclusion``;
- critical report: ``meta.tag`` with v3 ObservationInterpretation ``AA`` ("Critical abnormal"); each
  critical item is a ``conclusionCode`` with its text, and each observation keeps its own flag as
  ``interpretation`` (AA/HH/LL are v3 ObservationInterpretation codes, like HL7 table 0078's);
- the sending institution (``origin``): the ``assigner`` of the order numbers in ``basedOn``, and the
  contained Patient's ``managingOrganization``;
- the study: ``imagingStudy`` as an identifier-only reference (system urn:dicom:uid).
"""

from __future__ import annotations

import math
from typing import Any

from adapters._common import RESIDENT_ID_SYSTEM
from adapters.fhir._elements import USCC_SYSTEM, V2_0203
from adapters.fhir._observations import FINDINGS_CODE
from adapters.fhir._orders import DICOM_UID_SYSTEM
from hub.envelope import Attachment, Centre, Coding, Identifier, Observation, Performer, Report

__all__ = ["write_report"]

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_SECTIONS: dict[Centre, tuple[str, str]] = {
    "lab": ("LAB", "Laboratory"),
    "imaging": ("RAD", "Radiology"),
    "ecg": ("EC", "Electrocardiac"),
    "pathology": ("SP", "Surgical Pathology"),
}
_PATIENT_ID = "patient"


def write_report(report: Report) -> dict[str, Any]:
    """``report`` as a FHIR R4 DiagnosticReport (JSON as a dict) that validates with the R4B model."""
    origin = {"identifier": {"system": USCC_SYSTEM, "value": report.origin}}
    contained: list[dict[str, Any]] = [_patient(report, origin)]
    for index, observation in enumerate(report.observations, start=1):
        contained.append(_observation(observation, f"obs-{index}"))
    if report.findings:
        contained.append(_findings(report))
    section, section_name = _SECTIONS[report.centre]
    return _compact(
        {
            "resourceType": "DiagnosticReport",
            "id": report.report_id,
            "meta": {"tag": [_coding(V3_INTERPRETATION, "AA", "Critical abnormal")]} if report.critical else None,
            "contained": contained,
            "identifier": [
                _compact({"value": report.report_id, "assigner": _institution(report.performer_institution)})
            ],
            "basedOn": [
                {"type": "ServiceRequest", "identifier": {"type": _v2_type(kind), "value": value, "assigner": origin}}
                for kind, value in (("PLAC", report.placer_order), ("ACSN", report.accession))
                if value
            ],
            "status": report.status,
            "category": [{"coding": [_coding(V2_0074, section, section_name)]}],
            "code": {"coding": [_code(report.service)]},
            "subject": {"reference": f"#{_PATIENT_ID}"},
            "issued": report.issued_at.isoformat(),
            "performer": [_performer(report.performer), _institution(report.performer_institution)],
            "imagingStudy": [_study(report.study_uid)] if report.study_uid else None,
            "result": [{"reference": f"#{resource['id']}"} for resource in contained[1:]],
            "conclusion": report.conclusion,
            "conclusionCode": [{"text": item} for item in report.critical_items],
            "presentedForm": [_attachment(attachment) for attachment in report.attachments],
        }
    )


def _performer(performer: Performer | None) -> dict[str, Any] | None:
    if performer is None:
        return None
    identifier = {"value": performer.id} if performer.id else None
    return _compact({"type": "Practitioner", "display": performer.name, "identifier": identifier})


def _study(uid: str) -> dict[str, Any]:
    return {"type": "ImagingStudy", "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}}


def _patient(report: Report, origin: dict[str, Any]) -> dict[str, Any]:
    patient = report.patient
    identifiers = [_identifier(local) for local in patient.local_ids]
    if patient.national_id:
        identifiers.insert(
            0, {"system": RESIDENT_ID_SYSTEM, "type": _v2_type("NNCHN", "居民身份证号"), "value": patient.national_id}
        )
    return _compact(
        {
            "resourceType": "Patient",
            "id": _PATIENT_ID,
            "identifier": identifiers,
            "name": [{"text": patient.name}] if patient.name else None,
            "gender": patient.sex,
            "birthDate": patient.birth_date.isoformat() if patient.birth_date else None,
            "managingOrganization": origin,
        }
    )


def _identifier(identifier: Identifier) -> dict[str, Any]:
    kind = identifier.type
    # v2-0203 codes are short upper-case ASCII (MR, PI, NNCHN); anything else is the sender's own label.
    kind_concept = (
        (_v2_type(kind) if kind.isascii() and kind.isalnum() and kind.isupper() else {"text": kind}) if kind else None
    )
    return _compact({"system": identifier.system, "type": kind_concept, "value": identifier.value})


def _observation(observation: Observation, local_id: str) -> dict[str, Any]:
    value = observation.value
    quantity = value if isinstance(value, float) and math.isfinite(value) else None
    return _compact(
        {
            "resourceType": "Observation",
            "id": local_id,
            "status": observation.status,
            "code": {"coding": [_code(observation.code)]},
            "subject": {"reference": f"#{_PATIENT_ID}"},
            "effectiveDateTime": observation.observed_at.isoformat() if observation.observed_at else None,
            "valueQuantity": _compact({"value": _number(quantity), "unit": observation.unit})
            if quantity is not None
            else None,
            "valueString": str(value) if value is not None and quantity is None else None,
            "interpretation": [{"coding": [_coding(V3_INTERPRETATION, observation.flag)]}]
            if observation.flag
            else None,
            "referenceRange": [{"text": observation.reference_range}] if observation.reference_range else None,
        }
    )


def _findings(report: Report) -> dict[str, Any]:
    system, code = FINDINGS_CODE
    return {
        "resourceType": "Observation",
        "id": "findings",
        "status": report.status,
        "code": {"coding": [_coding(system, code, "Procedure findings Narrative")], "text": "检查所见"},
        "subject": {"reference": f"#{_PATIENT_ID}"},
        "valueString": report.findings,
    }


def _attachment(attachment: Attachment) -> dict[str, Any]:
    return _compact(
        {
            "contentType": attachment.media_type,
            "url": attachment.uri,
            "size": attachment.size,
            "title": attachment.title,
        }
    )


def _institution(code: str | None) -> dict[str, Any] | None:
    return {"type": "Organization", "identifier": {"system": USCC_SYSTEM, "value": code}} if code else None


def _code(coding: Coding) -> dict[str, Any]:
    return _compact(coding.model_dump())


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return _compact({"system": system, "code": code, "display": display})


def _v2_type(code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(V2_0203, code, display)]}


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _compact(element: dict[str, Any]) -> dict[str, Any]:
    """Drop absent values: FHIR JSON has no nulls and no empty arrays."""
    result = {}
    for key, value in element.items():
        kept = [item for item in value if item is not None] if isinstance(value, list) else value
        if kept is not None and kept not in ([], ""):
            result[key] = kept
    return result

"""The FHIR search of recognised results: the registry's answers as a searchset Bundle.

    GET /fhir/DiagnosticReport?patient.identifier=urn:oid:2.16.156.10011.1.3|<id>&code=<system>|<code>

``hub.gateways.http`` routes the request here. One DiagnosticReport per recognised result valid
today, written by the FHIR adapter, with the recognition mark (HR, 浙HR) as a ``meta.tag`` of system
``MARK_SYSTEM`` and the validity window as a ``valuePeriod`` extension ``VALIDITY_EXTENSION``; its
values as contained Observations, its image references as ``presentedForm``; never a conclusion.
With no result, the Bundle holds an OperationOutcome (search mode ``outcome``) saying why.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from adapters import fhir
from hub.envelope import Patient, Report
from hub.store.identity import Person
from hub.store.recognition import RecognisedResult, Registry

__all__ = ["MARK_SYSTEM", "VALIDITY_EXTENSION", "recognised_report", "searchset"]

MARK_SYSTEM = "urn:consortium-hub:recognition-mark"
VALIDITY_EXTENSION = "urn:consortium-hub:fhir:StructureDefinition:recognition-validity"


def searchset(registry: Registry, national_id: str, item: tuple[str, str], who: str, link: str) -> dict[str, Any]:
    """The searchset Bundle of ``item`` for one resident ID number, as ``who`` looked it up (audited)."""
    found = registry.lookup(national_id=national_id, item=item, who=who, via="fhir")
    entries: list[dict[str, Any]] = [
        {"resource": recognised_report(result, found.person), "search": {"mode": "match"}} for result in found.results
    ]
    if not found.results:
        text = found.reason + (f": {found.detail}" if found.detail else "")
        issue = {"severity": "information", "code": "not-found", "diagnostics": text}
        outcome = {"resourceType": "OperationOutcome", "issue": [issue]}
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "total": len(found.results),
        "link": [{"relation": "self", "url": link}],
        "entry": entries,
    }


def recognised_report(result: RecognisedResult, person: Person | None) -> dict[str, Any]:
    """A recognised result as a DiagnosticReport: the adapter's own, with the mark and the window."""
    patient = Patient(
        national_id=result.national_id,
        name=person.name if person else None,
        sex=person.sex if person and person.sex in ("male", "female", "other") else "unknown",
        birth_date=person.birth_date if person else None,
    )
    report = Report(
        report_id=result.source_report_id,
        exam_id=result.exam_id,
        origin=result.origin,
        centre=result.centre,
        status=result.source_status,
        patient=patient,
        service=result.item,
        observations=result.observations,
        attachments=result.attachments,
        performer_institution=result.performer_institution,
        issued_at=result.issued_at,
    )
    resource = fhir.write_report(report)  # no findings or conclusion: the result holds none
    resource["id"] = result.result_id
    resource["meta"] = {"tag": [{"system": MARK_SYSTEM, "code": result.mark, "display": "检查检验结果互认"}]}
    period = {"start": result.valid_from.isoformat(), "end": result.valid_until.isoformat()}
    resource["extension"] = [{"url": VALIDITY_EXTENSION, "valuePeriod": period}]
    return resource

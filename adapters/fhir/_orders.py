"""Facts about orders and reports: order numbers, study UIDs, sections, times."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.specimen import Specimen

from adapters._common import in_source
from adapters.fhir._elements import codes_of, coding_of, moment
from adapters.fhir._graph import Located
from hub.envelope import Attachment, Coding
from hub.errors import InvalidMessage
from hub.ids import derive_exam_id

__all__ = [
    "DICOM_UID_SYSTEM",
    "accession_of",
    "check_code",
    "exam_id_of",
    "order_numbers",
    "presented_forms",
    "report_categories",
    "report_time",
    "service_of",
    "specimen_time",
    "study_uid",
    "uid_of",
]

DICOM_UID_SYSTEM = "urn:dicom:uid"
_PLACER = "PLAC"
_FILLER = frozenset({"ACSN", "FILL"})  # v2-0203: accession number, filler order number


def order_numbers(identifiers: Iterable[Identifier | None]) -> tuple[str | None, str | None]:
    """(placer order number, accession number): PLAC else the first untyped-as-filler identifier; ACSN or FILL."""
    placer = accession = first = None
    for identifier in identifiers:
        if identifier is None or not identifier.value or not identifier.value.strip():
            continue
        value = identifier.value.strip()
        types = set(codes_of(identifier.type))
        if _PLACER in types:
            placer = placer or value
        elif types & _FILLER:
            accession = accession or value
        else:
            first = first or value
    return placer or first, accession


def accession_of(identifiers: Iterable[Identifier]) -> str | None:
    """The first identifier typed ACSN or FILL, ignoring the others."""
    return order_numbers(i for i in identifiers if set(codes_of(i.type)) & _FILLER)[1]


def uid_of(identifiers: Iterable[Identifier | None]) -> str | None:
    for identifier in identifiers:
        if identifier is not None and identifier.system == DICOM_UID_SYSTEM and identifier.value:
            return identifier.value.strip().removeprefix("urn:oid:") or None
    return None


def study_uid(study: ImagingStudy) -> str | None:
    return uid_of(study.identifier or ())


def report_categories(reports: Iterable[DiagnosticReport]) -> list[CodeableConcept]:
    return [category for report in reports for category in report.category or ()]


def report_time(report: DiagnosticReport) -> datetime | None:
    return moment(report.effectiveDateTime) or moment(report.effectivePeriod.start if report.effectivePeriod else None)


def specimen_time(specimen: Specimen) -> datetime | None:
    collection = specimen.collection
    if collection is None:
        return None
    return moment(collection.collectedDateTime) or moment(
        collection.collectedPeriod.start if collection.collectedPeriod else None
    )


def check_code(code: str | None, allowed: frozenset[str], location: str) -> None:
    """Required FHIR bindings, which fhir.resources does not check."""
    if code is not None and code not in allowed:
        raise InvalidMessage(f"must be one of {', '.join(sorted(allowed))}", location=location)


def service_of(code: CodeableConcept | None, location: str) -> Coding:
    service = coding_of(code)
    if service is None:
        raise InvalidMessage("name the exam: a code with a coding or a text", location=location)
    return service


def exam_id_of(origin: str, placer: str | None, accession: str | None, uid: str | None, location: str) -> str:
    if not (placer or accession or uid):
        raise InvalidMessage(
            "give a placer order number (identifier type PLAC), an accession number (ACSN) or a study UID",
            location=location,
        )
    return derive_exam_id(origin, placer_order=placer, accession=accession, study_uid=uid)


def presented_forms(located: Located) -> list[Attachment]:
    """A report's presentedForm: inline data stays in the message (the URI points at it), a URL is kept."""
    report = located.resource
    assert isinstance(report, DiagnosticReport)
    attachments = []
    for index, form in enumerate(report.presentedForm or ()):
        media_type = form.contentType or "application/octet-stream"
        if form.data:
            payload = bytes(form.data)
            attachments.append(
                Attachment(
                    uri=in_source(f"{located.path}.presentedForm[{index}]"),
                    media_type=media_type,
                    size=len(payload),
                    sha256=hashlib.sha256(payload).hexdigest(),
                    title=form.title,
                )
            )
        elif form.url:
            attachments.append(Attachment(uri=form.url, media_type=media_type, size=form.size, title=form.title))
    return attachments

"""One Exam per ServiceRequest (or per DiagnosticReport that answers none) in a validated FHIR message."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier as FhirIdentifier
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.messageheader import MessageHeader
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.practitionerrole import PractitionerRole
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from pydantic import ValidationError

from adapters._common import resolve_centre
from adapters.fhir._elements import (
    codes_of,
    institution_code,
    moment,
    patient_from_identifier,
    read_patient,
)
from adapters.fhir._graph import Graph, Located
from adapters.fhir._links import Links
from adapters.fhir._observations import read_observations
from adapters.fhir._orders import (
    accession_of,
    check_code,
    exam_id_of,
    order_numbers,
    presented_forms,
    report_categories,
    report_time,
    service_of,
    specimen_time,
    study_uid,
    uid_of,
)
from adapters.fhir._parse import Parsed
from hub.envelope import Centre, Exam, Notice, Patient, Priority, Source
from hub.errors import InvalidMessage, MissingField, UnsupportedMessage

__all__ = ["Context", "read_exams"]

T = TypeVar("T")
R = TypeVar("R", bound=Resource)
_PRIORITIES: dict[str, Priority] = {"routine": "routine", "urgent": "urgent", "asap": "urgent", "stat": "stat"}
_URGENCY: dict[Priority, int] = {"routine": 0, "urgent": 1, "stat": 2}
_REQUEST_STATUSES = frozenset({"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"})
_REPORT_STATUSES = frozenset(
    {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended", "cancelled",
     "entered-in-error", "unknown"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Context:
    origin: str | None
    centres: Mapping[str, Centre] | None
    received_at: datetime


def read_exams(parsed: Parsed, context: Context) -> list[Exam]:
    return _Reader(parsed, context).exams()


class _Reader:
    def __init__(self, parsed: Parsed, context: Context) -> None:
        self.context = context
        self.root_path = parsed.path
        self.graph = Graph(parsed.root, parsed.path)
        self.links = Links(self.graph)
        self.header = _message_header(parsed.root)
        self._parsed = parsed
        message_id = parsed.root.id or (self.header.resource.id if self.header else None)
        self.source = Source(format="fhir", message_id=message_id, charset="utf-8", received_at=context.received_at)

    def exams(self) -> list[Exam]:
        requests, reports = self._roots()
        if not requests and not reports:
            raise UnsupportedMessage("no ServiceRequest or DiagnosticReport to read", location=self.root_path)
        exams = [self._guard(self._exam_for_request, located) for located in requests]
        exams += [self._guard(self._exam_for_report, located) for located in reports]
        return exams

    @staticmethod
    def _guard(build: Callable[[Located], Exam], located: Located) -> Exam:
        try:
            return build(located)
        except ValidationError as exc:  # an envelope rule the FHIR models do not know
            raise InvalidMessage(f"cannot make an exam of it: {exc.errors()[0]['msg']}", location=located.path) from exc

    # -- which resources become exams

    def _roots(self) -> tuple[list[Located], list[Located]]:
        if self.header is None:
            listed = [e for e in self.graph.entries if isinstance(e.resource, ServiceRequest)]
            return _unique(listed + self.links.linked_requests()), self.links.orphan_reports
        header = _as(self.header, MessageHeader)
        if not header.focus:
            raise InvalidMessage(
                "name the ServiceRequest, Task or DiagnosticReport the message is about",
                location=f"{self.header.path}.focus",
            )
        requests: list[Located] = []
        reports: list[Located] = []
        for index, reference in enumerate(header.focus):
            location = f"{self.header.path}.focus[{index}]"
            focus = self.graph.resolve(reference, self.header)
            if focus is None:
                raise InvalidMessage("the focus does not resolve to an entry of the message", location=location)
            resource = focus.resource
            if isinstance(resource, ServiceRequest):
                requests.append(focus)
            elif isinstance(resource, Task):
                requests.append(self._task_request(focus))
            elif isinstance(resource, DiagnosticReport):
                request = self.links.request_of_report(focus)
                (requests if request else reports).append(request or focus)
            else:
                raise UnsupportedMessage(
                    f"the hub reads exams; a message about a {resource.get_resource_type()} is not one",
                    location=location,
                )
        return _unique(requests), _unique(reports)

    def _task_request(self, task: Located) -> Located:
        request = self.links.request_of_task(task)
        if request is None:
            raise InvalidMessage(
                "Task.focus or Task.basedOn must refer to a ServiceRequest in the message",
                location=f"{task.path}.focus",
            )
        return request

    # -- exams

    def _exam_for_request(self, located: Located) -> Exam:
        request = _as(located, ServiceRequest)
        path = located.path
        check_code(request.status, _REQUEST_STATUSES, f"{path}.status")
        reports = self.links.reports.get(path, [])
        report_resources = [_as(report, DiagnosticReport) for report in reports]
        for report, resource in zip(reports, report_resources, strict=True):
            check_code(resource.status, _REPORT_STATUSES, f"{report.path}.status")
        patient, notices = self._patient(request.subject, located, f"{path}.subject")
        placer, accession = order_numbers(request.identifier or ())
        readings = read_observations(
            _unique(self.links.observations.get(path, []) + [r for report in reports for r in self._results(report)])
        )
        performed_at = (
            moment(request.occurrenceDateTime)
            or moment(request.occurrencePeriod.start if request.occurrencePeriod else None)
            or _first(report_time(report) for report in report_resources)
            or readings.first_observed_at
            or _first(specimen_time(specimen) for specimen in self.links.specimens_of(located))
        )
        uid = _first(study_uid(study) for study in self.links.studies.get(path, [])) or _first(
            self._report_study_uid(report) for report in reports
        )
        origin = self._origin(
            located,
            requester=request.requester,
            order_identifiers=request.identifier or (),
            patient_reference=request.subject,
            missing_at=f"{path}.requester",
        )
        return Exam(
            exam_id=exam_id_of(origin, placer, accession, uid, f"{path}.identifier"),
            origin=origin,
            centre=self._centre(request.code, [*(request.category or ()), *report_categories(report_resources)], path),
            priority=self._priority(located),
            patient=patient,
            service=service_of(request.code, f"{path}.code"),
            placer_order=placer,
            accession=accession,
            study_uid=uid,
            performed_at=performed_at,
            observations=tuple(readings.observations),
            attachments=tuple(a for report in reports for a in presented_forms(report)),
            waveform=readings.waveform,
            source=self.source,
            notices=notices + self._parsed.notices,
        )

    def _exam_for_report(self, located: Located) -> Exam:
        report = _as(located, DiagnosticReport)
        path = located.path
        check_code(report.status, _REPORT_STATUSES, f"{path}.status")
        patient, notices = self._patient(report.subject, located, f"{path}.subject")
        order_identifiers = [ref.identifier for ref in report.basedOn or () if ref.identifier is not None]
        placer, accession = order_numbers(order_identifiers)
        accession = accession or accession_of(report.identifier or ())
        readings = read_observations(self._results(located))
        uid = self._report_study_uid(located)
        origin = self._origin(
            located,
            requester=None,
            order_identifiers=order_identifiers,
            patient_reference=report.subject,
            missing_at=f"{path}.basedOn",
        )
        return Exam(
            exam_id=exam_id_of(origin, placer, accession, uid, f"{path}.basedOn"),
            origin=origin,
            centre=self._centre(report.code, list(report.category or ()), path),
            patient=patient,
            service=service_of(report.code, f"{path}.code"),
            placer_order=placer,
            accession=accession,
            study_uid=uid,
            performed_at=report_time(report) or readings.first_observed_at,
            observations=tuple(readings.observations),
            attachments=tuple(presented_forms(located)),
            waveform=readings.waveform,
            source=self.source,
            notices=notices + self._parsed.notices,
        )

    # -- parts of an exam

    def _patient(
        self, reference: Reference | None, within: Located, location: str
    ) -> tuple[Patient, tuple[Notice, ...]]:
        if reference is None:
            raise MissingField("name the patient: a subject reference to a Patient", location=location)
        if reference.reference:
            found = self.graph.located_as(reference, within, FhirPatient, location)
            if found is None:
                raise InvalidMessage(
                    f"{reference.reference!r} does not resolve to a Patient in the message: include the Patient "
                    "as an entry (or a contained resource for a lone resource)",
                    location=location,
                )
            return read_patient(_as(found, FhirPatient), found.path)
        if reference.identifier is not None:
            return patient_from_identifier(reference, location)
        raise InvalidMessage(
            "the subject needs a reference to a Patient or the patient's identifier", location=location
        )

    def _origin(
        self,
        located: Located,
        *,
        requester: Reference | None,
        order_identifiers: Iterable[FhirIdentifier],
        patient_reference: Reference | None,
        missing_at: str,
    ) -> str:
        if self.context.origin:
            return self.context.origin
        if self.header is not None:
            code = self._institution(_as(self.header, MessageHeader).sender, self.header)
            if code:
                return code
            missing_at = f"{self.header.path}.sender"
        code = self._institution(requester, located)
        if code:
            return code
        # The institution that assigned the order number is the one that placed the order.
        for identifier in order_identifiers:
            code = self._institution(identifier.assigner, located)
            if code:
                return code
        patient = self.graph.resolve(patient_reference, located) if patient_reference else None
        if patient is not None and isinstance(patient.resource, FhirPatient):
            code = self._institution(patient.resource.managingOrganization, patient)
            if code:
                return code
        raise InvalidMessage(
            "name the sending institution: a reference to an Organization with its unified social credit code",
            location=missing_at,
        )

    def _institution(self, reference: Reference | None, within: Located) -> str | None:
        if reference is None:
            return None
        found = self.graph.resolve(reference, within)
        if found is not None:
            if isinstance(found.resource, Organization):
                code = institution_code(found.resource.identifier)
                if code:
                    return code
            elif isinstance(found.resource, PractitionerRole):
                return self._institution(found.resource.organization, found)
        return institution_code([reference.identifier]) if reference.identifier is not None else None

    def _centre(self, code: CodeableConcept | None, categories: list[CodeableConcept], path: str) -> Centre:
        order_code = next(iter(codes_of(code)), None)
        sections: list[str | None] = [section for category in categories for section in codes_of(category)]
        for section in sections or [None]:
            centre = resolve_centre(order_code=order_code, section=section, overrides=self.context.centres)
            if centre is not None:
                return centre
        raise InvalidMessage(
            "cannot tell which centre reads this: give a v2-0074 section code (LAB, RAD, CT, US, EC, SP...) in "
            "category, or have the hub map the order code",
            location=f"{path}.category",
        )

    def _priority(self, located: Located) -> Priority:
        # The most urgent of the order's and its Tasks' priorities: a clinical urgency is never lowered.
        stated = [(_as(located, ServiceRequest).priority, f"{located.path}.priority")]
        tasks = self.links.tasks.get(located.path, [])
        stated += [(_as(task, Task).priority, f"{task.path}.priority") for task in tasks]
        result: Priority = "routine"
        for code, location in stated:
            if code is None:
                continue
            priority = _PRIORITIES.get(code)
            if priority is None:
                raise InvalidMessage("priority must be routine, urgent, asap or stat", location=location)
            if _URGENCY[priority] > _URGENCY[result]:
                result = priority
        return result

    def _results(self, located: Located) -> list[Located]:
        report = _as(located, DiagnosticReport)
        results = []
        for index, reference in enumerate(report.result or ()):
            found = self.graph.located_as(reference, located, FhirObservation, f"{located.path}.result[{index}]")
            if found is not None:
                results.append(found)
        return results

    def _report_study_uid(self, located: Located) -> str | None:
        report = _as(located, DiagnosticReport)
        for index, reference in enumerate(report.imagingStudy or ()):
            study = self.graph.located_as(reference, located, ImagingStudy, f"{located.path}.imagingStudy[{index}]")
            uid = study_uid(_as(study, ImagingStudy)) if study is not None else uid_of([reference.identifier])
            if uid:
                return uid
        return None


def _message_header(root: Resource) -> Located | None:
    if not isinstance(root, Bundle) or root.type != "message":
        return None
    first = root.entry[0].resource if root.entry else None
    if not isinstance(first, MessageHeader):
        raise InvalidMessage("a message Bundle starts with its MessageHeader", location="Bundle.entry[0].resource")
    return Located(first, "Bundle.entry[0].resource")


def _as(located: Located, kind: type[R]) -> R:
    """The resource, typed: callers know its type from how they found it."""
    resource = located.resource
    assert isinstance(resource, kind)
    return resource


def _unique(located: Iterable[Located]) -> list[Located]:
    seen: dict[str, Located] = {}
    for item in located:
        seen.setdefault(item.path, item)
    return list(seen.values())


def _first(values: Iterator[T | None]) -> T | None:
    return next((value for value in values if value is not None), None)

"""Which reports, observations, studies, specimens and tasks belong to which ServiceRequest."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.specimen import Specimen
from fhir.resources.R4B.task import Task

from adapters.fhir._graph import Graph, Located

__all__ = ["Links"]


class Links:
    """One pass over the message's resources, keyed by the path of the ServiceRequest each refers to.

    References that resolve to nothing (identifier-only, or outside the message) link nothing:
    they are not errors here.
    """

    def __init__(self, graph: Graph) -> None:
        self._graph = graph
        self.reports: defaultdict[str, list[Located]] = defaultdict(list)
        self.observations: defaultdict[str, list[Located]] = defaultdict(list)
        self.studies: defaultdict[str, list[ImagingStudy]] = defaultdict(list)
        self.specimens: defaultdict[str, list[Specimen]] = defaultdict(list)
        self.tasks: defaultdict[str, list[Located]] = defaultdict(list)
        self.orphan_reports: list[Located] = []
        self._linked: dict[str, Located] = {}
        for located in graph.entries:
            resource = located.resource
            if isinstance(resource, DiagnosticReport):
                requests = self._requests(resource.basedOn, located)
                for request in requests:
                    self.reports[request.path].append(located)
                    self._linked.setdefault(request.path, request)
                if not requests:
                    self.orphan_reports.append(located)
            elif isinstance(resource, Observation):
                for request in self._requests(resource.basedOn, located):
                    self.observations[request.path].append(located)
            elif isinstance(resource, ImagingStudy):
                for request in self._requests(resource.basedOn, located):
                    self.studies[request.path].append(resource)
            elif isinstance(resource, Specimen):
                for request in self._requests(resource.request, located):
                    self.specimens[request.path].append(resource)
            elif isinstance(resource, Task):
                for request in self._requests([resource.focus, *(resource.basedOn or ())], located):
                    self.tasks[request.path].append(located)

    def _requests(self, references: Iterable[Reference | None] | None, within: Located) -> list[Located]:
        found = []
        for reference in references or ():
            target = self._graph.resolve(reference, within)
            if target is not None and isinstance(target.resource, ServiceRequest):
                found.append(target)
        return found

    def linked_requests(self) -> list[Located]:
        """ServiceRequests that reports answer, wherever they sit (a lone report may contain its order)."""
        return list(self._linked.values())

    def request_of_report(self, report: Located) -> Located | None:
        resource = report.resource
        assert isinstance(resource, DiagnosticReport)
        return next(iter(self._requests(resource.basedOn, report)), None)

    def request_of_task(self, task: Located) -> Located | None:
        resource = task.resource
        assert isinstance(resource, Task)
        return next(iter(self._requests([resource.focus, *(resource.basedOn or ())], task)), None)

    def specimens_of(self, request: Located) -> list[Specimen]:
        resource = request.resource
        assert isinstance(resource, ServiceRequest)
        listed = []
        for reference in resource.specimen or ():
            found = self._graph.resolve(reference, request)
            if found is not None and isinstance(found.resource, Specimen):
                listed.append(found.resource)
        return listed + self.specimens.get(request.path, [])

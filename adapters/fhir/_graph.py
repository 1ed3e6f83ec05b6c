"""The resources of one message, where each sits (its FHIR path), and reference resolution between them."""

from __future__ import annotations

from typing import NamedTuple

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.domainresource import DomainResource
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource

from hub.errors import InvalidMessage

__all__ = ["Graph", "Located"]


class Located(NamedTuple):
    """A resource and its FHIR path; ``scope`` is the resource whose ``contained`` answers "#id" references."""

    resource: Resource
    path: str
    scope: Located | None = None  # None: the resource is its own scope

    @property
    def scope_root(self) -> Located:
        return self.scope if self.scope is not None else self


class Graph:
    """Indexes a Bundle's entries (or one lone resource) by fullUrl and by "Type/id"."""

    def __init__(self, root: Resource, root_path: str) -> None:
        self.entries: list[Located] = []
        self._by_url: dict[str, Located] = {}
        self._by_type_id: dict[str, Located] = {}
        if isinstance(root, Bundle):
            for index, entry in enumerate(root.entry or ()):
                if entry.resource is None:
                    continue
                located = Located(entry.resource, f"{root_path}.entry[{index}].resource")
                self.entries.append(located)
                if entry.fullUrl:
                    self._by_url.setdefault(_unversioned(entry.fullUrl), located)
                if entry.resource.id:
                    self._by_type_id.setdefault(f"{entry.resource.get_resource_type()}/{entry.resource.id}", located)
        else:
            self.entries.append(Located(root, root_path))

    def resolve(self, reference: Reference | None, within: Located) -> Located | None:
        """The resource ``reference`` points at, or None when it is identifier-only or points outside."""
        target = reference.reference if reference is not None else None
        if not target:
            return None
        if target.startswith("#"):
            return _contained(within.scope_root, target[1:])
        target = _unversioned(target)
        found = self._by_url.get(target)
        if found is None and "://" not in target and not target.startswith("urn:"):
            # A relative "Type/id" reference; the spec resolves it against the entry's base URL, and a
            # message from one sender has one base, so type and id are enough.
            found = self._by_type_id.get(target)
        return found

    def located_as(
        self, reference: Reference | None, within: Located, kind: type[Resource], location: str
    ) -> Located | None:
        found = self.resolve(reference, within)
        if found is not None and not isinstance(found.resource, kind):
            raise InvalidMessage(
                f"must refer to a {kind.get_resource_type()}, not a {found.resource.get_resource_type()}",
                location=location,
            )
        return found


def _contained(scope: Located, local_id: str) -> Located | None:
    resource = scope.resource
    if not isinstance(resource, DomainResource):
        return None
    for index, inner in enumerate(resource.contained or ()):
        if inner.id == local_id:
            return Located(inner, f"{scope.path}.contained[{index}]", scope)
    return None


def _unversioned(url: str) -> str:
    head, marker, _ = url.partition("/_history/")
    return head if marker else url

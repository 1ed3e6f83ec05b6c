"""The person index: who a patient is across institutions, matched on a valid resident ID number.

    persons = PersonIndex(database)
    resolution = persons.resolve(report.patient, report.origin)   # Resolution(person_id, new, conflicts)
    persons.by_national_id("110105194912310025")                   # Person | None
    persons.by_local_id("12330112472334561L", "MR0001")            # any system of that institution
    persons.conflicts()                                             # every conflict recorded

Rules:
- Patients are matched on ``Patient.national_id`` only, which only ever holds a number that passes
  GB 11643 (check digit and birth date). Names, birth dates and local ids never merge two people.
- Every local id a message carries, (institution, system, value), is linked to exactly one person.
  A patient with no national id gets the person its local ids are already linked to, else a person
  of its own. A later message that carries both that local id and a national id links the two: the
  local-only person is merged into the national id's person (its local ids move, and the old row
  keeps ``merged_into``, so a person id once handed out still resolves).
- A person keeps the first name, sex and birth date it is given, and fills gaps later. A new person
  takes sex and birth date from the ID number itself. A message that says otherwise (the same id
  with another name, sex or birth date), or a local id that is already another national id's, is a
  ``Conflict``: recorded once, returned, and the person is not overwritten.

Names and ID numbers are patient data: this module logs neither, and the ``repr`` of a ``Person``
or ``Conflict`` leaves them out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import Date, ForeignKey, Index, String, UniqueConstraint, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from hub.envelope import Patient
from hub.ids import parse_resident_id
from hub.store.db import Base, Database, UtcDateTime

__all__ = [
    "Conflict",
    "ConflictField",
    "ConflictRow",
    "LocalIdRow",
    "Person",
    "PersonIndex",
    "PersonRow",
    "Resolution",
    "current",
    "unit_of_work",
]

T = TypeVar("T")
ConflictField = Literal["name", "sex", "birth_date", "local_id"]
_RETRIES = 3  # a unit of work that lost a race for a new national id or local id is tried again


class PersonRow(Base):
    __tablename__ = "persons"

    id: Mapped[int] = mapped_column(primary_key=True)
    national_id: Mapped[str | None] = mapped_column(String(18), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    sex: Mapped[str] = mapped_column(String(8))
    birth_date: Mapped[date | None] = mapped_column(Date)
    merged_into: Mapped[int | None] = mapped_column(ForeignKey("persons.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LocalIdRow(Base):
    __tablename__ = "person_local_ids"
    __table_args__ = (
        UniqueConstraint("institution", "system", "value"),
        Index("ix_person_local_ids_institution_value", "institution", "value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), index=True)
    institution: Mapped[str] = mapped_column(String(64))
    system: Mapped[str] = mapped_column(String(255))  # "" when the sender named no system
    value: Mapped[str] = mapped_column(String(128))
    linked_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ConflictRow(Base):
    __tablename__ = "person_conflicts"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), index=True)
    field: Mapped[str] = mapped_column(String(16))
    held: Mapped[str] = mapped_column(String(255))  # what the index keeps
    incoming: Mapped[str] = mapped_column(String(255))  # what the message said
    origin: Mapped[str] = mapped_column(String(64))  # the institution that said it
    detected_at: Mapped[datetime] = mapped_column(UtcDateTime)


@dataclass(frozen=True, slots=True)
class Person:
    id: int
    national_id: str | None = dataclasses.field(repr=False)
    name: str | None = dataclasses.field(repr=False)
    sex: str
    birth_date: date | None = dataclasses.field(repr=False)
    local_ids: tuple[tuple[str, str, str], ...] = dataclasses.field(
        default=(), repr=False
    )  # (institution, system, value)


@dataclass(frozen=True, slots=True)
class Conflict:
    person_id: int
    field: ConflictField
    held: str = dataclasses.field(repr=False)
    incoming: str = dataclasses.field(repr=False)
    origin: str
    detected_at: datetime


@dataclass(frozen=True, slots=True)
class Resolution:
    person_id: int
    new: bool
    conflicts: tuple[Conflict, ...] = ()


class PersonIndex:
    def __init__(self, database: Database) -> None:
        self.database = database

    def resolve(self, patient: Patient, origin: str, *, session: Session | None = None) -> Resolution:
        """The person ``patient`` (as ``origin`` sent it) is, made or linked as needed.

        With ``session``, the work joins the caller's unit of work (which then retries a lost race).
        """
        if session is not None:
            return _Resolver(session, origin, datetime.now(UTC)).resolve(patient)
        return unit_of_work(self.database, lambda own: _Resolver(own, origin, datetime.now(UTC)).resolve(patient))

    def person(self, person_id: int, *, session: Session | None = None, local_ids: bool = True) -> Person | None:
        """The person with that id; a merged person's id gives the person it was merged into."""
        with _session(self.database, session) as s:
            row = s.get(PersonRow, person_id)
            return _person(s, current(s, row), local_ids) if row is not None else None

    def by_national_id(
        self, national_id: str, *, session: Session | None = None, local_ids: bool = True
    ) -> Person | None:
        """The person with that resident ID number; ``local_ids=False`` spares the query for their links."""
        resident = parse_resident_id(national_id)
        if resident is None:
            return None
        with _session(self.database, session) as s:
            row = s.scalar(select(PersonRow).where(PersonRow.national_id == resident.number))
            return _person(s, row, local_ids) if row is not None else None

    def by_local_id(self, institution: str, value: str, system: str | None = None) -> Person | None:
        """The person ``institution`` knows by ``value``; with no ``system``, under any of its systems.

        ValueError when, with no system, the value names different people under different systems.
        """
        with self.database.session() as s:
            query = select(LocalIdRow).where(LocalIdRow.institution == institution, LocalIdRow.value == value)
            if system is not None:
                query = query.where(LocalIdRow.system == system)
            rows = s.scalars(query).all()
            people = {current(s, s.get(PersonRow, row.person_id)).id for row in rows}
            if len(people) > 1:
                raise ValueError(f"{len(people)} people have that local id at {institution}; give its system")
            return self.person(people.pop(), session=s) if people else None

    def conflicts(self, person_id: int | None = None) -> list[Conflict]:
        with self.database.session() as s:
            query = select(ConflictRow).order_by(ConflictRow.id)
            if person_id is not None:
                query = query.where(ConflictRow.person_id == person_id)
            return [_conflict(row) for row in s.scalars(query)]


def unit_of_work(database: Database, work: Callable[[Session], T]) -> T:
    """``work`` in a unit of work, run again when it lost a race for a unique row (a new person, a link)."""
    for attempt in range(_RETRIES):
        try:
            with database.session() as session:
                return work(session)
        except IntegrityError:
            if attempt == _RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def current(session: Session, row: PersonRow | None) -> PersonRow:
    """The person a row stands for now, following merges."""
    assert row is not None
    while row.merged_into is not None:
        merged = session.get(PersonRow, row.merged_into)
        assert merged is not None
        row = merged
    return row


class _Resolver:
    """One patient's resolution, inside one unit of work."""

    def __init__(self, session: Session, origin: str, now: datetime) -> None:
        self.session = session
        self.origin = origin
        self.now = now
        self.conflicts: list[Conflict] = []

    def resolve(self, patient: Patient) -> Resolution:
        keys = list(dict.fromkeys((self.origin, i.system or "", i.value) for i in patient.local_ids))
        links = self._links(keys)
        linked = {
            key: current(self.session, self.session.get(PersonRow, link.person_id)) for key, link in links.items()
        }
        new = False
        resident = parse_resident_id(patient.national_id) if patient.national_id else None
        if resident is not None:  # Patient holds valid numbers only; the number is upper-cased (x -> X)
            person = self.session.scalar(select(PersonRow).where(PersonRow.national_id == resident.number))
            if person is None:
                person = next((p for p in linked.values() if p.national_id is None), None)
                if person is not None:
                    person.national_id = resident.number
                else:
                    person, new = self._new(resident.number), True
                self._demographics(person, None, resident.sex, resident.birth_date)  # the number's own facts first
            for (_, system, value), other in linked.items():
                if other is person or other.merged_into == person.id:
                    continue
                if other.national_id is None:
                    self._merge(other, person)
                else:  # the local id stays with the person it was first linked to
                    self._conflict(person, "local_id", f"person {other.id}", f"{system}|{value}")
        elif linked:
            person = min(linked.values(), key=lambda p: p.id)
            for (_, system, value), other in linked.items():
                if other is not person:
                    self._conflict(person, "local_id", f"person {other.id}", f"{system}|{value}")
        else:
            person, new = self._new(None), True
        for institution, system, value in keys:
            if (institution, system, value) not in links:
                link = LocalIdRow(
                    person_id=person.id, institution=institution, system=system, value=value, linked_at=self.now
                )
                self.session.add(link)
        self._demographics(person, patient.name, patient.sex, patient.birth_date)
        return Resolution(person.id, new, tuple(self.conflicts))

    def _links(self, keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], LocalIdRow]:
        if not keys:
            return {}
        query = select(LocalIdRow).where(
            LocalIdRow.institution == self.origin, LocalIdRow.value.in_({value for _, _, value in keys})
        )
        wanted = set(keys)
        return {key: row for row in self.session.scalars(query) if (key := _key(row)) in wanted}

    def _new(self, national_id: str | None) -> PersonRow:
        person = PersonRow(national_id=national_id, sex="unknown", created_at=self.now)
        self.session.add(person)
        self.session.flush()  # its id, for the links
        return person

    def _merge(self, other: PersonRow, person: PersonRow) -> None:
        self.session.flush()
        self.session.execute(
            update(LocalIdRow).where(LocalIdRow.person_id == other.id).values(person_id=person.id),
            execution_options={"synchronize_session": "fetch"},
        )
        other.merged_into = person.id
        self._demographics(person, other.name, other.sex, other.birth_date)

    def _demographics(self, person: PersonRow, name: str | None, sex: str, birth_date: date | None) -> None:
        name = name.strip() if name else None
        if name and person.name and _spaceless(name) != _spaceless(person.name):  # 张 三 is 张三
            self._conflict(person, "name", person.name, name)
        elif name and not person.name:
            person.name = name
        if sex != "unknown" and person.sex not in ("unknown", sex):
            self._conflict(person, "sex", person.sex, sex)
        elif sex != "unknown":
            person.sex = sex
        if birth_date and person.birth_date and birth_date != person.birth_date:
            self._conflict(person, "birth_date", person.birth_date.isoformat(), birth_date.isoformat())
        elif birth_date:
            person.birth_date = birth_date

    def _conflict(self, person: PersonRow, kind: ConflictField, held: str, incoming: str) -> None:
        self.session.flush()
        known = self.session.scalar(
            select(ConflictRow).where(
                ConflictRow.person_id == person.id,
                ConflictRow.field == kind,
                ConflictRow.incoming == incoming,
                ConflictRow.origin == self.origin,
            )
        )
        if known is None:
            known = ConflictRow(
                person_id=person.id, field=kind, held=held, incoming=incoming, origin=self.origin, detected_at=self.now
            )
            self.session.add(known)
        self.conflicts.append(_conflict(known))


def _spaceless(name: str) -> str:
    return "".join(name.split())


def _key(row: LocalIdRow) -> tuple[str, str, str]:
    return row.institution, row.system, row.value


def _person(session: Session, row: PersonRow, local_ids: bool = True) -> Person:
    keys: tuple[tuple[str, str, str], ...] = ()
    if local_ids:
        links = session.scalars(select(LocalIdRow).where(LocalIdRow.person_id == row.id).order_by(LocalIdRow.id))
        keys = tuple(_key(link) for link in links)
    return Person(row.id, row.national_id, row.name, row.sex, row.birth_date, keys)


def _conflict(row: ConflictRow) -> Conflict:
    kind: Any = row.field
    return Conflict(row.person_id, kind, row.held, row.incoming, row.origin, row.detected_at)


@contextmanager
def _session(database: Database, session: Session | None) -> Iterator[Session]:
    """The caller's session when given, else a unit of work of our own."""
    if session is not None:
        yield session
        return
    with database.session() as own:
        yield own

"""The exam ledger: every exam's state, timestamps and SLA due time, from the hub's events.

    ledger = Ledger(database, config)
    ledger.record(events)                     # one transaction; returns how many transitions were new
    ledger.exam("ex-...").state               # "delivered"
    ledger.sla_report(since=...)              # per member and centre: volume, median, p90, breach rate

An exam moves received -> queued -> in_reading -> preliminary -> final ->
delivered, and may be amended, cancelled or parked. Each event becomes one
transition row, keyed by (exam, transition, report): a redelivered event
inserts nothing. The exam row is then derived again from all its transitions,
so it does not depend on the order events arrive in: a delivery seen before
the exam's in_reading keeps the exam delivered and still fills in its
in_reading time. The state follows the latest report (by its issued_at): a
cancelled report is final; a delivered one makes the exam delivered, a parked
one parked; else the state is the report's status. An exam its worker parked
stays parked until a report comes. The ``ledger_alerts`` table is here too, so
that a critical report's alert is recorded in the same transaction as its
event; ``hub.store.alerts`` works with it.

Turnaround runs from ``queued`` (the hub had the exam and answered its sender)
to the first report a clinician can act on: preliminary, final or amended,
not cancelled; an ECG pre-read counts as soon as it is issued as a
preliminary report. Its time is when the hub published the report
(``report.issued``), by the hub's clock; only a report the ledger knows from
its delivery alone is timed by its issued_at. An exam is due at queued +
``config.sla(centre, priority)`` and breached when that first report came
after it, or has not come and it has passed.

Percentiles are computed in Python, the same on SQLite and PostgreSQL: the
median is the mean of the middle two, p90 the nearest rank (the smallest
turnaround that at least 90% of exams meet).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from hub.alerts import AlertKind, alert_id
from hub.config import Config
from hub.envelope import Centre, Priority
from hub.events import Event
from hub.store.db import Base, Database, UtcDateTime

__all__ = [
    "ACTIONABLE",
    "STATES",
    "ExamRecord",
    "Ledger",
    "LedgerAlert",
    "LedgerExam",
    "LedgerTransition",
    "SlaFigures",
    "Transition",
    "alert_row",
    "derive",
    "insert_ignoring",
    "record_of",
]

STATES = ("received", "queued", "in_reading", "preliminary", "final", "delivered", "amended", "cancelled", "parked")
ACTIONABLE = ("preliminary", "final", "amended")  # reports a clinician can act on: they end the turnaround
_REPORT_RANK = {"preliminary": 0, "final": 1, "amended": 2, "cancelled": 3}  # the later version among equal times
_EXAM_STEPS = ("in_reading", "queued", "received")  # the state of an exam without reports, most advanced first
_EARLIEST = datetime.min.replace(tzinfo=UTC)
T = TypeVar("T")


# -- the tables


class LedgerExam(Base):
    __tablename__ = "ledger_exams"

    exam_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    origin: Mapped[str] = mapped_column(String(64))
    centre: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str | None] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    in_reading_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    preliminary_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    final_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    amended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    parked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    first_report_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    report_id: Mapped[str | None] = mapped_column(String(64))  # the latest report
    critical: Mapped[bool] = mapped_column(Boolean)
    critical_count: Mapped[int] = mapped_column(Integer)
    breached: Mapped[bool] = mapped_column(Boolean)  # set, with its alert, when the SLA check finds it late
    # Still for the SLA check to look at: due, not breached yet, and no report on time; so each tick
    # reads the few open exams through the index, not every exam that was ever due.
    sla_watch: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_ledger_exams_origin_queued_at", "origin", "queued_at"),
        Index("ix_ledger_exams_queued_at", "queued_at"),
        Index("ix_ledger_exams_sla_watch_due_at", "sla_watch", "due_at"),
    )


class LedgerTransition(Base):
    __tablename__ = "ledger_transitions"

    exam_id: Mapped[str] = mapped_column(String(64), ForeignKey("ledger_exams.exam_id"), primary_key=True)
    transition: Mapped[str] = mapped_column(String(16), primary_key=True)
    report_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for the exam's own transitions
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    report_status: Mapped[str | None] = mapped_column(String(16))
    issued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    critical: Mapped[bool | None] = mapped_column(Boolean)
    critical_count: Mapped[int | None] = mapped_column(Integer)
    endpoint: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[str | None] = mapped_column(String(200))


class LedgerAlert(Base):
    __tablename__ = "ledger_alerts"

    alert_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    level: Mapped[int] = mapped_column(Integer)
    institution: Mapped[str] = mapped_column(String(64))  # who must act on it
    exam_id: Mapped[str] = mapped_column(String(64), index=True)
    origin: Mapped[str] = mapped_column(String(64))
    centre: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str | None] = mapped_column(String(8))
    report_id: Mapped[str | None] = mapped_column(String(64))
    escalates: Mapped[str | None] = mapped_column(String(40))
    raised_at: Mapped[datetime] = mapped_column(UtcDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    critical_count: Mapped[int] = mapped_column(Integer)
    escalated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # None: still to go out on hub.alerts

    __table_args__ = (
        Index("ix_ledger_alerts_institution_raised_at", "institution", "raised_at"),
        Index("ix_ledger_alerts_acknowledged_at_raised_at", "acknowledged_at", "raised_at"),  # the escalation check
        Index("ix_ledger_alerts_published_at", "published_at"),  # the outbox
    )


# -- what the ledger hands out


@dataclass(frozen=True, slots=True)
class Transition:
    transition: str
    at: datetime
    report_id: str | None
    report_status: str | None
    issued_at: datetime | None
    critical: bool | None
    critical_count: int | None
    endpoint: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class ExamRecord:
    exam_id: str
    origin: str
    centre: Centre
    priority: Priority | None
    state: str
    received_at: datetime | None
    queued_at: datetime | None
    in_reading_at: datetime | None
    preliminary_at: datetime | None
    final_at: datetime | None
    delivered_at: datetime | None
    amended_at: datetime | None
    cancelled_at: datetime | None
    parked_at: datetime | None
    first_report_at: datetime | None
    due_at: datetime | None
    report_id: str | None
    critical: bool
    critical_count: int
    breached: bool
    updated_at: datetime
    transitions: tuple[Transition, ...] = ()

    @property
    def turnaround(self) -> timedelta | None:
        """From queued to the first report a clinician can act on."""
        if self.queued_at is None or self.first_report_at is None:
            return None
        return self.first_report_at - self.queued_at


@dataclass(frozen=True, slots=True)
class SlaFigures:
    """One member's figures for one centre over a period."""

    origin: str
    centre: Centre
    volume: int  # exams queued in the period
    reported: int  # of which have a report a clinician can act on
    median: timedelta | None
    p90: timedelta | None
    breaches: int  # reported after their due time, or still without a report past it

    @property
    def breach_rate(self) -> float:
        return self.breaches / self.volume if self.volume else 0.0


def insert_ignoring(database: Database, table: Any) -> Any:
    """INSERT into ``table`` (or a model) that skips rows whose key is there (ON CONFLICT DO NOTHING), on either."""
    dialect = postgresql if database.engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def record_of(cls: type[T], row: Any, **extra: Any) -> T:
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls) if f.name not in extra}, **extra)  # type: ignore[arg-type]


# -- events to transitions, transitions to an exam's row


def _clip(text: str | None) -> str | None:
    return text[:200] if text else None  # the column's length: an over-long value must not refuse the batch


def _transitions(event: Event) -> list[dict[str, Any]]:
    base = {"exam_id": event.exam_id, "report_id": event.report_id or "", "at": event.at, "report_status": None,
            "issued_at": None, "critical": None, "critical_count": None, "endpoint": _clip(event.endpoint),
            "detail": _clip(event.detail)}  # fmt: skip
    report = {"report_status": event.report_status, "issued_at": event.issued_at, "critical": event.critical,
              "critical_count": event.critical_count}  # fmt: skip
    match event.kind:
        case "exam.accepted":
            return [
                base | {"transition": "received", "at": event.received_at or event.at},
                base | {"transition": "queued"},
            ]
        case "exam.in_reading":
            return [base | {"transition": "in_reading"}]
        case "exam.parked" | "report.parked":
            return [base | report | {"transition": "parked"}]
        case "report.delivered":
            return [base | report | {"transition": "delivered"}]
        case "report.issued" if event.report_status is not None:
            return [base | report | {"transition": event.report_status}]
    return []


@dataclass
class _Report:
    status: str | None = None
    issued_at: datetime | None = None  # the centre's signing time
    published_at: datetime | None = None  # the hub's report.issued time
    delivered: bool = False
    parked: bool = False

    @property
    def order(self) -> tuple[datetime, int]:
        return self.issued_at or self.published_at or _EARLIEST, _REPORT_RANK.get(self.status or "", -1)


def derive(transitions: Iterable[Any], sla: timedelta | None) -> dict[str, Any]:
    """An exam's derived columns from all of its transitions (ledger_transitions rows), in any order.

    ``sla`` is its turnaround target, None while its priority is not known.
    """
    first: dict[str, datetime] = {}
    reports: dict[str, _Report] = {}
    critical, critical_count = False, 0
    for t in transitions:
        first[t.transition] = min(first.get(t.transition, t.at), t.at)
        if t.critical:
            critical, critical_count = True, max(critical_count, t.critical_count or 0)
        if not t.report_id:
            continue
        report = reports.setdefault(t.report_id, _Report())
        report.status = report.status or t.report_status
        report.issued_at = report.issued_at or t.issued_at
        if t.transition in _REPORT_RANK:
            report.status, report.published_at = t.transition, t.at
        report.delivered |= t.transition == "delivered"
        report.parked |= t.transition == "parked"
    actionable = [r.published_at or r.issued_at for r in reports.values() if r.status in ACTIONABLE]
    latest_id = max(reports, key=lambda rid: reports[rid].order) if reports else None
    if latest_id is not None:
        latest = reports[latest_id]
        if latest.status == "cancelled":
            state = "cancelled"
        elif latest.delivered or latest.parked:
            state = "delivered" if latest.delivered else "parked"
        else:
            state = latest.status or "received"
    else:
        state = "parked" if "parked" in first else next((s for s in _EXAM_STEPS if s in first), "received")
    queued = first.get("queued")
    due = queued + sla if queued and sla else None
    columns = {f"{name}_at": first.get(name) for name in STATES if name != "queued"}
    return columns | {
        "state": state,
        "queued_at": queued,
        "first_report_at": min((at for at in actionable if at is not None), default=None),
        "due_at": due,
        "report_id": latest_id,
        "critical": critical,
        "critical_count": critical_count,
    }


_EXAMS: Table = LedgerExam.__table__  # type: ignore[assignment]
_TRANSITIONS: Table = LedgerTransition.__table__  # type: ignore[assignment]
_DERIVED_FROM = [_TRANSITIONS.c[name] for name in ("exam_id", "transition", "report_id", "at", "report_status",
                                                 "issued_at", "critical", "critical_count")]  # fmt: skip
_NEW_EXAM: dict[str, Any] = {"state": "received", "critical": False, "critical_count": 0, "breached": False,
                             "sla_watch": False}  # fmt: skip


def _p90(values: Sequence[timedelta]) -> timedelta:
    ordered = sorted(values)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


class Ledger:
    def __init__(
        self,
        database: Database,
        config: Config,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.database = database
        self.config = config
        self.clock = clock or (lambda: datetime.now(UTC))
        self._dialect = database.engine.dialect.name
        self._targets: dict[tuple[str, str], timedelta] = {}

    def _sla(self, centre: str, priority: str | None) -> timedelta | None:
        if priority is None:
            return None
        key = (centre, priority)
        if key not in self._targets:
            self._targets[key] = self.config.sla(centre, priority)  # type: ignore[arg-type]
        return self._targets[key]

    # -- writing

    def record(self, events: Iterable[Event]) -> int:
        """Apply ``events`` in one transaction; the number of transitions that were new."""
        batch = list(events)
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for event in batch:
            for row in _transitions(event):
                key = (row["exam_id"], row["transition"], row["report_id"])
                if key not in rows or row["at"] < rows[key]["at"]:
                    rows[key] = row
        if not rows:
            return 0
        now = self.clock()
        seeds: dict[str, dict[str, Any]] = {}
        priorities: dict[str, str] = {}
        for event in batch:
            seed = {"exam_id": event.exam_id, "origin": event.origin, "centre": event.centre, "updated_at": now}
            seeds.setdefault(event.exam_id, seed | {"priority": event.priority} | _NEW_EXAM)
            if event.priority:
                priorities[event.exam_id] = event.priority
        with self.database.engine.begin() as connection:
            connection.execute(insert_ignoring(self.database, _EXAMS), [seeds[k] for k in sorted(seeds)])
            added = connection.execute(  # RETURNING gives the rows that were new
                insert_ignoring(self.database, _TRANSITIONS).returning(_TRANSITIONS.c.exam_id),
                [rows[k] for k in sorted(rows)],
            ).all()
            touched = {exam_id for (exam_id,) in added}
            new = len(added)
            if touched:
                self._rederive(connection, sorted(touched), priorities, now)
                self._record_critical_alerts(connection, [e for e in batch if e.kind == "report.issued" and e.critical])
        return new

    def _rederive(self, connection: Connection, exam_ids: list[str], priorities: dict[str, str], now: datetime) -> None:
        query = select(_EXAMS).where(_EXAMS.c.exam_id.in_(exam_ids))
        if self._dialect == "postgresql":  # another ledger writer waits until this exam's row is written
            query = query.order_by(_EXAMS.c.exam_id).with_for_update()
        exams = connection.execute(query).mappings().all()
        by_exam: dict[str, list[Any]] = {exam_id: [] for exam_id in exam_ids}
        for t in connection.execute(select(*_DERIVED_FROM).where(_TRANSITIONS.c.exam_id.in_(exam_ids))):
            by_exam[t.exam_id].append(t)
        changes: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # by the columns that change: one UPDATE each
        for row in exams:
            priority = row["priority"] or priorities.get(row["exam_id"])
            columns = derive(by_exam[row["exam_id"]], self._sla(row["centre"], priority))
            due, reported = columns["due_at"], columns["first_report_at"]
            late = due is not None and (reported is None or reported > due)
            columns |= {
                "priority": priority,
                "sla_watch": late and not row["breached"] and columns["state"] != "cancelled",
            }
            changed = {k: v for k, v in columns.items() if row[k] != v}
            if changed:
                changes.setdefault(tuple(sorted(changed)), []).append(
                    {"key": row["exam_id"], "updated_at": now} | changed
                )
        for rows in changes.values():
            connection.execute(update(_EXAMS).where(_EXAMS.c.exam_id == bindparam("key")), rows)

    def _record_critical_alerts(self, connection: Connection, events: list[Event]) -> None:
        """Critical alerts went out with their reports; the ledger keeps them, to see them acknowledged."""
        alerts = [
            alert_row("critical", e.report_id or e.exam_id, institution=e.origin, exam_id=e.exam_id, origin=e.origin,
                       centre=e.centre, raised_at=e.at, report_id=e.report_id, critical_count=e.critical_count or 0,
                       published_at=e.at)
            for e in events
        ]  # fmt: skip
        if alerts:
            connection.execute(insert_ignoring(self.database, LedgerAlert.__table__), alerts)

    # -- reading

    def exams(
        self,
        *,
        origin: str | None = None,
        centre: str | None = None,
        state: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[ExamRecord]:
        """The latest exams first (by queued time), filtered."""
        query = select(LedgerExam)
        for column, value in ((LedgerExam.origin, origin), (LedgerExam.centre, centre), (LedgerExam.state, state)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(LedgerExam.queued_at >= since)
        query = query.order_by(LedgerExam.queued_at.desc().nulls_last(), LedgerExam.exam_id).limit(limit)
        with self.database.session() as session:
            return [record_of(ExamRecord, row, transitions=()) for row in session.scalars(query)]

    def exam(self, exam_id: str) -> ExamRecord | None:
        """One exam with its transitions, in the order they happened."""
        with self.database.session() as session:
            row = session.get(LedgerExam, exam_id)
            if row is None:
                return None
            found = session.scalars(select(LedgerTransition).where(LedgerTransition.exam_id == exam_id)).all()
            transitions = tuple(
                record_of(Transition, t, report_id=t.report_id or None)
                for t in sorted(found, key=lambda t: (t.at, STATES.index(t.transition)))
            )
            return record_of(ExamRecord, row, transitions=transitions)

    def sla_report(self, since: datetime | None = None, until: datetime | None = None) -> list[SlaFigures]:
        """Per member and centre, for the exams queued in [since, until): volume, turnaround and breaches."""
        now = self.clock()
        horizon = min(until, now) if until else now
        columns = (LedgerExam.origin, LedgerExam.centre, LedgerExam.state, LedgerExam.queued_at,
                   LedgerExam.first_report_at, LedgerExam.due_at)  # fmt: skip
        query = select(*columns).where(LedgerExam.queued_at.is_not(None))
        if since is not None:
            query = query.where(LedgerExam.queued_at >= since)
        if until is not None:
            query = query.where(LedgerExam.queued_at < until)
        groups: dict[tuple[str, str], list[Any]] = {}
        with self.database.session() as session:
            for row in session.execute(query):
                groups.setdefault((row.origin, row.centre), []).append(row)
        figures = []
        for (origin, centre), rows in sorted(groups.items()):
            turnarounds = [r.first_report_at - r.queued_at for r in rows if r.first_report_at is not None]
            breaches = sum(1 for r in rows if _late(r.first_report_at, r.due_at, r.state, horizon))
            figures.append(SlaFigures(origin, centre, len(rows), len(turnarounds),  # type: ignore[arg-type]
                                      statistics.median(turnarounds) if turnarounds else None,
                                      _p90(turnarounds) if turnarounds else None, breaches))  # fmt: skip
        return figures


_ALERT_DEFAULTS: dict[str, Any] = dict.fromkeys(
    ("priority", "report_id", "escalates", "due_at", "escalated_at", "acknowledged_at", "acknowledged_by",
     "published_at")
) | {"critical_count": 0}  # fmt: skip


def alert_row(
    kind: AlertKind,
    subject: str,
    *,
    institution: str,
    exam_id: str,
    origin: str,
    centre: str,
    raised_at: datetime,
    level: int = 0,
    **optional: Any,
) -> dict[str, Any]:
    """A new alert row, its id derived from ``kind``, ``subject`` and ``level``."""
    return _ALERT_DEFAULTS | {"alert_id": alert_id(kind, subject, level), "kind": kind, "level": level,
                              "institution": institution, "exam_id": exam_id, "origin": origin, "centre": centre,
                              "raised_at": raised_at} | optional  # fmt: skip


def _late(first_report_at: datetime | None, due_at: datetime | None, state: str, horizon: datetime) -> bool:
    if due_at is None or state == "cancelled":
        return False
    return first_report_at > due_at if first_report_at is not None else due_at <= horizon

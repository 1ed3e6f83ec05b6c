"""Alert records: critical values, SLA breaches and escalations, acknowledged once, escalated once per level.

    alerts = Alerts(database, config)
    alerts.raise_sla_breaches()            # exams past due without a report: flagged, one SLA alert each
    alerts.escalate()                      # unacknowledged for alerts.escalate_after_minutes: one more level
    alerts.unpublished()                   # what still has to go out on hub.alerts (LedgerService sends it)
    alerts.acknowledge(alert_id, "王医生")  # idempotent; an escalation's id acknowledges its alert

The rows live in the ledger's ``ledger_alerts`` table (``hub.store.ledger``),
which records a critical alert when it sees the report's ``report.issued``
event; the alert itself went out with the report. An SLA breach and each
escalation are recorded here first and published afterwards from the table
(an outbox): a crash in between publishes them again, with the same alert id,
never loses one. An SLA alert goes to the exam's origin and to the lead
hospital, whose centre is late; escalations go to ``alerts.escalate_to``
(default the lead hospital), each level ``escalate_after_minutes`` after the
one before (the first after the alert itself), at most ``levels`` times, and
none once an SLA alert's late report has come.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub.alerts import Alert, AlertKind
from hub.config import Config
from hub.envelope import Centre, Priority
from hub.store.db import Database
from hub.store.ledger import LedgerAlert, LedgerExam, alert_row, insert_ignoring, record_of

__all__ = ["AlertRecord", "Alerts"]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    alert_id: str
    kind: AlertKind
    level: int
    institution: str
    exam_id: str
    origin: str
    centre: Centre
    priority: Priority | None
    report_id: str | None
    escalates: str | None
    raised_at: datetime
    due_at: datetime | None
    critical_count: int
    escalated_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    published_at: datetime | None

    def envelope(self) -> Alert:
        """The alert as it goes out on ``hub.alerts``."""
        names = set(Alert.model_fields)
        return Alert.model_validate({f.name: getattr(self, f.name) for f in fields(self) if f.name in names})


class Alerts:
    def __init__(
        self, database: Database, config: Config, *, clock: Callable[[], datetime] | None = None, levels: int = 3
    ) -> None:
        self.database = database
        self.config = config
        self.clock = clock or (lambda: datetime.now(UTC))
        self.levels = levels  # escalations of one unacknowledged alert, at most
        self._postgresql = database.engine.dialect.name == "postgresql"

    def alerts(self, *, institution: str | None = None, open_only: bool = False, limit: int = 100) -> list[AlertRecord]:
        """The latest alerts first; ``institution``: those sent to it or about its exams."""
        query = select(LedgerAlert)
        if institution is not None:
            concerned = (LedgerAlert.institution == institution) | (LedgerAlert.origin == institution)
            if institution == self.config.consortium.lead:
                concerned |= LedgerAlert.kind == "sla"  # it has a copy of every SLA alert: its centre is late
            query = query.where(concerned)
        if open_only:
            query = query.where(LedgerAlert.acknowledged_at.is_(None))
        query = query.order_by(LedgerAlert.raised_at.desc(), LedgerAlert.alert_id).limit(limit)
        with self.database.session() as session:
            return [record_of(AlertRecord, row) for row in session.scalars(query)]

    def alert(self, alert_id: str) -> AlertRecord | None:
        with self.database.session() as session:
            row = session.get(LedgerAlert, alert_id)
            return record_of(AlertRecord, row) if row is not None else None

    def acknowledge(self, alert_id: str, by: str, at: datetime | None = None) -> AlertRecord | None:
        """Record who acknowledged an alert (or one of its escalations), once; None for an unknown alert."""
        with self.database.session() as session:
            row = session.get(LedgerAlert, alert_id)
            if row is not None and row.escalates is not None:
                row = session.get(LedgerAlert, row.escalates)
            if row is None:
                return None
            if row.acknowledged_at is None:
                chain = (LedgerAlert.alert_id == row.alert_id) | (LedgerAlert.escalates == row.alert_id)
                acknowledged = {"acknowledged_at": at or self.clock(), "acknowledged_by": by[:100]}
                session.execute(update(LedgerAlert).where(chain).values(acknowledged))
                session.refresh(row)
            return record_of(AlertRecord, row)

    def raise_sla_breaches(self, now: datetime | None = None) -> list[AlertRecord]:
        """Flag every exam past its due time without its first report, and record its SLA alert once."""
        now = now or self.clock()
        late = select(LedgerExam).where(LedgerExam.sla_watch.is_(True), LedgerExam.due_at <= now)
        if self._postgresql:
            late = late.with_for_update(skip_locked=True)
        with self.database.session() as session:
            exams = session.scalars(late).all()
            for exam in exams:
                exam.breached, exam.sla_watch = True, False
            return self._add_alerts(session, [
                alert_row("sla", e.exam_id, institution=e.origin, exam_id=e.exam_id, origin=e.origin,
                           centre=e.centre, raised_at=now, priority=e.priority, due_at=e.due_at)
                for e in exams
            ])  # fmt: skip

    def escalate(self, now: datetime | None = None) -> list[AlertRecord]:
        """Escalate each critical or SLA alert unacknowledged ``escalate_after_minutes`` since its last level."""
        now = now or self.clock()
        after = timedelta(minutes=self.config.alerts.escalate_after_minutes)
        to = self.config.alerts.escalate_to or self.config.consortium.lead
        query = select(LedgerAlert).where(
            LedgerAlert.kind.in_(("critical", "sla")),
            LedgerAlert.acknowledged_at.is_(None),
            LedgerAlert.level < self.levels,
            LedgerAlert.raised_at <= now - after,
        )
        if self._postgresql:
            query = query.with_for_update(skip_locked=True)
        with self.database.session() as session:
            due = [a for a in session.scalars(query) if (a.escalated_at or a.raised_at) + after <= now]
            reported = self._reported(session, [a.exam_id for a in due if a.kind == "sla"])
            escalations = []
            for alert in due:
                if alert.kind == "sla" and alert.exam_id in reported:
                    continue  # the late report has come meanwhile: nothing left to chase
                alert.level += 1
                alert.escalated_at = now
                escalations.append(alert_row(
                    "escalation", alert.alert_id, level=alert.level, institution=to, exam_id=alert.exam_id,
                    origin=alert.origin, centre=alert.centre, raised_at=now, priority=alert.priority,
                    report_id=alert.report_id, escalates=alert.alert_id, due_at=alert.due_at,
                    critical_count=alert.critical_count))  # fmt: skip
            return self._add_alerts(session, escalations)

    def _reported(self, session: Session, exam_ids: list[str]) -> set[str]:
        if not exam_ids:
            return set()
        query = select(LedgerExam.exam_id).where(
            LedgerExam.exam_id.in_(exam_ids), LedgerExam.first_report_at.is_not(None)
        )
        return set(session.scalars(query))

    def unpublished(self, limit: int = 500) -> list[AlertRecord]:
        """Alerts recorded here that have yet to go out on ``hub.alerts`` (SLA breaches, escalations)."""
        query = select(LedgerAlert).where(LedgerAlert.published_at.is_(None)).order_by(LedgerAlert.raised_at)
        with self.database.session() as session:
            return [record_of(AlertRecord, row) for row in session.scalars(query.limit(limit))]

    def mark_published(self, alert_ids: Sequence[str], at: datetime | None = None) -> None:
        if alert_ids:
            with self.database.session() as session:
                session.execute(
                    update(LedgerAlert)
                    .where(LedgerAlert.alert_id.in_(alert_ids))
                    .values(published_at=at or self.clock())
                )

    def recipients(self, alert: AlertRecord) -> list[str]:
        """Where an alert goes: an SLA breach also to the lead hospital, whose centre is late."""
        lead = self.config.consortium.lead
        return [alert.institution, lead] if alert.kind == "sla" and alert.institution != lead else [alert.institution]

    def _add_alerts(self, session: Session, rows: list[dict[str, Any]]) -> list[AlertRecord]:
        """Insert alerts not recorded yet; the ones that were new."""
        if not rows:
            return []
        added = session.scalars(insert_ignoring(self.database, LedgerAlert).returning(LedgerAlert), rows)
        return [record_of(AlertRecord, row) for row in added]

"""Alerts an institution must see at once: critical values (危急值), SLA breaches, escalations.

    alert = critical_alert(report, datetime.now(UTC))
    broker.publish(alert_message(alert))          # to hub.alerts.<origin>, key critical.<origin>.<centre>

An ``Alert`` goes on the ``hub.alerts`` topic exchange with the key
``<kind>.<institution>.<centre>``, where ``institution`` is the one that must
act on it. Its ``alert_id`` is derived from what it is about (the report, the
exam, the alert it escalates and the level), so a publisher that repeats
itself after a crash sends the same alert again, never a second one, and the
ledger records each alert once whoever reports it first.

- ``critical``: a report with ``critical=True``, to its origin, published with
  the report itself (``hub.publish``). It names the critical items as the
  centre wrote them, with the order numbers, so the origin's clinician can act
  without a patient name in transit.
- ``sla``: an exam past its turnaround target with no report that a clinician
  can act on, to its origin and to the lead hospital, whose centre is late.
- ``escalation``: a critical or SLA alert nobody acknowledged in time, to
  ``alerts.escalate_to`` (default the lead hospital), once per level.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from hub.broker import Message
from hub.envelope import SCHEMA_VERSION, Centre, Priority, Report
from hub.errors import EnvelopeError
from hub.topology import ALERTS, alert_routing_key

__all__ = ["Alert", "AlertKind", "alert_id", "alert_message", "critical_alert"]

AlertKind = Literal["critical", "sla", "escalation"]


class Alert(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_id: str
    kind: AlertKind
    level: int = 0  # 0 for the alert itself; n for its n-th escalation
    institution: str  # who must act on it: the origin, or whom it escalates to
    exam_id: str
    origin: str
    centre: Centre
    priority: Priority | None = None
    report_id: str | None = None
    raised_at: AwareDatetime
    due_at: AwareDatetime | None = None  # an SLA alert: when the report was due
    escalates: str | None = None  # an escalation: the alert nobody acknowledged
    placer_order: str | None = None
    accession: str | None = None
    critical_items: tuple[str, ...] = ()
    critical_count: int = 0

    def encode(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def decode(cls, data: bytes) -> Alert:
        try:
            return cls.model_validate_json(data)
        except ValueError as exc:
            raise EnvelopeError(f"not a valid hub alert: {exc}") from exc


def alert_id(kind: AlertKind, subject: str, level: int = 0) -> str:
    """The id of the ``kind`` alert about ``subject`` (a report, an exam or an alert) at ``level``."""
    digest = hashlib.sha256(f"{kind}\x1f{subject}\x1f{level}".encode()).hexdigest()[:32]
    return f"al-{digest}"


def critical_alert(report: Report, at: datetime) -> Alert:
    return Alert(
        alert_id=alert_id("critical", report.report_id),
        kind="critical",
        institution=report.origin,
        exam_id=report.exam_id,
        origin=report.origin,
        centre=report.centre,
        report_id=report.report_id,
        raised_at=at,
        placer_order=report.placer_order,
        accession=report.accession,
        critical_items=report.critical_items,
        critical_count=len(report.critical_items),
    )


def alert_message(alert: Alert, institution: str | None = None) -> Message:
    """``alert`` for ``institution`` (default its own) on ``hub.alerts``."""
    to = institution or alert.institution
    return Message(
        ALERTS,
        alert_routing_key(alert.kind, to, alert.centre),
        alert.encode(),
        message_id=f"{alert.alert_id}:{to}",
        headers={
            "schema-version": SCHEMA_VERSION,
            "kind": alert.kind,
            "level": alert.level,
            "alert-id": alert.alert_id,
            "exam-id": alert.exam_id,
            "origin": alert.origin,
        },
    )

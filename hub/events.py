"""What happened to an exam, and when: the events the ledger is fed from.

Every stage that changes an exam's state publishes an ``Event`` on the
``hub.events`` topic exchange, key ``<kind>.<centre>.<origin>``. The
``hub.ledger`` queue takes all of them, so the ledger works wherever the
stages run. Events carry identifiers, states, times and counts, never patient
data: a critical report's event says how many critical items it has, not what
they are.

    exam.accepted     gateway    the exam is on the broker and its sender answered (received, queued)
    exam.in_reading   worker     a handler started on the exam
    exam.parked       worker     the worker gave up on the exam
    report.issued     publisher  a report (preliminary, final, amended, cancelled) is on the broker
    report.delivered  egress     the member acknowledged the report (AA, 2xx) or pulled it
    report.parked     egress     the member would not take the report after every retry
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from hub.broker import Message
from hub.envelope import Centre, Exam, Priority, Report, ReportStatus
from hub.errors import EnvelopeError
from hub.topology import EVENTS

__all__ = ["Event", "EventKind", "event_message", "exam_event", "report_event"]

EventKind = Literal[
    "exam.accepted",
    "exam.in_reading",
    "exam.parked",
    "report.issued",
    "report.delivered",
    "report.parked",
]


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: EventKind
    at: AwareDatetime  # when the stage did it, by the hub's clock
    exam_id: str
    origin: str
    centre: Centre
    priority: Priority | None = None
    received_at: AwareDatetime | None = None  # for exam events: when the gateway received the exam
    report_id: str | None = None
    report_status: ReportStatus | None = None
    issued_at: AwareDatetime | None = None  # for report events: when the centre signed the report
    critical: bool | None = None  # for report events: a critical value (危急值) report
    critical_count: int | None = None  # how many critical items it names
    endpoint: str | None = None  # for delivery events: where it went
    attempts: int | None = None
    detail: str | None = None  # an ack code, a park reason: never patient data

    def encode(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def decode(cls, data: bytes) -> Event:
        try:
            return cls.model_validate_json(data)
        except ValueError as exc:
            raise EnvelopeError(f"not a valid hub event: {exc}") from exc


def exam_event(kind: EventKind, exam: Exam, at: datetime, *, detail: str | None = None) -> Event:
    return Event(
        kind=kind,
        at=at,
        exam_id=exam.exam_id,
        origin=exam.origin,
        centre=exam.centre,
        priority=exam.priority,
        received_at=exam.source.received_at,
        detail=detail,
    )


def report_event(
    kind: EventKind,
    report: Report,
    at: datetime,
    *,
    endpoint: str | None = None,
    attempts: int | None = None,
    detail: str | None = None,
) -> Event:
    return Event(
        kind=kind,
        at=at,
        exam_id=report.exam_id,
        origin=report.origin,
        centre=report.centre,
        report_id=report.report_id,
        report_status=report.status,
        issued_at=report.issued_at,
        critical=report.critical,
        critical_count=len(report.critical_items),
        endpoint=endpoint,
        attempts=attempts,
        detail=detail,
    )


def event_message(event: Event) -> Message:
    return Message(
        EVENTS,
        f"{event.kind}.{event.centre}.{event.origin}",
        event.encode(),
        message_id=f"{event.kind}:{event.report_id or event.exam_id}",
        headers={"kind": event.kind, "exam-id": event.exam_id},
    )

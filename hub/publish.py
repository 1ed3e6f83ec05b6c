"""Putting exams and reports on the broker.

``submit`` and ``submit_report`` return only once the broker has confirmed
the message, so a gateway may acknowledge its sender right after. The
``*_async`` forms return the confirm future instead, for callers that keep
many messages in flight. ``asubmit`` and ``asubmit_report`` are for code on the
broker's own loop (the gateways): ``await asubmit(broker, exam)``.

Publishing a report is one fan-out, built in one place (``report_messages``)
and confirmed as a whole:

    hub.reports   the report, to its member                       (report_message)
    hub.registry  the same message, for the recognition registry
    hub.events    its ``report.issued`` event, for the ledger      (unless events=False)
    hub.alerts    a critical report's alert, to its origin at once (critical=True)

The registry copy and the critical alert are never optional; only the ledger
event can be turned off, as ``Intake(events=False)`` does for exams.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from hub.alerts import alert_message, critical_alert
from hub.broker import Broker, Message, wait
from hub.envelope import SCHEMA_VERSION, Exam, Report
from hub.errors import BrokerUnavailable
from hub.events import event_message, report_event
from hub.topology import EXAMS, REGISTRY, REPORTS, exam_routing_key, report_routing_key

__all__ = [
    "all_confirmed",
    "asubmit",
    "asubmit_report",
    "exam_message",
    "new_trace_id",
    "report_message",
    "report_messages",
    "submit",
    "submit_async",
    "submit_report",
    "submit_report_async",
]

# A random process prefix and a counter: unique per message, and a tenth of the cost of a uuid4 each.
_TRACE_PREFIX = uuid.uuid4().hex[:12]
_trace_numbers = itertools.count(1)


def new_trace_id() -> str:
    return f"{_TRACE_PREFIX}{next(_trace_numbers):08x}"


def exam_message(exam: Exam, *, user_id: str | None = None, trace_id: str | None = None) -> Message:
    return Message(
        exchange=EXAMS,
        routing_key=exam_routing_key(exam.centre, exam.priority, exam.origin),
        body=exam.encode(),
        message_id=exam.exam_id,
        headers={
            "schema-version": SCHEMA_VERSION,
            "origin": exam.origin,
            "centre": exam.centre,
            "priority": exam.priority,
            "trace-id": trace_id or new_trace_id(),
        },
        user_id=user_id,
    )


def report_message(report: Report, *, user_id: str | None = None, trace_id: str | None = None) -> Message:
    return Message(
        exchange=REPORTS,
        routing_key=report_routing_key(report.origin, report.centre),
        body=report.encode(),
        message_id=report.report_id,
        headers={
            "schema-version": SCHEMA_VERSION,
            "origin": report.origin,
            "centre": report.centre,
            "exam-id": report.exam_id,
            "status": report.status,
            "critical": report.critical,
            "trace-id": trace_id or new_trace_id(),
        },
        user_id=user_id,
    )


def submit_async(
    broker: Broker, exam: Exam, *, user_id: str | None = None, trace_id: str | None = None
) -> Future[None]:
    return broker.publish(exam_message(exam, user_id=user_id, trace_id=trace_id))


def submit(broker: Broker, exam: Exam, *, user_id: str | None = None, trace_id: str | None = None) -> None:
    """Publish ``exam``; returns once the broker has confirmed it, else raises a BrokerError."""
    wait(submit_async(broker, exam, user_id=user_id, trace_id=trace_id))


def report_messages(
    report: Report,
    *,
    events: bool = True,
    at: datetime | None = None,
    user_id: str | None = None,
    trace_id: str | None = None,
) -> list[Message]:
    """Everything publishing ``report`` sends: the report, its registry copy, its event, its critical alert."""
    at = at or datetime.now(UTC)
    report_copy = report_message(report, user_id=user_id, trace_id=trace_id)
    messages = [report_copy, report_copy._replace(exchange=REGISTRY)]
    if events:
        messages.append(event_message(report_event("report.issued", report, at))._replace(user_id=user_id))
    if report.critical:
        messages.append(alert_message(critical_alert(report, at))._replace(user_id=user_id))
    return messages


def submit_report_async(
    broker: Broker,
    report: Report,
    *,
    events: bool = True,
    user_id: str | None = None,
    trace_id: str | None = None,
) -> Future[None]:
    """Publish ``report``'s fan-out; the future resolves once the broker has confirmed all of it."""
    messages = report_messages(report, events=events, user_id=user_id, trace_id=trace_id)
    return all_confirmed([broker.publish(m) for m in messages])


def submit_report(
    broker: Broker,
    report: Report,
    *,
    events: bool = True,
    user_id: str | None = None,
    trace_id: str | None = None,
) -> None:
    """Publish ``report``'s fan-out; returns once the broker has confirmed all of it, else raises a BrokerError."""
    wait(submit_report_async(broker, report, events=events, user_id=user_id, trace_id=trace_id))


def asubmit(
    broker: Broker, exam: Exam, *, user_id: str | None = None, trace_id: str | None = None
) -> asyncio.Future[None]:
    """``submit`` for code on ``broker.loop``: await the result; many may be in flight."""
    return broker.publish_on_loop(exam_message(exam, user_id=user_id, trace_id=trace_id))


def asubmit_report(
    broker: Broker,
    report: Report,
    *,
    events: bool = True,
    user_id: str | None = None,
    trace_id: str | None = None,
) -> asyncio.Future[None]:
    """``submit_report`` for code on ``broker.loop``."""
    messages = report_messages(report, events=events, user_id=user_id, trace_id=trace_id)
    confirmed: asyncio.Future[None] = broker.loop.create_future()
    _settle_when_all([broker.publish_on_loop(m) for m in messages], confirmed)
    return confirmed


def all_confirmed(futures: Sequence[Future[None]]) -> Future[None]:
    """One future for many publishes: the first failure, else success once all are confirmed."""
    confirmed: Future[None] = Future()
    _settle_when_all(futures, confirmed)
    return confirmed


def _settle_when_all(futures: Sequence[Any], confirmed: Any) -> None:
    """Settle ``confirmed`` (a concurrent or an asyncio future) with the first failure, else once all succeed."""
    if not futures:
        confirmed.set_result(None)
        return
    pending = [len(futures)]
    lock = threading.Lock()

    def one_done(future: Any) -> None:
        error = BrokerUnavailable("the publish was cancelled") if future.cancelled() else future.exception()
        with lock:
            pending[0] -= 1
            if confirmed.done():
                return
            if error is not None:
                confirmed.set_exception(error)
            elif pending[0] == 0:
                confirmed.set_result(None)

    for future in futures:
        future.add_done_callback(one_done)

"""Putting exams and reports on the broker.

``submit`` and ``submit_report`` return only once the broker has confirmed
the message, so a gateway may acknowledge its sender right after. The
``*_async`` forms return the confirm future instead, for callers that keep
many messages in flight. ``asubmit`` and ``asubmit_report`` are for code on the
broker's own loop (the gateways): ``await asubmit(broker, exam)``.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from concurrent.futures import Future

from hub.broker import Broker, Message, wait
from hub.envelope import SCHEMA_VERSION, Exam, Report
from hub.topology import EXAMS, REPORTS, exam_routing_key, report_routing_key

__all__ = [
    "asubmit",
    "asubmit_report",
    "exam_message",
    "new_trace_id",
    "report_message",
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


def submit_report_async(
    broker: Broker, report: Report, *, user_id: str | None = None, trace_id: str | None = None
) -> Future[None]:
    return broker.publish(report_message(report, user_id=user_id, trace_id=trace_id))


def submit_report(broker: Broker, report: Report, *, user_id: str | None = None, trace_id: str | None = None) -> None:
    """Publish ``report``; returns once the broker has confirmed it, else raises a BrokerError."""
    wait(submit_report_async(broker, report, user_id=user_id, trace_id=trace_id))


def asubmit(
    broker: Broker, exam: Exam, *, user_id: str | None = None, trace_id: str | None = None
) -> asyncio.Future[None]:
    """``submit`` for code on ``broker.loop``: await the result; many may be in flight."""
    return broker.publish_on_loop(exam_message(exam, user_id=user_id, trace_id=trace_id))


def asubmit_report(
    broker: Broker, report: Report, *, user_id: str | None = None, trace_id: str | None = None
) -> asyncio.Future[None]:
    """``submit_report`` for code on ``broker.loop``."""
    return broker.publish_on_loop(report_message(report, user_id=user_id, trace_id=trace_id))

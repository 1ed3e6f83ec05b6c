"""Every exchange, queue and binding the hub uses, in one place.

    hub.exams        topic    key <centre>.<priority>.<origin>
      hub.exams.<centre>        quorum  routine and urgent exams       <- <centre>.routine.*, <centre>.urgent.*
      hub.exams.<centre>.stat   quorum  the STAT lane, drained first   <- <centre>.stat.*
    hub.retry.<delay>  fanout   one per retry delay
      hub.retry.<delay>         quorum  x-message-ttl=<delay>; dead-letters back to hub.exams with the
                                        message's own routing key, so a retry returns to its lane
    hub.parked       direct   key <centre>, intake or egress
      hub.parked.<centre>       quorum  exams that failed for good, with reason, error and attempts
      hub.parked.intake         quorum  input a gateway could not read, raw, with the reason it gave
      hub.parked.egress         quorum  reports a member would not take, after every retry
    hub.studies      fanout   DICOM instances, each already in the blob store
      hub.studies               quorum  held until their study has been stable, then one imaging exam
    hub.reports      topic    key <origin>.<centre>
      hub.reports.<institution> quorum  reports going back to one member  <- <institution>.*
    hub.events       topic    key <kind>.<centre>.<origin>: what happened to an exam and when
      hub.ledger                quorum  every event, for the exam ledger                <- #
    hub.registry     fanout   a copy of every report, for the recognition registry
      hub.registry              quorum  reports waiting to be recorded
    hub.alerts       topic    key <kind>.<institution>.<centre>: critical values, SLA breaches, escalations
      hub.alerts.<institution>  quorum  alerts one institution must see at once   <- *.<institution>.*
    hub.recognition  fanout   recognised results for every member
      hub.recognition.<institution>  quorum  the results one member may reuse (互认)

Work queues are quorum queues (RabbitMQ 3.10 quorum queues have no priorities, hence the STAT lane)
with an explicit delivery limit: a message that keeps killing its worker is dead-lettered to the
parked queue, at least once (which needs overflow=reject-publish). Topology is pure data; a broker
declares it, idempotently. A broker opened with a namespace prefixes every name above, so that
several hubs (or a demo) can share one vhost without touching each other's queues.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from hub.envelope import Centre, Priority

__all__ = [
    "ALERTS",
    "DELIVERY_LIMIT",
    "EGRESS",
    "EVENTS",
    "EXAMS",
    "INTAKE",
    "LEDGER",
    "PARKED",
    "RECOGNITION",
    "REGISTRY",
    "REPORTS",
    "RETRY_DELAYS",
    "STUDIES",
    "Binding",
    "Exchange",
    "Queue",
    "Topology",
    "alert_queue",
    "alert_routing_key",
    "exam_queue",
    "exam_routing_key",
    "parked_queue",
    "recognition_queue",
    "report_queue",
    "report_routing_key",
    "retry_exchange",
    "stat_queue",
]

EXAMS = "hub.exams"
REPORTS = "hub.reports"
PARKED = "hub.parked"
RECOGNITION = "hub.recognition"
STUDIES = "hub.studies"
EVENTS = "hub.events"
LEDGER = "hub.ledger"
REGISTRY = "hub.registry"
ALERTS = "hub.alerts"
Stage = Literal["intake", "egress"]  # parking keys beside the centres': unreadable input, undeliverable reports
INTAKE: Final[Stage] = "intake"
EGRESS: Final[Stage] = "egress"
STAGES: tuple[Stage, ...] = (INTAKE, EGRESS)
RETRY_DELAYS: tuple[int, ...] = (5, 30, 300)  # seconds: the backoff of a retried exam
# Deliveries before a message that keeps killing its worker is parked by the broker itself. RabbitMQ
# 3.10 counts every return, not only crashes: each graceful restart or reconnect hands back the
# exams a worker had buffered but not started (up to its prefetch per lane). At 5, a handful of
# restarts during a backlog parked exams that never failed.
DELIVERY_LIMIT = 20

ExchangeType = Literal["topic", "direct", "fanout"]
CENTRES: tuple[Centre, ...] = get_args(Centre)


@dataclass(frozen=True)
class Exchange:
    name: str
    type: ExchangeType


@dataclass(frozen=True)
class Queue:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str


def exam_routing_key(centre: Centre, priority: Priority, origin: str) -> str:
    return f"{centre}.{priority}.{origin}"


def report_routing_key(origin: str, centre: Centre) -> str:
    return f"{origin}.{centre}"


def alert_routing_key(kind: str, institution: str, centre: Centre) -> str:
    return f"{kind}.{institution}.{centre}"


def alert_queue(institution: str) -> str:
    return f"{ALERTS}.{institution}"


def recognition_queue(institution: str) -> str:
    return f"{RECOGNITION}.{institution}"


def exam_queue(centre: Centre) -> str:
    return f"{EXAMS}.{centre}"


def stat_queue(centre: Centre) -> str:
    return f"{EXAMS}.{centre}.stat"


def parked_queue(centre: Centre | Stage) -> str:
    return f"{PARKED}.{centre}"


def report_queue(institution: str) -> str:
    return f"{REPORTS}.{institution}"


def retry_exchange(delay: int) -> str:
    return f"hub.retry.{delay}s"


def _work_queue(name: str, centre: Centre) -> Queue:
    return Queue(
        name,
        {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": PARKED,
            "x-dead-letter-routing-key": centre,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def _retry_queue(delay: int) -> Queue:
    return Queue(
        retry_exchange(delay),
        {
            "x-queue-type": "quorum",
            "x-message-ttl": delay * 1000,
            "x-dead-letter-exchange": EXAMS,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


@dataclass(frozen=True)
class Topology:
    """The hub's exchanges, queues and bindings for a consortium's centres and member institutions."""

    institutions: Sequence[str] = ()
    centres: Sequence[Centre] = CENTRES
    retry_delays: Sequence[int] = RETRY_DELAYS

    def exchanges(self) -> Iterator[Exchange]:
        yield Exchange(EXAMS, "topic")
        yield from (Exchange(retry_exchange(delay), "fanout") for delay in self.retry_delays)
        yield Exchange(PARKED, "direct")
        yield Exchange(STUDIES, "fanout")
        yield Exchange(REPORTS, "topic")
        yield Exchange(EVENTS, "topic")
        yield Exchange(REGISTRY, "fanout")
        yield Exchange(ALERTS, "topic")
        yield Exchange(RECOGNITION, "fanout")

    def queues(self) -> Iterator[Queue]:
        for centre in self.centres:
            yield _work_queue(exam_queue(centre), centre)
            yield _work_queue(stat_queue(centre), centre)
            yield Queue(parked_queue(centre), {"x-queue-type": "quorum"})
        for stage in STAGES:
            yield Queue(parked_queue(stage), {"x-queue-type": "quorum"})
        yield from (_retry_queue(delay) for delay in self.retry_delays)
        yield Queue(STUDIES, {"x-queue-type": "quorum"})
        for institution in self.institutions:
            yield Queue(report_queue(institution), {"x-queue-type": "quorum"})
            yield Queue(alert_queue(institution), {"x-queue-type": "quorum"})
            yield Queue(recognition_queue(institution), {"x-queue-type": "quorum"})
        yield Queue(LEDGER, {"x-queue-type": "quorum"})
        yield Queue(REGISTRY, {"x-queue-type": "quorum"})

    def bindings(self) -> Iterator[Binding]:
        for centre in self.centres:
            yield Binding(EXAMS, exam_queue(centre), f"{centre}.routine.*")
            yield Binding(EXAMS, exam_queue(centre), f"{centre}.urgent.*")
            yield Binding(EXAMS, stat_queue(centre), f"{centre}.stat.*")
            yield Binding(PARKED, parked_queue(centre), centre)
        for stage in STAGES:
            yield Binding(PARKED, parked_queue(stage), stage)
        for delay in self.retry_delays:
            yield Binding(retry_exchange(delay), retry_exchange(delay), "")
        yield Binding(STUDIES, STUDIES, "")
        for institution in self.institutions:
            yield Binding(REPORTS, report_queue(institution), f"{institution}.*")
            yield Binding(ALERTS, alert_queue(institution), f"*.{institution}.*")
            yield Binding(RECOGNITION, recognition_queue(institution), "")
        yield Binding(EVENTS, LEDGER, "#")
        yield Binding(REGISTRY, REGISTRY, "")

    def describe(self) -> str:
        """A table of the topology, as `hub topology show` prints it."""
        lines = ["exchanges:"]
        lines += [f"  {e.name:<28} {e.type}" for e in self.exchanges()]
        lines.append("queues:")
        for queue in self.queues():
            args = " ".join(f"{k}={v}" for k, v in sorted(queue.arguments.items()))
            lines.append(f"  {queue.name:<28} {args}")
        lines.append("bindings:")
        lines += [f"  {b.exchange:<16} -> {b.queue:<28} {b.routing_key or '(any)'}" for b in self.bindings()]
        return "\n".join(lines)

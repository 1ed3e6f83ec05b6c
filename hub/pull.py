"""Pulling a member's reports to files: for members whose egress is ``pull``, and for draining a queue.

    pulled = pull_reports(broker, config.institution("12330112475697894G"), Path("out"), format="hl7v2")
    [p.path.name for p in pulled]         # ["rp-1f0c....hl7", ...]

Takes the reports ready on the member's queue, writes each to ``out_dir``
(temporary file, fsync, rename, fsync of the directory), and acks it only
once its file is durable and its ``report.delivered`` event (endpoint
``pull``) is confirmed. A crash in between leaves the report queued, and the
next pull rewrites the same file. A body that is not a Report is parked on
``hub.parked.egress``. Call it from any thread but the broker's loop.
"""

from __future__ import annotations

import json
import logging
import queue
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from adapters import fhir, hl7v2
from hub.broker import Broker, Delivery, wait
from hub.config import Institution
from hub.envelope import Report
from hub.errors import EnvelopeError
from hub.events import event_message, report_event
from hub.gateways.egress import egress_parked_message, report_charset
from hub.store.blobs import write_durably
from hub.topology import report_queue

__all__ = ["PULL_ENDPOINT", "PullFormat", "PulledReport", "pull_reports"]

log = logging.getLogger("hub.pull")

PullFormat = Literal["hl7v2", "fhir", "json"]
PULL_ENDPOINT = "pull"
_ARRIVAL_TIMEOUT = 5.0  # seconds to wait for a report the queue said was ready (another consumer may take it)
_SUFFIXES: dict[PullFormat, str] = {"hl7v2": ".hl7", "fhir": ".fhir.json", "json": ".json"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class PulledReport:
    report_id: str
    exam_id: str
    status: str
    path: Path


def pull_reports(
    broker: Broker,
    institution: Institution,
    out_dir: Path,
    *,
    format: PullFormat = "hl7v2",
    limit: int | None = None,
    events: bool = True,
) -> list[PulledReport]:
    """Write the reports ready on ``institution``'s queue to ``out_dir``, acking each once durable; what was written.

    ``format``: ``hl7v2`` (ORU^R01 in the member's charset, ``.hl7``), ``fhir`` (DiagnosticReport,
    ``.fhir.json``) or ``json`` (the hub's Report envelope, ``.json``). ``limit`` caps how many.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    name = report_queue(institution.code)
    pulled: list[PulledReport] = []
    ready = broker.message_count(name)
    if not ready or limit == 0:
        return pulled
    inbox: queue.Queue[Delivery] = queue.Queue()
    subscription = broker.consume(name, inbox.put, prefetch=min(ready, limit or ready, 32))
    try:
        while ready and (limit is None or len(pulled) < limit):
            try:
                delivery = inbox.get(timeout=_ARRIVAL_TIMEOUT)
            except queue.Empty:
                break  # the queue said ready, but none came: another consumer has them
            taken = _take(broker, institution, delivery, out_dir, format, events)
            if taken is not None:
                pulled.append(taken)
            ready -= 1
            if not ready:  # what came meanwhile, and what is already in hand
                ready = broker.message_count(name) + inbox.qsize()
    finally:
        subscription.cancel()  # unsettled deliveries go back to the queue
    return pulled


def _take(
    broker: Broker, institution: Institution, delivery: Delivery, out_dir: Path, format: PullFormat, events: bool
) -> PulledReport | None:
    if not delivery.live:  # its channel is gone: RabbitMQ redelivers it
        return None
    try:
        report = Report.decode(delivery.body)
    except EnvelopeError as exc:
        _park(broker, institution, delivery, "undecodable report", str(exc))
        return None
    try:
        data = _render(report, format, institution)
    except Exception as exc:  # the adapter cannot write it: it would fail on every pull
        _park(broker, institution, delivery, "unwritable report", f"{type(exc).__name__}: {exc}")
        return None
    path = out_dir / (_UNSAFE.sub("_", report.report_id) + _SUFFIXES[format])
    write_durably(path, data)
    if events:
        event = report_event("report.delivered", report, datetime.now(UTC), endpoint=PULL_ENDPOINT,
                             attempts=1, detail=format)  # fmt: skip
        wait(broker.publish(event_message(event)))
    delivery.ack()
    return PulledReport(report.report_id, report.exam_id, report.status, path)


def _park(broker: Broker, institution: Institution, delivery: Delivery, reason: str, error: str) -> None:
    log.warning("parking report %s for %s: %s", delivery.message_id, institution.code, reason)
    parked = egress_parked_message(delivery, reason, error, attempts=0, endpoint=PULL_ENDPOINT,
                                   institution=institution.code)  # fmt: skip
    wait(broker.publish(parked))
    delivery.ack()


def _render(report: Report, format: PullFormat, institution: Institution) -> bytes:
    if format == "hl7v2":
        return hl7v2.write_report(report, charset=report_charset(institution))
    if format == "fhir":
        return json.dumps(fhir.write_report(report), ensure_ascii=False, indent=2).encode("utf-8")
    return report.encode()

"""The recognition registry as a service: report copies in from ``hub.registry``, recognised results out.

    service = RegistryService(broker, database, config)
    service.start()       # from any thread but the broker's loop
    service.stop()        # finishes the report in hand; the rest stays queued

Every report the hub publishes is copied to the ``hub.registry`` queue. For each copy the service
resolves the patient in the person index and records the report (``Registry.record``). Each new
recognised result, and each one an amended or cancelled report revoked, is published on the
``hub.recognition`` fanout (every member's ``hub.recognition.<institution>`` queue) and confirmed
before the copy is acked. Recording is idempotent by report id, so a copy redelivered after a crash
announces the same result again (same message id), never a second one.

A body that is not a Report envelope is parked on ``hub.parked.intake`` with the reason; so is a
report the registry fails on for a reason of its own (a bug), with the error class only. While the
database or the broker is unavailable, the copy is put back and tried again after a pause.
"""

from __future__ import annotations

import logging
import queue
import threading

from sqlalchemy.exc import OperationalError

from hub.broker import Broker, Delivery, Message, Subscription, wait
from hub.config import Config
from hub.envelope import SCHEMA_VERSION, Report
from hub.errors import BrokerError, EnvelopeError, raised_at
from hub.intake import parked_input_message
from hub.store.db import Database
from hub.store.recognition import RecognisedResult, Registry
from hub.topology import RECOGNITION, REGISTRY

__all__ = ["DEFAULT_PREFETCH", "RegistryService", "recognition_message"]

log = logging.getLogger("hub.registry")

DEFAULT_PREFETCH = 32
_PAUSE = 1.0  # seconds before a copy goes back after the database or the broker failed


def recognition_message(result: RecognisedResult) -> Message:
    """``result`` for the ``hub.recognition`` fanout; a revocation has a message id of its own."""
    return Message(
        RECOGNITION,
        "",
        result.encode(),
        message_id=f"{result.result_id}.{result.state}",
        headers={
            "schema-version": SCHEMA_VERSION,
            "result-id": result.result_id,
            "state": result.state,
            "item-system": result.item.system or "",
            "item-code": result.item.code,
            "mark": result.mark,
            "exam-id": result.exam_id,
            "report-id": result.source_report_id,
        },
    )


class RegistryService:
    def __init__(self, broker: Broker, database: Database, config: Config, *, prefetch: int = DEFAULT_PREFETCH) -> None:
        self.broker = broker
        self.database = database
        self.config = config
        self.prefetch = prefetch
        self.registry: Registry | None = None
        self._inbox: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscription: Subscription | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the registry service is already running")
        self.registry = Registry(self.database, self.config)  # syncs the QC passes before the first report
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, args=(self.registry,), name="hub-registry", daemon=True)
        self._thread.start()
        self._subscription = self.broker.consume(REGISTRY, self._inbox.put, prefetch=self.prefetch)
        log.info("registry: consuming %s", REGISTRY)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the copy in hand, then stop; copies not yet settled go back to the queue."""
        self._stopping.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        self._inbox = queue.SimpleQueue()  # whatever was left there is unsettled, so RabbitMQ has it back

    def _run(self, registry: Registry) -> None:
        while not self._stopping.is_set():
            delivery = self._inbox.get()
            if delivery is None or self._stopping.is_set():
                return
            if delivery.live:  # else its channel is gone and the broker redelivers it
                self._handle(registry, delivery)

    def _handle(self, registry: Registry, delivery: Delivery) -> None:
        try:
            report = Report.decode(delivery.body)
        except EnvelopeError:
            self._park(delivery, "not a Report envelope")
            return
        try:
            outcome = registry.record(report)
        except OperationalError as exc:  # the database is unreachable or busy: try again later
            log.warning("registry: report %s not recorded: %s; it goes back", report.report_id, type(exc).__name__)
            self._put_back(delivery)
            return
        except Exception as exc:  # a fault of ours: keep the copy for repair (the message may hold patient data)
            log.error("registry: failed on report %s: %s at %s", report.report_id, type(exc).__name__, raised_at(exc))
            self._park(delivery, f"the registry failed on it ({type(exc).__name__})")
            return
        log.info("registry: report %s %s (%s)", report.report_id, outcome.status, outcome.reason or "eligible")
        if outcome.conflicts:  # the fields only: their values are patient data
            fields = ", ".join(sorted({c.field for c in outcome.conflicts}))
            log.warning(
                "registry: report %s: identity conflict for person %d (%s)", report.report_id, outcome.person_id, fields
            )
        try:
            for future in [self.broker.publish(recognition_message(r)) for r in outcome.broadcasts]:
                wait(future)
        except BrokerError as exc:
            log.warning("registry: results of report %s not confirmed: %s", report.report_id, type(exc).__name__)
            self._put_back(delivery)
            return
        delivery.ack()

    def _park(self, delivery: Delivery, reason: str) -> None:
        origin = delivery.headers.get("origin")
        message = parked_input_message(
            delivery.body,
            reason,
            format="report",
            origin=str(origin) if origin else None,
            peer=REGISTRY,
        )
        try:
            wait(self.broker.publish(message))
        except BrokerError:
            self._put_back(delivery)
            return
        log.warning("registry: parked message %s: %s", delivery.message_id, reason)
        delivery.ack()

    def _put_back(self, delivery: Delivery) -> None:
        self._stopping.wait(_PAUSE)
        delivery.reject(requeue=True)

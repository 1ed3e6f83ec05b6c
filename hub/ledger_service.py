"""The ledger's consumer: ``hub.ledger`` into the store in batches, and the SLA and escalation clock.

    service = LedgerService(broker, database, config)
    service.start()          # from any thread but the broker's loop
    ...
    service.stop()           # finishes the batch in hand; the rest stay on the queue

One thread takes what the broker delivers within ``linger`` seconds, up to
``batch_size`` events, records it in one transaction and acks each event only
after the commit: at least once, and the ledger makes a repeat a no-op. A
transaction costs mostly per batch, so waiting a moment for a larger one costs
a fraction of a second of lag and saves most of the ledger's CPU at moderate
rates. When the database is unavailable, the batch stays unacked and is tried
again; an event it refuses outright (too long a value, say) is recorded alone
and, if refused again, parked on ``hub.parked.intake`` with the reason, so that
it cannot stall the rest.
Every ``tick_seconds`` the same thread runs ``tick``: exams past their due time
are flagged with an SLA alert, unacknowledged alerts escalate, and every alert
recorded but not yet sent goes out on ``hub.alerts``, then is marked sent (an
outbox: a crash in between sends it again, with the same alert id). Critical
alerts went out with their reports; the ledger records them from
``report.issued``.

``clock`` is injectable, so tests move time instead of waiting for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from hub.alerts import alert_message
from hub.broker import Broker, Delivery, Subscription, wait
from hub.config import Config
from hub.errors import BrokerError, EnvelopeError
from hub.events import Event
from hub.intake import parked_input_message
from hub.store.alerts import Alerts
from hub.store.db import Database
from hub.store.ledger import Ledger
from hub.topology import LEDGER

__all__ = ["LedgerService"]

log = logging.getLogger("hub.ledger")

_RETRY_PAUSE = 1.0  # seconds before a batch the database refused is tried again
_POLL = 0.1  # seconds between looks at the stop flag while idle


class LedgerService:
    def __init__(
        self,
        broker: Broker,
        database: Database,
        config: Config,
        *,
        tick_seconds: float = 5.0,
        batch_size: int = 1000,
        prefetch: int = 5000,
        linger: float = 0.5,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.broker = broker
        self.clock = clock or (lambda: datetime.now(UTC))
        self.ledger = Ledger(database, config, clock=self.clock)
        self.alerts = Alerts(database, config, clock=self.clock)
        self.tick_seconds = tick_seconds
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.linger = linger  # seconds a batch waits for more events: fewer, larger transactions
        self.recorded = 0  # transitions this service found new
        self._inbox: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._tick_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscription: Subscription | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._inbox = queue.SimpleQueue()  # deliveries of an earlier subscription went back to the queue
        self._thread = threading.Thread(target=self._run, name="hub-ledger", daemon=True)
        self._thread.start()
        self._subscription = self.broker.consume(LEDGER, self._inbox.put, prefetch=self.prefetch)
        log.info("ledger started: batches of up to %d, SLA check every %gs", self.batch_size, self.tick_seconds)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the batch in hand; events not yet recorded go back to the queue, unacked."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    # -- the thread

    def _run(self) -> None:
        next_tick = time.monotonic()  # a tick at once: catch up on what fell due while the ledger was down
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_tick:
                    self.tick()
                    next_tick = time.monotonic() + self.tick_seconds
                batch = self._take(min(_POLL, max(0.0, next_tick - time.monotonic())))
                if batch:
                    self._write(batch)
            except Exception:  # a bug must not silence the ledger; the batch in hand stays unacked until a restart
                log.exception("the ledger failed on a batch; going on with the next")
                self._stopping.wait(_RETRY_PAUSE)

    def _take(self, timeout: float) -> list[Delivery]:
        """The next batch: what arrives within ``linger`` of its first event, up to ``batch_size``."""
        try:
            batch = [self._inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        until = time.monotonic() + self.linger
        while len(batch) < self.batch_size:
            try:
                batch.append(self._inbox.get(timeout=max(0.0, until - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _write(self, deliveries: list[Delivery]) -> None:
        events: list[tuple[Delivery, Event]] = []
        for delivery in deliveries:
            try:
                events.append((delivery, Event.decode(delivery.body)))
            except EnvelopeError:  # nothing to record, and retrying cannot help
                self._park(delivery, "not an Event envelope")
        while events:
            events = [(d, e) for d, e in events if d.live]  # a dead channel's deliveries come again
            try:
                self.recorded += self.ledger.record(e for _, e in events)
            except (DataError, IntegrityError) as exc:  # never commits as it is: set aside what breaks it
                log.warning("ledger batch of %d refused (%s); recording its events one by one", len(events),
                            type(exc).__name__)  # fmt: skip
                events = self._recordable(events)
                continue
            except SQLAlchemyError as exc:
                log.warning("ledger batch of %d not recorded (%s); trying again", len(events), type(exc).__name__)
                if self._stopping.wait(_RETRY_PAUSE):
                    return  # unacked: redelivered once the subscription is cancelled
                continue
            for delivery, _ in events:
                delivery.ack()
            return

    def _recordable(self, events: list[tuple[Delivery, Event]]) -> list[tuple[Delivery, Event]]:
        """The events the database takes, each recorded alone; any it refuses is parked with the reason."""
        kept: list[tuple[Delivery, Event]] = []
        for n, (delivery, event) in enumerate(events):
            try:
                self.recorded += self.ledger.record([event])
            except (DataError, IntegrityError) as exc:
                self._park(delivery, f"the ledger's database refuses it ({type(exc).__name__})")
                continue
            except SQLAlchemyError:
                return kept + events[n:]  # the database went away meanwhile: the batch is tried again
            kept.append((delivery, event))
        return kept  # recorded now; recording them again as a batch is a no-op before their acks

    def _park(self, delivery: Delivery, reason: str) -> None:
        """Set the event aside on hub.parked.intake, then ack it; unconfirmed, it stays on hub.ledger."""
        origin = delivery.headers.get("origin")
        message = parked_input_message(
            delivery.body, reason, format="event", origin=str(origin) if origin else None, peer=LEDGER
        )
        try:
            wait(self.broker.publish(message))
        except BrokerError:
            delivery.reject(requeue=True)
            return
        log.warning("ledger: parked event %s: %s", delivery.message_id, reason)
        delivery.ack()

    # -- the clock

    def tick(self, now: datetime | None = None) -> None:
        """Flag SLA breaches, escalate unacknowledged alerts, and send what is still to be sent."""
        now = now or self.clock()
        with self._tick_lock:
            try:
                breaches = self.alerts.raise_sla_breaches(now)
                escalations = self.alerts.escalate(now)
                if breaches or escalations:
                    log.warning("%d SLA breach(es) and %d escalation(s) raised", len(breaches), len(escalations))
                for alert in [*breaches, *escalations]:
                    log.info("%s alert %s (level %d) for exam %s of %s", alert.kind, alert.alert_id, alert.level,
                             alert.exam_id, alert.origin)  # fmt: skip
                self._send_alerts()
            except (SQLAlchemyError, BrokerError) as exc:
                log.warning("ledger tick failed (%s); the next one tries again", type(exc).__name__)

    def _send_alerts(self) -> None:
        pending = self.alerts.unpublished()
        futures = [
            (alert.alert_id, self.broker.publish(alert_message(alert.envelope(), to)))
            for alert in pending
            for to in self.alerts.recipients(alert)
        ]
        failed = set()
        for alert_id, future in futures:
            try:
                wait(future)
            except BrokerError as exc:
                log.warning("alert %s not confirmed (%s); it goes out on the next tick", alert_id, exc)
                failed.add(alert_id)
        self.alerts.mark_published([a.alert_id for a in pending if a.alert_id not in failed], self.clock())

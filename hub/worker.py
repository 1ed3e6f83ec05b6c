"""The diagnosis-worker runtime: exams in, reports out, nothing lost.

    worker = Worker(broker, "ecg", handler, concurrency=4)
    worker.run()          # until SIGTERM or SIGINT

``handler(exam)`` returns a Report, or None when the exam was accepted for
human reading (its report comes later through ``submit_report``). It may
``raise Retry(delay)`` to try again later or ``raise Reject(reason)`` to park
the exam; any other exception is retried through the delay queues and parked
once they are used up, and so is a return value that is not a Report or a
report that cannot be published. Handlers never ack: ``_settle`` is the one place that
does, and only after the broker has confirmed whatever the outcome published.
A report is confirmed before its exam is acked, so a crash in between gives a
duplicate report with the same report_id, never a lost one.

The STAT lane and the routine lane feed one local buffer that always hands
out STAT exams first. On top of ``concurrency`` threads that read either lane,
``stat_reserve`` threads read STAT exams only, so a chest-pain ECG starts at
once even while every other thread is in a long routine read. Handlers run on
the worker's own threads, never on the broker's I/O thread, so a long read
does not starve heartbeats.

For the ledger the worker publishes ``exam.in_reading`` as a handler starts
(nothing waits for its confirm but the exam's ack), the report's
whole fan-out (``hub.publish.submit_report_async``: report, registry copy,
``report.issued``, critical alert) and ``exam.parked`` when it parks an exam.
``events=False`` leaves out the two exam events and ``report.issued``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from hub.broker import CONFIRM_TIMEOUT, Broker, Delivery, Message, Subscription
from hub.envelope import Centre, Exam, Report
from hub.errors import BrokerError, EnvelopeError, Unroutable
from hub.events import EventKind, event_message, exam_event
from hub.publish import all_confirmed, submit_report_async
from hub.topology import (
    ALERTS,
    EVENTS,
    PARKED,
    REGISTRY,
    REPORTS,
    RETRY_DELAYS,
    exam_queue,
    retry_exchange,
    stat_queue,
)

__all__ = ["Handler", "Reject", "Retry", "Worker"]

log = logging.getLogger("hub.worker")

Handler = Callable[[Exam], Report | None]
ATTEMPT = "x-hub-attempt"
REQUEUE_PAUSE = 0.5  # seconds before an exam the broker would not take goes back to its queue


class Retry(Exception):  # read as a verb in handlers: raise Retry(30)
    """Try the exam again after about ``delay`` seconds (the nearest retry queue at or above it)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or f"retry requested in {delay}s")
        self.delay = delay


class Reject(Exception):  # read as a verb in handlers: raise Reject("no images")
    """Park the exam now: retrying cannot help."""


class Worker:
    def __init__(
        self,
        broker: Broker,
        centre: Centre,
        handler: Handler,
        *,
        concurrency: int = 4,
        stat_reserve: int = 1,
        prefetch: int | None = None,
        retry_delays: Sequence[int] = RETRY_DELAYS,
        events: bool = True,
    ) -> None:
        self.broker = broker
        self.centre = centre
        self.handler = handler
        self.concurrency = concurrency
        self.stat_reserve = stat_reserve
        self.prefetch = prefetch if prefetch is not None else 2 * concurrency
        self.retry_delays = tuple(retry_delays)
        self.events = events
        self._lanes = _Lanes()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subscriptions: list[Subscription] = []
        self._owed = threading.Condition()
        self._owed_count = 0

    # -- lifecycle

    def start(self) -> None:
        """Start consuming; BrokerError if the broker lacks an exchange this worker would publish to."""
        needed = [*map(retry_exchange, self.retry_delays), PARKED, REPORTS, REGISTRY, ALERTS]
        missing = [e for e in needed + ([EVENTS] if self.events else []) if not self.broker.exchange_exists(e)]
        if missing:
            # Found at the first retry, a missing exchange would close the publishing channel every time.
            raise BrokerError(
                f"the broker has no exchange {', '.join(missing)}: declare the topology first (hub topology"
                f" declare), with this worker's retry_delays {self.retry_delays}"
            )
        self._threads = [
            threading.Thread(target=self._loop, args=(False,), name=f"hub-worker-{self.centre}-{n}", daemon=True)
            for n in range(self.concurrency)
        ] + [
            threading.Thread(target=self._loop, args=(True,), name=f"hub-worker-{self.centre}-stat-{n}", daemon=True)
            for n in range(self.stat_reserve)
        ]
        for thread in self._threads:
            thread.start()
        stat, routine = stat_queue(self.centre), exam_queue(self.centre)
        self._subscriptions.append(self.broker.consume(stat, self._lanes.put_stat, prefetch=self.prefetch))
        self._subscriptions.append(self.broker.consume(routine, self._lanes.put_routine, prefetch=self.prefetch))

    def stop(self, timeout: float | None = None) -> None:
        """Finish the exams in hand, settle them, then stop; exams not started go back to the queue."""
        self._stopping.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._owed:
            self._owed.wait_for(
                lambda: self._owed_count == 0,
                CONFIRM_TIMEOUT if deadline is None else max(0.0, deadline - time.monotonic()),
            )
        for subscription in self._subscriptions:
            subscription.cancel()
        self._subscriptions.clear()

    def run(self) -> None:
        """Work until SIGTERM or SIGINT, then stop gracefully."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            log.info("worker for %s started: handler threads %d for either lane and %d for STAT only, prefetch %d",
                     self.centre, self.concurrency, self.stat_reserve, self.prefetch)  # fmt: skip
            stop.wait()
            log.info("worker for %s stopping: finishing exams in hand", self.centre)
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self, stat_only: bool) -> None:
        while not self._stopping.is_set():
            delivery = self._lanes.take(stat_only, timeout=0.1)
            if delivery is not None and delivery.live:  # not live: its channel is gone, RabbitMQ redelivers it
                self._settle_or_give_back(delivery)

    def _settle_or_give_back(self, delivery: Delivery) -> None:
        """``_settle``, but a fault in it costs neither this handler thread nor the delivery."""
        try:
            self._settle(delivery)
        except Exception as exc:
            # _settle hands the delivery on as its last step, to _when_confirmed, which does not raise:
            # if it raised, nothing else will settle the delivery.
            self._give_back_after_fault(delivery, exc)

    # -- the ack policy

    def _settle(self, delivery: Delivery) -> None:
        try:
            exam = Exam.decode(delivery.body)
        except EnvelopeError as exc:
            self._park_or_requeue(delivery, None, "undecodable envelope", exc, [])
            return
        started = [self._event("exam.in_reading", exam)] if self.events else []
        try:
            report = self.handler(exam)
        except Reject as exc:
            self._park_or_requeue(delivery, exam, "rejected by handler", exc, started)
        except Retry as exc:
            self._retry_or_park(delivery, exam, exc, exc.delay, started)
        except Exception as exc:
            log.warning("handler failed on exam %s: %s", exam.exam_id, type(exc).__name__)
            self._retry_or_park(delivery, exam, exc, None, started)
        else:
            self._publish_report(delivery, exam, report, started)

    def _publish_report(self, delivery: Delivery, exam: Exam, report: object, pending: list[Future[None]]) -> None:
        """Publish what the handler returned, then ack; a report that cannot be published is a handler failure."""
        try:
            if report is not None:
                pending.append(self._submit_report(report))
        except Exception as exc:
            log.warning("the handler's report for exam %s could not be published: %s", exam.exam_id, type(exc).__name__)
            self._retry_or_park(delivery, exam, exc, None, pending)
            return
        self._when_confirmed(delivery, pending, lambda error: self._after_report(delivery, exam, error))

    def _submit_report(self, report: object) -> Future[None]:
        if not isinstance(report, Report):  # the Handler type says so, but nothing enforces it
            raise TypeError(f"the handler returned a {type(report).__name__}, not a Report or None")
        return submit_report_async(self.broker, report, events=self.events)

    def _after_report(self, delivery: Delivery, exam: Exam, error: BaseException | None) -> None:
        if error is None:
            delivery.ack()
        elif isinstance(error, Unroutable):  # no report or alert queue for this member: a configuration fault
            self._park_or_requeue(delivery, exam, "report unroutable", error, [])
        else:
            log.warning("report for exam %s not confirmed (%s); the exam goes back", exam.exam_id, error)
            self._requeue_later(delivery)

    def _event(self, kind: EventKind, exam: Exam, detail: str | None = None) -> Future[None]:
        return self.broker.publish(event_message(exam_event(kind, exam, datetime.now(UTC), detail=detail)))

    def _retry_or_park(
        self, delivery: Delivery, exam: Exam, error: BaseException, delay: float | None, pending: list[Future[None]]
    ) -> None:
        attempt = _attempt(delivery)
        if attempt >= len(self.retry_delays):
            self._park_or_requeue(delivery, exam, f"failed after {attempt + 1} attempts", error, pending)
            return
        wanted = self.retry_delays[attempt] if delay is None else delay
        queue_delay = next((d for d in self.retry_delays if d >= wanted), self.retry_delays[-1])
        headers = {**delivery.headers, ATTEMPT: attempt + 1, "x-hub-last-error": _describe(error)}
        retry = Message(retry_exchange(queue_delay), delivery.routing_key, delivery.body,
                        message_id=delivery.message_id, headers=_clean(headers))  # fmt: skip
        self._forward(delivery, [self.broker.publish(retry), *pending])

    def _park_or_requeue(
        self, delivery: Delivery, exam: Exam | None, reason: str, error: BaseException, pending: list[Future[None]]
    ) -> None:
        headers = {
            **delivery.headers,
            "x-hub-park-reason": reason,
            "x-hub-error": _describe(error),
            "x-hub-attempts": _attempt(delivery) + 1,
            "x-hub-parked-at": datetime.now(UTC).isoformat(),
            "x-hub-routing-key": delivery.routing_key,
        }
        log.warning("parking exam %s: %s", delivery.message_id, reason)
        parked = Message(PARKED, self.centre, delivery.body, message_id=delivery.message_id, headers=_clean(headers))
        futures = [self.broker.publish(parked), *pending]
        if exam is not None and self.events:
            futures.append(self._event("exam.parked", exam, reason))
        self._forward(delivery, futures)

    def _forward(self, delivery: Delivery, futures: list[Future[None]]) -> None:
        """Ack ``delivery`` once everything published in its place is confirmed; else it goes back."""

        def settle(error: BaseException | None) -> None:
            if error is None:
                delivery.ack()
                return
            log.warning("could not move exam %s (%s); it goes back to its queue", delivery.message_id, error)
            self._requeue_later(delivery)

        self._when_confirmed(delivery, futures, settle)

    def _requeue_later(self, delivery: Delivery) -> None:
        """Give ``delivery`` back after a pause: a broker that refuses now would hand it straight back."""
        timer = threading.Timer(REQUEUE_PAUSE, _requeue, args=(delivery,))
        timer.daemon = True
        timer.start()

    def _when_confirmed(
        self, delivery: Delivery, futures: list[Future[None]], then: Callable[[BaseException | None], None]
    ) -> None:
        """``then(error)`` once ``futures`` are confirmed (error None) or one failed, on whichever thread settles it.

        From here on ``then`` owns ``delivery``; this does not raise, and if ``then`` does, the
        delivery goes back to its queue. The handler thread does not wait for confirms, so a confirm
        round trip per exam does not cap a worker's rate; ``stop`` waits for the acks still owed.
        """
        if not futures:  # nothing was published in the exam's place (events off, human reading): settle now
            self._then_or_give_back(delivery, then, None)
            return
        confirmed = all_confirmed(futures)
        with self._owed:
            self._owed_count += 1

        def done(outcome: Future[None]) -> None:
            try:
                self._then_or_give_back(delivery, then, outcome.exception())
            finally:
                with self._owed:
                    self._owed_count -= 1
                    self._owed.notify_all()

        confirmed.add_done_callback(done)

    def _then_or_give_back(
        self, delivery: Delivery, then: Callable[[BaseException | None], None], error: BaseException | None
    ) -> None:
        try:
            then(error)
        except Exception as exc:
            self._give_back_after_fault(delivery, exc)

    def _give_back_after_fault(self, delivery: Delivery, fault: Exception) -> None:
        # The class only: an exception's text may quote the patient.
        log.error("settling exam %s failed: %s; it goes back to its queue", delivery.message_id, type(fault).__name__)
        log.debug("settling exam %s failed", delivery.message_id, exc_info=fault)
        self._requeue_later(delivery)


class _Lanes:
    """Deliveries waiting for a handler thread: STAT always comes out first, and STAT-only takers get nothing else."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._for_any = threading.Condition(lock)
        self._for_stat_only = threading.Condition(lock)
        self._stat: deque[Delivery] = deque()
        self._routine: deque[Delivery] = deque()

    def put_stat(self, delivery: Delivery) -> None:
        with self._for_any:
            self._stat.append(delivery)
            self._for_stat_only.notify()  # both kinds of taker race for it; the loser finds nothing and waits again
            self._for_any.notify()

    def put_routine(self, delivery: Delivery) -> None:
        with self._for_any:
            self._routine.append(delivery)
            self._for_any.notify()

    def take(self, stat_only: bool, timeout: float) -> Delivery | None:
        """The next delivery for this taker, or None after ``timeout`` (so the caller can see a stop)."""
        waiting = self._for_stat_only if stat_only else self._for_any
        with waiting:
            if not self._stat and (stat_only or not self._routine):
                waiting.wait(timeout)
            if self._stat:
                return self._stat.popleft()
            if not stat_only and self._routine:
                return self._routine.popleft()
            return None


def _requeue(delivery: Delivery) -> None:
    try:
        delivery.reject(requeue=True)
    except Exception as exc:  # its channel is gone: RabbitMQ redelivers it anyway
        log.warning("could not give exam %s back: %s", delivery.message_id, type(exc).__name__)


def _attempt(delivery: Delivery) -> int:
    """Retries this exam has had so far."""
    return int(delivery.headers.get(ATTEMPT, 0) or 0)


def _describe(error: BaseException) -> str:
    # Exception text, never the exam: the log and the headers must not carry patient data.
    return f"{type(error).__name__}: {error}"[:500]


def _clean(headers: dict[str, Any]) -> dict[str, Any]:
    # The broker's own bookkeeping starts afresh on the new message.
    return {k: v for k, v in headers.items() if k not in ("x-delivery-count", "x-death")}

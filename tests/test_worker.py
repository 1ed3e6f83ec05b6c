"""The worker runtime on both brokers: reports, retries, parking, STAT first, crashes, ledger events."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from handlers import read_ecg

from hub.broker import Broker, Delivery, Message, Subscription, connect
from hub.envelope import Coding, Exam, Patient, Report, Source
from hub.errors import BrokerError, BrokerUnavailable
from hub.events import Event
from hub.ids import derive_exam_id
from hub.publish import exam_message, submit
from hub.topology import (
    EXAMS,
    LEDGER,
    REGISTRY,
    REPORTS,
    Topology,
    exam_queue,
    parked_queue,
    report_queue,
    stat_queue,
)
from hub.worker import Reject, Retry, Worker

ORIGIN = "12330112473455672X"  # 昌化镇卫生院
TOPOLOGY = Topology(institutions=[ORIGIN], retry_delays=(1, 2))
WAIT = 20.0


def make_exam(n: int, priority: str = "routine", centre: str = "ecg") -> Exam:
    return Exam(
        exam_id=derive_exam_id(ORIGIN, placer_order=f"ECG-{n:05d}"),
        origin=ORIGIN,
        centre=centre,  # type: ignore[arg-type]
        priority=priority,  # type: ignore[arg-type]
        patient=Patient(name="张伟", national_id="33011219620821031X", sex="male"),
        service=Coding(code="ECG01", display="常规十二导联心电图"),
        placer_order=f"ECG-{n:05d}",
        source=Source(format="hl7v2", received_at=datetime.now(UTC)),
    )


@pytest.fixture
def hub_broker(broker: Broker) -> Broker:
    broker.declare(TOPOLOGY)
    return broker


@pytest.fixture
def run_worker(hub_broker: Broker) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(handler: Callable[[Exam], Report | None], **options: object) -> Worker:
        worker = Worker(hub_broker, "ecg", handler, retry_delays=TOPOLOGY.retry_delays, **options)  # type: ignore[arg-type]
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(10)


def drain(broker: Broker, queue_name: str) -> queue.Queue[Delivery]:
    got: queue.Queue[Delivery] = queue.Queue()
    broker.consume(queue_name, got.put, prefetch=50)
    return got


def empty_soon(broker: Broker, queue_name: str) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if broker.message_count(queue_name) == 0:
            return True
        time.sleep(0.05)
    return False


def test_a_report_goes_back_to_the_member_and_the_exam_is_acked(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    exam = make_exam(1, "stat")
    submit(hub_broker, exam)
    run_worker(read_ecg)
    reports = drain(hub_broker, report_queue(ORIGIN))
    report = Report.decode(reports.get(timeout=WAIT).body)
    assert (report.exam_id, report.conclusion) == (exam.exam_id, "窦性心律，正常心电图")
    assert empty_soon(hub_broker, stat_queue("ecg"))


def test_none_means_accepted_for_human_reading(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    seen: queue.Queue[str] = queue.Queue()
    run_worker(lambda exam: seen.put(exam.exam_id))
    submit(hub_broker, make_exam(2))
    assert seen.get(timeout=WAIT) == make_exam(2).exam_id
    assert empty_soon(hub_broker, exam_queue("ecg"))
    time.sleep(0.3)
    assert hub_broker.message_count(report_queue(ORIGIN)) == 0


def test_reject_parks_with_reason_error_attempts_and_original_headers(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    def handler(exam: Exam) -> Report:
        raise Reject("no waveform in the upload")

    run_worker(handler)
    submit(hub_broker, make_exam(3), trace_id="trace-3")
    parked = drain(hub_broker, parked_queue("ecg")).get(timeout=WAIT)
    assert parked.message_id == make_exam(3).exam_id
    assert parked.headers["x-hub-park-reason"] == "rejected by handler"
    assert "no waveform in the upload" in parked.headers["x-hub-error"]
    assert parked.headers["x-hub-attempts"] == 1
    assert parked.headers["trace-id"] == "trace-3"
    assert parked.headers["x-hub-routing-key"] == f"ecg.routine.{ORIGIN}"
    assert Exam.decode(parked.body).placer_order == "ECG-00003"  # the exam itself, intact


def test_retry_comes_back_after_the_delay(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    calls: list[float] = []

    def handler(exam: Exam) -> Report:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise Retry(1, "PACS not ready")
        return read_ecg(exam)

    run_worker(handler)
    submit(hub_broker, make_exam(4, "stat"))
    report = drain(hub_broker, report_queue(ORIGIN)).get(timeout=WAIT)
    assert report.message_id
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.9


def test_an_exam_that_keeps_failing_is_retried_then_parked(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def handler(exam: Exam) -> Report:
        calls.append(exam.exam_id)
        raise ValueError("reading service down")

    run_worker(handler)
    submit(hub_broker, make_exam(5))
    parked = drain(hub_broker, parked_queue("ecg")).get(timeout=WAIT)
    assert len(calls) == 3  # the first try and one per retry delay (1 s, 2 s)
    assert parked.headers["x-hub-park-reason"] == "failed after 3 attempts"
    assert parked.headers["x-hub-attempts"] == 3
    assert "ValueError: reading service down" in parked.headers["x-hub-error"]


def test_an_undecodable_message_is_parked_not_lost(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    run_worker(read_ecg)
    hub_broker.publish(Message(EXAMS, f"ecg.routine.{ORIGIN}", b"\xff not json", message_id="garbage")).result(WAIT)
    parked = drain(hub_broker, parked_queue("ecg")).get(timeout=WAIT)
    assert parked.message_id == "garbage"
    assert parked.headers["x-hub-park-reason"] == "undecodable envelope"


def test_stat_exams_jump_the_routine_backlog(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    order: list[str] = []
    gate = threading.Event()

    def handler(exam: Exam) -> None:
        gate.wait(WAIT)
        order.append(exam.priority)
        time.sleep(0.01)

    for n in range(100):
        submit(hub_broker, make_exam(100 + n))
    run_worker(handler, concurrency=1, stat_reserve=0, prefetch=20)  # one thread: the buffer's order alone
    time.sleep(0.5)  # the worker now holds a full buffer of routine exams
    submit(hub_broker, make_exam(999, "stat"))
    time.sleep(0.5)
    gate.set()
    deadline = time.monotonic() + WAIT
    while "stat" not in order and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "stat" in order
    assert order.index("stat") <= 1  # at most the exam already in hand goes before it


def long_routine_reads(started: queue.Queue[str], release: threading.Event) -> Callable[[Exam], None]:
    def handler(exam: Exam) -> None:
        started.put(f"{exam.priority} {exam.placer_order}")
        if exam.priority == "routine":
            release.wait(WAIT)

    return handler


def test_a_stat_exam_starts_while_every_thread_is_in_a_long_routine_read(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    started: queue.Queue[str] = queue.Queue()
    release = threading.Event()
    submit(hub_broker, make_exam(300))
    submit(hub_broker, make_exam(301))
    run_worker(long_routine_reads(started, release), concurrency=1)  # and the default stat_reserve=1
    try:
        assert started.get(timeout=WAIT) == "routine ECG-00300"
        with pytest.raises(queue.Empty):  # the reserved thread never takes a routine exam
            started.get(timeout=0.5)
        submit(hub_broker, make_exam(302, "stat"))
        assert started.get(timeout=WAIT) == "stat ECG-00302"
        assert not release.is_set()  # the routine read still holds the only other thread
    finally:
        release.set()
    assert started.get(timeout=WAIT) == "routine ECG-00301"


def test_without_a_stat_reserve_a_stat_exam_waits_for_the_routine_read(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    started: queue.Queue[str] = queue.Queue()
    release = threading.Event()
    submit(hub_broker, make_exam(310))
    run_worker(long_routine_reads(started, release), concurrency=1, stat_reserve=0)
    try:
        assert started.get(timeout=WAIT) == "routine ECG-00310"
        submit(hub_broker, make_exam(311, "stat"))
        with pytest.raises(queue.Empty):
            started.get(timeout=0.5)
    finally:
        release.set()
    assert started.get(timeout=WAIT) == "stat ECG-00311"


NOT_REPORTS = [
    pytest.param(lambda exam: {"exam_id": exam.exam_id, "conclusion": "张伟"}, "TypeError", id="a dict"),
    pytest.param(
        lambda exam: read_ecg(exam).model_copy(update={"conclusion": object()}),
        "PydanticSerializationError",
        id="a report that will not encode",
    ),
]


@pytest.mark.parametrize(("read_badly", "error"), NOT_REPORTS)
def test_a_handler_result_that_cannot_be_published_is_retried_then_parked_and_the_worker_carries_on(  # type: ignore[no-untyped-def]
    hub_broker: Broker, run_worker, read_badly: Callable[[Exam], Any], error: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def handler(exam: Exam) -> Report | None:
        calls.append(exam.placer_order)
        return read_badly(exam) if exam.placer_order == "ECG-00040" else read_ecg(exam)

    worker = run_worker(handler, concurrency=1, stat_reserve=0)  # one thread: were it lost, nothing more is read
    submit(hub_broker, make_exam(40))
    parked = drain(hub_broker, parked_queue("ecg")).get(timeout=WAIT)
    assert parked.message_id == make_exam(40).exam_id
    assert parked.headers["x-hub-park-reason"] == "failed after 3 attempts"
    assert calls == ["ECG-00040"] * 3
    submit(hub_broker, make_exam(41))
    report = Report.decode(drain(hub_broker, report_queue(ORIGIN)).get(timeout=WAIT).body)
    assert report.exam_id == make_exam(41).exam_id
    assert all(thread.is_alive() for thread in worker._threads)
    assert f"could not be published: {error}" in caplog.text
    assert "张伟" not in caplog.text


def test_a_fault_while_settling_gives_the_exam_back_and_spares_the_thread(  # type: ignore[no-untyped-def]
    hub_broker: Broker, run_worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hub.worker")
    calls: list[str] = []

    def handler(exam: Exam) -> Report:
        calls.append(exam.exam_id)
        if len(calls) == 1:
            raise ValueError("reading service down")
        return read_ecg(exam)

    worker = run_worker(handler, concurrency=1, stat_reserve=0)
    retry_or_park = worker._retry_or_park

    def broken_once(*args: Any) -> None:  # a bug in the worker itself, on the first failure only
        worker._retry_or_park = retry_or_park  # type: ignore[method-assign]
        raise RuntimeError("张伟 in the error text")

    worker._retry_or_park = broken_once  # type: ignore[method-assign]
    submit(hub_broker, make_exam(42))
    report = Report.decode(drain(hub_broker, report_queue(ORIGIN)).get(timeout=WAIT).body)
    assert report.exam_id == make_exam(42).exam_id  # given back and read again, not held
    assert len(calls) == 2
    assert all(thread.is_alive() for thread in worker._threads)
    assert empty_soon(hub_broker, exam_queue("ecg"))
    shown = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert any("RuntimeError" in r.getMessage() for r in shown)
    assert not any("张伟" in r.getMessage() or r.exc_info for r in shown)  # the traceback is at DEBUG only
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG)


# -- a report is confirmed before its exam is acked


class Noted(Delivery):
    """A delivery that notes its ack or requeue before passing it on."""

    def __init__(self, delivery: Delivery, note: Callable[[str], None]) -> None:
        super().__init__(queue=delivery.queue, routing_key=delivery.routing_key, body=delivery.body,
                         message_id=delivery.message_id, headers=delivery.headers,
                         redelivered=delivery.redelivered)  # fmt: skip
        self._delivery = delivery
        self._note = note

    @property
    def live(self) -> bool:
        return self._delivery.live

    def ack(self) -> None:
        self._note("ack")
        self._delivery.ack()

    def reject(self, *, requeue: bool) -> None:
        self._note("requeue" if requeue else "dead-letter")
        self._delivery.reject(requeue=requeue)


class HeldReports:
    """The worker's broker, but each report's confirm waits for the test, and exams' acks are noted in order."""

    def __init__(self, broker: Broker) -> None:
        self.inner = broker
        self.hold = True
        self.noted: list[tuple[str, float]] = []
        self._held: queue.Queue[tuple[Future[None], Future[None]]] = queue.Queue()
        self._lock = threading.Lock()

    @property
    def broker(self) -> Broker:
        return cast(Broker, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def publish(self, message: Message) -> Future[None]:
        confirmed = self.inner.publish(message)
        if message.exchange != REPORTS or not self.hold:
            return confirmed
        held: Future[None] = Future()
        self._held.put((confirmed, held))
        return held

    def consume(self, queue_name: str, on_delivery: Callable[[Delivery], None], *, prefetch: int) -> Subscription:
        def noting(delivery: Delivery) -> None:
            on_delivery(Noted(delivery, self.note))

        return self.inner.consume(queue_name, noting, prefetch=prefetch)

    def note(self, what: str) -> None:
        with self._lock:
            self.noted.append((what, time.monotonic()))

    def kinds(self) -> list[str]:
        with self._lock:
            return [what for what, _ in self.noted]

    def next_report(self) -> Future[None]:
        """The confirm the worker waits for; the broker itself has confirmed the report."""
        confirmed, held = self._held.get(timeout=WAIT)
        confirmed.result(WAIT)
        return held

    def wait_for(self, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while what not in self.kinds():
            assert time.monotonic() < deadline, f"no {what}: {self.kinds()}"
            time.sleep(0.02)


def test_the_exam_is_acked_only_once_its_report_is_confirmed(hub_broker: Broker) -> None:
    held = HeldReports(hub_broker)
    worker = Worker(held.broker, "ecg", read_ecg, concurrency=1, retry_delays=TOPOLOGY.retry_delays)
    submit(hub_broker, make_exam(8, "stat"))
    worker.start()
    try:
        confirm = held.next_report()
        time.sleep(0.3)
        assert held.kinds() == []  # the report is on the broker, but the worker has not heard so
        held.note("report confirmed")
        confirm.set_result(None)
        held.wait_for("ack")
        assert held.kinds() == ["report confirmed", "ack"]
    finally:
        worker.stop(5)


def test_a_report_the_broker_does_not_confirm_sends_the_exam_back_after_a_pause(hub_broker: Broker) -> None:
    held = HeldReports(hub_broker)
    worker = Worker(held.broker, "ecg", read_ecg, concurrency=1, retry_delays=TOPOLOGY.retry_delays)
    submit(hub_broker, make_exam(9, "stat"))
    worker.start()
    try:
        reports = drain(hub_broker, report_queue(ORIGIN))
        confirm = held.next_report()
        held.hold = False  # the second reading's report goes through
        held.note("report refused")
        confirm.set_exception(BrokerUnavailable("test: the broker did not confirm"))
        first, second = reports.get(timeout=WAIT), reports.get(timeout=WAIT)
        assert first.message_id == second.message_id  # read again, the same report
        held.wait_for("ack")
        assert held.kinds() == ["report refused", "requeue", "ack"]
        (_, refused), (_, requeued), _ = held.noted
        assert requeued - refused >= 0.4  # not at once: a broker that refuses now would hand it straight back
    finally:
        worker.stop(5)


def test_a_crash_between_report_and_ack_duplicates_the_report_never_loses_it(
    hub_broker: Broker, broker_url: str
) -> None:
    submit(hub_broker, make_exam(7, "stat"))
    worker_broker = connect(broker_url) if broker_url.startswith("amqp") else hub_broker
    held = HeldReports(worker_broker)
    crashed = Worker(held.broker, "ecg", read_ecg, concurrency=1, retry_delays=TOPOLOGY.retry_delays)
    crashed.start()
    held.next_report()  # the broker has the report; the process dies before its confirm reaches the worker
    crashed.stop(1)  # its subscription goes with it
    if worker_broker is not hub_broker:
        worker_broker.close()
    assert held.kinds() == []  # never acked

    survivor = Worker(hub_broker, "ecg", read_ecg, concurrency=1, retry_delays=TOPOLOGY.retry_delays)
    survivor.start()
    try:
        reports = drain(hub_broker, report_queue(ORIGIN))
        first, second = reports.get(timeout=WAIT), reports.get(timeout=WAIT)
        assert first.message_id == second.message_id  # the same report_id: a duplicate, never a loss
        assert empty_soon(hub_broker, stat_queue("ecg"))
    finally:
        survivor.stop(5)


def test_stop_finishes_the_exam_in_hand_and_returns_the_rest(hub_broker: Broker) -> None:
    started = threading.Event()

    def slow(exam: Exam) -> Report:
        started.set()
        time.sleep(1.5)
        return read_ecg(exam)

    for n in range(5):
        submit(hub_broker, make_exam(300 + n))
    worker = Worker(hub_broker, "ecg", slow, concurrency=1, prefetch=5, retry_delays=TOPOLOGY.retry_delays)
    worker.start()
    assert started.wait(WAIT)
    worker.stop(WAIT)
    reports = drain(hub_broker, report_queue(ORIGIN))
    assert Report.decode(reports.get(timeout=WAIT).body).exam_id.startswith("ex-")
    deadline = time.monotonic() + WAIT
    while hub_broker.message_count(exam_queue("ecg")) != 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub_broker.message_count(exam_queue("ecg")) == 4  # not started: back in the queue
    assert reports.qsize() == 0


# -- what the worker tells the ledger


def ledger_events(broker: Broker, n: int) -> list[Event]:
    got = drain(broker, LEDGER)
    return [Event.decode(got.get(timeout=WAIT).body) for _ in range(n)]


def test_the_ledger_hears_when_reading_starts_and_when_a_report_is_issued_or_the_exam_parked(  # type: ignore[no-untyped-def]
    hub_broker: Broker, run_worker
) -> None:
    def handler(exam: Exam) -> Report:
        if exam.placer_order == "ECG-00021":
            raise Reject("no waveform in the upload")
        return read_ecg(exam)

    run_worker(handler, concurrency=1)
    submit(hub_broker, make_exam(20, "stat"))
    report = Report.decode(drain(hub_broker, report_queue(ORIGIN)).get(timeout=WAIT).body)
    submit(hub_broker, make_exam(21))
    started, issued, started_21, parked = ledger_events(hub_broker, 4)
    assert (started.kind, started.exam_id, started.priority, started.at <= issued.at) == (
        "exam.in_reading",
        make_exam(20).exam_id,
        "stat",
        True,
    )
    assert (issued.kind, issued.report_id, issued.report_status) == ("report.issued", report.report_id, "final")
    assert Report.decode(drain(hub_broker, REGISTRY).get(timeout=WAIT).body) == report
    assert (started_21.kind, parked.kind, parked.exam_id) == ("exam.in_reading", "exam.parked", make_exam(21).exam_id)
    assert parked.detail == "rejected by handler"  # the reason, not the handler's words about the patient


def test_with_events_off_the_worker_publishes_reports_only(hub_broker: Broker, run_worker) -> None:  # type: ignore[no-untyped-def]
    run_worker(read_ecg, events=False)
    submit(hub_broker, make_exam(22))
    report = drain(hub_broker, report_queue(ORIGIN)).get(timeout=WAIT)
    copy = drain(hub_broker, REGISTRY).get(timeout=WAIT)  # the registry copy is not optional
    assert copy.message_id == report.message_id
    assert hub_broker.message_count(LEDGER) == 0  # with events on, exam.in_reading would be there by now


def test_an_unconfirmed_in_reading_event_sends_the_exam_back() -> None:
    with connect("memory://guest@") as broker:
        broker.declare(TOPOLOGY)
        refused = threading.Event()
        publish = broker.publish

        def refusing(message: Message) -> Future[None]:
            if message.exchange != "hub.events" or refused.is_set():
                return publish(message)
            refused.set()  # the first in_reading event only
            future: Future[None] = Future()
            future.set_exception(BrokerUnavailable("test: the broker did not confirm"))
            return future

        broker.publish = refusing  # type: ignore[method-assign]
        submit(broker, make_exam(23))
        worker = Worker(broker, "ecg", read_ecg, concurrency=1, retry_delays=TOPOLOGY.retry_delays)
        worker.start()
        try:
            reports = drain(broker, report_queue(ORIGIN))
            first, second = reports.get(timeout=WAIT), reports.get(timeout=WAIT)
            assert first.message_id == second.message_id  # not acked the first time: read again, same report
            assert empty_soon(broker, exam_queue("ecg"))
        finally:
            worker.stop(5)


def test_a_worker_whose_retry_delays_are_not_declared_does_not_start(hub_broker: Broker) -> None:
    hub_broker.publish(exam_message(make_exam(1))).result(10)
    handled: list[Exam] = []
    worker = Worker(hub_broker, "ecg", handled.append, retry_delays=(1, 7))  # type: ignore[arg-type]
    with pytest.raises(BrokerError, match=r"no exchange hub\.retry\.7s: declare the topology first"):
        worker.start()
    time.sleep(0.3)
    assert handled == [] and hub_broker.message_count(exam_queue("ecg")) == 1  # nothing was consumed


def test_a_worker_checks_every_exchange_it_publishes_to(hub_broker: Broker) -> None:
    hub_broker.delete(TOPOLOGY)
    named = "hub.retry.1s, hub.retry.2s, hub.parked, hub.reports, hub.registry, hub.alerts"
    with pytest.raises(BrokerError, match=f"no exchange {re.escape(named)}, hub.events: "):
        Worker(hub_broker, "ecg", read_ecg, retry_delays=TOPOLOGY.retry_delays).start()
    with pytest.raises(BrokerError, match=f"no exchange {re.escape(named)}: "):  # no ledger events: not needed
        Worker(hub_broker, "ecg", read_ecg, retry_delays=TOPOLOGY.retry_delays, events=False).start()

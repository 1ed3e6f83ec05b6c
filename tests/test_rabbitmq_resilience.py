"""The RabbitMQ broker survives its connection being closed under it."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from brokers import take_all

from hub.broker import Delivery, Message, connect
from hub.brokers import rabbitmq
from hub.brokers.rabbitmq import RabbitMQBroker
from hub.errors import BrokerError, BrokerUnavailable
from hub.topology import EXAMS, Topology, exam_queue, exam_routing_key

ORIGIN = "12330112473455672X"  # 昌化镇卫生院
KEY = exam_routing_key("ecg", "stat", ORIGIN)
STAT = exam_queue("ecg") + ".stat"


def _vhost(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/"))


def close_connections(url: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "-p", _vhost(url), "test: the network dropped"],
        check=True,
        capture_output=True,
        timeout=60,
    )


def consumers(url: str) -> list[str]:
    """The queue of each consumer RabbitMQ has in the vhost, one entry per consumer."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", "list_consumers", "-p", _vhost(url), "queue_name"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def publish_until_confirmed(broker: RabbitMQBroker, message: Message, timeout: float = 30.0) -> int:
    """Publish as a sender that was answered AR would: again until confirmed. The tries it took."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        tries += 1
        try:
            broker.publish(message).result(10)
            return tries
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def eventually(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_publishing_resumes_after_the_connection_is_closed(vhost_url: str) -> None:
    with connect(vhost_url) as broker:
        assert isinstance(broker, RabbitMQBroker)
        broker.declare(Topology(retry_delays=(1,)))
        broker.publish(Message(EXAMS, KEY, b"{}", message_id="before")).result(10)
        close_connections(vhost_url)
        publish_until_confirmed(broker, Message(EXAMS, KEY, b"{}", message_id="after"))
        assert broker.message_count(STAT) == 2


def test_publishes_in_flight_when_the_connection_drops_fail_and_none_confirmed_is_lost(vhost_url: str) -> None:
    with connect(vhost_url) as broker:
        broker.declare(Topology(retry_delays=(1,)))
        confirmed: list[str] = []
        failed: list[str] = []
        hung: list[str] = []
        stop = threading.Event()

        def settle(message_id: str, future: Future[None]) -> None:
            try:
                future.result(30)
                confirmed.append(message_id)
            except BrokerUnavailable:
                failed.append(message_id)
            except FutureTimeout:
                hung.append(message_id)

        def publish_continuously() -> None:
            # A sender that keeps a window of publishes in flight, as a gateway does, until told to stop.
            in_flight: list[tuple[str, Future[None]]] = []
            n = 0
            while not stop.is_set():
                n += 1
                message = Message(EXAMS, KEY, b"x" * 1024, message_id=f"m{n}")
                in_flight.append((message.message_id, broker.publish(message)))
                if len(in_flight) > 20:
                    settle(*in_flight.pop(0))
                time.sleep(0.001)
            for message_id, future in in_flight:
                settle(message_id, future)

        publisher = threading.Thread(target=publish_continuously, name="test-publisher")
        publisher.start()
        try:
            eventually(lambda: len(confirmed) >= 200)
            close_connections(vhost_url)
            eventually(lambda: len(failed) > 0)
            resumed_from = len(confirmed)
            eventually(lambda: len(confirmed) >= resumed_from + 200)  # confirmed again after the reconnect
        finally:
            stop.set()
            publisher.join(60)
        assert not publisher.is_alive()
        assert hung == []  # every publish was confirmed or failed, none left its sender waiting
        assert failed  # the drop reached publishes: they failed with BrokerUnavailable, to be sent again
        kept = {delivery.message_id for delivery in take_all(broker, STAT)}
        assert set(confirmed) <= kept  # nothing confirmed was lost


def test_a_subscription_resumes_and_unsettled_messages_are_redelivered(vhost_url: str) -> None:
    with connect(vhost_url) as broker:
        broker.declare(Topology(retry_delays=(1,)))
        got: queue.Queue[Delivery] = queue.Queue()
        broker.consume(STAT, got.put, prefetch=5)
        broker.publish(Message(EXAMS, KEY, "张伟的心电图".encode(), message_id="held")).result(10)
        first = got.get(timeout=10)
        close_connections(vhost_url)
        first.ack()  # too late: its channel is gone, so RabbitMQ redelivers it instead
        again = got.get(timeout=30)
        assert again.message_id == "held"
        assert again.redelivered
        again.ack()
        publish_until_confirmed(broker, Message(EXAMS, KEY, b"{}", message_id="later"))
        assert got.get(timeout=10).message_id == "later"


def test_a_slow_reconnect_resumes_a_subscription_on_one_channel(
    vhost_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both the subscription's closed channel and the reconnect reopen it; when the reconnect's channels
    # are slow to open (a loaded machine, a distant broker) the two must still make one consumer.
    with connect(vhost_url) as broker:
        broker.declare(Topology(retry_delays=(1,)))
        got: queue.Queue[Delivery] = queue.Queue()
        broker.consume(STAT, got.put, prefetch=1)
        reconnected = threading.Event()
        real_on_open = RabbitMQBroker._on_open

        def slow_on_open(self: RabbitMQBroker, connection: Any) -> None:
            def late() -> None:
                real_on_open(self, connection)
                reconnected.set()

            self.loop.call_later(0.6, late)

        monkeypatch.setattr(RabbitMQBroker, "_on_open", slow_on_open)
        close_connections(vhost_url)
        assert reconnected.wait(30)
        time.sleep(0.5)  # the channels it opened are open by now
        assert consumers(vhost_url) == [STAT]
        for message_id in ("m1", "m2"):
            publish_until_confirmed(broker, Message(EXAMS, KEY, b"{}", message_id=message_id))
        first = got.get(timeout=10)
        with pytest.raises(queue.Empty):
            got.get(timeout=1)  # prefetch 1: the second waits for the first's ack
        first.ack()
        second = got.get(timeout=10)
        assert {first.message_id, second.message_id} == {"m1", "m2"}
    # The broker closed holding the second: the first's ack went to its own message, not to this one.
    with connect(vhost_url) as again:
        assert [delivery.message_id for delivery in take_all(again, STAT)] == [second.message_id]


def test_a_subscription_cancelled_while_its_channel_reopens_stops_consuming(
    vhost_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(vhost_url) as broker:
        broker.declare(Topology(retry_delays=(1,)))
        got: queue.Queue[Delivery] = queue.Queue()
        broker.consume(STAT, got.put, prefetch=5)
        cancelled = threading.Event()
        real_open = rabbitmq._Subscription.open

        def open_then_cancel(self: Any, connection: Any, opened: Future[None] | None = None) -> None:
            real_open(self, connection, opened)
            if not self.cancelled:
                self.cancel()  # its owner stops while the reopened channel is still opening
                cancelled.set()

        monkeypatch.setattr(rabbitmq._Subscription, "open", open_then_cancel)
        close_connections(vhost_url)
        assert cancelled.wait(30)
        publish_until_confirmed(broker, Message(EXAMS, KEY, b"{}", message_id="after-cancel"))
        time.sleep(1.5)  # the other reopen, 1 s after the drop, has come and gone
        assert consumers(vhost_url) == []
        with pytest.raises(queue.Empty):
            got.get(timeout=1)
        assert broker.message_count(STAT) == 1


def counted_together(broker: RabbitMQBroker, queue_names: tuple[str, ...]) -> dict[str, tuple[object, float]]:
    """``message_count`` of each queue, all from threads of their own at once: count or error, and seconds taken."""
    outcomes: dict[str, tuple[object, float]] = {}
    start = threading.Barrier(len(queue_names))

    def count(queue_name: str) -> None:
        start.wait()
        began = time.monotonic()
        try:
            outcome: object = broker.message_count(queue_name)
        except BrokerError as exc:
            outcome = exc
        outcomes[queue_name] = (outcome, time.monotonic() - began)

    threads = [threading.Thread(target=count, args=(name,)) for name in queue_names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    return outcomes


def test_concurrent_declarations_each_get_their_own_outcome(vhost_url: str) -> None:
    # A refusal (404) closes the admin channel under whatever else is in flight on it.
    with connect(vhost_url) as broker:
        assert isinstance(broker, RabbitMQBroker)
        broker.declare(Topology(retry_delays=(1,)))
        for _ in range(3):
            outcomes = counted_together(broker, (STAT, "no-such-queue"))
            existing, took = outcomes[STAT]
            assert existing == 0
            assert took < 5
            missing, took = outcomes["no-such-queue"]
            assert isinstance(missing, BrokerError)
            assert not isinstance(missing, BrokerUnavailable)
            assert "NOT_FOUND" in str(missing)
            assert took < 5


def test_an_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1"):
        RabbitMQBroker("amqp://guest:guest@127.0.0.1:1/%2F", connect_timeout=2)


def test_a_consumer_whose_channel_the_broker_closes_consumes_again(vhost_url: str) -> None:
    # RabbitMQ closes a channel on its own for a consumer_timeout or a protocol error; acking a
    # delivery twice is a protocol error (unknown delivery tag), so it stands in for both here.
    with connect(vhost_url) as broker:
        broker.declare(Topology(retry_delays=(1,)))
        got: queue.Queue[Delivery] = queue.Queue()
        broker.consume(STAT, got.put, prefetch=5)
        broker.publish(Message(EXAMS, KEY, "刘洋的心电图".encode(), message_id="first")).result(10)
        first = got.get(timeout=10)
        first.ack()
        first.ack()  # the broker closes the consumer's channel
        publish_until_confirmed(broker, Message(EXAMS, KEY, b"{}", message_id="after-close"))
        assert got.get(timeout=30).message_id == "after-close"

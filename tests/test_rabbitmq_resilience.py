"""The RabbitMQ broker survives its connection being closed under it."""

from __future__ import annotations

import queue
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import pytest
from brokers import rabbitmq_vhost

from hub.broker import Delivery, Message, connect
from hub.brokers.rabbitmq import RabbitMQBroker
from hub.errors import BrokerUnavailable
from hub.topology import EXAMS, Topology, exam_queue, exam_routing_key

ORIGIN = "12330112473455672X"  # 昌化镇卫生院
KEY = exam_routing_key("ecg", "stat", ORIGIN)


@pytest.fixture
def vhost_url() -> Iterator[str]:
    with rabbitmq_vhost() as url:
        yield url


def close_connections(url: str) -> None:
    vhost = unquote(urlsplit(url).path.lstrip("/"))
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "test: the network dropped"],
        check=True,
        capture_output=True,
        timeout=60,
    )


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


def test_publishing_resumes_after_the_connection_is_closed(vhost_url: str) -> None:
    with connect(vhost_url) as broker:
        assert isinstance(broker, RabbitMQBroker)
        broker.declare(Topology(retry_delays=(1,)))
        broker.publish(Message(EXAMS, KEY, b"{}", message_id="before")).result(10)
        close_connections(vhost_url)
        publish_until_confirmed(broker, Message(EXAMS, KEY, b"{}", message_id="after"))
        assert broker.message_count(exam_queue("ecg") + ".stat") == 2


def test_in_flight_publishes_fail_rather_than_hang_when_the_connection_drops(vhost_url: str) -> None:
    with connect(vhost_url) as broker:
        broker.declare(Topology(retry_delays=(1,)))
        futures = [broker.publish(Message(EXAMS, KEY, b"x" * 1024, message_id=f"m{n}")) for n in range(2000)]
        close_connections(vhost_url)
        outcomes = []
        for future in futures:
            try:
                future.result(30)  # never hangs: confirmed, or failed with BrokerUnavailable
                outcomes.append("confirmed")
            except BrokerUnavailable:
                outcomes.append("unavailable")
        confirmed = outcomes.count("confirmed")
        # Every confirmed message is in the queue: nothing confirmed was lost.
        publish_until_confirmed(broker, Message(EXAMS, KEY, b"{}", message_id="probe"))
        assert broker.message_count(exam_queue("ecg") + ".stat") >= confirmed + 1


def test_a_subscription_resumes_and_unsettled_messages_are_redelivered(vhost_url: str) -> None:
    with connect(vhost_url) as broker:
        broker.declare(Topology(retry_delays=(1,)))
        got: queue.Queue[Delivery] = queue.Queue()
        broker.consume(exam_queue("ecg") + ".stat", got.put, prefetch=5)
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


def test_an_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1"):
        RabbitMQBroker("amqp://guest:guest@127.0.0.1:1/%2F", connect_timeout=2)


def test_a_consumer_whose_channel_the_broker_closes_consumes_again(vhost_url: str) -> None:
    # RabbitMQ closes a channel on its own for a consumer_timeout or a protocol error; acking a
    # delivery twice is a protocol error (unknown delivery tag), so it stands in for both here.
    with connect(vhost_url) as broker:
        broker.declare(Topology(retry_delays=(1,)))
        got: queue.Queue[Delivery] = queue.Queue()
        broker.consume(exam_queue("ecg") + ".stat", got.put, prefetch=5)
        broker.publish(Message(EXAMS, KEY, "刘洋的心电图".encode(), message_id="first")).result(10)
        first = got.get(timeout=10)
        first.ack()
        first.ack()  # the broker closes the consumer's channel
        publish_until_confirmed(broker, Message(EXAMS, KEY, b"{}", message_id="after-close"))
        assert got.get(timeout=30).message_id == "after-close"

"""Brokers for tests: the in-process one, and RabbitMQ in a vhost of its own per test.

RabbitMQ is at HUB_TEST_AMQP_URL (default amqp://guest:guest@localhost:5672/%2F). Each test gets a
fresh vhost made with rabbitmqctl and deleted afterwards. Where RabbitMQ is missing the tests skip,
except with CI=true, where they fail: CI never skips the broker.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from hub.broker import Broker, Delivery
from hub.topology import Topology

AMQP_URL = os.environ.get("HUB_TEST_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")


def rabbitmq_reachable() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 5672), timeout=2):
            return True
    except OSError:
        return False


def require_rabbitmq() -> None:
    problem = None
    if not rabbitmq_reachable():
        problem = f"RabbitMQ is not reachable at {urlsplit(AMQP_URL).hostname}"
    elif shutil.which("rabbitmqctl") is None:
        problem = "rabbitmqctl is not on PATH (needed for a vhost per test)"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}; CI needs RabbitMQ (see .ci/services)")
    pytest.skip(problem)


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """The AMQP URL of a new, empty vhost; deleted on exit."""
    require_rabbitmq()
    vhost = f"hub-test-{uuid.uuid4().hex[:12]}"
    user = urlsplit(AMQP_URL).username or "guest"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        parts = urlsplit(AMQP_URL)
        yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))
    finally:
        _ctl("delete_vhost", vhost)


def broker_urls(param: str) -> Iterator[str]:
    """The body of every ``broker_url`` fixture: ``memory://``, or a RabbitMQ vhost made for it."""
    if param == "memory":
        yield "memory://guest@"
        return
    with rabbitmq_vhost() as url:
        yield url


def take(broker: Broker, queue_name: str, count: int, timeout: float = 15) -> list[Delivery]:
    """Exactly ``count`` messages from ``queue_name``, acked; fails when there are more or fewer."""
    got: queue.Queue[Delivery] = queue.Queue()
    subscription = broker.consume(queue_name, got.put, prefetch=count + 5)
    try:
        deliveries = [got.get(timeout=timeout) for _ in range(count)]
        for delivery in deliveries:
            delivery.ack()
    finally:
        subscription.cancel()
    assert got.empty(), f"more than {count} message(s) on {queue_name}"
    assert broker.message_count(queue_name) == 0, f"more than {count} message(s) on {queue_name}"
    return deliveries


def take_all(broker: Broker, queue_name: str, timeout: float = 15) -> list[Delivery]:
    """Everything on ``queue_name``, in order, acked."""
    count = broker.message_count(queue_name)
    if not count:
        return []
    got: queue.Queue[Delivery] = queue.Queue()
    subscription = broker.consume(queue_name, got.put, prefetch=count)
    try:
        deliveries = [got.get(timeout=timeout) for _ in range(count)]
        for delivery in deliveries:
            delivery.ack()  # before the cancel, which gives back whatever is unsettled
    finally:
        subscription.cancel()
    return deliveries


def declared_empty(broker: Broker, topology: Topology) -> Broker:
    """``broker`` with ``topology`` declared and its queues drained of an earlier test's leftovers."""
    broker.declare(topology)
    for leftover in topology.queues():
        take_all(broker, leftover.name)
    return broker

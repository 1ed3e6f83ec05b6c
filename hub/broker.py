"""The broker interface: publish with confirms, consume with explicit acks.

Two implementations, chosen by URL with ``connect``:

    amqp://, amqps://   hub.brokers.rabbitmq  (the only module that imports pika)
    memory://           hub.brokers.memory    (in-process: embedding, the demo, fast unit tests)

``publish`` returns a future that resolves once the broker has confirmed the
message (or fails with a BrokerError), so many callers pipeline their confirms
through one connection. Each broker runs an asyncio loop, ``Broker.loop``; code
on it (the gateways) calls ``publish_on_loop`` instead, which returns an
asyncio future and costs no thread hop. ``consume`` calls back with a
``Delivery`` whose ``ack`` and ``reject`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from hub.errors import BrokerUnavailable
from hub.topology import Topology

__all__ = ["CONFIRM_TIMEOUT", "DEFAULT_URL", "Broker", "Delivery", "Message", "Subscription", "connect", "wait"]

T = TypeVar("T")

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"  # RabbitMQ from Debian's package, on this machine
CONFIRM_TIMEOUT = 30.0  # seconds a caller waits for the broker before treating it as unavailable


class Message(NamedTuple):
    """One message to publish. A tuple, not a frozen dataclass: it is made for every publish, three times faster."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    headers: Mapping[str, Any] = MappingProxyType({})
    content_type: str = "application/json"
    # Set when a member publishes with its own broker user: RabbitMQ refuses a user_id that is
    # not the connection's login, so a member cannot forge another's origin.
    user_id: str | None = None


class Delivery(ABC):
    """One message handed to a consumer. Settle it exactly once, from any thread."""

    def __init__(
        self,
        *,
        queue: str,
        routing_key: str,
        body: bytes,
        message_id: str,
        headers: Mapping[str, Any],
        redelivered: bool,
    ) -> None:
        self.queue = queue
        self.routing_key = routing_key
        self.body = body
        self.message_id = message_id
        self.headers = headers
        self.redelivered = redelivered

    @property
    def live(self) -> bool:
        """Whether settling still reaches the broker; after a reconnect the message is redelivered instead."""
        return True

    @property
    def delivery_count(self) -> int:
        """Earlier deliveries of this message by this queue (quorum queues count them)."""
        return int(self.headers.get("x-delivery-count", 0) or 0)

    @abstractmethod
    def ack(self) -> None:
        """Done with: the broker forgets the message."""

    @abstractmethod
    def reject(self, *, requeue: bool) -> None:
        """Give the message back (requeue) or drop it to the queue's dead-letter exchange."""


class Subscription(ABC):
    @abstractmethod
    def cancel(self) -> None:
        """Stop deliveries; unsettled ones go back to the queue."""


class Broker(ABC):
    url: str

    @abstractmethod
    def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues and bindings; declaring twice changes nothing."""

    @property
    @abstractmethod
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the broker's I/O runs on; gateways run on it too."""

    @abstractmethod
    def publish(self, message: Message) -> Future[None]:
        """Publish persistently and mandatorily, from any thread; the future resolves on the broker's confirm."""

    @abstractmethod
    def publish_on_loop(self, message: Message) -> asyncio.Future[None]:
        """``publish`` for code running on ``loop``: no thread hop, an asyncio future."""

    @abstractmethod
    def consume(self, queue: str, on_delivery: Callable[[Delivery], None], *, prefetch: int) -> Subscription:
        """Deliver messages from ``queue``, at most ``prefetch`` unsettled at a time.

        ``on_delivery`` runs on a thread of the broker's (for RabbitMQ, its loop): it must hand the
        delivery on quickly. Declaring, consuming and counting wait for the broker, so they are
        called from other threads than ``loop``.
        """

    @abstractmethod
    def delete(self, topology: Topology) -> None:
        """Delete the topology's queues, with their messages, and its exchanges: for a demo's namespace."""

    @abstractmethod
    def message_count(self, queue: str) -> int:
        """Messages ready in ``queue``, not counting those delivered and unsettled; BrokerError if it is undeclared."""

    @abstractmethod
    def exchange_exists(self, exchange: str) -> bool:
        """Whether ``exchange`` is declared: for start-up checks, as publishing to a missing one fails late."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; unsettled deliveries go back to their queues."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait(future: Future[T], timeout: float = CONFIRM_TIMEOUT) -> T:
    """The future's result; a broker that has not answered in ``timeout`` is BrokerUnavailable."""
    try:
        return future.result(timeout)
    except FutureTimeout as exc:
        raise BrokerUnavailable(f"the broker did not answer within {timeout:g} s") from exc


def connect(url: str, *, namespace: str = "") -> Broker:
    """The broker for ``url``: ``amqp://``/``amqps://`` for RabbitMQ, ``memory://`` in-process.

    ``namespace`` prefixes every exchange and queue name on RabbitMQ (``demo-1.hub.exams``), so a
    demo or a second consortium shares a vhost without touching the hub's own queues. The
    in-process broker is private to its process and needs none.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("amqp", "amqps"):
        from hub.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(url, namespace=namespace)
    if scheme == "memory":
        from hub.brokers.memory import MemoryBroker

        return MemoryBroker(url)
    raise ValueError(f"unknown broker URL scheme {scheme!r}: use amqp://, amqps:// or memory://")

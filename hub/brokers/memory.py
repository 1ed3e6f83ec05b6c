"""An in-process broker with RabbitMQ's semantics, for embedding, the demo and fast tests.

What it shares with the hub's RabbitMQ topology: topic, direct and fanout
routing; mandatory publishing (no queue, no confirm); per-queue message TTL
and dead-lettering with ``x-death``; the quorum delivery limit with
``x-delivery-count``; prefetch; unsettled deliveries back to the queue when a
subscription is cancelled. A ``user_id`` that is not the URL's user
(``memory://guest@``, default ``guest``) is refused, as RabbitMQ refuses it.
Nothing survives the process: it is not a durable broker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hub.broker import Broker, Delivery, Message, Subscription
from hub.errors import BrokerError, BrokerUnavailable, PublishRefused, Unroutable
from hub.loop import LoopThread
from hub.topology import Topology

__all__ = ["MemoryBroker"]

log = logging.getLogger(__name__)


@dataclass
class _Envelope:
    message: Message
    enqueued: float
    returns: int = 0  # times handed back unsettled: the quorum queue's x-delivery-count


@dataclass
class _Queue:
    name: str
    arguments: dict[str, Any]
    ready: deque[_Envelope] = field(default_factory=deque)
    consumers: list[_MemorySubscription] = field(default_factory=list)
    turn: int = 0


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""
    words, parts = pattern.split("."), key.split(".") if key else []

    def match(i: int, j: int) -> bool:
        if i == len(words):
            return j == len(parts)
        if words[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and words[i] in ("*", parts[j]) and match(i + 1, j + 1)

    return match(0, 0)


class MemoryBroker(Broker):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._login = urlsplit(url).username or "guest"
        self._lock = threading.Condition()
        self._exchanges: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        self._queues: dict[str, _Queue] = {}
        self._closed = False
        self._io: LoopThread | None = None
        self._thread = threading.Thread(target=self._dispatch, name="hub-memory-broker", daemon=True)
        self._thread.start()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._io is None:  # only gateways need one, so it starts on first use
                self._io = LoopThread("hub-memory-loop")
            return self._io.loop

    def declare(self, topology: Topology) -> None:
        with self._lock:
            for exchange in topology.exchanges():
                self._exchanges.setdefault(exchange.name, (exchange.type, []))
            for queue in topology.queues():
                self._queues.setdefault(queue.name, _Queue(queue.name, dict(queue.arguments)))
            for binding in topology.bindings():
                bindings = self._exchanges[binding.exchange][1]
                if (binding.queue, binding.routing_key) not in bindings:
                    bindings.append((binding.queue, binding.routing_key))

    def delete(self, topology: Topology) -> None:
        with self._lock:
            for queue in topology.queues():
                dropped = self._queues.pop(queue.name, None)
                for subscription in list(dropped.consumers) if dropped else []:
                    self._drop_subscription(subscription)
            for exchange in topology.exchanges():
                self._exchanges.pop(exchange.name, None)

    def publish(self, message: Message) -> Future[None]:
        future: Future[None] = Future()
        if message.user_id is not None and message.user_id != self._login:
            future.set_exception(
                PublishRefused(f"user_id {message.user_id!r} is not this connection's user {self._login!r}")
            )
            return future
        with self._lock:
            if self._closed:
                future.set_exception(BrokerUnavailable("the in-process broker is closed"))
                return future
            if message.exchange and message.exchange not in self._exchanges:
                future.set_exception(Unroutable(f"no exchange {message.exchange!r} is declared"))
                return future
            queues = self._route(message.exchange, message.routing_key)
            if not queues:
                future.set_exception(
                    Unroutable(f"no queue is bound for {message.exchange!r} with routing key {message.routing_key!r}")
                )
                return future
            now = time.monotonic()
            for queue in queues:
                queue.ready.append(_Envelope(message, now))
            self._lock.notify_all()
        future.set_result(None)
        return future

    def publish_on_loop(self, message: Message) -> asyncio.Future[None]:
        confirmed = self.publish(message)  # settled at once: the in-process broker confirms synchronously
        future: asyncio.Future[None] = self.loop.create_future()
        error = confirmed.exception()
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
        return future

    def _route(self, exchange: str, routing_key: str) -> list[_Queue]:
        if exchange == "":
            named = self._queues.get(routing_key)
            return [named] if named else []
        kind, bindings = self._exchanges.get(exchange, ("", []))
        names: list[str] = []
        for name, pattern in bindings:
            hit = (
                kind == "fanout"
                or (kind == "direct" and pattern == routing_key)
                or (kind == "topic" and topic_matches(pattern, routing_key))
            )
            if hit and name not in names:
                names.append(name)
        return [self._queues[name] for name in names]

    def message_count(self, queue: str) -> int:
        with self._lock:
            return len(self._declared(queue).ready)

    def exchange_exists(self, exchange: str) -> bool:
        with self._lock:
            return exchange in self._exchanges

    def consume(self, queue: str, on_delivery: Callable[[Delivery], None], *, prefetch: int) -> Subscription:
        with self._lock:
            declared = self._declared(queue)
            subscription = _MemorySubscription(self, declared, on_delivery, prefetch)
            declared.consumers.append(subscription)
            self._lock.notify_all()
        return subscription

    def _declared(self, queue: str) -> _Queue:
        try:
            return self._queues[queue]
        except KeyError:
            raise BrokerError(f"no queue {queue!r} is declared") from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for queue in self._queues.values():
                for subscription in list(queue.consumers):
                    self._drop_subscription(subscription)
            self._lock.notify_all()
            io, self._io = self._io, None
        self._thread.join(5)
        if io is not None:
            io.stop(5)

    # -- called with the lock held

    def _drop_subscription(self, subscription: _MemorySubscription) -> None:
        queue = subscription.queue
        if subscription in queue.consumers:
            queue.consumers.remove(subscription)
        for envelope in reversed(list(subscription.unsettled.values())):
            self._give_back(queue, envelope)
        subscription.unsettled.clear()

    def _give_back(self, queue: _Queue, envelope: _Envelope) -> None:
        envelope.returns += 1
        limit = queue.arguments.get("x-delivery-limit")
        if limit is not None and envelope.returns > limit:
            self._dead_letter(queue, envelope, "delivery_limit")
        else:
            queue.ready.appendleft(envelope)

    def _dead_letter(self, queue: _Queue, envelope: _Envelope, reason: str) -> None:
        exchange = queue.arguments.get("x-dead-letter-exchange")
        if exchange is None:
            return
        message = envelope.message
        death = {"queue": queue.name, "reason": reason, "count": 1, "exchange": message.exchange,
                 "routing-keys": [message.routing_key]}  # fmt: skip
        headers = dict(message.headers)
        headers["x-death"] = [death, *headers.get("x-death", [])]
        headers.pop("x-delivery-count", None)
        routing_key = queue.arguments.get("x-dead-letter-routing-key", message.routing_key)
        moved = message._replace(exchange=exchange, routing_key=routing_key, headers=headers)
        now = time.monotonic()
        for target in self._route(exchange, routing_key):
            target.ready.append(_Envelope(moved, now))

    def _expire(self, now: float) -> float | None:
        """Dead-letter expired heads of TTL queues; the time of the next expiry, if any."""
        soonest: float | None = None
        for queue in list(self._queues.values()):
            ttl = queue.arguments.get("x-message-ttl")
            if ttl is None:
                continue
            while queue.ready and queue.ready[0].enqueued + ttl / 1000 <= now:
                self._dead_letter(queue, queue.ready.popleft(), "expired")
            if queue.ready:
                due = queue.ready[0].enqueued + ttl / 1000
                soonest = due if soonest is None else min(soonest, due)
        return soonest

    def _next_delivery(self) -> tuple[_MemorySubscription, _MemoryDelivery] | None:
        for queue in self._queues.values():
            if not queue.ready or not queue.consumers:
                continue
            for offset in range(len(queue.consumers)):
                subscription = queue.consumers[(queue.turn + offset) % len(queue.consumers)]
                if len(subscription.unsettled) < subscription.prefetch:
                    queue.turn += offset + 1
                    envelope = queue.ready.popleft()
                    return subscription, subscription.track(envelope)
        return None

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                due = self._expire(time.monotonic())
                nxt = self._next_delivery()
                if nxt is None:
                    self._lock.wait(None if due is None else max(0.0, due - time.monotonic()))
                    continue
            subscription, delivery = nxt
            try:
                subscription.on_delivery(delivery)  # outside the lock, as pika calls back on its own thread
            except Exception as exc:
                # A consumer's bug must not end this thread, the only one delivering: give the message back.
                log.error(
                    "a consumer of %s raised %s; its delivery goes back to the queue",
                    delivery.queue,
                    type(exc).__name__,
                )
                delivery.reject(requeue=True)  # nothing when the consumer settled it before raising

    def settle(self, subscription: _MemorySubscription, tag: int, *, requeue: bool | None) -> None:
        """Ack (requeue None), requeue, or dead-letter one delivery."""
        with self._lock:
            envelope = subscription.unsettled.pop(tag, None)
            if envelope is None:
                return
            queue = subscription.queue
            if requeue is True:
                self._give_back(queue, envelope)
            elif requeue is False:
                self._dead_letter(queue, envelope, "rejected")
            self._lock.notify_all()

    def cancel(self, subscription: _MemorySubscription) -> None:
        with self._lock:
            self._drop_subscription(subscription)
            self._lock.notify_all()


class _MemorySubscription(Subscription):
    def __init__(self, broker: MemoryBroker, queue: _Queue, on_delivery: Callable[[Delivery], None], prefetch: int):
        self.broker = broker
        self.queue = queue
        self.on_delivery = on_delivery
        self.prefetch = prefetch
        self.unsettled: dict[int, _Envelope] = {}
        self._tags = 0

    def track(self, envelope: _Envelope) -> _MemoryDelivery:
        self._tags += 1
        self.unsettled[self._tags] = envelope
        message = envelope.message
        headers = dict(message.headers)
        if envelope.returns:
            headers["x-delivery-count"] = envelope.returns
        return _MemoryDelivery(
            self,
            self._tags,
            queue=self.queue.name,
            routing_key=message.routing_key,
            body=message.body,
            message_id=message.message_id,
            headers=headers,
            redelivered=envelope.returns > 0,
        )

    def cancel(self) -> None:
        self.broker.cancel(self)


class _MemoryDelivery(Delivery):
    def __init__(self, subscription: _MemorySubscription, tag: int, **fields: Any) -> None:
        super().__init__(**fields)
        self._subscription = subscription
        self._tag = tag

    def ack(self) -> None:
        self._subscription.broker.settle(self._subscription, self._tag, requeue=None)

    def reject(self, *, requeue: bool) -> None:
        self._subscription.broker.settle(self._subscription, self._tag, requeue=requeue)

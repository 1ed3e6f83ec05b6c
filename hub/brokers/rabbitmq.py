"""RabbitMQ on pika: one connection, driven by an asyncio loop on its own I/O thread.

The only module that imports pika. Everything that touches the connection
runs on the loop (pika's ``AsyncioConnection``). Code already on the loop, such
as the gateways, publishes directly with ``publish_on_loop``; other threads hand
work to it in batches through ``call_soon_threadsafe``. Publishes are
pipelined: each gets a future that the confirm resolves, so many callers share
one confirm window. Handlers never run on the I/O thread, which keeps
heartbeats flowing however long a handler takes. Acks handed over in one pass
of the loop go out as one ``multiple`` ack where they form a run (``_Acks``).

When the connection drops, every unconfirmed publish fails with
BrokerUnavailable (its sender is not acknowledged and will retry), deliveries
not yet settled are redelivered by RabbitMQ, and the I/O thread reconnects with
backoff and resumes the subscriptions.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport
from pika.channel import Channel
from pika.exceptions import ChannelClosedByBroker
from pika.spec import Basic, BasicProperties

from hub.broker import Broker, Delivery, Message, Subscription, wait
from hub.errors import BrokerError, BrokerUnavailable, PublishRefused, Unroutable
from hub.loop import LoopThread
from hub.topology import Topology

__all__ = ["RabbitMQBroker"]

log = logging.getLogger(__name__)

_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
_NOT_FOUND = 404  # AMQP reply code: a passive declaration of something that does not exist


AnyFuture = Future[Any] | asyncio.Future[Any]


@dataclass(slots=True)
class _Pending:
    future: AnyFuture
    message: Message
    returned: str | None = None  # the broker's reason, when it returned the message as unroutable


class RabbitMQBroker(Broker):
    def __init__(self, url: str, *, namespace: str = "", connect_timeout: float = 10.0) -> None:
        self.url = url
        self.namespace = namespace
        self._params = pika.URLParameters(url)
        self._login = self._params.credentials.username
        self._connection: AsyncioConnection | None = None
        self._publisher: Channel | None = None
        self._admin: Channel | None = None
        self._pending: dict[int, _Pending] = {}
        self._next_tag = 1
        # Work handed to the I/O thread, drained in batches: one wake-up per batch, not per message,
        # is what lets publishing keep up with a raw pika publisher.
        self._inbox: deque[tuple[Callable[[], None], AnyFuture | None]] = deque()
        self._inbox_lock = threading.Lock()
        self._inbox_scheduled = False
        self._backlog: list[tuple[Message, AnyFuture]] = []  # waiting for the publishing channel to reopen
        # One declaration or count at a time: a refusal closes the admin channel under every call on it.
        self._admin_lock = threading.Lock()
        self._admin_call: Future[Any] | None = None  # the declaration in progress on the admin channel
        self._admin_backlog: tuple[Callable[[], None], Future[Any]] | None = None  # waiting for it to reopen
        self._subscriptions: list[_Subscription] = []
        self._attempt = 0
        self._closing = False
        self._ready = threading.Event()
        self._io = LoopThread("hub-rabbitmq-io")
        self._io.loop.call_soon_threadsafe(self._connect)
        if not self._ready.wait(connect_timeout):
            self.close()
            raise BrokerUnavailable(f"no connection to RabbitMQ at {self._params.host}:{self._params.port}")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._io.loop

    # -- the I/O thread

    def _connect(self) -> None:
        self._connection = _Connection(
            self._params,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_lost,
            on_close_callback=self._on_lost,
            custom_ioloop=self._io.loop,
        )

    def _on_open(self, connection: AsyncioConnection) -> None:
        self._attempt = 0
        connection.channel(on_open_callback=self._on_publisher_open)
        connection.channel(on_open_callback=self._on_admin_open)
        for subscription in list(self._subscriptions):  # a copy: cancelling one removes it
            subscription.open(connection)

    def _on_publisher_open(self, channel: Channel) -> None:
        self._publisher, self._next_tag = channel, 1
        channel.confirm_delivery(self._on_confirm)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_close_callback(self._on_publisher_closed)
        self._maybe_ready()
        backlog, self._backlog = self._backlog, []
        for message, future in backlog:
            self._send(message, future)

    def _on_admin_open(self, channel: Channel) -> None:
        self._admin = channel
        channel.add_on_close_callback(self._on_admin_closed)
        self._maybe_ready()
        if self._admin_backlog is not None:
            (run, future), self._admin_backlog = self._admin_backlog, None
            _run(run, future)

    def _maybe_ready(self) -> None:
        if self._publisher is not None and self._admin is not None:
            self._ready.set()

    def _on_lost(self, _connection: AsyncioConnection, reason: Any) -> None:
        self._ready.clear()
        self._publisher = self._admin = None
        self._fail_all(BrokerUnavailable(f"RabbitMQ connection lost before the confirm: {reason}"))
        if self._closing:
            self._io.loop.stop()
            return
        delay = _BACKOFF[min(self._attempt, len(_BACKOFF) - 1)]
        self._attempt += 1
        self._io.loop.call_later(delay, self._connect)

    def _fail_all(self, error: BrokerError) -> None:
        pending, self._pending = self._pending, {}
        backlog, self._backlog = self._backlog, []
        admin_call, self._admin_call = self._admin_call, None
        admin_backlog, self._admin_backlog = self._admin_backlog, None
        futures = [entry.future for entry in pending.values()] + [future for _message, future in backlog]
        if admin_backlog is not None:
            futures.append(admin_backlog[1])
        for future in [*futures, admin_call]:
            if future is not None:
                _settle(future, error)

    def _call(self, fn: Callable[[], None], future: AnyFuture | None = None) -> None:
        """Run ``fn`` on the I/O thread; a failure, or a closed broker, fails ``future``."""
        if self._closing:
            if future is not None:
                _settle(future, BrokerUnavailable("the broker is closed"))
            return
        if self._io.is_current:
            _run(fn, future)
            return
        with self._inbox_lock:
            self._inbox.append((fn, future))
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        self._io.loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        while True:
            with self._inbox_lock:
                if not self._inbox:
                    self._inbox_scheduled = False
                    return
                batch = list(self._inbox)
                self._inbox.clear()
            for fn, future in batch:
                _run(fn, future)

    # -- publishing

    def publish(self, message: Message) -> Future[None]:
        future: Future[None] = Future()
        self._call(lambda: self._send(message, future), future)
        return future

    def publish_on_loop(self, message: Message) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._io.loop.create_future()
        if self._closing:
            future.set_exception(BrokerUnavailable("the broker is closed"))
        else:
            _run(partial(self._send, message, future), future)
        return future

    def _send(self, message: Message, future: AnyFuture) -> None:
        channel = self._publisher
        if channel is None or not channel.is_open:
            connection = self._connection
            if connection is None or not connection.is_open:
                raise BrokerUnavailable("no connection to RabbitMQ")
            self._backlog.append((message, future))  # the channel is reopening after a refusal
            return
        properties = BasicProperties(
            content_type=message.content_type,
            delivery_mode=2,
            message_id=message.message_id,
            headers=message.headers if isinstance(message.headers, dict) else dict(message.headers),
            user_id=message.user_id,
        )
        exchange = self.namespace + message.exchange if message.exchange else ""
        channel.basic_publish(exchange, message.routing_key, message.body, properties, mandatory=True)
        self._pending[self._next_tag] = _Pending(future, message)
        self._next_tag += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if method.multiple:  # tags rise with each publish and the dict keeps that order
            tags = list(itertools.takewhile(lambda t: t <= method.delivery_tag, self._pending))
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            entry = self._pending.pop(tag, None)
            if entry is None:
                continue
            if isinstance(method, Basic.Nack):
                _settle(entry.future, PublishRefused(f"RabbitMQ nacked message {entry.message.message_id}"))
            elif entry.returned is not None:
                _settle(entry.future, Unroutable(entry.returned))
            else:
                _settle(entry.future, None)

    def _on_return(self, _channel: Channel, method: Any, properties: BasicProperties, _body: bytes) -> None:
        # A return carries no delivery tag; it comes before the confirm of its own message.
        for entry in self._pending.values():
            if entry.returned is None and entry.message.message_id == properties.message_id:
                entry.returned = (
                    f"no queue is bound for {method.exchange!r} with routing key {method.routing_key!r} "
                    f"({method.reply_text})"
                )
                return

    def _on_publisher_closed(self, channel: Channel, reason: Any) -> None:
        self._publisher = None
        text = str(reason)
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            forged = entry.message.user_id is not None and entry.message.user_id != self._login
            if forged and "user_id" in text:
                error: BrokerError = PublishRefused(
                    f"RabbitMQ refused user_id {entry.message.user_id!r}: this connection is logged in as "
                    f"{self._login!r}, and a member may only publish as itself ({text})"
                )
            elif f"no exchange '{self.namespace + entry.message.exchange}'" in text:
                # The other messages in flight fail as BrokerUnavailable and are sent again.
                error = Unroutable(f"no exchange {entry.message.exchange!r} in RabbitMQ: declare the topology")
            else:
                error = BrokerUnavailable(f"the publishing channel closed before the confirm: {text}")
            _settle(entry.future, error)
        connection = self._connection
        if not self._closing and connection is not None and connection.is_open:
            connection.channel(on_open_callback=self._on_publisher_open)

    # -- declaring and inspecting

    def _admin_rpc(self, operation: Callable[[Channel, Callable[[Any], None]], None]) -> Any:
        self._refuse_on_loop("declare or inspect")
        future: Future[Any] = Future()

        def run() -> None:
            channel = self._admin
            if channel is None or not channel.is_open:
                connection = self._connection
                if connection is None or not connection.is_open:
                    raise BrokerUnavailable("no open channel to RabbitMQ")
                self._admin_backlog = (run, future)  # the channel is reopening after a refusal
                return
            self._admin_call = future
            operation(channel, lambda frame: _settle(future, frame))

        with self._admin_lock:  # held until this call's outcome, so no other call shares its channel
            self._call(run, future)
            return wait(future)

    def _on_admin_closed(self, _channel: Channel, reason: Any) -> None:
        self._admin = None
        call, self._admin_call = self._admin_call, None
        if call is not None:
            refused = BrokerError(f"RabbitMQ refused a declaration: {reason}")
            refused.__cause__ = reason if isinstance(reason, BaseException) else None
            _settle(call, refused)
        connection = self._connection
        if not self._closing and connection is not None and connection.is_open:
            connection.channel(on_open_callback=self._on_admin_open)

    def _refuse_on_loop(self, what: str) -> None:
        if self._io.is_current:
            raise RuntimeError(f"{what} from another thread than the broker's loop: it waits for the loop")

    def _named(self, name: str) -> str:
        return self.namespace + name

    def declare(self, topology: Topology) -> None:
        for exchange in topology.exchanges():
            self._admin_rpc(partial(_declare_exchange, self._named(exchange.name), exchange.type))
        for queue in topology.queues():
            arguments = dict(queue.arguments)
            if "x-dead-letter-exchange" in arguments:
                arguments["x-dead-letter-exchange"] = self._named(arguments["x-dead-letter-exchange"])
            self._admin_rpc(partial(_declare_queue, self._named(queue.name), arguments))
        for binding in topology.bindings():
            bound = partial(_bind, self._named(binding.queue), self._named(binding.exchange), binding.routing_key)
            self._admin_rpc(bound)

    def delete(self, topology: Topology) -> None:
        for queue in topology.queues():
            self._admin_rpc(partial(_delete_queue, self._named(queue.name)))
        for exchange in topology.exchanges():
            self._admin_rpc(partial(_delete_exchange, self._named(exchange.name)))

    def message_count(self, queue: str) -> int:
        name = self._named(queue)
        frame = self._admin_rpc(lambda ch, done: ch.queue_declare(name, passive=True, callback=done))
        return int(frame.method.message_count)

    def exchange_exists(self, exchange: str) -> bool:
        name = self._named(exchange)
        try:
            self._admin_rpc(lambda ch, done: ch.exchange_declare(name, passive=True, callback=done))
        except BrokerError as exc:
            if isinstance(exc.__cause__, ChannelClosedByBroker) and exc.__cause__.reply_code == _NOT_FOUND:
                return False
            raise
        return True

    # -- consuming

    def consume(self, queue: str, on_delivery: Callable[[Delivery], None], *, prefetch: int) -> Subscription:
        self._refuse_on_loop("consume")
        subscription = _Subscription(self, queue, on_delivery, prefetch)
        opened: Future[None] = Future()

        def run() -> None:
            connection = self._connection
            if connection is None or not connection.is_open:
                raise BrokerUnavailable("no connection to RabbitMQ")
            self._subscriptions.append(subscription)  # here, so a reconnect cannot open it before this does
            subscription.open(connection, opened)

        self._call(run, opened)
        try:
            wait(opened)
        except BrokerError:
            subscription.cancel()  # a channel that opens after the wait gave up closes at once
            raise
        return subscription

    def reopen_later(self, subscription: _Subscription, delay: float = 1.0) -> None:
        def reopen() -> None:
            connection = self._connection
            if self._closing or connection is None or not connection.is_open:
                return
            subscription.open(connection)  # nothing when cancelled, or when the reconnect has reopened it

        self._io.loop.call_later(delay, reopen)

    def in_io_thread(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread, fire and forget (settling deliveries)."""
        self._call(fn)

    def close(self) -> None:
        if self._io.is_current:
            raise RuntimeError("close the broker from another thread than its I/O loop")
        if self._closing:
            return
        self._closing = True

        def shut() -> None:
            connection = self._connection
            if connection is not None and not (connection.is_closed or connection.is_closing):
                for subscription in self._subscriptions:
                    subscription.flush_acks()
                connection.close()
            else:
                self._io.loop.stop()

        self._io.loop.call_soon_threadsafe(shut)
        self._io.join(30)
        self._io.stop(5)  # when the connection never finished closing
        # Work that never reached the I/O thread must not leave its callers waiting.
        with self._inbox_lock:
            stranded, self._inbox = list(self._inbox), deque()
        self._fail_all(BrokerUnavailable("the broker is closed"))
        for _fn, future in stranded:
            if future is not None:
                _settle(future, BrokerUnavailable("the broker is closed"))


class _Connection(AsyncioConnection):  # type: ignore[misc]  # pika ships no types
    """pika's AsyncioConnection, writing what one pass of the loop sends as one buffer, at once.

    pika hands every frame to its transport alone (a publish is three: method, header and body),
    and its transport never sends straight away: it arms the socket's writer, sends on the next
    pass of the loop, and disarms the writer again (two ``epoll_ctl`` and a loop pass per burst).
    Here the frames of a pass are joined and, at the end of the pass, sent with one ``send()``
    when nothing is waiting in the transport's buffer, as asyncio's own transports do. What the
    socket does not take, and anything while the buffer is not empty, goes to pika's transport,
    which keeps the order and handles errors as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outgoing: list[bytes] = []

    def _adapter_emit_data(self, data: bytes) -> None:
        if not self._outgoing:
            self.ioloop.call_soon(self._emit_outgoing)
        self._outgoing.append(data)

    def _emit_outgoing(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        transport = self._transport
        if transport is None:  # the connection was lost in between, and its frames with it
            return
        data = b"".join(outgoing)
        if (
            isinstance(transport, _AsyncPlaintextTransport)  # TLS sends go through pika's state machine
            and transport._state == transport._STATE_ACTIVE
            and transport.get_write_buffer_size() == 0
        ):
            data = data[self._send_now(transport._sock, data) :]
            if not data:
                return
        super()._adapter_emit_data(data)

    @staticmethod
    def _send_now(sock: socket.socket, data: bytes) -> int:
        """Bytes the socket took without blocking; 0 leaves all of them, and any error, to pika's transport."""
        try:
            return sock.send(data)
        except OSError:  # would block, interrupted, or broken: the transport retries, or fails the connection
            return 0


class _Subscription(Subscription):
    """A consumer on one channel at a time, opened again when that channel or the connection closes.

    ``_channel`` is the subscription's channel from ``connection.channel()`` until it closes, opening
    or open: the closed channel and the reconnect both reopen the subscription, and only the first
    makes a channel. Each delivery settles on the channel it came on, through that channel's own
    ``_Acks``; once the channel is closed the settle is dropped and RabbitMQ redelivers the message.
    """

    def __init__(self, broker: RabbitMQBroker, queue: str, on_delivery: Callable[[Delivery], None], prefetch: int):
        self._broker = broker
        self.queue = queue
        self._on_delivery = on_delivery
        self._prefetch = prefetch
        self._channel: Channel | None = None
        self._acks: _Acks | None = None  # the open channel's
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def open(self, connection: AsyncioConnection, opened: Future[None] | None = None) -> None:
        """Consume on a new channel (I/O thread), unless cancelled or a channel is opening or open already."""
        if self._cancelled or self._channel is not None:
            return
        channel = connection.channel(on_open_callback=partial(self._on_channel, opened))
        self._channel = channel
        channel.add_on_close_callback(partial(self._on_closed, opened))

    def _is_current(self, channel: Channel) -> bool:
        return self._channel is channel

    def _on_channel(self, opened: Future[None] | None, channel: Channel) -> None:
        if self._cancelled or not self._is_current(channel):
            channel.close()  # cancelled while it opened
            return
        acks = _Acks(channel, self._broker.loop)
        self._acks = acks
        channel.basic_qos(prefetch_count=self._prefetch, callback=lambda _frame: self._start(channel, acks, opened))

    def _start(self, channel: Channel, acks: _Acks, opened: Future[None] | None) -> None:
        if self._cancelled or not channel.is_open:
            return  # cancel() is closing it

        def started(_frame: Any) -> None:
            if opened is not None:
                _settle(opened, None)

        channel.basic_consume(self._broker._named(self.queue), partial(self._on_message, acks), callback=started)

    def _on_closed(self, opened: Future[None] | None, channel: Channel, reason: Any) -> None:
        if not self._is_current(channel):
            return
        self._channel = self._acks = None
        if opened is not None and not opened.done():
            _settle(opened, BrokerError(f"cannot consume from {self.queue!r}: {reason}"))
            return
        # The broker closed this channel alone (consumer_timeout, a channel error): consume again. After a
        # lost connection the reconnect reopens every subscription too; whichever comes first opens it.
        if not self._cancelled:
            self._broker.reopen_later(self)

    def _on_message(self, acks: _Acks, channel: Channel, method: Any, properties: BasicProperties, body: bytes) -> None:
        acks.delivered(method.delivery_tag)
        delivery = _RabbitDelivery(
            self._broker,
            channel,
            acks,
            method.delivery_tag,
            queue=self.queue,
            routing_key=method.routing_key,
            body=body,
            message_id=properties.message_id or "",
            headers=properties.headers or {},
            redelivered=bool(method.redelivered),
        )
        try:
            self._on_delivery(delivery)
        except Exception as exc:
            # Raised into pika, it would drop the connection; as the in-process broker does, give it back.
            log.error("a consumer of %s raised %s; its delivery goes back to the queue", self.queue, type(exc).__name__)
            if not delivery.settled:
                delivery.reject(requeue=True)

    def flush_acks(self) -> None:
        """Send the acks not yet sent (I/O thread): before the channel or the connection is closed."""
        if self._acks is not None:
            self._acks.flush()

    def cancel(self) -> None:
        self._cancelled = True  # at once: a channel still opening closes as soon as it opens

        def shut() -> None:
            if self in self._broker._subscriptions:
                self._broker._subscriptions.remove(self)
            channel = self._channel
            if channel is not None and channel.is_open:
                self.flush_acks()
                channel.close()

        self._broker.in_io_thread(shut)


class _Acks:
    """One channel's acks, on the I/O thread: a settled run of the oldest tags goes as one ``multiple`` ack.

    Raw pika acks each message with a frame of its own; here the acks handed over in one pass of the
    I/O loop leave as one ``basic_ack(multiple=True)`` for the longest run of settled tags from the
    oldest unsettled one, so a multiple ack never covers a message still in a handler. An ack out of
    that order (an older message is still being read) goes alone at once, and so does a reject, so a
    slow handler never holds back the others' acks or the prefetch window.
    """

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        self._channel = channel
        self._loop = loop
        self._delivered: deque[int] = deque()  # tags in delivery order, oldest first, until settled
        self._done: set[int] = set()  # settled alone (out of order, or rejected), still in _delivered
        self._pending: set[int] = set()  # acked, waiting for this pass's multiple ack
        self._scheduled = False

    def delivered(self, tag: int) -> None:
        self._delivered.append(tag)

    def ack(self, tag: int) -> None:
        self._pending.add(tag)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def reject(self, tag: int, requeue: bool) -> None:
        self._channel.basic_reject(tag, requeue=requeue)
        self._done.add(tag)

    def flush(self) -> None:
        """Send what is pending; also before the channel is closed on purpose."""
        self._scheduled = False
        if not self._pending or not self._channel.is_open:
            return
        last = None
        while self._delivered and (self._delivered[0] in self._pending or self._delivered[0] in self._done):
            tag = self._delivered.popleft()
            if tag in self._pending:
                self._pending.discard(tag)
                last = tag
            else:
                self._done.discard(tag)
        if last is not None:
            self._channel.basic_ack(last, multiple=True)
        for tag in self._pending:  # an older delivery is still in hand: these go alone
            self._channel.basic_ack(tag)
            self._done.add(tag)
        self._pending.clear()


class _RabbitDelivery(Delivery):
    def __init__(self, broker: RabbitMQBroker, channel: Channel, acks: _Acks, tag: int, **fields: Any) -> None:
        super().__init__(**fields)
        self._broker = broker
        self._channel = channel
        self._acks = acks
        self._tag = tag
        self.settled = False  # ack or reject called
        self._sent = False  # on the I/O thread: the first settle went to RabbitMQ

    @property
    def live(self) -> bool:
        return bool(self._channel.is_open)

    def _settle(self, action: Callable[[], None]) -> None:
        channel = self._channel

        def run() -> None:
            # A second settle of one tag is a channel error for RabbitMQ (406, unknown delivery tag),
            # which would redeliver every other message in hand: the first one wins, as in memory://.
            # After a reconnect the tag means nothing: RabbitMQ redelivers the message instead.
            if channel.is_open and not self._sent:
                self._sent = True
                action()

        self._broker.in_io_thread(run)

    def ack(self) -> None:
        self.settled = True
        self._settle(lambda: self._acks.ack(self._tag))

    def reject(self, *, requeue: bool) -> None:
        self.settled = True
        self._settle(lambda: self._acks.reject(self._tag, requeue))


def _declare_exchange(name: str, kind: str, channel: Channel, done: Callable[[Any], None]) -> None:
    channel.exchange_declare(name, kind, durable=True, callback=done)


def _declare_queue(name: str, arguments: dict[str, Any], channel: Channel, done: Callable[[Any], None]) -> None:
    channel.queue_declare(name, durable=True, arguments=arguments, callback=done)


def _bind(queue: str, exchange: str, routing_key: str, channel: Channel, done: Callable[[Any], None]) -> None:
    channel.queue_bind(queue, exchange, routing_key, callback=done)


def _delete_queue(name: str, channel: Channel, done: Callable[[Any], None]) -> None:
    channel.queue_delete(name, callback=done)


def _delete_exchange(name: str, channel: Channel, done: Callable[[Any], None]) -> None:
    channel.exchange_delete(name, callback=done)


def _run(fn: Callable[[], None], future: AnyFuture | None) -> None:
    if future is not None and future.done():
        return
    try:
        fn()
    except Exception as exc:  # pika raises on a closed channel or connection
        if future is not None:
            _settle(future, exc if isinstance(exc, BrokerError) else BrokerUnavailable(str(exc)))


def _settle(future: AnyFuture, outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)

"""The RabbitMQ connection joins the frames of one pass of its loop and sends them at once.

pika's transport would arm the socket's writer and send on the next pass; ``_Connection`` sends
straight away when the transport has nothing buffered, and hands pika whatever the socket did not
take, so order and error handling stay pika's.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from brokers import take

from hub.broker import Message, connect
from hub.brokers.rabbitmq import RabbitMQBroker, _Connection
from hub.topology import EXAMS, Topology, exam_queue, exam_routing_key

ORIGIN = "12330112475697894G"  # 高虹镇卫生院
MESSAGES = 40


def count_writes(broker: RabbitMQBroker) -> tuple[list[bytes], list[bytes], Callable[[], None]]:
    """Record what goes straight to the socket and what goes through pika's transport."""
    connection: Any = broker._connection
    transport = connection._transport
    direct: list[bytes] = []
    buffered: list[bytes] = []
    send_now, write = connection._send_now, transport.write

    def counted_send_now(sock: socket.socket, data: bytes) -> int:
        direct.append(data)
        return int(send_now(sock, data))

    def counted_write(data: bytes) -> None:
        buffered.append(data)
        write(data)

    connection._send_now, transport.write = counted_send_now, counted_write

    def restore() -> None:
        del connection._send_now
        transport.write = write

    return direct, buffered, restore


def publish_and_take(broker: RabbitMQBroker, bodies: list[bytes]) -> tuple[list[Message], list[tuple[str, bytes]]]:
    key = exam_routing_key("lab", "routine", ORIGIN)
    messages = [Message(EXAMS, key, body, message_id=f"exam-{n}") for n, body in enumerate(bodies)]
    futures = [broker.publish(m) for m in messages]
    for future in futures:
        future.result(30)
    got = take(broker, exam_queue("lab"), len(messages))
    for delivery in got:
        delivery.ack()
    return messages, sorted((d.message_id, d.body) for d in got)


def test_a_batch_of_publishes_goes_straight_to_the_socket_in_far_fewer_sends_than_frames(vhost_url: str) -> None:
    bodies = [f"张伟 血常规 {n} ".encode() * (n + 1) for n in range(MESSAGES)]
    with connect(vhost_url) as broker:
        assert isinstance(broker, RabbitMQBroker)
        broker.declare(Topology(institutions=[ORIGIN]))
        direct, buffered, restore = count_writes(broker)
        try:
            messages, got = publish_and_take(broker, bodies)
        finally:
            restore()
        # Unjoined, each publish is three frames and three writes: method, header, body.
        assert 1 <= len(direct) < MESSAGES
        assert buffered == []  # the socket took every burst at once: pika's writer was never armed
        assert sum(len(d) for d in direct) > sum(map(len, bodies))
        assert got == sorted((m.message_id, m.body) for m in messages)


def test_what_the_socket_does_not_take_goes_through_pikas_transport_in_order(vhost_url: str) -> None:
    # Larger than a loopback socket's send buffer: the first send is partial.
    large = "王秀英 胸部CT ".encode("gb18030") * 1_500_000
    bodies = [large, "李娜 心电图".encode(), large[::-1]]
    with connect(vhost_url) as broker:
        assert isinstance(broker, RabbitMQBroker)
        broker.declare(Topology(institutions=[ORIGIN]))
        direct, buffered, restore = count_writes(broker)
        try:
            messages, got = publish_and_take(broker, bodies)
        finally:
            restore()
        assert direct and buffered  # a partial send, its rest buffered by pika
        assert got == sorted((m.message_id, m.body) for m in messages)


def test_send_now_leaves_a_full_or_broken_socket_to_the_transport() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(False)
        chunk = b"x" * 65536
        while _Connection._send_now(ours, chunk):
            pass  # fill the socket's buffer: the last call would have blocked
        assert _Connection._send_now(ours, chunk) == 0
        peer.close()
        assert _Connection._send_now(ours, chunk) == 0  # broken pipe: no exception into the loop

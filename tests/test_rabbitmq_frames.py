"""The RabbitMQ connection joins the frames of one pass of its loop and sends them at once.

pika's transport would arm the socket's writer and send on the next pass; ``_Connection`` sends
straight away when the transport has nothing buffered, and hands pika whatever the socket did not
take, so order and error handling stay pika's.
"""

from __future__ import annotations

import socket
from typing import Any

from brokers import take

from hub.broker import Message, connect
from hub.brokers.rabbitmq import RabbitMQBroker, _Connection
from hub.topology import EXAMS, Topology, exam_queue, exam_routing_key

ORIGIN = "12330112475697894G"  # 高虹镇卫生院
MESSAGES = 40


def publish_counting_writes(url: str, bodies: list[bytes]) -> tuple[list[bytes], list[bytes], bool]:
    """Publish ``bodies`` and take them back. Returns what went straight to the socket, what went
    through pika's transport, and whether every message arrived whole."""
    key = exam_routing_key("lab", "routine", ORIGIN)
    messages = [Message(EXAMS, key, body, message_id=f"exam-{n}") for n, body in enumerate(bodies)]
    direct: list[bytes] = []
    buffered: list[bytes] = []
    with connect(url) as broker:
        assert isinstance(broker, RabbitMQBroker)
        broker.declare(Topology(institutions=[ORIGIN]))
        connection: Any = broker._connection
        transport = connection._transport
        send_now, write = connection._send_now, transport.write

        def counted_send_now(sock: socket.socket, data: bytes) -> int:
            direct.append(data)
            return int(send_now(sock, data))

        def counted_write(data: bytes) -> None:
            buffered.append(data)
            write(data)

        connection._send_now, transport.write = counted_send_now, counted_write
        try:
            for future in [broker.publish(m) for m in messages]:
                future.result(30)
        finally:
            del connection._send_now
            transport.write = write
        got = take(broker, exam_queue("lab"), len(messages))
        for delivery in got:
            delivery.ack()
    whole = sorted((d.message_id, d.body) for d in got) == sorted((m.message_id, m.body) for m in messages)
    return direct, buffered, whole


def test_a_batch_of_publishes_goes_straight_to_the_socket_in_far_fewer_sends_than_frames(vhost_url: str) -> None:
    bodies = [f"张伟 血常规 {n} ".encode() * (n + 1) for n in range(MESSAGES)]
    direct, buffered, whole = publish_counting_writes(vhost_url, bodies)
    # Unjoined, each publish is three frames and three writes: method, header, body.
    assert 1 <= len(direct) < MESSAGES
    assert buffered == []  # the socket took every burst at once: pika's writer was never armed
    assert sum(len(d) for d in direct) > sum(map(len, bodies))
    assert whole


def test_what_the_socket_does_not_take_goes_through_pikas_transport_in_order(vhost_url: str) -> None:
    # Larger than a loopback socket's send buffer: the first send is partial.
    large = "王秀英 胸部CT ".encode("gb18030") * 1_500_000
    direct, buffered, whole = publish_counting_writes(vhost_url, [large, "李娜 心电图".encode(), large[::-1]])
    assert direct and buffered  # a partial send, its rest buffered by pika
    assert whole


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

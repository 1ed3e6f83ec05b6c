"""The RabbitMQ connection joins the frames of one pass of its loop into one write to the socket."""

from __future__ import annotations

from brokers import take

from hub.broker import Message, connect
from hub.brokers.rabbitmq import RabbitMQBroker
from hub.topology import EXAMS, Topology, exam_queue, exam_routing_key

ORIGIN = "12330112475697894G"  # 高虹镇卫生院
MESSAGES = 40


def test_a_batch_of_publishes_leaves_in_far_fewer_writes_than_frames_and_arrives_whole(vhost_url: str) -> None:
    key = exam_routing_key("lab", "routine", ORIGIN)
    bodies = [f"张伟 血常规 {n} ".encode() * (n + 1) for n in range(MESSAGES)]
    with connect(vhost_url) as broker:
        assert isinstance(broker, RabbitMQBroker)
        broker.declare(Topology(institutions=[ORIGIN]))
        transport = broker._connection._transport  # type: ignore[union-attr]
        writes: list[bytes] = []
        write = transport.write

        def counted(data: bytes) -> None:
            writes.append(data)
            write(data)

        transport.write = counted
        messages = [Message(EXAMS, key, body, message_id=f"exam-{n}") for n, body in enumerate(bodies)]
        futures = [broker.publish(m) for m in messages]
        for future in futures:
            future.result(15)
        transport.write = write
        # Unjoined, each publish is three frames and three writes: method, header, body.
        assert 1 <= len(writes) < MESSAGES
        assert sum(len(w) for w in writes) > sum(map(len, bodies))
        got = take(broker, exam_queue("lab"), MESSAGES)
        assert sorted((d.message_id, d.body) for d in got) == sorted((m.message_id, m.body) for m in messages)
        for delivery in got:
            delivery.ack()

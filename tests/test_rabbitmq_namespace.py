"""A namespace keeps a demo's (or a second consortium's) queues apart from the hub's in one vhost."""

from __future__ import annotations

import queue
import time

import pytest

from hub.broker import Delivery, Message, connect
from hub.errors import BrokerError
from hub.topology import EXAMS, Topology, exam_queue, exam_routing_key, parked_queue

ORIGIN = "12330112475697894G"  # 高虹镇卫生院
TOPOLOGY = Topology(institutions=[ORIGIN], retry_delays=(1,))


def test_namespaces_share_a_vhost_without_seeing_each_other(vhost_url: str) -> None:
    key = exam_routing_key("lab", "routine", ORIGIN)
    with connect(vhost_url) as hub, connect(vhost_url, namespace="demo-7.") as demo:
        hub.declare(TOPOLOGY)
        demo.declare(TOPOLOGY)
        demo.publish(Message(EXAMS, key, "王芳的血常规".encode(), message_id="demo-exam")).result(15)
        assert demo.message_count(exam_queue("lab")) == 1
        assert hub.message_count(exam_queue("lab")) == 0
        # Dead-lettering stays inside the namespace.
        got: queue.Queue[Delivery] = queue.Queue()
        subscription = demo.consume(exam_queue("lab"), got.put, prefetch=1)
        got.get(timeout=15).reject(requeue=False)
        deadline = time.monotonic() + 15
        while demo.message_count(parked_queue("lab")) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        subscription.cancel()
        assert demo.message_count(parked_queue("lab")) == 1
        assert hub.message_count(parked_queue("lab")) == 0
        demo.delete(TOPOLOGY)
        with pytest.raises(BrokerError):
            demo.message_count(exam_queue("lab"))
    with connect(vhost_url) as hub:
        assert hub.message_count(exam_queue("lab")) == 0  # the hub's own topology is untouched

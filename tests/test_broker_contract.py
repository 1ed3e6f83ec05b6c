"""One contract, two brokers: every test here runs on the in-process broker and on RabbitMQ."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import wait

import pytest

from hub.broker import Broker, Delivery, Message
from hub.errors import BrokerError, PublishRefused, Unroutable
from hub.topology import (
    DELIVERY_LIMIT,
    EXAMS,
    Topology,
    exam_queue,
    exam_routing_key,
    parked_queue,
    retry_exchange,
    stat_queue,
)

ORIGIN = "12330112472334561L"  # 於潜镇中心卫生院
TOPOLOGY = Topology(institutions=[ORIGIN], retry_delays=(1,))
WAIT = 15.0


def exam(key: str, n: int = 0, **headers: object) -> Message:
    return Message(EXAMS, key, f'{{"exam": {n}, "name": "张伟"}}'.encode(), message_id=f"ex-{n}", headers=headers)


def collect(broker: Broker, queue_name: str, *, prefetch: int = 10) -> tuple[queue.Queue[Delivery], object]:
    got: queue.Queue[Delivery] = queue.Queue()
    subscription = broker.consume(queue_name, got.put, prefetch=prefetch)
    return got, subscription


def eventually(condition: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def hub_broker(broker: Broker) -> Broker:
    broker.declare(TOPOLOGY)
    return broker


def test_declaring_twice_changes_nothing(hub_broker: Broker) -> None:
    hub_broker.declare(TOPOLOGY)
    assert hub_broker.message_count(exam_queue("lab")) == 0
    assert hub_broker.message_count(stat_queue("ecg")) == 0


def test_exams_route_to_their_centre_and_lane(hub_broker: Broker) -> None:
    futures = [
        hub_broker.publish(exam(exam_routing_key("lab", "routine", ORIGIN), 1)),
        hub_broker.publish(exam(exam_routing_key("lab", "urgent", ORIGIN), 2)),
        hub_broker.publish(exam(exam_routing_key("lab", "stat", ORIGIN), 3)),
        hub_broker.publish(exam(exam_routing_key("ecg", "stat", ORIGIN), 4)),
    ]
    for future in futures:
        future.result(WAIT)
    eventually(lambda: hub_broker.message_count(exam_queue("lab")) == 2)
    assert hub_broker.message_count(stat_queue("lab")) == 1
    assert hub_broker.message_count(stat_queue("ecg")) == 1
    assert hub_broker.message_count(exam_queue("ecg")) == 0


def test_unroutable_is_an_error_not_a_silent_drop(hub_broker: Broker) -> None:
    with pytest.raises(Unroutable, match=r"dental\.routine"):
        hub_broker.publish(exam(f"dental.routine.{ORIGIN}")).result(WAIT)
    # The broker keeps working after a returned message.
    hub_broker.publish(exam(exam_routing_key("lab", "routine", ORIGIN))).result(WAIT)


def test_a_delivery_carries_body_id_and_headers_and_ack_removes_it(hub_broker: Broker) -> None:
    hub_broker.publish(exam(exam_routing_key("lab", "routine", ORIGIN), 7, origin=ORIGIN)).result(WAIT)
    got, subscription = collect(hub_broker, exam_queue("lab"))
    delivery = got.get(timeout=WAIT)
    assert delivery.message_id == "ex-7"
    assert "张伟".encode() in delivery.body
    assert delivery.headers["origin"] == ORIGIN
    assert delivery.routing_key == exam_routing_key("lab", "routine", ORIGIN)
    assert not delivery.redelivered
    delivery.ack()
    subscription.cancel()  # type: ignore[attr-defined]
    time.sleep(0.3)
    assert hub_broker.message_count(exam_queue("lab")) == 0


def test_unsettled_deliveries_come_back_after_a_crash(hub_broker: Broker, broker_url: str) -> None:
    from hub.broker import connect

    hub_broker.publish(exam(exam_routing_key("lab", "routine", ORIGIN), 1)).result(WAIT)
    if broker_url.startswith("memory"):
        crashed, subscription = collect(hub_broker, exam_queue("lab"))
        crashed.get(timeout=WAIT)
        subscription.cancel()  # type: ignore[attr-defined]  # a consumer gone without settling
        survivor = hub_broker
    else:
        worker = connect(broker_url)  # a worker process that dies holding the message
        crashed, _ = collect(worker, exam_queue("lab"))
        crashed.get(timeout=WAIT)
        worker.close()
        survivor = hub_broker
    got, _ = collect(survivor, exam_queue("lab"))
    again = got.get(timeout=WAIT)
    assert again.message_id == "ex-1"
    assert again.redelivered
    assert again.delivery_count == 1


def held_exams(
    hub_broker: Broker, broker_url: str, count: int
) -> tuple[queue.Queue[Delivery], dict[str, Delivery], Callable[[], None]]:
    """``count`` lab exams delivered to a worker of their own and held there unsettled, by message id.

    ``die()`` ends that worker without settling the rest: its connection closes on RabbitMQ, its
    subscription is cancelled on the in-process broker.
    """
    from hub.broker import connect

    for n in range(count):
        hub_broker.publish(exam(exam_routing_key("lab", "routine", ORIGIN), n)).result(WAIT)
    worker = connect(broker_url) if broker_url.startswith("amqp") else hub_broker
    got, subscription = collect(worker, exam_queue("lab"), prefetch=10)
    held = {d.message_id: d for d in (got.get(timeout=WAIT) for _ in range(count))}

    def die() -> None:
        if worker is hub_broker:
            subscription.cancel()  # type: ignore[attr-defined]
        else:
            worker.close()

    return got, held, die


def test_settling_out_of_order_acks_only_what_was_settled(hub_broker: Broker, broker_url: str) -> None:
    """A message still in a handler is never acked with the others, however the acks are sent."""
    got, held, die = held_exams(hub_broker, broker_url, 6)
    for message_id in ("ex-2", "ex-1", "ex-5"):  # ex-0 is still being read: nothing before it is settled
        held[message_id].ack()
    held["ex-4"].reject(requeue=True)
    again = got.get(timeout=WAIT)  # the requeued one comes straight back to this consumer
    assert again.message_id == "ex-4"
    again.ack()
    time.sleep(0.5)  # the acks have reached the broker
    die()  # holding ex-0 and ex-3
    back, _ = collect(hub_broker, exam_queue("lab"))
    returned = sorted(back.get(timeout=WAIT).message_id for _ in range(2))
    assert returned == ["ex-0", "ex-3"]
    time.sleep(0.5)
    assert back.qsize() == 0


def test_a_settled_run_is_acked_and_the_message_after_it_is_not(hub_broker: Broker, broker_url: str) -> None:
    _got, held, die = held_exams(hub_broker, broker_url, 5)
    for message_id in ("ex-1", "ex-0", "ex-2", "ex-4"):  # a run from the oldest, then one past ex-3
        held[message_id].ack()
    time.sleep(0.5)
    die()  # holding ex-3
    back, _ = collect(hub_broker, exam_queue("lab"))
    assert back.get(timeout=WAIT).message_id == "ex-3"
    time.sleep(0.5)
    assert back.qsize() == 0


def test_prefetch_bounds_unsettled_deliveries(hub_broker: Broker) -> None:
    for n in range(5):
        hub_broker.publish(exam(exam_routing_key("lab", "routine", ORIGIN), n)).result(WAIT)
    got, _ = collect(hub_broker, exam_queue("lab"), prefetch=2)
    first = [got.get(timeout=WAIT), got.get(timeout=WAIT)]
    time.sleep(0.5)
    assert got.qsize() == 0
    first[0].ack()
    assert got.get(timeout=WAIT).message_id == "ex-2"


def test_rejected_exams_are_parked_with_their_headers(hub_broker: Broker) -> None:
    hub_broker.publish(exam(exam_routing_key("ecg", "stat", ORIGIN), 9, trace="t-1")).result(WAIT)
    got, _ = collect(hub_broker, stat_queue("ecg"))
    got.get(timeout=WAIT).reject(requeue=False)
    parked, _ = collect(hub_broker, parked_queue("ecg"))
    delivery = parked.get(timeout=WAIT)
    assert delivery.message_id == "ex-9"
    assert delivery.headers["trace"] == "t-1"
    assert delivery.headers["x-death"][0]["reason"] == "rejected"
    assert delivery.headers["x-death"][0]["queue"] == stat_queue("ecg")


def test_a_message_that_keeps_failing_is_parked_at_the_delivery_limit(hub_broker: Broker) -> None:
    hub_broker.publish(exam(exam_routing_key("lab", "routine", ORIGIN), 5)).result(WAIT)
    got, _ = collect(hub_broker, exam_queue("lab"))
    counts = []
    for _ in range(DELIVERY_LIMIT + 1):
        delivery = got.get(timeout=WAIT)
        counts.append(delivery.delivery_count)
        delivery.reject(requeue=True)
    assert counts == list(range(DELIVERY_LIMIT + 1))
    parked, _ = collect(hub_broker, parked_queue("lab"))
    delivery = parked.get(timeout=WAIT)
    assert delivery.message_id == "ex-5"
    assert delivery.headers["x-death"][0]["reason"] == "delivery_limit"


def test_a_consumer_that_raises_gives_its_delivery_back_and_deliveries_go_on(
    hub_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    counts: list[int] = []

    def broken(delivery: Delivery) -> None:
        counts.append(delivery.delivery_count)
        raise RuntimeError("a bug in the consumer, about 张伟")

    hub_broker.consume(exam_queue("lab"), broken, prefetch=1)
    got, _ = collect(hub_broker, stat_queue("ecg"))
    hub_broker.publish(exam(exam_routing_key("lab", "routine", ORIGIN), 1)).result(WAIT)
    hub_broker.publish(exam(exam_routing_key("ecg", "stat", ORIGIN), 2)).result(WAIT)
    assert got.get(timeout=WAIT).message_id == "ex-2"
    # Given back each time it raised, the message is parked at the delivery limit, as a requeue is.
    parked, _ = collect(hub_broker, parked_queue("lab"))
    delivery = parked.get(timeout=WAIT)
    assert delivery.message_id == "ex-1"
    assert delivery.headers["x-death"][0]["reason"] == "delivery_limit"
    assert counts == list(range(DELIVERY_LIMIT + 1))
    assert "RuntimeError" in caplog.text
    assert "张伟" not in caplog.text  # the class of the error only: its text may carry a patient's data


def test_a_retry_waits_in_its_delay_queue_then_returns_to_its_lane(hub_broker: Broker) -> None:
    key = exam_routing_key("ecg", "stat", ORIGIN)
    sent = time.monotonic()
    hub_broker.publish(Message(retry_exchange(1), key, b"{}", message_id="ex-r", headers={"x-hub-attempt": 1})).result(
        WAIT
    )
    got, _ = collect(hub_broker, stat_queue("ecg"))
    delivery = got.get(timeout=WAIT)
    assert time.monotonic() - sent >= 0.9
    assert delivery.message_id == "ex-r"
    assert delivery.headers["x-hub-attempt"] == 1
    assert hub_broker.message_count(exam_queue("ecg")) == 0


def test_a_forged_user_id_is_refused_and_the_broker_keeps_working(hub_broker: Broker) -> None:
    key = exam_routing_key("lab", "routine", ORIGIN)
    hub_broker.publish(
        Message(EXAMS, key, b"{}", message_id="own", user_id="guest")
    ).result(WAIT)  # fmt: skip
    with pytest.raises(PublishRefused, match="user_id"):
        hub_broker.publish(Message(EXAMS, key, b"{}", message_id="forged", user_id="12330112473455672X")).result(WAIT)
    hub_broker.publish(exam(key, 2)).result(WAIT)
    eventually(lambda: hub_broker.message_count(exam_queue("lab")) == 2)


def test_many_publishes_in_flight_all_confirm(hub_broker: Broker) -> None:
    key = exam_routing_key("lab", "routine", ORIGIN)
    futures = [hub_broker.publish(exam(key, n)) for n in range(1000)]
    done, not_done = wait(futures, timeout=60)
    assert not not_done
    assert all(f.exception() is None for f in done)
    eventually(lambda: hub_broker.message_count(exam_queue("lab")) == 1000)


def test_publishing_from_many_threads(hub_broker: Broker) -> None:
    key = exam_routing_key("imaging", "urgent", ORIGIN)
    errors: list[BaseException] = []

    def sender(base: int) -> None:
        try:
            for n in range(50):
                hub_broker.publish(exam(key, base + n)).result(WAIT)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i * 100,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    eventually(lambda: hub_broker.message_count(exam_queue("imaging")) == 400)


def test_publishing_on_the_brokers_loop_pipelines_confirms_and_reports_errors(hub_broker: Broker) -> None:
    key = exam_routing_key("ecg", "routine", ORIGIN)

    async def on_loop() -> list[BaseException | None]:
        futures = [hub_broker.publish_on_loop(exam(key, n)) for n in range(500)]
        outcomes: list[BaseException | None] = list(await asyncio.gather(*futures, return_exceptions=True))
        with pytest.raises(Unroutable, match=r"dental\.stat"):
            await hub_broker.publish_on_loop(exam(f"dental.stat.{ORIGIN}"))
        with pytest.raises(PublishRefused):
            await hub_broker.publish_on_loop(Message(EXAMS, key, b"{}", message_id="forged", user_id="someone-else"))
        await hub_broker.publish_on_loop(exam(key, 999))
        return outcomes

    outcomes = asyncio.run_coroutine_threadsafe(on_loop(), hub_broker.loop).result(WAIT * 2)
    assert outcomes == [None] * 500
    eventually(lambda: hub_broker.message_count(exam_queue("ecg")) == 501)


def test_waiting_on_a_silent_broker_is_broker_unavailable_not_a_bare_timeout() -> None:
    from concurrent.futures import Future

    from hub.broker import wait
    from hub.errors import BrokerUnavailable

    with pytest.raises(BrokerUnavailable, match="did not answer"):
        wait(Future(), timeout=0.05)


def test_closing_fails_what_was_never_sent(broker_url: str) -> None:
    from hub.broker import connect
    from hub.errors import BrokerUnavailable

    broker = connect(broker_url)
    broker.declare(TOPOLOGY)
    broker.close()
    with pytest.raises(BrokerUnavailable):
        broker.publish(exam(exam_routing_key("lab", "routine", ORIGIN))).result(WAIT)


def test_undeclared_names_are_broker_errors_and_exchange_exists_tells_them(hub_broker: Broker) -> None:
    assert hub_broker.exchange_exists(EXAMS) and hub_broker.exchange_exists(retry_exchange(1))
    assert not hub_broker.exchange_exists(retry_exchange(7))
    with pytest.raises(BrokerError):
        hub_broker.message_count("hub.exams.nowhere")
    with pytest.raises(BrokerError):
        hub_broker.consume("hub.exams.nowhere", lambda _delivery: None, prefetch=1)
    key = exam_routing_key("lab", "routine", ORIGIN)  # and the broker goes on working
    hub_broker.publish(exam(key, 1)).result(WAIT)
    eventually(lambda: hub_broker.message_count(exam_queue("lab")) == 1)
    assert not hub_broker.exchange_exists("hub.retry.9s") and hub_broker.exchange_exists(EXAMS)


def test_settling_twice_is_ignored_and_costs_no_other_delivery(hub_broker: Broker) -> None:
    key = exam_routing_key("lab", "routine", ORIGIN)
    for n in range(2):
        hub_broker.publish(exam(key, n)).result(WAIT)
    got, _ = collect(hub_broker, exam_queue("lab"))
    first, second = got.get(timeout=WAIT), got.get(timeout=WAIT)
    first.ack()
    first.ack()
    first.reject(requeue=True)  # the first settle wins
    time.sleep(0.5)  # RabbitMQ would close the channel on a second settle of one tag
    assert second.live
    second.ack()
    time.sleep(0.5)
    assert got.empty()  # nothing redelivered: neither the settled one nor the one still in hand
    assert hub_broker.message_count(exam_queue("lab")) == 0


def test_publishing_to_an_undeclared_exchange_is_unroutable_and_the_broker_goes_on(hub_broker: Broker) -> None:
    with pytest.raises(Unroutable, match=r"no exchange 'hub\.retry\.7s'"):
        hub_broker.publish(Message(retry_exchange(7), "lab.routine.x", b"{}", message_id="lost")).result(WAIT)
    key = exam_routing_key("lab", "routine", ORIGIN)
    hub_broker.publish(exam(key, 1)).result(WAIT)
    eventually(lambda: hub_broker.message_count(exam_queue("lab")) == 1)

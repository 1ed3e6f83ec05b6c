"""Broker figures against raw pika baselines measured in the same run, in a scratch vhost.

    python bench/broker.py [--messages N] [--backlog N]

Figures (issue 3):
- submit with confirms: >= 0.8x a raw pika publisher with 1,000 confirms in flight.
- Worker consume-and-ack, no-op handler: >= 0.8x raw pika consume at the same prefetch.
- STAT isolation: with 50,000 routine exams queued, a STAT exam reaches its handler in under 2x its
  latency on an empty queue (p99 over 200 STAT exams). One p99 is a handful of samples, and on a
  small machine the broker's disk and CPU add tails of their own, so rounds of (empty, backlog) run
  back to back and the verdict is the median of the rounds' ratios; every round is printed. Each
  round also times a raw pika reader under the same load (RawPikaReader): what RabbitMQ itself adds.
  STAT exams come from a process of their own (StatSender), as a gateway's would.
Needs RabbitMQ at HUB_BENCH_AMQP_URL (default localhost, guest) and rabbitmqctl for the scratch vhost.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the imports)
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]

import pika
from _timing import verdict

from hub.broker import Broker, Message, connect
from hub.envelope import Coding, Exam, Patient, Source
from hub.events import event_message, exam_event
from hub.ids import derive_exam_id
from hub.publish import asubmit, exam_message, submit_async
from hub.topology import EVENTS, LEDGER, Topology, exam_queue, stat_queue
from hub.worker import Worker

AMQP = os.environ.get("HUB_BENCH_AMQP_URL", "amqp://guest:guest@localhost:5672")
ORIGIN = "12330112472334561L"
WINDOW = 1000


def make_exam(n: int, priority: str = "routine") -> Exam:
    return Exam(
        exam_id=derive_exam_id(ORIGIN, placer_order=f"B{n}"),
        origin=ORIGIN,
        centre="lab",
        priority=priority,  # type: ignore[arg-type]
        patient=Patient(name="王秀英", national_id="11010519491231002X", sex="female"),
        service=Coding(code="58410-2", system="http://loinc.org", display="血常规"),
        placer_order=f"B{n}",
        source=Source(format="hl7v2", message_id=f"M{n}", charset="gb18030", received_at=datetime.now(UTC)),
    )


def scratch_vhost() -> tuple[str, str]:
    vhost = f"hub-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)  # fmt: skip
    return vhost, f"{AMQP}/{vhost}"


def drop_vhost(vhost: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=True, capture_output=True)


def purge(url: str, *queues: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for name in queues:
        channel.queue_purge(name)
    connection.close()


# -- publishing


def raw_pika_publish(url: str, messages: list[Message]) -> float:
    """A raw pika SelectConnection publisher keeping WINDOW confirms in flight; messages per second.

    It sends exactly what submit puts on the wire (body, message_id, headers, persistence), with the
    bodies already encoded and the properties built per message, as any publisher must.
    """
    count = len(messages)
    state = {"sent": 0, "acked": 0, "start": 0.0, "end": 0.0}

    def on_open(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel: pika.channel.Channel) -> None:
        channel.confirm_delivery(lambda frame: on_ack(channel, frame))
        state["start"] = time.perf_counter()
        fill(channel)

    def fill(channel: pika.channel.Channel) -> None:
        while state["sent"] < count and state["sent"] - state["acked"] < WINDOW:
            m = messages[state["sent"]]
            state["sent"] += 1
            props = pika.BasicProperties(
                content_type=m.content_type, delivery_mode=2, message_id=m.message_id, headers=dict(m.headers)
            )
            channel.basic_publish(m.exchange, m.routing_key, m.body, props, mandatory=True)

    def on_ack(channel: pika.channel.Channel, frame: object) -> None:
        method = frame.method  # type: ignore[attr-defined]
        state["acked"] = method.delivery_tag if method.multiple else state["acked"] + 1
        if state["acked"] >= count:
            state["end"] = time.perf_counter()
            channel.connection.close()
        else:
            fill(channel)

    connection = pika.SelectConnection(pika.URLParameters(url), on_open_callback=on_open,
                                       on_close_callback=lambda *_: connection.ioloop.stop())  # fmt: skip
    connection.ioloop.start()
    return count / (state["end"] - state["start"])


def hub_submit_on_loop(broker: Broker, exams: list[Exam]) -> float:
    """asubmit from the broker's loop, as the gateways publish, keeping WINDOW confirms in flight."""

    async def run() -> float:
        in_flight: deque[asyncio.Future[None]] = deque()
        start = time.perf_counter()
        for exam in exams:
            if len(in_flight) >= WINDOW:
                await in_flight.popleft()
            in_flight.append(asubmit(broker, exam))
        for future in in_flight:
            await future
        return len(exams) / (time.perf_counter() - start)

    return asyncio.run_coroutine_threadsafe(run(), broker.loop).result()


def hub_submit_from_thread(broker: Broker, exams: list[Exam]) -> float:
    """submit_async from another thread (a worker's, DICOM's), keeping WINDOW confirms in flight."""
    in_flight: deque[Future[None]] = deque()
    start = time.perf_counter()
    for exam in exams:
        if len(in_flight) >= WINDOW:
            in_flight.popleft().result()
        in_flight.append(submit_async(broker, exam))
    for future in in_flight:
        future.result()
    return len(exams) / (time.perf_counter() - start)


# -- consuming


def raw_pika_consume(url: str, queue: str, count: int, prefetch: int) -> float:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    start = time.perf_counter()
    for seen, (method, _props, _body) in enumerate(channel.consume(queue), start=1):
        channel.basic_ack(method.delivery_tag)
        if seen == count:
            break
    rate = count / (time.perf_counter() - start)
    channel.cancel()
    connection.close()
    return rate


def hub_worker_consume(broker: Broker, count: int, prefetch: int, events: bool) -> float:
    handled = [0]
    done = threading.Event()
    lock = threading.Lock()

    def noop(_exam: Exam) -> None:
        with lock:
            handled[0] += 1
            if handled[0] == count:
                done.set()

    worker = Worker(broker, "lab", noop, prefetch=prefetch, events=events)  # default concurrency
    start = time.perf_counter()
    worker.start()
    done.wait()
    rate = count / (time.perf_counter() - start)
    worker.stop(10)
    return rate


def fill_queue(broker: Broker, count: int, priority: str = "routine", offset: int = 0) -> None:
    futures = []
    for n in range(count):
        futures.append(broker.publish(exam_message(make_exam(offset + n, priority))))
        if len(futures) >= WINDOW:
            futures.pop(0).result()
    for future in futures:
        future.result()


# -- STAT isolation


class StatSender:
    """A gateway's process of its own, which submits each STAT exam asked for on its own connection.

    In a deployment the gateways (``hub serve``) and the worker are separate processes. A sender in
    the reader's process would wait for the interpreter lock that a loaded worker holds, and the
    figure would charge that wait to RabbitMQ's STAT lane.
    """

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_send_stats, args=(url, child), daemon=True)
        self._process.start()
        if not self._pipe.poll(30):
            raise SystemExit("the STAT sender process did not connect to RabbitMQ")
        self._pipe.recv()

    def submit(self, n: int) -> float:
        """Submit STAT exam ``n``; returns the CLOCK_MONOTONIC second at which the sender began."""
        self._pipe.send(n)
        return float(self._pipe.recv())

    def close(self) -> None:
        self._pipe.send(None)
        self._process.join(10)

    def __enter__(self) -> StatSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _send_stats(url: str, pipe: Any) -> None:
    with connect(url) as broker:
        pipe.send("ready")
        while (n := pipe.recv()) is not None:
            sent = time.clock_gettime(time.CLOCK_MONOTONIC)  # one clock for every process on the machine
            submit_async(broker, make_exam(n, "stat")).result()
            pipe.send(sent)


class StatClock:
    """Seconds from submit (by the StatSender) to arrival, one STAT exam at a time."""

    def __init__(self) -> None:
        self._arrivals: dict[str, float] = {}
        self._arrived = threading.Semaphore(0)

    def arrived(self, exam_id: str) -> None:
        self._arrivals[exam_id] = time.clock_gettime(time.CLOCK_MONOTONIC)
        self._arrived.release()

    def send(self, sender: StatSender, stats: int, offset: int) -> list[float]:
        time.sleep(0.5)  # the reader is consuming by now
        sent: dict[str, float] = {}
        for n in range(offset, offset + stats):
            sent[make_exam(n, "stat").exam_id] = sender.submit(n)
            if not self._arrived.acquire(timeout=30):
                raise SystemExit(f"STAT exam {n} did not reach the reader within 30 s")
            time.sleep(0.005)
        return [self._arrivals[exam_id] - at for exam_id, at in sent.items()]


def stat_latencies(broker: Broker, sender: StatSender, stats: int, offset: int, events: bool) -> list[float]:
    """StatClock latencies to the worker's handler while it reads the routine backlog."""
    clock = StatClock()

    def handler(exam: Exam) -> None:
        if exam.priority == "stat":
            clock.arrived(exam.exam_id)
        else:
            time.sleep(0.001)  # a routine read that takes a moment, so the backlog stays

    worker = Worker(broker, "lab", handler, concurrency=2, prefetch=50, events=events)  # the default stat_reserve=1
    worker.start()
    try:
        return clock.send(sender, stats, offset)
    finally:
        worker.stop(10)


class RawPikaReader:
    """The STAT workload's reader in raw pika, the baseline for what RabbitMQ itself adds under load.

    The worker's queues and prefetch, routine reads of 1 ms two at a time (as the worker's two threads),
    and for each routine exam the same ``exam.in_reading`` event, confirmed before the exam's ack; STAT
    exams are timed on arrival. One SelectConnection on its own thread, no handler threads, no decoding.
    """

    def __init__(self, url: str, on_stat: Callable[[str], None], events: bool) -> None:
        self._on_stat_arrival = on_stat
        self._events = events
        event = event_message(exam_event("exam.in_reading", make_exam(0), datetime.now(UTC)))
        self._event = (event.routing_key, event.body, pika.BasicProperties(
            content_type=event.content_type, delivery_mode=2, message_id=event.message_id, headers=dict(event.headers)
        ))  # fmt: skip
        self._waiting: deque[int] = deque()
        self._reading = 0
        self._unconfirmed: dict[int, int] = {}  # the event's publish tag -> its exam's delivery tag
        self._next_tag = 1
        self._ready = threading.Event()
        self._connection = pika.SelectConnection(
            pika.URLParameters(url), on_open_callback=self._on_open, on_close_callback=self._on_closed
        )
        self._thread = threading.Thread(target=self._connection.ioloop.start, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise SystemExit("the raw pika reader did not start consuming")

    def stop(self) -> None:
        self._connection.ioloop.add_callback_threadsafe(self._connection.close)
        self._thread.join(10)

    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_publisher)

    def _on_closed(self, connection: pika.SelectConnection, _reason: object) -> None:
        connection.ioloop.stop()

    def _on_publisher(self, channel: pika.channel.Channel) -> None:
        self._publisher = channel
        channel.confirm_delivery(self._on_confirm)
        self._connection.channel(on_open_callback=self._on_consumer)

    def _on_consumer(self, channel: pika.channel.Channel) -> None:
        self._consumer = channel

        def consume(_frame: object) -> None:
            channel.basic_consume(stat_queue("lab"), self._on_stat)
            channel.basic_consume(exam_queue("lab"), self._on_routine, callback=lambda _f: self._ready.set())

        channel.basic_qos(prefetch_count=50, callback=consume)

    def _on_stat(self, channel: pika.channel.Channel, method: Any, properties: Any, _body: bytes) -> None:
        self._on_stat_arrival(properties.message_id)
        channel.basic_ack(method.delivery_tag)

    def _on_routine(self, _channel: pika.channel.Channel, method: Any, _properties: Any, _body: bytes) -> None:
        self._waiting.append(method.delivery_tag)
        self._read_more()

    def _read_more(self) -> None:
        while self._reading < 2 and self._waiting:
            self._reading += 1
            self._connection.ioloop.call_later(0.001, partial(self._read, self._waiting.popleft()))

    def _read(self, tag: int) -> None:
        self._reading -= 1
        if not self._consumer.is_open:  # stopped: RabbitMQ requeues the exams not acked
            return
        self._read_more()
        if not self._events:
            self._consumer.basic_ack(tag)
            return
        routing_key, body, properties = self._event
        self._publisher.basic_publish(EVENTS, routing_key, body, properties, mandatory=True)
        self._unconfirmed[self._next_tag] = tag
        self._next_tag += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        last = method.delivery_tag
        for tag in [t for t in self._unconfirmed if t <= last] if method.multiple else [last]:
            self._consumer.basic_ack(self._unconfirmed.pop(tag))


def raw_stat_latencies(url: str, sender: StatSender, stats: int, offset: int, events: bool) -> list[float]:
    """As stat_latencies, with RawPikaReader in the worker's place."""
    clock = StatClock()
    reader = RawPikaReader(url, clock.arrived, events)
    reader.start()
    try:
        return clock.send(sender, stats, offset)
    finally:
        reader.stop()


def top_up(broker: Broker, queue: str, count: int, offset: int) -> int:
    """Fill ``queue`` back up to ``count`` routine exams; returns how many it holds."""
    missing = count - broker.message_count(queue)
    if missing > 0:
        fill_queue(broker, missing, offset=offset)
    return broker.message_count(queue)


def stat_isolation(broker: Broker, sender: StatSender, url: str, args: argparse.Namespace) -> None:
    """Rounds of (empty queue, backlog) back to back, the worker's and raw pika's; one p99 over ``args.stats`` each."""
    lab = exam_queue("lab")
    events = not args.stat_no_events
    loaded_p99s: list[float] = []
    empty_p99s: list[float] = []
    raw_loaded_p99s: list[float] = []
    raw_empty_p99s: list[float] = []
    for n in range(args.stat_rounds):
        base = n * (args.stats + args.backlog)
        purge(url, lab, stat_queue("lab"))
        empty = stat_latencies(broker, sender, args.stats, 10_000_000 + base, events)
        raw_empty = raw_stat_latencies(url, sender, args.stats, 11_000_000 + base, events)
        before = top_up(broker, lab, args.backlog, 20_000_000 + base)
        with Load(broker, lab, before) as load:
            loaded = stat_latencies(broker, sender, args.stats, 30_000_000 + base, events)
        raw_before = top_up(broker, lab, args.backlog, 40_000_000 + base)
        with Load(broker, lab, raw_before) as raw_load:
            raw_loaded = raw_stat_latencies(url, sender, args.stats, 50_000_000 + base, events)
        loaded_p99s.append(p99(loaded))
        empty_p99s.append(p99(empty))
        raw_loaded_p99s.append(p99(raw_loaded))
        raw_empty_p99s.append(p99(raw_empty))
        print(f"    round {n + 1}: worker {round_figures(loaded, empty, before)}, {load};\n"
              f"             raw pika {round_figures(raw_loaded, raw_empty, raw_before)}, {raw_load}")  # fmt: skip
    ratio, raw_ratio = median_ratio(loaded_p99s, empty_p99s), median_ratio(raw_loaded_p99s, raw_empty_p99s)
    print(f"  STAT p99, {args.backlog:,} routine queued {median(loaded_p99s) * 1000:>6.2f} ms   empty queue "
          f"{median(empty_p99s) * 1000:>7.2f} ms   {ratio:>5.2f}x   <2x     {verdict(ratio < 2)}  "
          f"(median of {args.stat_rounds} rounds' ratios; events={events})")  # fmt: skip
    print(f"    raw pika reader, same load  {median(raw_loaded_p99s) * 1000:>6.2f} ms   empty queue "
          f"{median(raw_empty_p99s) * 1000:>7.2f} ms   {raw_ratio:>5.2f}x            "
          f"(what RabbitMQ itself adds under this load; not judged)")  # fmt: skip


class Load:
    """How fast the reader in this process read the routine backlog, and the CPU that took it per exam."""

    def __init__(self, broker: Broker, queue: str, queued: int) -> None:
        self._broker, self._queue, self._queued = broker, queue, queued

    def __enter__(self) -> Load:
        self._started, self._cpu = time.monotonic(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.monotonic() - self._started, time.process_time() - self._cpu
        self.read = self._queued - self._broker.message_count(self._queue)
        self.rate, self.cpu_per_exam = self.read / wall, cpu / max(1, self.read)

    def __str__(self) -> str:
        return f"routine read at {self.rate:,.0f}/s with {self.cpu_per_exam * 1e6:.0f} us of this process's CPU each"


def round_figures(loaded: list[float], empty: list[float], queued: int) -> str:
    """One reader's round: p99 with the backlog and on an empty queue, their ratio, and the p50s."""
    p50s = f"p50 {median(loaded) * 1000:.2f} vs {median(empty) * 1000:.2f}"
    return (f"{p99(loaded) * 1000:6.2f} ms with {queued:,} routine queued, {p99(empty) * 1000:6.2f} ms empty, "
            f"{p99(loaded) / p99(empty):5.2f}x ({p50s})")  # fmt: skip


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def median_ratio(ours: list[float], base: list[float]) -> float:
    """Median over rounds of ours/base, each pair measured back to back, so slow drifts cancel."""
    return median(a / b for a, b in zip(ours, base, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="messages per throughput round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per throughput figure")
    parser.add_argument("--backlog", type=int, default=50_000, help="routine exams queued for STAT isolation")
    parser.add_argument("--stats", type=int, default=200, help="STAT exams timed per round")
    parser.add_argument("--stat-rounds", type=int, default=7, help="rounds of (empty queue, backlog) for STAT")
    parser.add_argument("--stat-no-events", action="store_true",
                        help="the STAT worker without ledger events: what the events cost the broker")  # fmt: skip
    parser.add_argument("--prefetch", type=int, default=100)
    args = parser.parse_args()
    vhost, url = scratch_vhost()
    lab = exam_queue("lab")
    try:
        with connect(url) as broker:
            broker.declare(Topology(institutions=[ORIGIN]))
            exams = [make_exam(n) for n in range(args.messages)]
            sample = exam_message(exams[0])
            print(f"bench/broker.py: RabbitMQ, scratch vhost, {args.messages} exams of {len(sample.body)} bytes with "
                  f"{len(sample.headers)} headers, persistent, confirm window {WINDOW}, {args.rounds} interleaved "
                  f"rounds; a rate is the median over rounds, a ratio the median of per-round ratios")  # fmt: skip

            raw, on_loop, threaded = [], [], []
            for _ in range(args.rounds):
                raw.append(raw_pika_publish(url, [exam_message(exam) for exam in exams]))
                purge(url, lab)
                on_loop.append(hub_submit_on_loop(broker, exams))
                purge(url, lab)
                threaded.append(hub_submit_from_thread(broker, exams))
                purge(url, lab)
            ratio = median_ratio(on_loop, raw)
            print(f"  submit with confirms          {median(on_loop):>9,.0f}/s   raw pika, {WINDOW} in flight "
                  f"{median(raw):>9,.0f}/s   {ratio:>5.2f}x   >=0.8x   {verdict(ratio >= 0.8)}  "
                  f"(asubmit on the broker's loop, as the gateways publish)")  # fmt: skip
            print(f"    from another thread         {median(threaded):>9,.0f}/s   "
                  f"{'':>35}{median_ratio(threaded, raw):>5.2f}x            "
                  f"(submit_async, as workers publish; not judged)")  # fmt: skip

            raw_c, ours_c, evented = [], [], []
            for _ in range(args.rounds):
                fill_queue(broker, args.messages)
                raw_c.append(raw_pika_consume(url, lab, args.messages, args.prefetch))
                fill_queue(broker, args.messages)
                ours_c.append(hub_worker_consume(broker, args.messages, args.prefetch, events=False))
                fill_queue(broker, args.messages)
                evented.append(hub_worker_consume(broker, args.messages, args.prefetch, events=True))
                purge(url, LEDGER)
            ratio = median_ratio(ours_c, raw_c)
            print(f"  worker consume+ack, no-op     {median(ours_c):>9,.0f}/s   raw pika consume+ack    "
                  f"{median(raw_c):>9,.0f}/s   {ratio:>5.2f}x   >=0.8x   {verdict(ratio >= 0.8)}  "
                  f"(prefetch {args.prefetch}, the default 4 handler threads, events=False)")  # fmt: skip
            print(f"    publishing exam.in_reading  {median(evented):>9,.0f}/s   "
                  f"{'':>35}{median_ratio(evented, raw_c):>5.2f}x            "
                  f"(the default: one ledger event per exam, confirmed before its ack; not judged)")  # fmt: skip

            with StatSender(url) as sender:
                stat_isolation(broker, sender, url, args)
    finally:
        drop_vhost(vhost)


if __name__ == "__main__":
    main()

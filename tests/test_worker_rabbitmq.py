"""Worker behaviour that only a real RabbitMQ can show: heartbeats, signals, dropped connections."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

from brokers import take_all
from handlers import read_ecg
from test_rabbitmq_resilience import close_connections, eventually
from test_worker import ORIGIN, TOPOLOGY, make_exam

from hub.broker import Delivery, connect
from hub.envelope import Exam, Report
from hub.publish import submit
from hub.topology import DELIVERY_LIMIT, exam_queue, parked_queue, report_queue, stat_queue
from hub.worker import Worker

WAIT = 30.0


def reports_of(url: str) -> queue.Queue[Delivery]:
    got: queue.Queue[Delivery] = queue.Queue()
    broker = connect(url)
    broker.consume(report_queue(ORIGIN), got.put, prefetch=10)
    return got


def test_a_handler_five_times_longer_than_the_heartbeat_runs_once(vhost_url: str) -> None:
    calls: list[str] = []

    def slow(exam: Exam) -> Report:
        calls.append(exam.exam_id)
        time.sleep(5)  # the heartbeat below is 1 s
        return read_ecg(exam)

    with connect(vhost_url + "?heartbeat=1") as broker:
        broker.declare(TOPOLOGY)
        submit(broker, make_exam(1, "stat"))
        worker = Worker(broker, "ecg", slow, concurrency=1, retry_delays=TOPOLOGY.retry_delays)
        worker.start()
        try:
            report = reports_of(vhost_url).get(timeout=WAIT)
            time.sleep(3)  # would a lost connection bring the exam back?
            assert calls == [make_exam(1).exam_id]
            assert report.message_id
            assert broker.message_count(stat_queue("ecg")) == 0
        finally:
            worker.stop(10)


EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "consortium.toml"  # ORIGIN is a member


def test_sigterm_finishes_the_exam_in_hand_then_exits(vhost_url: str, tmp_path: Path) -> None:
    with connect(vhost_url) as broker:
        broker.declare(TOPOLOGY)
        submit(broker, make_exam(2, "stat"))
    marker = tmp_path / "started"
    tests = Path(__file__).resolve().parent
    env = os.environ | {
        "PYTHONPATH": str(tests),
        "HUB_TEST_MARKER": str(marker),
        "HUB_TEST_HANDLER_SECONDS": "3",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "hub", "worker", "ecg", "--handler", "handlers:slow_read", "--broker", vhost_url,
         "--config", str(EXAMPLE_CONFIG), "--concurrency", "1", "--stat-reserve", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the handler never started"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "handler threads 1 for either lane and 2 for STAT only" in output
    assert "stopping" in output
    assert reports_of(vhost_url).get(timeout=WAIT).message_id  # the exam in hand was finished
    with connect(vhost_url) as broker:
        assert broker.message_count(stat_queue("ecg")) == 0  # and acked
    assert "张伟" not in output and "33011219620821031X" not in output  # no patient data in the log


def test_the_worker_carries_on_after_the_connection_is_closed(vhost_url: str) -> None:
    with connect(vhost_url) as broker:
        broker.declare(TOPOLOGY)
        worker = Worker(broker, "ecg", read_ecg, concurrency=2, retry_delays=TOPOLOGY.retry_delays)
        worker.start()
        reports = reports_of(vhost_url)
        try:
            submit(broker, make_exam(3))
            assert reports.get(timeout=WAIT).message_id
            close_connections(vhost_url)
            deadline = time.monotonic() + WAIT
            while True:  # a gateway answers AR meanwhile, and its sender tries again
                try:
                    submit(broker, make_exam(4))
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            seen = {Report.decode(reports.get(timeout=WAIT).body).exam_id}
            while make_exam(4).exam_id not in seen:
                seen.add(Report.decode(reports.get(timeout=WAIT).body).exam_id)
        finally:
            worker.stop(10)


def test_graceful_restarts_during_a_backlog_park_no_exam(vhost_url: str) -> None:
    """RabbitMQ 3.10 counts every return toward x-delivery-limit, and each stop hands back the exams
    a worker had buffered but not started: restarts alone must not park an exam that never failed."""
    read: set[str] = set()

    def slow(exam: Exam) -> None:
        read.add(exam.exam_id)
        time.sleep(0.3)  # a human reading: accepted, its report comes later

    with connect(vhost_url) as broker:
        broker.declare(TOPOLOGY)
        for n in range(30):
            submit(broker, make_exam(n))
        for _ in range(8):  # more restarts than the old limit of 5, fewer than DELIVERY_LIMIT
            worker = Worker(
                broker, "ecg", slow, concurrency=1, prefetch=10, events=False, retry_delays=TOPOLOGY.retry_delays
            )
            worker.start()
            time.sleep(0.5)
            worker.stop(WAIT)
        # The last stop's returns reach the queue a moment after stop() returns.
        eventually(lambda: broker.message_count(exam_queue("ecg")) == 30 - len(read))
        assert broker.message_count(parked_queue("ecg")) == 0
        left = take_all(broker, exam_queue("ecg"))
    returns = max(int(d.headers.get("x-delivery-count", 0)) for d in left)
    assert 5 <= returns < DELIVERY_LIMIT  # the old limit would have parked exams that never failed

"""submit and submit_report: confirmed, persistent, with the headers the hub routes and traces by."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from adapters import hl7v2
from hub.broker import Broker, Delivery
from hub.cli import main
from hub.envelope import SCHEMA_VERSION, Exam, Report
from hub.errors import PublishRefused
from hub.publish import submit, submit_report
from hub.topology import Topology, report_queue, stat_queue

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "messages"
ECG = hl7v2.read((SAMPLES / "hl7v2" / "ecg-resting-oru.hl7").read_bytes())[0]


@pytest.fixture
def hub_broker(broker: Broker) -> Broker:
    broker.declare(Topology(institutions=[ECG.origin], retry_delays=(1,)))
    return broker


def first(broker: Broker, queue_name: str) -> Delivery:
    got: queue.Queue[Delivery] = queue.Queue()
    broker.consume(queue_name, got.put, prefetch=1)
    return got.get(timeout=15)


def test_submit_routes_a_stat_ecg_to_its_lane_with_headers(hub_broker: Broker) -> None:
    assert ECG.priority == "stat"
    submit(hub_broker, ECG, trace_id="trace-0001")
    delivery = first(hub_broker, stat_queue("ecg"))
    assert delivery.message_id == ECG.exam_id
    assert delivery.headers["schema-version"] == SCHEMA_VERSION
    assert (delivery.headers["origin"], delivery.headers["centre"], delivery.headers["priority"]) == (
        ECG.origin,
        "ecg",
        "stat",
    )
    assert delivery.headers["trace-id"] == "trace-0001"
    assert Exam.decode(delivery.body) == ECG


def test_submit_report_goes_to_the_members_queue(hub_broker: Broker) -> None:
    from datetime import UTC, datetime

    report = Report.answering(ECG, status="final", issued_at=datetime.now(UTC), conclusion="窦性心律，正常心电图")
    submit_report(hub_broker, report)
    delivery = first(hub_broker, report_queue(ECG.origin))
    assert delivery.message_id == report.report_id
    assert delivery.headers["exam-id"] == ECG.exam_id
    assert Report.decode(delivery.body) == report


def test_a_member_cannot_submit_as_another(hub_broker: Broker) -> None:
    with pytest.raises(PublishRefused):
        submit(hub_broker, ECG, user_id=ECG.origin)  # logged in as guest, claiming to be 昌化镇卫生院


def test_topology_show_lists_queues_with_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "show", "--institution", ECG.origin]) == 0
    out = capsys.readouterr().out
    assert "hub.exams.ecg.stat" in out
    assert "x-delivery-limit=5" in out
    assert "x-dead-letter-strategy=at-least-once" in out
    assert f"hub.reports.{ECG.origin}" in out


def test_topology_declare_on_a_broker(broker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "declare", "--broker", broker_url, "--institution", ECG.origin]) == 0
    assert "declared" in capsys.readouterr().out

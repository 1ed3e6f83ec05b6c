"""submit and submit_report: confirmed, persistent, with the headers the hub routes and traces by.

A report fans out: to its member, a copy to the registry, its report.issued event to the ledger and, for
a critical value, an alert to its origin; all confirmed before submit_report returns.
"""

from __future__ import annotations

import asyncio
import queue
from datetime import UTC, datetime
from pathlib import Path

import pika
import pytest
from brokers import rabbitmq_vhost

from adapters import hl7v2
from hub.alerts import Alert, alert_id
from hub.broker import Broker, Delivery, connect
from hub.cli import main
from hub.envelope import SCHEMA_VERSION, Exam, Report
from hub.errors import PublishRefused
from hub.events import Event
from hub.publish import asubmit_report, report_messages, submit, submit_report
from hub.topology import DELIVERY_LIMIT, LEDGER, REGISTRY, Topology, alert_queue, report_queue, stat_queue

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


def signed(**fields: object) -> Report:
    return Report.answering(
        ECG, status="final", issued_at=datetime.now(UTC), conclusion="窦性心律，正常心电图", **fields
    )


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


def test_submit_report_goes_to_the_member_the_registry_and_the_ledger(hub_broker: Broker) -> None:
    report = signed()
    submit_report(hub_broker, report, trace_id="trace-0002")
    delivery = first(hub_broker, report_queue(ECG.origin))
    assert delivery.message_id == report.report_id
    assert delivery.headers["exam-id"] == ECG.exam_id
    assert Report.decode(delivery.body) == report
    copy = first(hub_broker, REGISTRY)
    assert (copy.message_id, copy.body, dict(copy.headers)) == (
        delivery.message_id,
        delivery.body,
        dict(delivery.headers),
    )
    issued = first(hub_broker, LEDGER)
    event = Event.decode(issued.body)
    assert (event.kind, event.report_id, event.report_status, event.critical) == (
        "report.issued",
        report.report_id,
        "final",
        False,
    )
    assert event.issued_at == report.issued_at
    assert ECG.patient.name and ECG.patient.name.encode() not in issued.body  # events carry no patient data
    assert hub_broker.message_count(alert_queue(ECG.origin)) == 0  # not critical: no alert


def test_a_critical_report_alerts_its_origin_even_with_ledger_events_off(hub_broker: Broker) -> None:
    report = signed(critical=True, critical_items=("ST段抬高，急性下壁心肌梗死可能",))
    assert [m.exchange for m in report_messages(report)] == ["hub.reports", REGISTRY, "hub.events", "hub.alerts"]

    async def publish() -> None:  # as a gateway on the broker's loop would
        await asubmit_report(hub_broker, report, events=False)

    asyncio.run_coroutine_threadsafe(publish(), hub_broker.loop).result(15)
    delivery = first(hub_broker, alert_queue(ECG.origin))
    alert = Alert.decode(delivery.body)
    assert delivery.message_id == f"{alert_id('critical', report.report_id)}:{ECG.origin}"
    assert (alert.kind, alert.institution, alert.report_id) == ("critical", ECG.origin, report.report_id)
    assert alert.critical_items == ("ST段抬高，急性下壁心肌梗死可能",)
    assert Report.decode(first(hub_broker, REGISTRY).body) == report
    assert first(hub_broker, report_queue(ECG.origin)).message_id == report.report_id
    assert hub_broker.message_count(LEDGER) == 0


def test_a_member_cannot_submit_as_another(hub_broker: Broker) -> None:
    with pytest.raises(PublishRefused):
        submit(hub_broker, ECG, user_id=ECG.origin)  # logged in as guest, claiming to be 昌化镇卫生院


def test_topology_show_lists_queues_with_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "show", "--institution", ECG.origin]) == 0
    out = capsys.readouterr().out
    assert "hub.exams.ecg.stat" in out
    assert f"x-delivery-limit={DELIVERY_LIMIT}" in out
    assert "x-dead-letter-strategy=at-least-once" in out
    assert f"hub.reports.{ECG.origin}" in out


def test_topology_declare_on_a_broker(broker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "declare", "--broker", broker_url, "--institution", ECG.origin]) == 0
    assert "declared" in capsys.readouterr().out


def test_on_the_wire_exams_and_reports_are_persistent_json_with_their_ids() -> None:
    report = signed()
    with rabbitmq_vhost() as url:
        with connect(url) as broker:
            broker.declare(Topology(institutions=[ECG.origin], retry_delays=(1,)))
            submit(broker, ECG)
            submit_report(broker, report)
        connection = pika.BlockingConnection(pika.URLParameters(url))  # read as any AMQP client would
        try:
            channel = connection.channel()
            for name, message_id in [(stat_queue("ecg"), ECG.exam_id), (report_queue(ECG.origin), report.report_id)]:
                method, properties, _body = channel.basic_get(name, auto_ack=True)
                assert method is not None, name
                assert properties.delivery_mode == 2  # persistent
                assert properties.content_type == "application/json"
                assert properties.message_id == message_id
                assert properties.headers["schema-version"] == SCHEMA_VERSION
        finally:
            connection.close()

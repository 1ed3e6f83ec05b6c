"""Pulling a member's reports to files: durable before acked, every format readable back, on both brokers."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

import hub.pull
from adapters import hl7v2
from hub.broker import Broker, Delivery, Message, connect
from hub.config import Institution
from hub.envelope import Coding, Exam, Patient, Performer, Report, Source
from hub.events import Event
from hub.ids import derive_exam_id
from hub.publish import submit_report
from hub.pull import pull_reports
from hub.topology import EGRESS, LEDGER, REPORTS, Topology, parked_queue, report_queue

LEAD = "12330112470101234B"
MEMBER = Institution(code="12330112475697894G", name="高虹镇卫生院", charset="GB18030")  # egress = pull
TOPOLOGY = Topology(institutions=[MEMBER.code], centres=("ecg",), retry_delays=(1,))
NOW = datetime(2024, 6, 12, 9, 31, 5, tzinfo=UTC)
WAIT = 15.0


def make_report(n: int) -> Report:
    placer = f"GH{n:04d}"
    exam = Exam(
        exam_id=derive_exam_id(MEMBER.code, placer_order=placer),
        origin=MEMBER.code,
        centre="ecg",
        patient=Patient(name="赵丽娟", sex="female"),
        service=Coding(code="XD001", display="常规心电图"),
        placer_order=placer,
        source=Source(format="hl7v2", received_at=NOW),
    )
    return Report.answering(exam, status="final", conclusion=f"窦性心律，ST段压低 {n}", issued_at=NOW,
                            performer=Performer(name="孙志强"), performer_institution=LEAD)  # fmt: skip


def ledger_events(broker: Broker, n: int) -> list[Event]:
    """The next ``n`` events the pull published; each submit_report's ``report.issued`` is not its."""
    got: queue.Queue[Delivery] = queue.Queue()
    subscription = broker.consume(LEDGER, got.put, prefetch=50)
    found: list[Event] = []
    try:
        while len(found) < n:
            event = Event.decode(got.get(timeout=WAIT).body)
            if event.kind != "report.issued":
                found.append(event)
    finally:
        subscription.cancel()
    return found


@pytest.fixture
def hub_broker(broker: Broker) -> Broker:
    broker.declare(TOPOLOGY)
    return broker


@pytest.fixture
def memory_broker() -> Iterator[Broker]:
    with connect("memory://guest@") as broker:
        broker.declare(TOPOLOGY)
        yield broker


def submit(broker: Broker, count: int) -> list[Report]:
    reports = [make_report(n) for n in range(count)]
    for report in reports:
        submit_report(broker, report)
    return reports


def test_pulled_hl7v2_files_read_back_to_the_exams_and_are_acked_and_recorded(
    hub_broker: Broker, tmp_path: Path
) -> None:
    reports = submit(hub_broker, 3)
    pulled = pull_reports(hub_broker, MEMBER, tmp_path / "out")
    assert [p.report_id for p in pulled] == [r.report_id for r in reports]  # queue order
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{r.report_id}.hl7" for r in reports)
    for report, item in zip(reports, pulled, strict=True):
        raw = item.path.read_bytes()
        (exam,) = hl7v2.read(raw, origin=MEMBER.code)
        assert exam.exam_id == report.exam_id == item.exam_id
        assert report.conclusion is not None and report.conclusion in raw.decode("gb18030")  # the member's charset
    assert hub_broker.message_count(report_queue(MEMBER.code)) == 0
    events = ledger_events(hub_broker, 3)
    assert [(e.kind, e.report_id, e.endpoint) for e in events] == [
        ("report.delivered", r.report_id, "pull") for r in reports
    ]


def test_json_and_fhir_formats_decode(memory_broker: Broker, tmp_path: Path) -> None:
    first, second = submit(memory_broker, 2)
    (as_json,) = pull_reports(memory_broker, MEMBER, tmp_path, format="json", limit=1)
    (as_fhir,) = pull_reports(memory_broker, MEMBER, tmp_path, format="fhir")
    assert as_json.path.name == f"{first.report_id}.json"
    assert Report.decode(as_json.path.read_bytes()) == first
    assert as_fhir.path.name == f"{second.report_id}.fhir.json"
    resource = DiagnosticReport.model_validate(json.loads(as_fhir.path.read_bytes()))
    assert (resource.id, resource.conclusion) == (second.report_id, second.conclusion)
    assert memory_broker.message_count(report_queue(MEMBER.code)) == 0


def test_a_limit_leaves_the_rest_queued_in_order(memory_broker: Broker, tmp_path: Path) -> None:
    reports = submit(memory_broker, 5)
    first = pull_reports(memory_broker, MEMBER, tmp_path, limit=2)
    assert memory_broker.message_count(report_queue(MEMBER.code)) == 3
    rest = pull_reports(memory_broker, MEMBER, tmp_path)
    assert [p.report_id for p in first + rest] == [r.report_id for r in reports]
    assert pull_reports(memory_broker, MEMBER, tmp_path) == []


def test_a_report_whose_file_cannot_be_written_stays_queued(
    memory_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = submit(memory_broker, 3)
    written: list[Path] = []
    durable = hub.pull.write_durably

    def disk_full_on_the_second(path: Path, data: bytes) -> None:
        if written:
            raise OSError(28, "No space left on device")
        durable(path, data)
        written.append(path)

    monkeypatch.setattr(hub.pull, "write_durably", disk_full_on_the_second)
    with pytest.raises(OSError, match="No space"):
        pull_reports(memory_broker, MEMBER, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{reports[0].report_id}.hl7"]  # no half-written file
    assert memory_broker.message_count(report_queue(MEMBER.code)) == 2  # only the durable one was acked
    monkeypatch.undo()
    assert [p.report_id for p in pull_reports(memory_broker, MEMBER, tmp_path)] == [r.report_id for r in reports[1:]]


def test_a_body_that_is_not_a_report_is_parked_and_the_rest_pulled(memory_broker: Broker, tmp_path: Path) -> None:
    memory_broker.publish(Message(REPORTS, f"{MEMBER.code}.ecg", b"\xff not json", message_id="rp-bad")).result(WAIT)
    (report,) = submit(memory_broker, 1)
    pulled = pull_reports(memory_broker, MEMBER, tmp_path)
    assert [p.report_id for p in pulled] == [report.report_id]
    got: queue.Queue[Delivery] = queue.Queue()
    memory_broker.consume(parked_queue(EGRESS), got.put, prefetch=1)
    parked = got.get(timeout=WAIT)
    assert (parked.message_id, parked.headers["x-hub-park-reason"]) == ("rp-bad", "undecodable report")
    assert parked.headers["x-hub-endpoint"] == "pull"


def test_an_empty_queue_pulls_nothing(memory_broker: Broker, tmp_path: Path) -> None:
    assert pull_reports(memory_broker, MEMBER, tmp_path / "new") == []
    assert (tmp_path / "new").is_dir()

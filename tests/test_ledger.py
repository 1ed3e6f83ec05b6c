"""The exam ledger on SQLite and PostgreSQL: states, idempotent and out-of-order events, SLA figures."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from hub.config import Config
from hub.envelope import ReportStatus
from hub.events import Event, EventKind
from hub.ids import derive_report_id
from hub.store.db import Base, Database
from hub.store.ledger import ExamRecord, Ledger, LedgerAlert, LedgerExam, LedgerTransition

LEAD = "12330112470101234B"  # 临安区人民医院
YUQIAN = "12330112472334561L"  # 於潜镇中心卫生院
CHANGHUA = "12330112473455672X"  # 昌化镇卫生院
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # 08:00 China Standard Time


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def consortium(centres: dict[str, Any] | None = None, alerts: dict[str, Any] | None = None) -> Config:
    institutions = [
        {"code": LEAD, "name": "临安区人民医院", "kind": "lead"},
        {"code": YUQIAN, "name": "於潜镇中心卫生院"},
        {"code": CHANGHUA, "name": "昌化镇卫生院"},
    ]
    data: dict[str, Any] = {"consortium": {"name": "临安区医共体", "lead": LEAD}, "institutions": institutions}
    if centres:
        data["centres"] = centres
    if alerts:
        data["alerts"] = alerts
    return Config.model_validate(data)


# -- events as the stages publish them


def exam_step(
    kind: EventKind,
    exam_id: str,
    minute: float,
    *,
    origin: str = YUQIAN,
    centre: str = "ecg",
    priority: str = "routine",
) -> Event:
    received = at(minute - 0.1) if kind == "exam.accepted" else None
    return Event(
        kind=kind,
        at=at(minute),
        exam_id=exam_id,
        origin=origin,
        centre=centre,
        priority=priority,  # type: ignore[arg-type]
        received_at=received,
        detail="rejected by handler" if kind == "exam.parked" else None,
    )


def report_step(
    kind: EventKind,
    exam_id: str,
    minute: float,
    status: ReportStatus = "final",
    *,
    origin: str = YUQIAN,
    centre: str = "ecg",
    revision: int = 0,
    critical_count: int | None = None,
) -> Event:
    return Event(
        kind=kind,
        at=at(minute),
        exam_id=exam_id,
        origin=origin,
        centre=centre,  # type: ignore[arg-type]
        report_id=derive_report_id(exam_id, status, revision),
        report_status=status,
        issued_at=at(minute - 0.5 if kind == "report.issued" else minute - 1.5),
        critical=critical_count is not None,
        critical_count=critical_count or 0,
        endpoint="mllp://127.0.0.1:6601" if kind == "report.delivered" else None,
    )


def lifecycle(
    exam_id: str,
    reported_after: float | None,
    *,
    queued: float = 0,
    origin: str = YUQIAN,
    centre: str = "ecg",
    priority: str = "routine",
    status: ReportStatus = "final",
) -> list[Event]:
    """accepted, in_reading, and when ``reported_after`` (minutes after queueing) a report issued and delivered."""
    where = {"origin": origin, "centre": centre}
    events = [
        exam_step("exam.accepted", exam_id, queued, priority=priority, **where),
        exam_step("exam.in_reading", exam_id, queued + 0.5, priority=priority, **where),
    ]
    if reported_after is not None:
        events.append(report_step("report.issued", exam_id, queued + reported_after, status, **where))
        events.append(report_step("report.delivered", exam_id, queued + reported_after + 0.2, status, **where))
    return events


@pytest.fixture
def ledger(database: Database) -> Ledger:
    return Ledger(database, consortium(), clock=lambda: at(60))


def snapshot(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every ledger row, in a stable order, leaving out the write time."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with database.session() as session:
        for model in (LedgerExam, LedgerTransition, LedgerAlert):
            columns = [c for c in model.__table__.columns if c.name != "updated_at"]
            keys = list(model.__table__.primary_key.columns)
            tables[model.__tablename__] = [tuple(r) for r in session.execute(select(*columns).order_by(*keys))]
    return tables


def comparable(exam: ExamRecord) -> dict[str, Any]:
    data = dataclasses.asdict(exam)
    for varying in ("exam_id", "report_id", "updated_at", "transitions"):
        data.pop(varying)
    return data


# -- the schema


def test_the_migrated_schema_matches_the_models(database: Database) -> None:
    with database.engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    ours = [d for d in diffs if "ledger_" in repr(d)]
    assert ours == []


# -- states and timestamps


def test_an_exam_goes_through_every_state_with_a_timestamp_for_each(ledger: Ledger) -> None:
    steps = [
        ("queued", [exam_step("exam.accepted", "ex-a", 0, priority="stat")]),
        ("in_reading", [exam_step("exam.in_reading", "ex-a", 1, priority="stat")]),
        ("preliminary", [report_step("report.issued", "ex-a", 3, "preliminary")]),
        ("delivered", [report_step("report.delivered", "ex-a", 4, "preliminary")]),
        ("final", [report_step("report.issued", "ex-a", 9, "final")]),
        ("delivered", [report_step("report.delivered", "ex-a", 10, "final")]),
        ("amended", [report_step("report.issued", "ex-a", 30, "amended", revision=1)]),
        ("delivered", [report_step("report.delivered", "ex-a", 31, "amended", revision=1)]),
        ("cancelled", [report_step("report.issued", "ex-a", 40, "cancelled")]),
        ("cancelled", [report_step("report.delivered", "ex-a", 41, "cancelled")]),  # a withdrawal stays withdrawn
    ]
    for state, events in steps:
        ledger.record(events)
        exam = ledger.exam("ex-a")
        assert exam is not None
        assert exam.state == state
    assert exam.received_at == at(-0.1)
    assert exam.queued_at == at(0)
    assert exam.in_reading_at == at(1)
    assert exam.preliminary_at == at(3)
    assert exam.final_at == at(9)
    assert exam.delivered_at == at(4)  # the first delivery, of the preliminary report
    assert exam.amended_at == at(30)
    assert exam.cancelled_at == at(40)
    assert exam.first_report_at == at(3)  # the preliminary report already lets a clinician act
    assert exam.turnaround == timedelta(minutes=3)
    assert exam.report_id == derive_report_id("ex-a", "cancelled")
    assert [(t.transition, t.at) for t in exam.transitions][:3] == [
        ("received", at(-0.1)),
        ("queued", at(0)),
        ("in_reading", at(1)),
    ]
    assert len(exam.transitions) == 11
    delivered = [t for t in exam.transitions if t.transition == "delivered"]
    assert {t.report_status for t in delivered} == {"preliminary", "final", "amended", "cancelled"}
    assert delivered[0].endpoint == "mllp://127.0.0.1:6601"


def test_parked_by_the_worker_or_by_egress(ledger: Ledger) -> None:
    ledger.record(
        [
            exam_step("exam.accepted", "ex-w", 0),
            exam_step("exam.in_reading", "ex-w", 1),
            exam_step("exam.parked", "ex-w", 2),
        ]
    )
    ledger.record(
        [*lifecycle("ex-e", None), report_step("report.issued", "ex-e", 5), report_step("report.parked", "ex-e", 20)]
    )
    worker_parked, egress_parked = ledger.exam("ex-w"), ledger.exam("ex-e")
    assert worker_parked is not None and egress_parked is not None
    assert (worker_parked.state, worker_parked.parked_at) == ("parked", at(2))
    assert [t.detail for t in worker_parked.transitions if t.transition == "parked"] == ["rejected by handler"]
    assert (egress_parked.state, egress_parked.parked_at, egress_parked.final_at) == ("parked", at(20), at(5))
    ledger.record([report_step("report.delivered", "ex-e", 45)])  # repaired and replayed: it got there after all
    assert ledger.exam("ex-e").state == "delivered"  # type: ignore[union-attr]


def test_a_critical_report_flags_the_exam(ledger: Ledger) -> None:
    ledger.record(
        [
            *lifecycle("ex-k", None, centre="lab"),
            report_step("report.issued", "ex-k", 6, centre="lab", critical_count=2),
        ]
    )
    exam = ledger.exam("ex-k")
    assert exam is not None
    assert (exam.critical, exam.critical_count, exam.state) == (True, 2, "final")
    assert ledger.exam("ex-nothing") is None


# -- idempotence and order


def test_a_redelivered_batch_changes_nothing(database: Database, ledger: Ledger) -> None:
    events = [
        *lifecycle("ex-1", 8),
        *lifecycle("ex-2", 12, centre="lab", priority="stat"),
        report_step("report.issued", "ex-2", 13, "amended", centre="lab", revision=1, critical_count=1),
    ]
    assert ledger.record(events) == 11  # accepted gives two transitions: received and queued
    before = snapshot(database)
    assert ledger.record(events) == 0
    assert ledger.record(events[3:5] + events[3:5]) == 0  # a repeat inside one batch as well
    assert snapshot(database) == before
    assert len(before["ledger_alerts"]) == 1  # the critical alert, once


def test_out_of_order_arrival_never_moves_an_exam_backwards(ledger: Ledger) -> None:
    """Every order of the four events, one at a time, ends in the row that the natural order gives."""
    reference = lifecycle("ex-ref", 7, priority="stat")
    ledger.record(reference)
    expected = ledger.exam("ex-ref")
    assert expected is not None and expected.state == "delivered"
    for n, order in enumerate(itertools.permutations(range(4))):
        exam_id = f"ex-perm-{n}"
        events = lifecycle(exam_id, 7, priority="stat")
        for i in order:
            ledger.record([events[i]])
        got = ledger.exam(exam_id)
        assert got is not None
        assert comparable(got) == comparable(expected), order


def test_delivered_before_in_reading_keeps_delivered_and_fills_in_reading(ledger: Ledger) -> None:
    accepted, in_reading, issued, delivered = lifecycle("ex-late", 5)
    ledger.record([delivered])
    early = ledger.exam("ex-late")
    assert early is not None
    assert (early.state, early.priority, early.due_at) == ("delivered", None, None)  # not known yet
    assert early.first_report_at == delivered.issued_at  # known from the delivery only: the signing time
    ledger.record([accepted, issued])
    ledger.record([in_reading])
    exam = ledger.exam("ex-late")
    assert exam is not None
    assert (exam.state, exam.in_reading_at, exam.priority) == ("delivered", at(0.5), "routine")
    assert exam.first_report_at == at(5)  # the hub's own time for the report, once report.issued is in
    assert exam.due_at == at(30)


# -- SLA


def test_due_times_default_to_the_issue_targets(database: Database) -> None:
    targets = {
        ("ecg", "stat"): 10,
        ("ecg", "routine"): 30,
        ("imaging", "stat"): 30,
        ("imaging", "routine"): 60,
        ("lab", "stat"): 30,
        ("lab", "routine"): 120,
    }
    ledger = Ledger(database, consortium())
    ledger.record([exam_step("exam.accepted", f"ex-{c}-{p}", 0, centre=c, priority=p) for c, p in targets])
    due = {(e.centre, e.priority): e.due_at for e in ledger.exams()}
    assert due == {key: at(minutes) for key, minutes in targets.items()}


def test_due_times_follow_the_config(database: Database) -> None:
    config = consortium(centres={"ecg": {"sla_minutes": {"stat": 5}}, "lab": {"sla_minutes": {"routine": 45}}})
    ledger = Ledger(database, config)
    ledger.record(
        [
            exam_step("exam.accepted", "ex-s", 0, priority="stat"),
            exam_step("exam.accepted", "ex-r", 0, priority="routine"),
            exam_step("exam.accepted", "ex-l", 0, centre="lab", priority="routine"),
        ]
    )
    due = {e.exam_id: e.due_at for e in ledger.exams()}
    assert due == {"ex-s": at(5), "ex-r": at(30), "ex-l": at(45)}  # ECG routine keeps its default


def test_sla_report_figures_match_hand_computed_values(ledger: Ledger) -> None:
    events: list[Event] = []
    for n, minutes in enumerate([4, 8, 12, 9, 31]):  # 於潜 ECG, routine: due after 30 minutes
        events += lifecycle(f"ex-yq-{n}", minutes)
    events += lifecycle("ex-yq-open", None)  # no report, and now (60 min) it is past due
    events += lifecycle("ex-yq-cancel", None, queued=1)
    events.append(report_step("report.issued", "ex-yq-cancel", 50, "cancelled"))  # void: neither reported nor late
    events += lifecycle("ex-ch-1", 20, origin=CHANGHUA, centre="lab", priority="stat")  # due after 30
    events += lifecycle("ex-ch-2", 40, origin=CHANGHUA, centre="lab", priority="stat")
    events += lifecycle("ex-ch-3", None, queued=50, origin=CHANGHUA, centre="lab", priority="stat")  # due at 80
    events += lifecycle("ex-ch-img", 5, origin=CHANGHUA, centre="imaging", status="preliminary")
    events.append(report_step("report.issued", "ex-ch-img", 90, "final", origin=CHANGHUA, centre="imaging"))
    ledger.record(events)

    figures = {(f.origin, f.centre): f for f in ledger.sla_report()}
    assert set(figures) == {(YUQIAN, "ecg"), (CHANGHUA, "lab"), (CHANGHUA, "imaging")}
    yuqian = figures[YUQIAN, "ecg"]
    # turnarounds 4, 8, 9, 12, 31: median 9; p90 is rank ceil(0.9 * 5) = 5, i.e. 31; late: 31 and the open one
    assert (yuqian.volume, yuqian.reported, yuqian.breaches) == (7, 5, 2)
    assert (yuqian.median, yuqian.p90) == (timedelta(minutes=9), timedelta(minutes=31))
    assert yuqian.breach_rate == pytest.approx(2 / 7)
    lab = figures[CHANGHUA, "lab"]
    # turnarounds 20 and 40: median 30, p90 rank ceil(1.8) = 2, i.e. 40; ex-ch-3 is open but not yet due
    assert (lab.volume, lab.reported, lab.breaches) == (3, 2, 1)
    assert (lab.median, lab.p90, lab.breach_rate) == (timedelta(minutes=30), timedelta(minutes=40), 1 / 3)
    imaging = figures[CHANGHUA, "imaging"]
    assert (imaging.median, imaging.breaches) == (timedelta(minutes=5), 0)  # the preliminary read ends it

    window = {(f.origin, f.centre): f for f in ledger.sla_report(since=at(45), until=at(55))}
    assert list(window) == [(CHANGHUA, "lab")]
    assert (window[CHANGHUA, "lab"].volume, window[CHANGHUA, "lab"].median) == (1, None)
    assert ledger.sla_report(until=at(0.5))[0].volume == 6  # queued at 0 only, both members


def test_exams_are_listed_latest_first_and_filtered(ledger: Ledger) -> None:
    ledger.record(
        [
            *lifecycle("ex-old", 5, queued=0),
            *lifecycle("ex-new", None, queued=10, origin=CHANGHUA),
            *lifecycle("ex-mid", 3, queued=5, centre="lab"),
        ]
    )
    assert [e.exam_id for e in ledger.exams()] == ["ex-new", "ex-mid", "ex-old"]
    assert [e.exam_id for e in ledger.exams(origin=YUQIAN)] == ["ex-mid", "ex-old"]
    assert [e.exam_id for e in ledger.exams(centre="lab")] == ["ex-mid"]
    assert [e.exam_id for e in ledger.exams(state="in_reading")] == ["ex-new"]
    assert [e.exam_id for e in ledger.exams(since=at(5))] == ["ex-new", "ex-mid"]
    assert [e.exam_id for e in ledger.exams(limit=1)] == ["ex-new"]
    assert ledger.exams()[0].transitions == ()  # the list leaves transitions to exam()

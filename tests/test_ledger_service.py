"""The ledger service on both brokers: events in, rows out; redelivery after a crash; alerts out on hub.alerts."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from brokers import take
from sqlalchemy.exc import DataError, OperationalError
from test_alerts import critical_report
from test_ledger import CHANGHUA, LEAD, YUQIAN, at, consortium, lifecycle, snapshot

from hub.alerts import Alert, alert_id
from hub.broker import Broker, wait
from hub.config import Config
from hub.events import Event, event_message
from hub.ledger_service import LedgerService
from hub.publish import submit_report
from hub.store.db import Database, open_database
from hub.topology import LEDGER, Topology, alert_queue, parked_queue

WAIT = 20.0
TOPOLOGY = Topology(institutions=[LEAD, YUQIAN, CHANGHUA], retry_delays=(1,))


@pytest.fixture
def hub_broker(broker: Broker) -> Broker:
    broker.declare(TOPOLOGY)
    return broker


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    """For the tests whose point is the broker side; the store's own tests run on both databases."""
    db = open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def services(hub_broker: Broker) -> Iterator[Callable[..., LedgerService]]:
    started: list[LedgerService] = []

    def start(
        database: Database,
        config: Config | None = None,
        *,
        record: Callable[[Callable[..., int]], Callable[..., int]] | None = None,
        **options: Any,
    ) -> LedgerService:
        """A started service; ``record`` wraps its ledger's ``record`` before it takes the first event."""
        service = LedgerService(hub_broker, database, config or consortium(), **{"tick_seconds": 3600, **options})
        if record is not None:
            service.ledger.record = record(service.ledger.record)  # type: ignore[method-assign]
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop(10)


def publish(broker: Broker, events: list[Event]) -> None:
    for future in [broker.publish(event_message(e)) for e in events]:
        wait(future)


def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll the store until ``condition`` holds: the service writes on its own thread."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def scrambled_lifecycles(count: int) -> list[Event]:
    events = [e for n in range(count) for e in lifecycle(f"ex-{n:03d}", 5 + n, priority="stat")]
    random.Random(7).shuffle(events)
    return events


def refuse_the_poison(real: Callable[..., int]) -> Callable[..., int]:
    """``Ledger.record`` as a database that refuses one event outright, as PostgreSQL refuses too long a value."""

    def record(batch: Any) -> int:
        batch = list(batch)
        if any(e.exam_id == "ex-poison" for e in batch):
            raise DataError("INSERT", {}, Exception("value too long for type character varying(64)"))
        return real(batch)

    return record


def test_events_in_rows_out(hub_broker: Broker, database: Database, services) -> None:  # type: ignore[no-untyped-def]
    events = scrambled_lifecycles(20)
    poison = lifecycle("ex-poison", None)[1]
    service = services(database, batch_size=7, record=refuse_the_poison)
    publish(hub_broker, [*events[:30], poison, *events[30:]])
    ledger = service.ledger
    assert eventually(lambda: service.recorded == 20 * 5)  # accepted is received + queued
    assert len(ledger.exams(state="delivered")) == 20
    exam = ledger.exam("ex-003")
    assert exam is not None
    assert [t.transition for t in exam.transitions] == ["received", "queued", "in_reading", "final", "delivered"]
    assert exam.turnaround == timedelta(minutes=8)
    assert eventually(lambda: hub_broker.message_count(LEDGER) == 0)
    service.stop(10)
    assert hub_broker.message_count(LEDGER) == 0  # every event acked, the refused one too: it cannot stall the rest
    assert ledger.exam("ex-poison") is None
    parked = take(hub_broker, parked_queue("intake"), 1)[0]  # not dropped: set aside with its reason
    assert parked.headers["x-hub-peer"] == LEDGER
    assert parked.headers["x-hub-error"] == "the ledger's database refuses it (DataError)"
    assert Event.decode(parked.body).exam_id == "ex-poison"


def test_redelivery_after_a_crash_before_or_after_commit_gives_the_same_rows(  # type: ignore[no-untyped-def]
    hub_broker: Broker, sqlite_database: Database, services, tmp_path: Path
) -> None:
    events = scrambled_lifecycles(10)

    def before_any_is_due() -> datetime:  # the SLA check has nothing to flag: the rows are the events' alone
        return at(0)

    reference = open_database(f"sqlite:///{tmp_path / 'reference.db'}")
    reference.migrate()
    LedgerService(hub_broker, reference, consortium()).ledger.record(events)
    publish(hub_broker, events)

    # The database goes away before the first commit: nothing is written, nothing acked.
    refused = threading.Event()

    def refuse(real: Callable[..., int]) -> Callable[..., int]:
        def record(batch: Any) -> int:
            refused.set()
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))

        return record

    failing = services(sqlite_database, record=refuse, clock=before_any_is_due)
    assert refused.wait(WAIT)
    failing.stop(10)
    assert snapshot(sqlite_database)["ledger_transitions"] == []

    # The process dies after its first commit and before any ack.
    committed = threading.Event()

    def commit_then_die(real: Callable[..., int]) -> Callable[..., int]:
        def record(batch: Any) -> int:
            if not committed.is_set():
                real(batch)
                committed.set()
            raise OperationalError("COMMIT", {}, Exception("the process is gone before its acks"))

        return record

    dying = services(sqlite_database, record=commit_then_die, clock=before_any_is_due)
    assert committed.wait(WAIT)
    dying.stop(10)
    assert snapshot(sqlite_database)["ledger_transitions"] != []

    # Everything comes again to a healthy service.
    seen: list[Event] = []

    def counting(real: Callable[..., int]) -> Callable[..., int]:
        def record(batch: Any) -> int:
            batch = list(batch)
            new = real(batch)
            seen.extend(batch)  # once committed
            return new

        return record

    services(sqlite_database, record=counting, clock=before_any_is_due)
    assert eventually(lambda: len(seen) >= len(events))
    assert eventually(lambda: hub_broker.message_count(LEDGER) == 0)
    assert snapshot(sqlite_database) == snapshot(reference)  # no transition twice, no exam moved back
    reference.close()


def test_alerts_go_out_on_the_alert_queues_once_and_acknowledgements_are_recorded(  # type: ignore[no-untyped-def]
    hub_broker: Broker, sqlite_database: Database, services
) -> None:
    acknowledged, ignored = critical_report("ex-k1"), critical_report("ex-k2")
    submit_report(hub_broker, acknowledged)  # no ledger service runs yet: the alert does not depend on it
    origin, lead = alert_queue(YUQIAN), alert_queue(LEAD)
    [delivery] = take(hub_broker, origin, 1)
    alert = Alert.decode(delivery.body)
    assert (alert.kind, alert.exam_id, alert.critical_items) == ("critical", "ex-k1", acknowledged.critical_items)
    assert delivery.routing_key == f"critical.{YUQIAN}.lab"

    shift = [timedelta(0)]
    service = services(
        sqlite_database, consortium(alerts={"escalate_after_minutes": 15}), clock=lambda: datetime.now(UTC) + shift[0]
    )
    now = service.clock()
    accepted = lifecycle("ex-stat", None, priority="stat")[0].model_copy(update={"at": now, "received_at": now})
    publish(hub_broker, [accepted])
    submit_report(hub_broker, ignored)
    assert eventually(lambda: len(service.alerts.alerts(institution=YUQIAN)) == 2)
    assert eventually(lambda: service.ledger.exam("ex-stat") is not None)
    recorded = service.alerts.acknowledge(alert.alert_id, "於潜值班医生")
    assert recorded is not None and recorded.acknowledged_by == "於潜值班医生"
    assert [a.exam_id for a in service.alerts.alerts(open_only=True)] == ["ex-k2"]

    shift[0] = timedelta(minutes=10, seconds=1)  # the stat ECG is past due; no alert is 15 minutes old yet
    service.tick()
    assert hub_broker.message_count(lead) == 1
    service.tick()
    assert hub_broker.message_count(lead) == 1  # once
    shift[0] = timedelta(minutes=15, seconds=2)  # ex-k2's critical value is still unacknowledged
    service.tick()
    service.tick()
    lead_alerts = [Alert.decode(d.body) for d in take(hub_broker, lead, 2)]
    assert [(a.kind, a.level, a.exam_id) for a in lead_alerts] == [("sla", 0, "ex-stat"), ("escalation", 1, "ex-k2")]
    assert lead_alerts[1].escalates == alert_id("critical", ignored.report_id)
    assert [Alert.decode(d.body).exam_id for d in take(hub_broker, origin, 2)] == ["ex-k2", "ex-stat"]
    assert hub_broker.message_count(lead) == 0 and hub_broker.message_count(origin) == 0
    assert service.alerts.unpublished() == []

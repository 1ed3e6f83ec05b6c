"""The registry service on both brokers and both databases: report copies in, recognised results out."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date

import pytest
import test_recognition
from brokers import broker_urls, take
from test_recognition import CBC, CHANGHUA, CONCLUSION, CONFIG, LEAD, YUQIAN, ZHANG, lab_report, zhang

from hub.broker import Broker, Message, connect, wait
from hub.envelope import Report
from hub.publish import report_message
from hub.registry_service import RegistryService
from hub.store.db import Database
from hub.store.recognition import RecognisedResult, Registry
from hub.topology import REGISTRY, Topology, parked_queue, recognition_queue

migrated_store, database = test_recognition.migrated_store, test_recognition.database
MEMBERS = [LEAD, CHANGHUA]
TOPOLOGY = Topology(institutions=MEMBERS, centres=["lab"], retry_delays=(1,))


@pytest.fixture(scope="module", params=["memory", "rabbitmq"])
def module_broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """One RabbitMQ vhost for the module (rabbitmqctl takes seconds); each test declares and deletes its queues."""
    yield from broker_urls(request.param)


@pytest.fixture
def broker(module_broker_url: str) -> Iterator[Broker]:
    """Instead of conftest's: a connection to the module's broker, with the topology fresh for each test."""
    with connect(module_broker_url) as opened:
        opened.declare(TOPOLOGY)
        yield opened
        opened.delete(TOPOLOGY)


def copy(report: Report) -> Message:
    """A report's copy for the registry, as hub.publish sends it: the report's own message, to hub.registry."""
    return report_message(report)._replace(exchange=REGISTRY)


@pytest.fixture
def service(broker: Broker, database: Database) -> Iterator[RegistryService]:
    running = RegistryService(broker, database, CONFIG)
    running.start()
    yield running
    running.stop()


def test_a_report_copy_becomes_a_recognised_result_on_every_members_queue(
    broker: Broker, service: RegistryService, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hub")
    report = lab_report(patient=zhang(name="张卫"))  # the number the index has under 张伟: a conflict
    wait(broker.publish(copy(lab_report(order="LAB-0", patient=zhang(name="张伟")))))
    take(broker, recognition_queue(CHANGHUA), 1)
    take(broker, recognition_queue(LEAD), 1)
    wait(broker.publish(copy(report)))
    [delivery] = take(broker, recognition_queue(CHANGHUA), 1)
    result = RecognisedResult.model_validate_json(delivery.body)
    assert (result.state, result.mark, result.national_id, result.source_report_id) == (
        "current",
        "浙HR",
        ZHANG,
        report.report_id,
    )
    assert delivery.message_id == f"{result.result_id}.current"
    assert (delivery.headers["item-code"], delivery.headers["mark"]) == ("58410-2", "浙HR")
    assert CONCLUSION.encode() not in delivery.body
    [to_lead] = take(broker, recognition_queue(LEAD), 1)  # the fanout reaches every member, the lead hospital too
    assert to_lead.body == delivery.body
    assert broker.message_count(REGISTRY) == 0
    found = Registry(database, CONFIG).lookup(national_id=ZHANG, item=CBC, as_of=date(2026, 11, 21), who="test")
    assert result.result_id in [r.result_id for r in found.results]
    assert "identity conflict" in caplog.text and "(name)" in caplog.text  # flagged, by field only
    for secret in (ZHANG, "张伟", "张卫", "MR0001"):
        assert secret not in caplog.text


def test_only_what_changes_recognition_is_broadcast(broker: Broker, service: RegistryService) -> None:
    """Copies go in order: a report that is not eligible is acked unannounced; a cancellation revokes."""
    for report in (
        lab_report(status="preliminary"),
        lab_report(performer=YUQIAN, order="LAB-QC"),
        lab_report(),
        lab_report(),  # the same copy twice: one result, announced again under the same message id
        lab_report(status="cancelled"),
    ):
        wait(broker.publish(copy(report)))
    deliveries = take(broker, recognition_queue(LEAD), 3)
    results = [RecognisedResult.model_validate_json(d.body) for d in deliveries]
    assert [r.state for r in results] == ["current", "current", "revoked"]
    assert len({r.result_id for r in results}) == 1
    assert [d.message_id for d in deliveries] == [
        f"{results[0].result_id}.{s}" for s in ("current", "current", "revoked")
    ]


def test_a_body_that_is_no_report_is_parked_with_its_reason(broker: Broker, service: RegistryService) -> None:
    wait(broker.publish(Message(REGISTRY, "", "{不是报告".encode(), message_id="junk-1", headers={"origin": YUQIAN})))
    wait(broker.publish(copy(lab_report())))  # the service goes on with the next copy
    take(broker, recognition_queue(CHANGHUA), 1)
    [parked] = take(broker, parked_queue("intake"), 1)
    assert parked.body == "{不是报告".encode()
    assert parked.headers["x-hub-error"] == "not a Report envelope"
    assert (parked.headers["x-hub-origin"], parked.headers["x-hub-peer"]) == (YUQIAN, REGISTRY)
    assert broker.message_count(REGISTRY) == 0


def test_stopping_leaves_unhandled_copies_queued(broker: Broker, database: Database) -> None:
    wait(broker.publish(copy(lab_report())))
    idle = RegistryService(broker, database, CONFIG)
    idle.start()
    take(broker, recognition_queue(CHANGHUA), 1)
    idle.stop()
    wait(broker.publish(copy(lab_report(order="LAB-2"))))
    assert broker.message_count(REGISTRY) == 1  # nobody consumes it now; a restarted service will
    again = RegistryService(broker, database, CONFIG)
    again.start()
    try:
        take(broker, recognition_queue(CHANGHUA), 1)
    finally:
        again.stop()

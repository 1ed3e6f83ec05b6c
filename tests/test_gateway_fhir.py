"""The FHIR gateway: real uvicorn on the broker's loop, real HTTP from the test thread, on both brokers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from brokers import take, take_all
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from hub.broker import Broker, connect
from hub.config import FhirGateway, load_config
from hub.envelope import Exam
from hub.gateways import http
from hub.gateways.http import FhirListener, start_fhir
from hub.intake import Intake
from hub.store.blobs import BlobStore
from hub.topology import LEDGER, Topology, exam_queue, parked_queue, stat_queue

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "examples" / "messages" / "fhir"
EXPECTED: dict[str, Any] = tomllib.loads((SAMPLES / "EXPECTED.toml").read_text("utf-8"))
GOOD = sorted(name for name in EXPECTED if not name.startswith("bad-"))
BAD = sorted(name for name in EXPECTED if name.startswith("bad-"))
CONFIG = load_config(ROOT / "examples" / "consortium.toml")
TOKENS = {i.code: token for i in CONFIG.institutions if (token := i.token())}
CHANGHUA = "12330112473455672X"  # 昌化镇卫生院
YUQIAN = "12330112472334561L"  # 於潜镇中心卫生院
TOPOLOGY = Topology(institutions=[i.code for i in CONFIG.institutions], retry_delays=(1,))
FHIR_JSON = "application/fhir+json; charset=utf-8"
STATUS = {"DecodeError": 400, "UnsupportedMessage": 400, "InvalidMessage": 422}
ISSUE_CODE = {"DecodeError": "structure", "UnsupportedMessage": "not-supported", "InvalidMessage": "invalid"}
ECG = "ecg-message-bundle.json"
LAB = "lab-panel-transaction.json"


class ExchangesOnly(Topology):
    """The topology's exchanges without its queues: deleting it makes the broker refuse every publish."""

    def queues(self) -> Iterator[Any]:
        return iter(())

    def bindings(self) -> Iterator[Any]:
        return iter(())


def on_loop(broker: Broker, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, broker.loop).result(timeout)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@dataclass
class Gateway:
    broker: Broker
    blobs: BlobStore
    intake: Intake
    listener: FhirListener

    def post(
        self, body: bytes, *, token: str | None = TOKENS[CHANGHUA], path: str = "", content_type: str = FHIR_JSON
    ) -> httpx.Response:
        headers = {"content-type": content_type}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return httpx.post(self.listener.url + path, content=body, headers=headers, timeout=30)


@contextmanager
def running_gateway(
    broker: Broker, data: Path, *, max_body_bytes: int = 1024 * 1024, body_timeout: float = 60.0
) -> Iterator[Gateway]:
    broker.declare(TOPOLOGY)
    blobs = BlobStore(data / "blobs", fsync=False)
    intake = Intake(broker, blobs)
    settings = FhirGateway(port=0, max_body_bytes=max_body_bytes, body_timeout=body_timeout)
    listener = on_loop(broker, start_fhir(intake, CONFIG, settings))
    try:
        yield Gateway(broker, blobs, intake, listener)
    finally:
        on_loop(broker, listener.close())


@pytest.fixture
def gateway(broker: Broker, tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(broker, tmp_path) as opened:
        yield opened


def lane(exam: dict[str, Any]) -> str:
    return stat_queue(exam["centre"]) if exam["priority"] == "stat" else exam_queue(exam["centre"])


def outcome(response: httpx.Response) -> list[dict[str, Any]]:
    """The issues of the response's OperationOutcome, which must be a valid R4 one."""
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    OperationOutcome.model_validate(body)
    return list(body["issue"])


def http_response_complete(data: bytes) -> bool:
    head, separator, body = data.partition(b"\r\n\r\n")
    length = next(
        (line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), None
    )
    return bool(separator) and length is not None and len(body) >= int(length)


def queues_are_empty(broker: Broker, *names: str) -> bool:
    return all(broker.message_count(name) == 0 for name in names)


# -- accepted


def test_every_good_sample_is_accepted_onto_its_centre_queue_as_its_token_sender(gateway: Gateway) -> None:
    assert ECG in GOOD
    exam_ids = []
    for name in GOOD:
        expected = EXPECTED[name]["exams"][0]
        sender = expected["origin"]
        path = "/$process-message" if name == ECG else ""
        response = gateway.post(sample(name), token=TOKENS[sender], path=path)
        assert response.status_code == 202, (name, response.text)
        issues = outcome(response)

        [delivery] = take(gateway.broker, lane(expected), 1)
        exam = Exam.decode(delivery.body)
        assert (exam.origin, exam.centre, exam.priority) == (sender, expected["centre"], expected["priority"]), name
        assert exam.patient.name == expected["patient_name"], name
        assert delivery.routing_key == f"{exam.centre}.{exam.priority}.{sender}"
        accepted = [i for i in issues if i["severity"] == "information"]
        assert len(accepted) == 1, name
        assert exam.exam_id in accepted[0]["diagnostics"], name
        warnings = [i["expression"] for i in issues if i["severity"] == "warning"]
        assert warnings == [[location] for location in expected.get("notices", [])], name
        exam_ids.append(exam.exam_id)

        if exam.waveform is not None:  # the ECG: its source is in the blob store, where its samples resolve
            assert exam.waveform.data is not None
            assert exam.waveform.data.uri == "#" + expected["waveform"]["location"]
            assert exam.source.uri == "urn:sha256:" + hashlib.sha256(sample(name)).hexdigest()
            assert gateway.blobs.read(exam.source.uri) == sample(name)
    events = take(gateway.broker, LEDGER, len(GOOD))
    assert [(e.headers["kind"], e.headers["exam-id"]) for e in events] == [("exam.accepted", i) for i in exam_ids]

    # A member cannot send as another: 昌化镇卫生院's ECG request, posted with 於潜镇中心卫生院's token,
    # is 於潜's exam, with an id of its own, so it cannot stand in for 昌化's.
    assert gateway.post(sample(ECG), token=TOKENS[YUQIAN]).status_code == 202
    [forged] = take(gateway.broker, stat_queue("ecg"), 1)
    exam = Exam.decode(forged.body)
    assert (exam.origin, forged.headers["origin"], forged.routing_key) == (YUQIAN, YUQIAN, f"ecg.stat.{YUQIAN}")
    assert exam.exam_id not in exam_ids


# -- refused and parked


def test_every_bad_sample_is_refused_where_it_is_wrong_and_parked(gateway: Gateway) -> None:
    for name in BAD:
        expected = EXPECTED[name]
        response = gateway.post(sample(name), token=TOKENS[YUQIAN])
        assert response.status_code == STATUS[expected["error"]], (name, response.text)
        issues = outcome(response)
        assert all(i["severity"] == "error" and i["code"] == ISSUE_CODE[expected["error"]] for i in issues), name
        assert all(i["diagnostics"] for i in issues), name
        locations = expected.get("locations", [expected.get("location")])
        if locations == ["$"]:  # the body as a whole: an issue without an expression
            assert [i.get("expression") for i in issues] == [None], name
            assert "JSON" in issues[0]["diagnostics"] or "UTF-8" in issues[0]["diagnostics"], name
        else:
            assert [i["expression"] for i in issues][: len(locations)] == [[place] for place in locations], name

    # $process-message takes message Bundles only; the lab transaction goes to /fhir.
    response = gateway.post(sample(LAB), token=TOKENS[YUQIAN], path="/$process-message")
    assert response.status_code == 400
    assert [(i["code"], i["expression"]) for i in outcome(response)] == [("not-supported", ["Bundle.type"])]

    parked = take(gateway.broker, parked_queue("intake"), len(BAD) + 1)
    expected = [(n, EXPECTED[n]["error"], EXPECTED[n].get("location") or EXPECTED[n]["locations"][0]) for n in BAD]
    for (name, reason, first), delivery in zip(
        [*expected, (LAB, "UnsupportedMessage", "Bundle.type")], parked, strict=True
    ):
        assert delivery.body == sample(name), name
        assert delivery.headers["x-hub-park-reason"] == reason, name
        assert delivery.headers["x-hub-error"].startswith(first), name
        assert delivery.headers["x-hub-format"] == "fhir"
        assert delivery.headers["x-hub-origin"] == YUQIAN
        assert delivery.headers["x-hub-peer"].startswith("127.0.0.1:")
    assert queues_are_empty(gateway.broker, LEDGER, *(exam_queue(c) for c in TOPOLOGY.centres))


# -- refused at the door: no token, too large, not FHIR JSON, no such path


def test_a_body_that_stalls_gets_408_and_what_came_is_parked(broker: Broker, tmp_path: Path) -> None:
    with running_gateway(broker, tmp_path, body_timeout=0.5) as gateway:
        head = b'{"resourceType": "Bundle", "type": "tran'
        request = (
            f"POST /fhir HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {TOKENS[CHANGHUA]}\r\n"
            f"Content-Type: {FHIR_JSON}\r\nContent-Length: 5000\r\n\r\n"
        ).encode() + head
        with socket.create_connection((gateway.listener.host, gateway.listener.port), timeout=10) as stalled:
            stalled.sendall(request)  # and the other 4,960 bytes never come
            answer = b""
            while not http_response_complete(answer):
                answer += stalled.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"gateways.fhir.body_timeout" in answer
        assert gateway.post(sample(LAB)).status_code == 202  # the gateway serves on
        (parked,) = take_all(broker, parked_queue("intake"))
        assert parked.body == head
        assert "did not arrive within 0.5 s" in parked.headers["x-hub-error"]
        assert parked.headers["x-hub-origin"] == CHANGHUA


def test_refusals_at_the_door_are_outcomes_and_only_a_members_body_is_parked(broker: Broker, tmp_path: Path) -> None:
    with running_gateway(broker, tmp_path, max_body_bytes=16 * 1024) as gateway:
        raw = sample(LAB)  # 18 KiB
        assert len(raw) > 16 * 1024
        missing = gateway.post(raw, token=None)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert [i["code"] for i in outcome(missing)] == ["login"]

        basic = httpx.post(gateway.listener.url, content=raw, headers={"authorization": "Basic eXE6eXE="})
        assert basic.status_code == 401
        assert [i["code"] for i in outcome(basic)] == ["login"]

        unknown = gateway.post(raw, token="demo-token-not-a-member")
        assert unknown.status_code == 401
        assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
        assert [i["code"] for i in outcome(unknown)] == ["security"]
        assert queues_are_empty(broker, exam_queue("lab"), parked_queue("intake"), LEDGER)

        declared = gateway.post(raw)
        assert declared.status_code == 413
        assert [i["code"] for i in outcome(declared)] == ["too-costly"]
        [parked] = take(broker, parked_queue("intake"), 1)
        assert parked.body == raw[: 16 * 1024]  # read up to the limit, no further
        assert parked.headers["x-hub-error"] == (
            f"the body is over this hub's limit of 16384 bytes ({len(raw)} bytes by its Content-Length)"
            " (gateways.fhir.max_body_bytes); it was cut at 16384 bytes"
        )
        assert parked.headers["x-hub-origin"] == CHANGHUA

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the limit is passed
            yield raw
            for _ in range(64):
                yield b" " * 64 * 1024

        streamed = httpx.post(
            gateway.listener.url,
            content=chunks(),
            headers={"content-type": FHIR_JSON, "authorization": f"Bearer {TOKENS[CHANGHUA]}"},
        )
        assert streamed.status_code == 413
        [parked] = take(broker, parked_queue("intake"), 1)
        assert parked.body == raw[: 16 * 1024]
        assert parked.headers["x-hub-error"].endswith("(gateways.fhir.max_body_bytes); it was cut at 16384 bytes")

        small = sample("imaging-servicerequest.json")  # 3 KiB, in every content type FHIR JSON may come as
        unsupported = ("application/xml", "text/plain", "application/fhir+json; charset=gbk", "")
        for content_type in unsupported:
            response = gateway.post(small, content_type=content_type)
            assert response.status_code == 415, content_type
            assert [i["code"] for i in outcome(response)] == ["not-supported"]
        parked_415 = take(broker, parked_queue("intake"), len(unsupported))
        for content_type, delivery in zip(unsupported, parked_415, strict=True):
            assert delivery.body == small
            assert delivery.headers["x-hub-park-reason"] == "refused"
            assert delivery.headers["x-hub-error"].endswith(f"not {content_type or 'no Content-Type'}")
            assert delivery.headers["x-hub-origin"] == CHANGHUA

        nowhere = httpx.post(gateway.listener.url + "/Patient", content=b"{}")
        assert nowhere.status_code == 404
        assert [i["code"] for i in outcome(nowhere)] == ["not-found"]
        wrong = httpx.get(gateway.listener.url)
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"
        assert [i["code"] for i in outcome(wrong)] == ["not-supported"]
        assert queues_are_empty(broker, exam_queue("lab"), exam_queue("imaging"), parked_queue("intake"), LEDGER)

        fine = ("application/fhir+json", "application/json; charset=UTF-8", "application/fhir+json; fhirVersion=4.0")
        for content_type in fine:
            assert gateway.post(small, content_type=content_type).status_code == 202, content_type
        assert len(take(broker, exam_queue("imaging"), len(fine))) == len(fine)  # the same exam, sent again


# -- the broker does not take it: 503, nothing accepted


def test_when_the_broker_refuses_or_is_down_the_sender_is_told_to_retry(gateway: Gateway) -> None:
    broker = gateway.broker
    broker.delete(ExchangesOnly())  # the queues stay, with what they hold
    try:
        refused = gateway.post(sample(LAB))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == str(http.RETRY_AFTER_SECONDS)
        assert [i["code"] for i in outcome(refused)] == ["transient"]
        unparked = gateway.post(sample("bad-lone-patient.json"))  # parking fails too: retry, not a 4xx
        assert unparked.status_code == 503
    finally:
        broker.declare(TOPOLOGY)
    assert queues_are_empty(broker, exam_queue("lab"), parked_queue("intake"), LEDGER)
    assert gateway.post(sample(LAB)).status_code == 202  # the sender's retry
    [delivery] = take(broker, exam_queue("lab"), 1)
    assert Exam.decode(delivery.body).origin == CHANGHUA

    if broker.url.startswith("amqp"):  # a real outage: the connection drops and cannot come back
        vhost, user = unquote(urlsplit(broker.url).path.lstrip("/")), urlsplit(broker.url).username or "guest"
        _rabbitmqctl("clear_permissions", "-p", vhost, user)
        _rabbitmqctl("close_all_connections", "-p", vhost, "test: the lead hospital's network is down")
        try:
            for name in (ECG, "bad-searchset.json"):  # neither accepted nor parked: the sender must keep it
                response = gateway.post(sample(name))
                assert response.status_code == 503, (name, response.text)
                assert response.headers["retry-after"] == str(http.RETRY_AFTER_SECONDS)
                assert [i["code"] for i in outcome(response)] == ["transient"]
        finally:
            _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        deadline = time.monotonic() + 30
        while (status := gateway.post(sample(ECG)).status_code) == 503 and time.monotonic() < deadline:
            time.sleep(0.5)  # the sender, retrying as told, until the broker has reconnected
        assert status == 202
        [delivery] = take(broker, stat_queue("ecg"), 1)
        assert Exam.decode(delivery.body).origin == CHANGHUA


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


# -- on the in-process broker: faults of the hub's own, metadata, reading off the loop


@pytest.fixture
def memory_gateway(tmp_path: Path) -> Iterator[Gateway]:
    with connect("memory://guest@") as broker, running_gateway(broker, tmp_path) as opened:
        yield opened


def test_an_adapter_fault_is_a_500_the_input_is_kept_and_no_patient_data_is_logged(
    memory_gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = memory_gateway

    def broken_read(raw: bytes, **options: object) -> list[Exam]:
        raise KeyError("张伟 330112195803141238")

    monkeypatch.setattr(http.fhir, "read", broken_read)
    with caplog.at_level(logging.DEBUG, logger="hub"):
        response = gateway.post(sample(ECG))
    assert response.status_code == 500
    assert [i["code"] for i in outcome(response)] == ["exception"]
    assert "张伟" not in caplog.text and "330112195803141238" not in caplog.text
    assert "KeyError" in caplog.text
    [parked] = take(gateway.broker, parked_queue("intake"), 1)
    assert parked.body == sample(ECG)
    assert "KeyError" in parked.headers["x-hub-error"]
    assert queues_are_empty(gateway.broker, stat_queue("ecg"))

    monkeypatch.undo()  # the listener lived through it
    assert gateway.post(sample(ECG)).status_code == 202


def test_an_unexpected_failure_after_reading_is_a_500_the_input_is_kept_and_the_listener_lives(
    memory_gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = memory_gateway

    async def failing_accept(*args: object, **kwargs: object) -> list[Exam]:
        raise RuntimeError("张伟 330112195803141238")

    monkeypatch.setattr(gateway.intake, "accept", failing_accept)
    with caplog.at_level(logging.DEBUG, logger="hub"):
        response = gateway.post(sample(LAB))
    assert response.status_code == 500
    assert [i["code"] for i in outcome(response)] == ["exception"]
    [parked] = take(gateway.broker, parked_queue("intake"), 1)
    assert parked.body == sample(LAB)
    assert parked.headers["x-hub-error"] == "the hub failed to take the exams (RuntimeError)"
    assert parked.headers["x-hub-origin"] == CHANGHUA

    async def failing_park(*args: object, **kwargs: object) -> None:
        raise KeyError("张伟 330112195803141238")

    monkeypatch.setattr(gateway.intake, "park", failing_park)
    with caplog.at_level(logging.DEBUG, logger="hub"):
        response = gateway.post(sample(LAB))
    assert response.status_code == 500  # parking failed too: still the hub's fault, not a retry
    assert [i["code"] for i in outcome(response)] == ["exception"]
    assert "RuntimeError" in caplog.text and "KeyError" in caplog.text
    assert "张伟" not in caplog.text and "330112195803141238" not in caplog.text
    assert queues_are_empty(gateway.broker, parked_queue("intake"), exam_queue("lab"))

    monkeypatch.undo()
    assert gateway.post(sample(LAB)).status_code == 202


def test_metadata_is_an_r4_capability_statement_without_a_token(memory_gateway: Gateway) -> None:
    response = httpx.get(memory_gateway.listener.url + "/metadata")
    assert response.status_code == 200
    statement = CapabilityStatement.model_validate(response.json())
    assert statement.fhirVersion == "4.0.1"
    assert [op.name for op in statement.rest[0].operation] == ["process-message"]


def test_a_large_body_is_read_off_the_loop_and_a_small_one_on_it(
    memory_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers: list[threading.Thread] = []
    read = http.fhir.read

    def spied_read(raw: bytes, **options: Any) -> list[Exam]:
        readers.append(threading.current_thread())
        return read(raw, **options)

    async def current_thread() -> threading.Thread:
        return threading.current_thread()

    monkeypatch.setattr(http.fhir, "read", spied_read)
    small, large = sample(ECG), sample(ECG) + b" " * (300 * 1024)  # JSON may end in whitespace
    assert len(small) < 256 * 1024 < len(large)
    assert memory_gateway.post(small).status_code == 202
    assert memory_gateway.post(large).status_code == 202
    loop_thread = on_loop(memory_gateway.broker, current_thread())
    assert readers[0] is loop_thread
    assert readers[1] is not loop_thread


# -- the listener


def test_it_binds_loopback_by_default_and_must_start_on_the_brokers_loop(tmp_path: Path) -> None:
    assert FhirGateway().host == "127.0.0.1"
    with connect("memory://") as broker:
        intake = Intake(broker)
        with pytest.raises(RuntimeError, match="broker's loop"):
            asyncio.run(start_fhir(intake, CONFIG, FhirGateway(port=0)))
        with running_gateway(broker, tmp_path) as gateway:
            assert gateway.listener.host == "127.0.0.1"
            with pytest.raises(OSError):  # the port is taken: an error for the caller, and the loop lives on
                on_loop(broker, start_fhir(intake, CONFIG, FhirGateway(port=gateway.listener.port)))
            assert gateway.post(sample(LAB)).status_code == 202


def test_closing_finishes_the_request_in_hand_and_stops_listening(tmp_path: Path) -> None:
    with connect("memory://") as broker, running_gateway(broker, tmp_path) as gateway:
        entered, release = threading.Event(), threading.Event()
        accept = gateway.intake.accept

        async def held_accept(exams: Any, raw: Any = None, **kwargs: Any) -> list[Exam]:
            entered.set()
            await asyncio.to_thread(release.wait, 30)
            return await accept(exams, raw, **kwargs)

        gateway.intake.accept = held_accept  # type: ignore[method-assign]
        with ThreadPoolExecutor(1) as pool:
            in_hand = pool.submit(gateway.post, sample(LAB))
            assert entered.wait(15)
            closing = asyncio.run_coroutine_threadsafe(gateway.listener.close(), broker.loop)
            deadline = time.monotonic() + 15
            while _accepts_connections(gateway.listener.port) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _accepts_connections(gateway.listener.port)
            assert not closing.done()  # still waiting for the request in hand
            release.set()
            assert in_hand.result(30).status_code == 202
            closing.result(30)
        [delivery] = take(broker, exam_queue("lab"), 1)
        assert Exam.decode(delivery.body).origin == CHANGHUA


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False

"""Report egress to members over MLLP and FHIR: delivered in order, retried, parked; on both brokers."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import uvicorn
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from adapters import hl7v2
from hub.broker import Broker, Delivery, Message, Subscription, connect
from hub.config import Config
from hub.envelope import Coding, Exam, Patient, Performer, Report, ReportStatus, Source
from hub.errors import BrokerUnavailable
from hub.events import Event
from hub.gateways.egress import Egress, _MllpEndpoint
from hub.ids import derive_exam_id
from hub.loop import LoopThread
from hub.mllp import Framer, frame
from hub.publish import submit_report
from hub.topology import EGRESS, LEDGER, REPORTS, Topology, parked_queue, report_queue

LEAD = "12330112470101234B"
GB_MEMBER = "12330112473455672X"  # 昌化镇卫生院, GB18030
UTF8_MEMBER = "123301124745767837"  # 太湖源镇卫生院, written here as UTF-8
FHIR_MEMBER = "12330112471213450B"  # 青山湖街道社区卫生服务中心
MEMBERS = [GB_MEMBER, UTF8_MEMBER, FHIR_MEMBER]
NOW = datetime(2024, 6, 12, 9, 31, 5, tzinfo=UTC)
WAIT = 15.0
TOPOLOGY = Topology(institutions=MEMBERS, centres=("imaging",), retry_delays=(1,))
FAST = (0.05, 0.05)  # two quick retries: three attempts in all


# -- reports, config, ledger


def make_report(
    origin: str, n: int, *, status: ReportStatus = "final", conclusion: str = "双肺纹理增粗，建议随访"
) -> Report:
    placer = f"P{n:04d}"
    exam = Exam(
        exam_id=derive_exam_id(origin, placer_order=placer),
        origin=origin,
        centre="imaging",
        patient=Patient(name="王秀英", sex="female"),
        service=Coding(code="DR001", display="胸部正位片"),
        placer_order=placer,
        source=Source(format="hl7v2", received_at=NOW),
    )
    return Report.answering(exam, status=status, conclusion=conclusion, issued_at=NOW,
                            performer=Performer(name="李建国"), performer_institution=LEAD)  # fmt: skip


def consortium(**egress: str) -> Config:
    charsets = {GB_MEMBER: "GB18030", UTF8_MEMBER: "UTF-8", FHIR_MEMBER: "UTF-8"}
    institutions = [{"code": LEAD, "name": "临安区人民医院", "kind": "lead"}]
    institutions += [
        {"code": code, "name": f"卫生院{n}", "charset": charsets[code], "egress": egress.get(code, "pull")}
        for n, code in enumerate(MEMBERS)
    ]
    return Config.model_validate({"consortium": {"name": "临安区医共体", "lead": LEAD}, "institutions": institutions})


def control_id(raw: bytes) -> str:
    return raw.split(b"\r", 1)[0].split(b"|")[9].decode()


class Collector:
    """Everything that lands on one queue, acked as it comes."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.got: queue.Queue[Delivery] = queue.Queue()
        self.subscription = broker.consume(name, self._take, prefetch=50)

    def _take(self, delivery: Delivery) -> None:
        self.got.put(delivery)
        delivery.ack()

    def take(self, n: int) -> list[Delivery]:
        return [self.got.get(timeout=WAIT) for _ in range(n)]

    def events(self, n: int) -> list[Event]:
        """The next ``n`` events egress published; the ``report.issued`` of each submit_report is not its."""
        found: list[Event] = []
        while len(found) < n:
            event = Event.decode(self.got.get(timeout=WAIT).body)
            if event.kind != "report.issued":
                found.append(event)
        return found


@pytest.fixture
def hub(broker: Broker) -> Broker:
    broker.declare(TOPOLOGY)
    return broker


@pytest.fixture
def memory_hub() -> Iterator[Broker]:
    with connect("memory://guest@") as broker:
        broker.declare(TOPOLOGY)
        yield broker


@pytest.fixture
def ledger(hub: Broker) -> Collector:
    return Collector(hub, LEDGER)


@pytest.fixture
def memory_ledger(memory_hub: Broker) -> Collector:
    return Collector(memory_hub, LEDGER)


@pytest.fixture
def retries() -> Iterator[queue.Queue[str]]:
    """The report id of every retry egress announces, as it announces it."""
    announced: queue.Queue[str] = queue.Queue()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retry" in record.msg and isinstance(record.args, tuple):
                announced.put(str(record.args[0]))

    handler = Handler(logging.WARNING)
    logger = logging.getLogger("hub.egress")
    logger.addHandler(handler)
    try:
        yield announced
    finally:
        logger.removeHandler(handler)


@contextmanager
def running(egress: Egress) -> Iterator[Egress]:
    egress.start()
    try:
        yield egress
    finally:
        egress.stop()


# -- a member's MLLP receiver and FHIR server


Answer = Callable[[bytes, int], str]  # (message, how many times this MSH-10 came) -> AA, AE, AR, wrong, silent, close


def always(code: str) -> Answer:
    return lambda _raw, _seen: code


def first(code: str, times: int = 1) -> Answer:
    return lambda _raw, seen: code if seen <= times else "AA"


ACCEPT = always("AA")


class MllpMember:
    """A member's HL7 interface engine on a loop of its own: records each message, answers as told."""

    def __init__(self, answer: Answer = ACCEPT, port: int = 0) -> None:
        self.answer = answer
        self.received: queue.Queue[bytes] = queue.Queue()
        self.accepted: list[str] = []  # MSH-10 of each message answered AA, in order
        self.connections = 0
        self._seen: dict[str, int] = {}
        self._sessions: list[tuple[asyncio.Task[Any], asyncio.StreamWriter]] = []
        self._io = LoopThread("test-mllp-member")
        self.server = self._io.run(asyncio.start_server(self._serve, "127.0.0.1", port)).result(WAIT)
        self.port = int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"mllp://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._sessions.append((asyncio.current_task(), writer))  # type: ignore[arg-type]
        framer = Framer()
        try:
            while chunk := await reader.read(65536):
                for item in framer.feed(chunk):
                    assert isinstance(item, bytes)
                    if not await self._answer(item, writer):
                        return
        finally:
            writer.close()

    async def _answer(self, raw: bytes, writer: asyncio.StreamWriter) -> bool:
        msh10 = control_id(raw)
        self._seen[msh10] = self._seen.get(msh10, 0) + 1
        code = self.answer(raw, self._seen[msh10])
        if code.startswith("AA"):
            self.accepted.append(msh10)
        self.received.put(raw)
        if code == "close":
            return False
        if code == "AA, then close":  # a member that drops idle connections
            writer.write(frame(hl7v2.ack(raw, "AA")))
            await writer.drain()
            return False
        if code in ("AA", "AE", "AR"):
            writer.write(frame(hl7v2.ack(raw, code)))  # type: ignore[arg-type]
        elif code == "wrong":
            writer.write(frame(hl7v2.ack(raw, "AA").replace(msh10.encode(), b"0" * len(msh10))))
        await writer.drain()
        return True

    def take(self, n: int) -> list[bytes]:
        return [self.received.get(timeout=WAIT) for _ in range(n)]

    async def _close(self) -> None:
        self.server.close()
        for _task, writer in self._sessions:
            writer.close()
        await asyncio.gather(*(task for task, _writer in self._sessions), return_exceptions=True)
        await self.server.wait_closed()

    def close(self) -> None:
        self._io.run(self._close()).result(WAIT)
        self._io.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FhirMember:
    """A member's FHIR server (uvicorn, a raw ASGI app): records each request, answers the statuses given."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: queue.Queue[tuple[str, str, dict[str, str], bytes]] = queue.Queue()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # connections wait in the backlog until uvicorn is up: no need to poll for it
        self.port = int(sock.getsockname()[1])
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, interface="asgi3", lifespan="off", log_level="warning", access_log=False)
        )
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        self._sock = sock

    @property
    def url(self) -> str:
        return f"fhir+http://127.0.0.1:{self.port}/fhir"

    async def app(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:  # fmt: skip
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.put((scope["method"], scope["path"], headers, body))
        status = self.statuses.pop(0) if self.statuses else 201
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/fhir+json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b'{"resourceType": "OperationOutcome", "issue": []}'})

    def take(self, n: int) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [self.requests.get(timeout=WAIT) for _ in range(n)]

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(WAIT)
        self._sock.close()


@pytest.fixture
def member() -> Iterator[Callable[..., MllpMember]]:
    opened: list[MllpMember] = []

    def open_member(answer: Answer = ACCEPT, port: int = 0) -> MllpMember:
        opened.append(MllpMember(answer, port))
        return opened[-1]

    yield open_member
    for receiver in opened:
        receiver.close()


@pytest.fixture
def fhir_member() -> Iterator[Callable[..., FhirMember]]:
    opened: list[FhirMember] = []

    def open_member(statuses: list[int] | None = None) -> FhirMember:
        opened.append(FhirMember(statuses))
        return opened[-1]

    yield open_member
    for server in opened:
        server.close()


def queues_empty(broker: Broker, *names: str) -> bool:
    return all(broker.message_count(name) == 0 for name in names)


def back_in_queue(broker: Broker, name: str, count: int) -> None:
    """Wait for ``count`` ready on ``name``: RabbitMQ requeues a cancelled consumer's unacked ones a moment later."""
    deadline = time.monotonic() + WAIT
    while broker.message_count(name) != count:
        assert time.monotonic() < deadline, f"{name} never had {count} messages ready"
        time.sleep(0.05)


# -- MLLP


def test_reports_arrive_as_oru_in_each_members_charset_and_are_recorded(
    hub: Broker, ledger: Collector, member: Callable[..., MllpMember]
) -> None:
    gb, utf8 = member(), member()
    config = consortium(**{GB_MEMBER: gb.url, UTF8_MEMBER: utf8.url})
    gb_report = make_report(GB_MEMBER, 1, conclusion="右下肺结节，建议三个月后复查CT")
    utf8_report = make_report(UTF8_MEMBER, 2, conclusion="心影增大，请结合临床")
    with running(Egress(hub, config, retry_delays=FAST)):
        submit_report(hub, gb_report)
        submit_report(hub, utf8_report)
        (gb_raw,), (utf8_raw,) = gb.take(1), utf8.take(1)
        events = {e.report_id: e for e in ledger.events(2)}

    text = gb_raw.decode("gb18030")
    assert text.startswith("MSH|") and "ORU^R01" in text.split("\r")[0]
    assert text.split("\r")[0].split("|")[17] == "GB 18030-2000"
    assert "右下肺结节，建议三个月后复查CT" in text
    assert "右下肺结节".encode() not in gb_raw  # GB 18030 bytes, not UTF-8 ones
    assert "心影增大，请结合临床".encode() in utf8_raw
    (exam,) = hl7v2.read(gb_raw, origin=GB_MEMBER)
    assert exam.exam_id == gb_report.exam_id
    assert gb.accepted == [control_id(gb_raw)] and utf8.accepted == [control_id(utf8_raw)]

    delivered = events[gb_report.report_id]
    assert (delivered.kind, delivered.endpoint, delivered.attempts, delivered.detail) == (
        "report.delivered", gb.url, 1, "AA")  # fmt: skip
    assert events[utf8_report.report_id].endpoint == utf8.url
    # Stopped, whatever was unacked would be back: the reports were acked.
    assert queues_empty(hub, report_queue(GB_MEMBER), report_queue(UTF8_MEMBER), parked_queue(EGRESS))


def test_ae_then_aa_is_delivered_after_a_retry(
    memory_hub: Broker, memory_ledger: Collector, member: Callable[..., MllpMember]
) -> None:
    gb = member(first("AE"))
    report = make_report(GB_MEMBER, 1)
    with running(Egress(memory_hub, consortium(**{GB_MEMBER: gb.url}), retry_delays=FAST)):
        submit_report(memory_hub, report)
        sent = gb.take(2)
        (event,) = memory_ledger.events(1)
    assert control_id(sent[0]) == control_id(sent[1])  # the same message, sent again
    assert (event.kind, event.attempts, event.detail) == ("report.delivered", 2, "AA")
    assert queues_empty(memory_hub, report_queue(GB_MEMBER), parked_queue(EGRESS))


def test_a_member_that_is_down_gets_its_reports_in_order_once_up_and_others_are_served_meanwhile(
    hub: Broker, ledger: Collector, member: Callable[..., MllpMember], retries: queue.Queue[str]
) -> None:
    port = free_port()  # nothing listens there yet
    utf8 = member()
    config = consortium(**{GB_MEMBER: f"mllp://127.0.0.1:{port}", UTF8_MEMBER: utf8.url})
    first_report, second_report = make_report(GB_MEMBER, 1), make_report(GB_MEMBER, 2)
    with running(Egress(hub, config, retry_delays=(0.05,) * 400)):
        submit_report(hub, first_report)
        submit_report(hub, second_report)
        submit_report(hub, make_report(UTF8_MEMBER, 3))
        assert retries.get(timeout=WAIT) == first_report.report_id  # refused, and waiting for its retry
        utf8.take(1)  # the other member is not held up
        gb = member(port=port)
        gb.take(2)
        events = {e.report_id: e for e in ledger.events(3)}
    assert gb.accepted == [control_id(hl7v2.write_report(r, charset="gb18030")) for r in (first_report, second_report)]
    assert events[first_report.report_id].attempts >= 2  # type: ignore[operator]
    assert events[second_report.report_id].attempts == 1  # it waited behind the first, never tried early
    assert queues_empty(hub, report_queue(GB_MEMBER), parked_queue(EGRESS))


def test_always_ae_is_parked_with_its_reason_and_the_next_report_then_follows(
    hub: Broker, ledger: Collector, member: Callable[..., MllpMember]
) -> None:
    doomed, next_report = make_report(GB_MEMBER, 1), make_report(GB_MEMBER, 2)
    doomed_id = control_id(hl7v2.write_report(doomed, charset="gb18030"))
    gb = member(lambda raw, _seen: "AE" if control_id(raw) == doomed_id else "AA")
    parked = Collector(hub, parked_queue(EGRESS))
    with running(Egress(hub, consortium(**{GB_MEMBER: gb.url}), retry_delays=FAST)):
        submit_report(hub, doomed)
        submit_report(hub, next_report)
        (moved,) = parked.take(1)
        events = ledger.events(2)
    assert gb.accepted == [control_id(hl7v2.write_report(next_report, charset="gb18030"))]
    assert moved.message_id == doomed.report_id
    assert Report.decode(moved.body) == doomed
    assert moved.headers["x-hub-park-reason"] == "undeliverable after 3 attempts (AE)"
    assert moved.headers["x-hub-attempts"] == 3
    assert moved.headers["x-hub-endpoint"] == gb.url
    assert moved.headers["x-hub-error"].startswith("AE")
    assert moved.headers["exam-id"] == doomed.exam_id and moved.headers["origin"] == GB_MEMBER  # original headers
    assert [(e.kind, e.report_id, e.attempts) for e in events] == [
        ("report.parked", doomed.report_id, 3), ("report.delivered", next_report.report_id, 1)]  # fmt: skip
    assert queues_empty(hub, report_queue(GB_MEMBER))


def test_a_member_that_stays_down_gets_its_reports_parked(memory_hub: Broker, memory_ledger: Collector) -> None:
    url = f"mllp://127.0.0.1:{free_port()}"
    parked = Collector(memory_hub, parked_queue(EGRESS))
    reports = [make_report(GB_MEMBER, 1), make_report(GB_MEMBER, 2)]
    with running(Egress(memory_hub, consortium(**{GB_MEMBER: url}), retry_delays=FAST)):
        for report in reports:
            submit_report(memory_hub, report)
        moved = parked.take(2)
        events = memory_ledger.events(2)
    assert [m.message_id for m in moved] == [r.report_id for r in reports]
    assert {m.headers["x-hub-park-reason"] for m in moved} == {"undeliverable after 3 attempts (no answer)"}
    assert "cannot connect" in moved[0].headers["x-hub-error"]
    assert [(e.kind, e.endpoint, e.detail) for e in events] == [
        ("report.parked", url, "undeliverable after 3 attempts (no answer)")] * 2  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "code"), [("AR", "AR"), ("wrong", "wrong MSA-2"), ("silent", "no answer"), ("close", "no answer")]
)
def test_every_kind_of_refusal_is_retried_then_parked(
    memory_hub: Broker, member: Callable[..., MllpMember], answer: str, code: str
) -> None:
    gb = member(always(answer))
    parked = Collector(memory_hub, parked_queue(EGRESS))
    with running(Egress(memory_hub, consortium(**{GB_MEMBER: gb.url}), retry_delays=FAST, timeout=0.5)):
        submit_report(memory_hub, make_report(GB_MEMBER, 1))
        (moved,) = parked.take(1)
    assert moved.headers["x-hub-park-reason"] == f"undeliverable after 3 attempts ({code})"
    assert gb.received.qsize() == 3
    assert gb.accepted == []


def test_a_body_that_is_not_a_report_is_parked_at_once(
    memory_hub: Broker, memory_ledger: Collector, member: Callable[..., MllpMember]
) -> None:
    gb = member()
    parked = Collector(memory_hub, parked_queue(EGRESS))
    report = make_report(GB_MEMBER, 2)
    body = '{"report_id": "rp-1", "患者": "张三"}'.encode()
    garbage = Message(REPORTS, f"{GB_MEMBER}.imaging", body, message_id="rp-1")
    with running(Egress(memory_hub, consortium(**{GB_MEMBER: gb.url}), retry_delays=FAST)):
        memory_hub.publish(garbage).result(WAIT)
        submit_report(memory_hub, report)
        (moved,) = parked.take(1)
        (event,) = memory_ledger.events(1)
        gb.take(1)
    assert (moved.message_id, moved.body) == ("rp-1", garbage.body)
    assert moved.headers["x-hub-park-reason"] == "undecodable report"
    assert moved.headers["x-hub-attempts"] == 0
    assert (event.kind, event.report_id) == ("report.delivered", report.report_id)  # the next one went on


def test_stop_finishes_in_hand_and_leaves_the_rest_queued(
    hub: Broker, member: Callable[..., MllpMember], retries: queue.Queue[str]
) -> None:
    gb = member(always("AE"))
    with running(Egress(hub, consortium(**{GB_MEMBER: gb.url}), retry_delays=(3600,))):
        submit_report(hub, make_report(GB_MEMBER, 1))
        submit_report(hub, make_report(GB_MEMBER, 2))
        retries.get(timeout=WAIT)  # the first was refused and waits an hour for its retry; stop does not
    back_in_queue(hub, report_queue(GB_MEMBER), 2)
    assert hub.message_count(parked_queue(EGRESS)) == 0


def test_reports_of_one_exam_keep_their_order_across_connections(
    memory_hub: Broker, member: Callable[..., MllpMember]
) -> None:
    preliminary = make_report(GB_MEMBER, 1, status="preliminary")
    final = make_report(GB_MEMBER, 1, status="final", conclusion="终审：右下肺炎症")
    others = [make_report(GB_MEMBER, n) for n in range(2, 8)]
    refused_once = control_id(hl7v2.write_report(preliminary, charset="gb18030"))
    gb = member(lambda raw, seen: "AE" if control_id(raw) == refused_once and seen == 1 else "AA")
    ledger = Collector(memory_hub, LEDGER)
    with running(Egress(memory_hub, consortium(**{GB_MEMBER: gb.url}), retry_delays=(0.2,), connections=2)):
        for report in [preliminary, final, *others]:
            submit_report(memory_hub, report)
        ledger.events(8)
    order = [control_id(hl7v2.write_report(r, charset="gb18030")) for r in (preliminary, final)]
    assert [c for c in gb.accepted if c in order] == order  # the final waited for the retried preliminary
    assert gb.connections == 2


def test_a_dropped_connection_is_opened_again_without_costing_an_attempt(
    memory_hub: Broker, memory_ledger: Collector, member: Callable[..., MllpMember]
) -> None:
    gb = member(always("AA, then close"))
    with running(Egress(memory_hub, consortium(**{GB_MEMBER: gb.url}), retry_delays=(3600,))):
        submit_report(memory_hub, make_report(GB_MEMBER, 1))
        memory_ledger.events(1)
        submit_report(memory_hub, make_report(GB_MEMBER, 2))
        (event,) = memory_ledger.events(1)
    assert (event.attempts, event.detail) == (1, "AA")
    assert gb.connections == 2 and len(gb.accepted) == 2


def test_a_failure_in_delivery_is_logged_without_its_text_and_the_report_goes_again(
    memory_hub: Broker,
    memory_ledger: Collector,
    member: Callable[..., MllpMember],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # as hub serve logs
    send = _MllpEndpoint.send
    failed: list[bool] = []

    async def failing_once(self: _MllpEndpoint, report: Report, payload: bytes) -> Any:
        if not failed:
            failed.append(True)
            raise RuntimeError("a bug quoting 王秀英 11010519491231002X")
        return await send(self, report, payload)

    monkeypatch.setattr(_MllpEndpoint, "send", failing_once)
    gb = member()
    with running(Egress(memory_hub, consortium(**{GB_MEMBER: gb.url}))):
        submit_report(memory_hub, make_report(GB_MEMBER, 1))
        (event,) = memory_ledger.events(1)
    assert event.kind == "report.delivered" and len(gb.accepted) == 1
    assert "王秀英" not in caplog.text and "11010519491231002X" not in caplog.text
    assert "RuntimeError at " in caplog.text and "test_egress.py:" in caplog.text


# -- broker trouble


class RefusingEvents(Broker):
    """The real broker, except that it does not confirm ledger events while ``refusing`` is set."""

    def __init__(self, inner: Broker) -> None:
        self.inner, self.url = inner, inner.url
        self.refusing = threading.Event()
        self.refused = threading.Event()
        self.refusing.set()

    def declare(self, topology: Topology) -> None:
        self.inner.declare(topology)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.inner.loop

    def publish(self, message: Message) -> Any:
        return self.inner.publish(message)

    def publish_on_loop(self, message: Message) -> asyncio.Future[None]:
        if message.exchange != "hub.events" or not self.refusing.is_set():
            return self.inner.publish_on_loop(message)
        self.refused.set()
        future: asyncio.Future[None] = self.loop.create_future()
        future.set_exception(BrokerUnavailable("test: the broker did not confirm"))
        return future

    def consume(self, queue: str, on_delivery: Callable[[Delivery], None], *, prefetch: int) -> Subscription:
        return self.inner.consume(queue, on_delivery, prefetch=prefetch)

    def delete(self, topology: Topology) -> None:
        self.inner.delete(topology)

    def message_count(self, queue: str) -> int:
        return self.inner.message_count(queue)

    def exchange_exists(self, exchange: str) -> bool:
        return self.inner.exchange_exists(exchange)

    def close(self) -> None:
        self.inner.close()


def test_an_unconfirmed_delivery_event_leaves_the_report_unacked_and_it_is_delivered_again(
    memory_hub: Broker, memory_ledger: Collector, member: Callable[..., MllpMember]
) -> None:
    gb = member()
    flaky = RefusingEvents(memory_hub)
    report = make_report(GB_MEMBER, 1)
    config = consortium(**{GB_MEMBER: gb.url})
    with running(Egress(flaky, config, retry_delays=FAST)):
        submit_report(memory_hub, report)
        (sent,) = gb.take(1)
        assert flaky.refused.wait(WAIT)
    back_in_queue(memory_hub, report_queue(GB_MEMBER), 1)  # not acked
    flaky.refusing.clear()
    with running(Egress(flaky, config, retry_delays=FAST)):
        (again,) = gb.take(1)
        (event,) = memory_ledger.events(1)
    assert control_id(again) == control_id(sent)  # a duplicate with the same MSH-10, never a loss
    assert event.report_id == report.report_id
    assert queues_empty(memory_hub, report_queue(GB_MEMBER))


def test_a_report_in_hand_is_acked_once_its_event_is_confirmed_at_last(
    memory_hub: Broker, member: Callable[..., MllpMember]
) -> None:
    gb = member()
    flaky = RefusingEvents(memory_hub)
    ledger = Collector(memory_hub, LEDGER)
    with running(Egress(flaky, consortium(**{GB_MEMBER: gb.url}))):
        submit_report(memory_hub, make_report(GB_MEMBER, 1))
        assert flaky.refused.wait(WAIT)
        flaky.refusing.clear()
        ledger.events(1)
    assert gb.received.qsize() == 1  # held and confirmed later, not sent again
    assert queues_empty(memory_hub, report_queue(GB_MEMBER))


# -- FHIR


def test_a_fhir_member_gets_a_valid_diagnostic_report(
    hub: Broker, ledger: Collector, fhir_member: Callable[..., FhirMember]
) -> None:
    server = fhir_member()
    report = make_report(FHIR_MEMBER, 1, conclusion="窦性心律，正常心电图")
    with running(Egress(hub, consortium(**{FHIR_MEMBER: server.url}), retry_delays=FAST)):
        submit_report(hub, report)
        ((method, path, headers, body),) = server.take(1)
        (event,) = ledger.events(1)
    assert (method, path) == ("POST", "/fhir/DiagnosticReport")
    assert headers["content-type"] == "application/fhir+json"
    resource = DiagnosticReport.model_validate_json(body)
    assert resource.id == report.report_id
    assert resource.conclusion == "窦性心律，正常心电图"
    assert (event.kind, event.endpoint, event.attempts, event.detail) == (
        "report.delivered", server.url, 1, "HTTP 201")  # fmt: skip
    assert queues_empty(hub, report_queue(FHIR_MEMBER), parked_queue(EGRESS))


def test_a_fhir_500_is_retried(
    memory_hub: Broker, memory_ledger: Collector, fhir_member: Callable[..., FhirMember]
) -> None:
    server = fhir_member([500, 503])
    with running(Egress(memory_hub, consortium(**{FHIR_MEMBER: server.url}), retry_delays=FAST)):
        submit_report(memory_hub, make_report(FHIR_MEMBER, 1))
        bodies = [body for *_, body in server.take(3)]
        (event,) = memory_ledger.events(1)
    assert len({json.loads(b)["id"] for b in bodies}) == 1
    assert (event.attempts, event.detail) == (3, "HTTP 201")


def test_a_fhir_member_that_keeps_failing_gets_the_report_parked(
    memory_hub: Broker, fhir_member: Callable[..., FhirMember]
) -> None:
    server = fhir_member([400, 500, 422])
    parked = Collector(memory_hub, parked_queue(EGRESS))
    with running(Egress(memory_hub, consortium(**{FHIR_MEMBER: server.url}), retry_delays=FAST)):
        submit_report(memory_hub, make_report(FHIR_MEMBER, 1))
        (moved,) = parked.take(1)
    assert moved.headers["x-hub-park-reason"] == "undeliverable after 3 attempts (HTTP 422)"
    assert moved.headers["x-hub-endpoint"] == server.url
    assert (moved.routing_key, moved.headers["x-hub-routing-key"]) == (EGRESS, f"{FHIR_MEMBER}.imaging")

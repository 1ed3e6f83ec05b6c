"""The MLLP listener, driven by a plain-socket sender, on both brokers.

Every sample in examples/messages/hl7v2 goes through a real connection: good ones must be
acknowledged AA only once their exams sit on their centre queues, bad ones AE with ERR segments
that locate the problem and with their raw bytes parked. A broker that does not take a message
must give AR, never AA.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import shutil
import socket
import ssl
import subprocess
import time
import tomllib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import pytest
from brokers import broker_urls, declared_empty, take, take_all

from adapters import hl7v2
from hub import errors
from hub.broker import Broker
from hub.config import MllpGateway, load_config
from hub.envelope import Exam
from hub.gateways.mllp import MllpListener, start_mllp
from hub.intake import Intake
from hub.mllp import HEAD_BYTES
from hub.store.blobs import BlobStore
from hub.topology import LEDGER, Topology, exam_queue, parked_queue, stat_queue

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "examples" / "messages" / "hl7v2"
EXPECTED: dict[str, Any] = tomllib.loads((SAMPLES / "EXPECTED.toml").read_text("utf-8"))
GOOD = sorted(name for name in EXPECTED if not name.startswith("bad-"))
BAD = sorted(name for name in EXPECTED if name.startswith("bad-"))
CONFIG = load_config(ROOT / "examples" / "consortium.toml")
TOPOLOGY = Topology(institutions=[i.code for i in CONFIG.institutions], retry_delays=(1,))
CENTRE_QUEUES = [
    q for centre in ("imaging", "ecg", "lab", "pathology") for q in (exam_queue(centre), stat_queue(centre))
]
PARKED = parked_queue("intake")
YUQIAN = "12330112472334561L"  # 於潜镇中心卫生院: fallback charset GBK
QINGSHANHU = "12330112471213450B"  # 青山湖街道社区卫生服务中心: fallback UTF-8
BANQIAO = "123301124767189052"  # 板桥镇卫生院: its old LIS sends MSH-4 = BQWSY
WAIT = 15.0
VT, FS_CR = b"\x0b", b"\x1c\r"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def on_loop(broker: Broker, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, broker.loop).result(WAIT)


class Sender:
    """A member's HL7 sender over a plain socket: frames out, reply frames back, nothing borrowed from the hub."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock
        self.buffer = b""

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes) -> bytes:
        self.write(VT + payload + FS_CR)
        return self.reply()

    def reply(self) -> bytes:
        while FS_CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the hub closed the connection without a reply")
            self.buffer += chunk
        data, self.buffer = self.buffer.split(FS_CR, 1)
        assert data.startswith(VT), data[:20]
        return data[1:]

    def closed_by_peer(self) -> bool:
        """True once the hub has closed the connection (with nothing more sent)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


class Ack:
    """An ACK split into segments and fields with its own delimiters."""

    def __init__(self, reply: bytes, codec: str = "utf-8") -> None:
        text = reply.decode(codec)
        self.field, self.component = text[3], text[4]
        self.segments = [s.split(self.field) for s in text.split("\r") if s]
        assert self.segments[0][0] == "MSH"

    def first(self, name: str) -> list[str]:
        return next(s for s in self.segments if s[0] == name)

    def all(self, name: str) -> list[list[str]]:
        return [s for s in self.segments if s[0] == name]

    @property
    def code(self) -> str:
        return self.first("MSA")[1]

    @property
    def control_id(self) -> str:
        return self.first("MSA")[2]

    def msh(self, n: int) -> str:
        """MSH-n (MSH-1 is the field separator itself)."""
        return self.segments[0][n - 1]


def err_position(location: str, component: str = "^") -> str:
    """ERR-2 (ERL) for an adapter location: OBX[3] -> OBX^3, MSH-2 -> MSH^1^2, PID -> PID^1."""
    match = re.fullmatch(r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+))?", location)
    assert match, location
    segment, nth, field = match.groups()
    return component.join([segment, nth or "1", *([field] if field else [])])


def queued_exams(broker: Broker) -> list[Exam]:
    return [Exam.decode(d.body) for name in CENTRE_QUEUES for d in take_all(broker, name)]


def nothing_queued(broker: Broker) -> bool:
    return all(broker.message_count(name) == 0 for name in [*CENTRE_QUEUES, PARKED, LEDGER])


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def with_msh(raw: bytes, codec: str, **fields: str) -> bytes:
    """``raw`` with MSH fields replaced (``msh3="检验系统"``), re-encoded in ``codec``."""
    text = raw.decode(codec).lstrip("\ufeff")
    head, sep, rest = text.partition("\r")
    parts = head.split(head[3])
    for key, value in fields.items():
        n = int(key.removeprefix("msh"))
        parts += [""] * (n - len(parts))
        parts[n - 1] = value
    return (head[3].join(parts).rstrip(head[3]) + sep + rest).encode(codec)


@pytest.fixture(scope="module", params=["memory", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """conftest's broker_url with one RabbitMQ vhost per module: rabbitmqctl takes ~4 s a vhost.

    Each test still starts from empty queues: ``hub_broker`` declares the topology and drains it.
    """
    yield from broker_urls(request.param)


@pytest.fixture
def hub_broker(broker: Broker) -> Broker:
    return declared_empty(broker, TOPOLOGY)  # a shared vhost: drained of an earlier test's


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", fsync=False)


@pytest.fixture
def listen(hub_broker: Broker, blobs: BlobStore) -> Iterator[Callable[..., MllpListener]]:
    """Start a listener (port 0) on the broker's loop: ``listen(intake=None, **MllpGateway settings)``."""
    started: list[tuple[Broker, MllpListener]] = []

    def start(intake: Intake | None = None, **settings: Any) -> MllpListener:
        intake = intake or Intake(hub_broker, blobs)
        listener = on_loop(intake.broker, start_mllp(intake, CONFIG, MllpGateway(port=0, **settings)))
        started.append((intake.broker, listener))
        return listener

    yield start
    for broker, listener in started:
        on_loop(broker, listener.close())


# -- the samples


def test_good_samples_are_answered_aa_once_their_exams_are_queued(
    listen: Callable[..., MllpListener], hub_broker: Broker, blobs: BlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hub")
    sender = Sender(listen().port)
    queued = 0
    for name in GOOD:
        reply = Ack(sender.send(sample(name)), EXPECTED[name]["charset"])
        assert (reply.code, reply.control_id) == ("AA", EXPECTED[name]["message_id"]), name
        queued += EXPECTED[name]["exam_count"]
        assert sum(hub_broker.message_count(q) for q in CENTRE_QUEUES) == queued, f"{name}: AA before its exams"
    sender.close()

    exams = queued_exams(hub_broker)
    expected = sorted(
        (e["origin"], e["centre"], e["priority"], e["placer_order"]) for name in GOOD for e in EXPECTED[name]["exams"]
    )
    assert sorted((e.origin, e.centre, e.priority, e.placer_order) for e in exams) == expected
    assert hub_broker.message_count(LEDGER) == len(expected)  # one exam.accepted event each
    assert hub_broker.message_count(PARKED) == 0
    # The ECG's PDF is an ED field inside the message: the message went to the blob store first.
    (ecg,) = [e for e in exams if e.centre == "ecg"]
    assert ecg.source.uri is not None
    assert blobs.read(ecg.source.uri) == sample("ecg-resting-oru.hl7")
    # Logs name peers, control ids and institutions, never patients.
    assert "YQLIS202403010007" in caplog.text
    for name in GOOD:
        for exam in EXPECTED[name]["exams"]:
            assert exam["patient_name"] not in caplog.text
            assert "national_id" not in exam or exam["national_id"] not in caplog.text
            assert all(local_id not in caplog.text for local_id in exam["local_ids"])


def test_bad_samples_are_answered_ae_with_located_errors_and_parked_byte_for_byte(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    sender = Sender(listen().port)
    for name in BAD:
        reply = Ack(sender.send(sample(name)))
        assert reply.code == "AE", name
        (err,) = reply.all("ERR")
        assert err[2] == err_position(EXPECTED[name]["location"], reply.component), name
        assert err[4] == "E"
        assert err[8], f"{name}: ERR-8 says nothing"
    sender.close()

    parked = take_all(hub_broker, PARKED)
    assert [d.body for d in parked] == [sample(name) for name in BAD]
    for name, delivery in zip(BAD, parked, strict=True):
        headers = delivery.headers
        assert issubclass(getattr(errors, headers["x-hub-park-reason"]), getattr(errors, EXPECTED[name]["error"])), name
        assert headers["x-hub-error"].startswith(EXPECTED[name]["location"]), name
        assert headers["x-hub-format"] == "hl7v2"
        assert headers["x-hub-peer"].startswith("127.0.0.1:")
    assert [d.headers.get("x-hub-origin") for d in parked] == [hl7v2.sender(sample(n)) for n in BAD]
    assert all(hub_broker.message_count(name) == 0 for name in CENTRE_QUEUES)


def test_unknown_or_missing_sending_facility_is_ae_at_msh_4_and_parked(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    unknown = with_msh(sample("lab-liver-utf8.hl7"), "utf-8", msh4="SOMEWHERE-ELSE")
    missing = with_msh(sample("lab-liver-utf8.hl7"), "utf-8", msh4="")
    sender = Sender(listen().port)
    for raw, text in ((unknown, "unknown sending facility 'SOMEWHERE-ELSE'"), (missing, "MSH-4")):
        reply = Ack(sender.send(raw))
        assert (reply.code, reply.control_id) == ("AE", "QSHLIS20240301-0042")
        (err,) = reply.all("ERR")
        assert err[2] == "MSH^1^4"
        assert text in err[8]
    assert [d.body for d in take_all(hub_broker, PARKED)] == [unknown, missing]
    assert all(hub_broker.message_count(name) == 0 for name in CENTRE_QUEUES)


# -- character sets


@pytest.mark.parametrize(
    ("name", "codec"),
    [("lab-cbc-gb18030.hl7", "gb18030"), ("pathology-omg-o19.hl7", "gb18030"), ("lab-urine-gbk-badid.hl7", "gbk")],
)
def test_ack_goes_back_in_the_senders_charset(
    listen: Callable[..., MllpListener], hub_broker: Broker, name: str, codec: str
) -> None:
    raw = with_msh(sample(name), codec, msh3="检验信息系统")
    reply_bytes = Sender(listen().port).send(raw)
    reply = Ack(reply_bytes, codec)
    assert reply.code == "AA"
    assert reply.msh(5) == "检验信息系统"  # the sender's MSH-3, now the receiving application
    assert "检验信息系统".encode(codec) in reply_bytes
    assert "检验信息系统".encode() not in reply_bytes
    assert reply.msh(18) == raw.decode(codec).split("\r")[0].split("|")[17]
    (exam,) = queued_exams(hub_broker)
    assert exam.patient.name == EXPECTED[name]["exams"][0]["patient_name"]


def test_notices_come_back_as_warnings_of_an_aa(listen: Callable[..., MllpListener], hub_broker: Broker) -> None:
    # A v2.4 message: the warning is in MSA-3 and an ERR-1 (ELD) at PID-19.
    reply = Ack(Sender(listen().port).send(sample("lab-urine-gbk-badid.hl7")), "gbk")
    assert reply.code == "AA"
    assert "GB 11643" in reply.first("MSA")[3]
    (err,) = reply.all("ERR")
    assert err[1].startswith("PID^1^19^0&")
    (exam,) = queued_exams(hub_broker)
    assert [n.location for n in exam.notices] == ["PID-19"]


def test_a_message_without_msh_18_is_read_in_its_members_fallback_charset(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    # 於潜's LIS sends GBK and leaves MSH-18 empty; its config says charset = "GBK".
    gbk = with_msh(sample("lab-cbc-gb18030.hl7"), "gb18030", msh3="检验信息系统", msh18="")
    gbk = gbk.decode("gb18030").encode("gbk")
    assert b"GB 18030" not in gbk
    sender = Sender(listen().port)
    reply_bytes = sender.send(gbk)
    reply = Ack(reply_bytes, "gbk")
    assert reply.code == "AA"
    assert "检验信息系统".encode("gbk") in reply_bytes
    (exam,) = queued_exams(hub_broker)
    assert (exam.origin, exam.patient.name, exam.service.display) == (YUQIAN, "张伟", "血常规")

    # The same bytes from a member whose fallback is UTF-8 cannot be read: AE, parked.
    from_qingshanhu = with_msh(gbk, "gbk", msh4=QINGSHANHU)
    reply = Ack(sender.send(from_qingshanhu), "utf-8")
    assert reply.code == "AE"
    (parked,) = take_all(hub_broker, PARKED)
    assert (parked.body, parked.headers["x-hub-park-reason"]) == (from_qingshanhu, "DecodeError")


def test_an_hl7_facility_alias_is_the_members_institution_code(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    raw = with_msh(sample("pathology-omg-o19.hl7"), "gb18030", msh4="BQWSY")
    assert Ack(Sender(listen().port).send(raw), "gb18030").code == "AA"
    (exam,) = queued_exams(hub_broker)
    assert exam.origin == BANQIAO
    assert exam.patient.name == "黄志强"


def test_dollar_delimited_message_gets_a_dollar_delimited_ack(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    reply_bytes = Sender(listen().port).send(sample("lab-crp-custom-delims.hl7"))
    assert reply_bytes.startswith(b"MSH$^~\\&$")
    reply = Ack(reply_bytes)
    assert (reply.code, reply.control_id) == ("AA", "GHLIS20240308-0019")
    (exam,) = queued_exams(hub_broker)
    assert exam.placer_order == "GH-LAB-20240308-0019"


# -- framing on the wire


def test_a_message_sent_byte_by_byte_and_frames_sent_together(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    sender = Sender(listen().port)
    for byte in VT + sample("lab-liver-utf8.hl7") + FS_CR:
        sender.write(bytes([byte]))
    assert Ack(sender.reply()).control_id == "QSHLIS20240301-0042"

    names = ["lab-oml-o21.hl7", "imaging-ct-orm.hl7", "bad-adt-a01.hl7", "ecg-resting-oru.hl7"]
    sender.write(b"\r\n".join(VT + sample(name) + FS_CR for name in names))  # pipelined, with noise between
    replies = [Ack(sender.reply()) for _ in names]
    assert [(r.code, r.control_id) for r in replies] == [
        ("AA", "GHHIS20240304-0003"),
        ("AA", "THHIS20240303-0021"),
        ("AE", "YQHIS20240301-0001"),
        ("AA", "CHECG0302-0015"),
    ]
    assert len(queued_exams(hub_broker)) == 4
    assert [d.body for d in take_all(hub_broker, PARKED)] == [sample("bad-adt-a01.hl7")]


def test_a_long_pipeline_is_answered_in_order(listen: Callable[..., MllpListener], hub_broker: Broker) -> None:
    # Far more frames than a connection queues before it stops reading: backpressure, then all answered.
    raws = [with_msh(sample("lab-oml-o21.hl7"), "utf-8", msh10=f"GH-PIPE-{n:03}") for n in range(100)]
    sender = Sender(listen().port)
    sender.write(b"".join(VT + raw + FS_CR for raw in raws))
    assert [Ack(sender.reply()).control_id for _ in raws] == [f"GH-PIPE-{n:03}" for n in range(100)]
    exams = queued_exams(hub_broker)
    assert len(exams) == 100
    assert len({e.exam_id for e in exams}) == 1  # the same order each time: recognisably one exam


def test_a_sender_that_half_closes_still_gets_its_acks(listen: Callable[..., MllpListener]) -> None:
    sender = Sender(listen().port)
    sender.write(VT + sample("lab-oml-o21.hl7") + FS_CR + VT + sample("imaging-ct-orm.hl7") + FS_CR)
    sender.sock.shutdown(socket.SHUT_WR)  # "that is all I have"
    assert [Ack(sender.reply()).code for _ in range(2)] == ["AA", "AA"]
    assert sender.closed_by_peer()


def test_oversized_frame_is_ae_its_head_parked_and_the_connection_goes_on(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    limit = 8192
    note = "NTE|1||备注：" + "心电图长报告" * 20 + "\r"
    big = sample("lab-liver-utf8.hl7") + note.encode() * 400
    assert len(big) > HEAD_BYTES > limit
    sender = Sender(listen(max_frame_bytes=limit).port)
    reply = Ack(sender.send(big))
    assert (reply.code, reply.control_id) == ("AE", "QSHLIS20240301-0042")
    (err,) = reply.all("ERR")
    assert f"{len(big)} bytes" in err[8]
    assert str(limit) in err[8]
    assert Ack(sender.send(sample("lab-oml-o21.hl7"))).code == "AA"  # same connection

    (parked,) = take_all(hub_broker, PARKED)
    assert parked.body == big[:HEAD_BYTES]
    assert parked.headers["x-hub-origin"] == QINGSHANHU
    assert str(len(big)) in parked.headers["x-hub-error"]
    assert [e.placer_order for e in queued_exams(hub_broker)] == ["GH-LAB-20240304-0003"]


def test_garbage_and_abandoned_frames_do_not_stop_a_good_message(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    sender = Sender(listen().port)
    # Noise, then a frame its sender gave up on (no end marker) before starting over.
    sender.write(b"GET / HTTP/1.0\r\n\r\n" + VT + b"MSH|^~\\&|LIS|" + YUQIAN.encode() + b"|half a mess")
    assert Ack(sender.send(sample("lab-liver-utf8.hl7"))).code == "AA"
    junk = [b"", b"\x00\xff\xfe not hl7 at all", "MSH|^~\\&|张".encode("gbk")]
    for raw in junk:
        reply = Ack(sender.send(raw))
        assert reply.code == "AE"
        assert reply.all("ERR")
    assert Ack(sender.send(sample("lab-oml-o21.hl7"))).code == "AA"
    assert len(queued_exams(hub_broker)) == 2
    abandoned, *refused = take_all(hub_broker, PARKED)
    assert abandoned.body == b"MSH|^~\\&|LIS|" + YUQIAN.encode() + b"|half a mess"  # parked, never answered
    assert "abandoned: a new start block (VT) came before its end block" in abandoned.headers["x-hub-error"]
    assert abandoned.headers["x-hub-origin"] == YUQIAN
    assert [d.body for d in refused] == [
        b"",
        b"\x00\xff\xfe not hl7 at all",
        "MSH|^~\\&|张".encode("gbk"),
    ]


def test_the_listener_survives_senders_that_leave_early(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    listener = listen()
    half = Sender(listener.port)
    half.write(VT + sample("lab-liver-utf8.hl7")[:100])
    half.close()
    rude = Sender(listener.port)
    rude.write(VT + sample("lab-oml-o21.hl7") + FS_CR)  # and never reads its ACK
    rude.close()
    sender = Sender(listener.port)
    assert Ack(sender.send(sample("imaging-ct-orm.hl7"))).code == "AA"
    # The half frame was never a message: it is parked with why, and gets no ACK. The whole one may
    # have been taken.
    (cut,) = take(hub_broker, PARKED, 1)
    assert cut.body == sample("lab-liver-utf8.hl7")[:100]
    assert "cut off: the connection ended before its end block (FS CR); 100 bytes" in cut.headers["x-hub-error"]
    placers = {e.placer_order for e in queued_exams(hub_broker)}
    assert "TH-RIS-20240303-0021" in placers
    assert placers <= {"TH-RIS-20240303-0021", "GH-LAB-20240304-0003"}


def test_a_sender_that_ends_frames_with_fs_alone_is_answered(listen: Callable[..., MllpListener]) -> None:
    sender = Sender(listen().port)
    first, second = sample("lab-oml-o21.hl7"), sample("imaging-ct-orm.hl7")
    sender.write(VT + first + b"\x1c" + VT + second + b"\x1c")  # no CR after FS
    assert Ack(sender.reply()).code == "AA"  # whole once the next frame began
    sender.sock.shutdown(socket.SHUT_WR)
    assert Ack(sender.reply()).code == "AA"  # whole once the stream ended


def test_a_frame_left_open_is_parked_once_the_connection_is_idle(
    listen: Callable[..., MllpListener], hub_broker: Broker
) -> None:
    listener = listen(idle_timeout=0.3)
    open_ended = Sender(listener.port)
    open_ended.write(VT + f"MSH|^~\\&|LIS|{YUQIAN}|于潜|".encode("gb18030"))
    assert open_ended.closed_by_peer()  # no ACK: the connection closes once it is idle again
    (parked,) = take(hub_broker, PARKED, 1)
    assert "no end block (FS CR) came within gateways.mllp.idle_timeout (0.3 s)" in parked.headers["x-hub-error"]
    assert parked.headers["x-hub-origin"] == YUQIAN
    fs_only = Sender(listener.port)
    fs_only.write(VT + sample("lab-oml-o21.hl7") + b"\x1c")  # and then waits for its ACK
    assert Ack(fs_only.reply()).code == "AA"  # answered once the connection was idle


def test_an_idle_connection_is_closed(listen: Callable[..., MllpListener]) -> None:
    sender = Sender(listen(idle_timeout=0.2).port)
    assert Ack(sender.send(sample("lab-oml-o21.hl7"))).code == "AA"
    assert sender.closed_by_peer()  # recv blocks until the hub closes (the socket's own timeout is 15 s)


# -- when the broker does not take the message


def test_a_broker_that_refuses_the_message_gives_ar_and_keeps_nothing(broker: Broker, blobs: BlobStore) -> None:
    broker.delete(TOPOLOGY)  # no topology: every publish is unroutable, parking too
    listener = on_loop(broker, start_mllp(Intake(broker, blobs), CONFIG, MllpGateway(port=0)))
    try:
        sender = Sender(listener.port)
        for name in ("lab-cbc-gb18030.hl7", "bad-oru-no-pid.hl7"):
            reply = Ack(sender.send(sample(name)), "gb18030")
            assert reply.code == "AR", name
            assert "send it again" in reply.first("ERR")[8]
        # The sender sends again once the hub is set up: only now is anything kept.
        broker.declare(TOPOLOGY)
        assert nothing_queued(broker)
        assert Ack(sender.send(sample("lab-cbc-gb18030.hl7")), "gb18030").code == "AA"
        assert Ack(sender.send(sample("bad-oru-no-pid.hl7"))).code == "AE"
        assert [e.placer_order for e in queued_exams(broker)] == ["YQ-LAB-20240301-0007"]
        assert [d.body for d in take_all(broker, PARKED)] == [sample("bad-oru-no-pid.hl7")]
    finally:
        on_loop(broker, listener.close())


def test_an_internal_failure_is_ar_and_the_connection_goes_on(
    hub_broker: Broker, blobs: BlobStore, listen: Callable[..., MllpListener], caplog: pytest.LogCaptureFixture
) -> None:
    class FailingOnce(Intake):
        failed = False

        async def accept(self, exams: Any, raw: bytes | None = None, *, user_id: str | None = None) -> list[Exam]:
            if not self.failed:
                self.failed = True
                raise RuntimeError(f"boom with {exams[0].patient.name}")
            return await super().accept(exams, raw, user_id=user_id)

    sender = Sender(listen(FailingOnce(hub_broker, blobs)).port)
    first = Ack(sender.send(sample("lab-liver-utf8.hl7")))
    assert (first.code, first.control_id) == ("AR", "QSHLIS20240301-0042")
    assert Ack(sender.send(sample("lab-liver-utf8.hl7"))).code == "AA"
    assert len(queued_exams(hub_broker)) == 1
    assert "RuntimeError" in caplog.text
    assert "王秀英" not in caplog.text


@pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)  # the in-process broker has no connection to lose
def test_rabbitmq_connection_lost_gives_ar_then_the_retry_is_accepted(
    broker_url: str, hub_broker: Broker, listen: Callable[..., MllpListener]
) -> None:
    vhost, user = unquote(urlsplit(broker_url).path.lstrip("/")), urlsplit(broker_url).username or "guest"
    sender = Sender(listen().port)
    assert Ack(sender.send(sample("lab-oml-o21.hl7"))).code == "AA"
    # The network drops, and the hub cannot get back in until it is fixed.
    rabbitmqctl("clear_permissions", "-p", vhost, user)
    try:
        rabbitmqctl("close_all_connections", "-p", vhost, "test: the network dropped")
        reply = Ack(sender.send(sample("lab-liver-utf8.hl7")))
        assert (reply.code, reply.control_id) == ("AR", "QSHLIS20240301-0042")
    finally:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    deadline = time.monotonic() + 30
    while (code := Ack(sender.send(sample("lab-liver-utf8.hl7"))).code) == "AR":
        assert time.monotonic() < deadline, "the hub never took the message again"
        time.sleep(0.2)  # a sender's pause between retries
    assert code == "AA"
    placers = sorted(e.placer_order for e in queued_exams(hub_broker))
    assert placers == ["GH-LAB-20240304-0003", "QSH-LAB-20240301-0042"]


# -- closing, TLS, binding


def test_close_answers_the_message_in_hand_then_refuses_connections(
    hub_broker: Broker, blobs: BlobStore, listen: Callable[..., MllpListener]
) -> None:
    class Held(Intake):
        """Holds each accept until the test lets it go."""

        entered: queue.Queue[asyncio.Event] = queue.Queue()

        async def accept(self, exams: Any, raw: bytes | None = None, *, user_id: str | None = None) -> list[Exam]:
            gate = asyncio.Event()
            self.entered.put(gate)
            await gate.wait()
            return await super().accept(exams, raw, user_id=user_id)

    intake = Held(hub_broker, blobs)
    listener = on_loop(hub_broker, start_mllp(intake, CONFIG, MllpGateway(port=0)))
    sender = Sender(listener.port)
    sender.write(VT + sample("lab-liver-utf8.hl7") + FS_CR)
    gate = intake.entered.get(timeout=WAIT)
    closing = asyncio.run_coroutine_threadsafe(listener.close(), hub_broker.loop)
    on_loop(hub_broker, asyncio.sleep(0))  # the loop runs callbacks in order: close() has begun
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=WAIT)
    assert not closing.done()
    hub_broker.loop.call_soon_threadsafe(gate.set)
    assert Ack(sender.reply()).code == "AA"
    assert sender.closed_by_peer()
    closing.result(WAIT)
    assert [e.placer_order for e in queued_exams(hub_broker)] == ["QSH-LAB-20240301-0042"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl CLI to make a self-signed certificate (and the cryptography package is not installed)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "hub.crt", folder / "hub.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls(listen: Callable[..., MllpListener], hub_broker: Broker, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    listener = listen(tls_cert=cert, tls_key=key)
    plain = Sender(listener.port)  # a sender that does not speak TLS gets nothing back
    plain.write(VT + sample("lab-oml-o21.hl7") + FS_CR)
    with pytest.raises((ConnectionError, TimeoutError)):
        plain.reply()
    plain.close()
    sender = Sender(listener.port, ssl.create_default_context(cafile=str(cert)))
    assert Ack(sender.send(sample("lab-liver-utf8.hl7"))).code == "AA"
    assert Ack(sender.send(sample("lab-cbc-gb18030.hl7")), "gb18030").code == "AA"
    sender.close()
    assert sorted(e.placer_order for e in queued_exams(hub_broker)) == ["QSH-LAB-20240301-0042", "YQ-LAB-20240301-0007"]


def test_binds_127_0_0_1_by_default(listen: Callable[..., MllpListener]) -> None:
    assert MllpGateway().host == "127.0.0.1"
    listener = listen()
    assert listener.address == ("127.0.0.1", listener.port)
    assert listener.port != 0

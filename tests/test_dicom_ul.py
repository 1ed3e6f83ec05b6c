"""The DICOM Upper Layer (hub/gateways/dicom_ul.py) byte by byte, from a raw socket: what DCMTK and pynetdicom
never send. Requests are built with pynetdicom's PDU classes and pydicom; answers are read the same way."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import VerificationPresentationContexts
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, AsynchronousOperationsWindowNegotiation
from pynetdicom.presentation import build_context

from hub.gateways import dicom_ul
from hub.gateways.dicom_ul import APPLICATION_CONTEXT, PDU_LIMIT, Association, Rejection, Status, StoreRequest
from hub.loop import LoopThread

CT_CONTEXT = 1
ECHO_CONTEXT = 3
CT_NAME = "王小明".encode("gb18030")  # a GB18030 name in the data set, which the layer carries as it is


class Services:
    """Accepts YQ_CT01 only; each store returns ``status`` once ``release`` is set."""

    def __init__(self) -> None:
        self.stored: list[StoreRequest] = []
        self.status = Status(0x0000)
        self.release = asyncio.Event()
        self.release.set()

    def associate(self, association: Association) -> Rejection | None:
        return None if association.calling_ae == "YQ_CT01" else dicom_ul.CALLING_AE_NOT_RECOGNISED

    async def store(self, request: StoreRequest) -> Status:
        await self.release.wait()
        self.stored.append(request)
        return self.status


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread("test-dicom-ul")
    yield thread
    thread.stop()


@pytest.fixture
def services() -> Services:
    return Services()


@contextlib.contextmanager
def serving(loop: LoopThread, services: Services, **settings: Any) -> Iterator[dicom_ul.DicomServer]:
    contexts = [*VerificationPresentationContexts, build_context(CTImageStorage, [ExplicitVRLittleEndian])]
    settings = {"max_associations": 4, "idle_timeout": 0.5, **settings}
    server = loop.run(dicom_ul.serve_dicom(services, "127.0.0.1", 0, contexts=contexts, **settings)).result(10)
    yield server
    loop.run(server.close()).result(10)


@pytest.fixture
def server(loop: LoopThread, services: Services) -> Iterator[dicom_ul.DicomServer]:
    with serving(loop, services) as server:
        yield server


# -- a raw peer


def associate_rq(*, calling: str = "YQ_CT01", max_pdu: int = 16384, context: str = APPLICATION_CONTEXT,
                 async_ops: bool = False) -> bytes:  # fmt: skip
    primitive = A_ASSOCIATE()
    primitive.application_context_name = context
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "HUB"
    contexts = []
    for context_id, sop_class in ((CT_CONTEXT, CTImageStorage), (ECHO_CONTEXT, "1.2.840.10008.1.1")):
        cx = build_context(sop_class, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
        cx.context_id = context_id
        contexts.append(cx)
    primitive.presentation_context_definition_list = contexts
    primitive.maximum_length_received = max_pdu
    primitive.implementation_class_uid = "1.2.826.0.1.3680043.9.9999"
    if async_ops:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 8
        primitive.user_information.append(window)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def raw_associate_rq(*, abstract_syntax: bool = True, transfer_syntax: bool = True, version: int = 1) -> bytes:
    """An A-ASSOCIATE-RQ byte by byte (PS3.8 9.3.2), one CT context that may lack its sub-items."""

    def item(item_type: int, body: bytes) -> bytes:
        return struct.pack(">BxH", item_type, len(body)) + body

    context = bytes((CT_CONTEXT, 0, 0, 0))
    context += item(0x30, CTImageStorage.encode()) if abstract_syntax else b""
    context += item(0x40, ImplicitVRLittleEndian.encode()) if transfer_syntax else b""
    user = item(0x50, item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.9999"))
    body = struct.pack(">HH", version, 0) + b"HUB".ljust(16) + b"YQ_CT01".ljust(16) + bytes(32)
    body += item(0x10, APPLICATION_CONTEXT.encode()) + item(0x20, context) + user
    return struct.pack(">BxL", 1, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = recv_exactly(sock, 6)
    pdu_type, length = struct.unpack(">BxL", header)
    return pdu_type, header + recv_exactly(sock, length)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def p_data(*fragments: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF PDU of (context id, control header, value) items."""
    items = b"".join(struct.pack(">LBB", len(value) + 2, cx, control) + value for cx, control, value in fragments)
    return struct.pack(">BxL", 4, len(items)) + items


def command(**elements: Any) -> bytes:
    dataset = Dataset()
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    encoded = encode(dataset, True, True)
    assert encoded is not None
    with_length = Dataset()
    with_length.CommandGroupLength = len(encoded)
    return bytes(encode(with_length, True, True) or b"") + encoded


def echo_rq() -> bytes:
    return command(AffectedSOPClassUID="1.2.840.10008.1.1", CommandField=0x0030, MessageID=1,
                   CommandDataSetType=0x0101)  # fmt: skip


def store_rq(instance: str, message_id: int = 7) -> bytes:
    return command(AffectedSOPClassUID=CTImageStorage, CommandField=0x0001, MessageID=message_id, Priority=0,
                   CommandDataSetType=0x0000, AffectedSOPInstanceUID=instance)  # fmt: skip


def data_set(instance: str) -> bytes:
    dataset = Dataset()
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = instance
    dataset.SpecificCharacterSet = "GB18030"
    dataset.PatientName = "王小明"
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, dataset)
    return bytes(out.getvalue())


def response(sock: socket.socket) -> Dataset:
    """The next DIMSE response's command set, joined from its fragments."""
    joined = b""
    while True:
        pdu_type, pdu = read_pdu(sock)
        assert pdu_type == 4, pdu
        at = 6
        while at < len(pdu):
            length, _cx, control = struct.unpack_from(">LBB", pdu, at)
            assert control & 0x01  # command fragments only: no response here has a data set
            joined += pdu[at + 6 : at + 4 + length]
            at += 4 + length
            if control & 0x02:
                return decode(DicomBytesIO(joined), True, True)


@pytest.fixture
def peer(server: dicom_ul.DicomServer) -> Iterator[Any]:
    """Connects (``peer()``, or ``peer(associate=True)`` to be past the A-ASSOCIATE-AC)."""
    opened: list[socket.socket] = []

    def connect(associate: bool = False, **rq: Any) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        opened.append(sock)
        if associate:
            sock.sendall(associate_rq(**rq))
            assert read_pdu(sock)[0] == 2
        return sock

    yield connect
    for sock in opened:
        sock.close()


def assert_aborted(sock: socket.socket, reason: int) -> None:
    pdu_type, pdu = read_pdu(sock)
    assert (pdu_type, pdu[8], pdu[9]) == (7, 0x02, reason)  # A-ABORT from the service provider
    assert sock.recv(1) == b""  # and the connection closed


def assert_still_serving(peer: Any) -> None:
    sock = peer(associate=True)
    sock.sendall(p_data((ECHO_CONTEXT, 0x03, echo_rq())))
    assert response(sock).Status == 0x0000


# -- tests


def test_a_store_in_many_fragments_gets_the_services_status_with_its_uids(peer: Any, services: Services) -> None:
    services.status = Status(0xC000, "(0010,0010): 王 is not ASCII", 0x00100010)
    sock = peer(associate=True)
    instance = generate_uid()
    body = data_set(instance)
    cmd = store_rq(instance, message_id=42)
    sock.sendall(p_data((CT_CONTEXT, 0x01, cmd[:10])) + p_data((CT_CONTEXT, 0x03, cmd[10:])))
    sock.sendall(p_data((CT_CONTEXT, 0x00, body[:7]), (CT_CONTEXT, 0x00, body[7:30])))
    sock.sendall(p_data((CT_CONTEXT, 0x02, body[30:])))
    answer = response(sock)
    assert (answer.CommandField, answer.MessageIDBeingRespondedTo, answer.Status) == (0x8001, 42, 0xC000)
    assert (answer.AffectedSOPClassUID, answer.AffectedSOPInstanceUID) == (CTImageStorage, instance)
    assert answer.ErrorComment == "(0010,0010): ? is not ASCII"  # LO is ASCII here, never the patient's text
    assert answer.OffendingElement == 0x00100010
    (stored,) = services.stored
    assert stored.data_set == body and CT_NAME in stored.data_set
    assert (stored.sop_class, stored.sop_instance, stored.transfer_syntax) == (CTImageStorage, instance,
                                                                               ExplicitVRLittleEndian)  # fmt: skip
    assert stored.association.calling_ae == "YQ_CT01" and stored.association.called_ae == "HUB"


def test_release_is_answered_after_the_instance_in_flight(loop: LoopThread, peer: Any, services: Services) -> None:
    loop.call(services.release.clear)
    sock = peer(associate=True)
    instance = generate_uid()
    sock.sendall(p_data((CT_CONTEXT, 0x03, store_rq(instance)), (CT_CONTEXT, 0x02, data_set(instance))))
    sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ at once
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(1)  # nothing while the instance is in the hub's hands
    sock.settimeout(10)
    loop.call(services.release.set)
    assert response(sock).AffectedSOPInstanceUID == instance
    assert read_pdu(sock)[0] == 6  # A-RELEASE-RP


def test_another_dimse_command_is_answered_unrecognised(peer: Any, services: Services) -> None:
    sock = peer(associate=True)
    find = command(AffectedSOPClassUID=CTImageStorage, CommandField=0x0020, MessageID=5, Priority=0,
                   CommandDataSetType=0x0000)  # fmt: skip
    sock.sendall(p_data((CT_CONTEXT, 0x03, find), (CT_CONTEXT, 0x02, data_set(generate_uid()))))
    answer = response(sock)
    assert (answer.CommandField, answer.MessageIDBeingRespondedTo, answer.Status) == (0x8020, 5, 0x0211)
    assert services.stored == []


def test_a_store_without_a_data_set_is_0xc000_and_a_response_gets_no_answer(peer: Any, services: Services) -> None:
    sock = peer(associate=True)
    instance = generate_uid()
    no_data = command(AffectedSOPClassUID=CTImageStorage, CommandField=0x0001, MessageID=9, Priority=0,
                      CommandDataSetType=0x0101, AffectedSOPInstanceUID=instance)  # fmt: skip
    unasked = command(AffectedSOPClassUID="1.2.840.10008.1.1", CommandField=0x8030, MessageIDBeingRespondedTo=1,
                      CommandDataSetType=0x0101, Status=0x0000)  # fmt: skip
    sock.sendall(p_data((CT_CONTEXT, 0x03, no_data), (ECHO_CONTEXT, 0x03, unasked), (ECHO_CONTEXT, 0x03, echo_rq())))
    answer = response(sock)
    assert (answer.CommandField, answer.MessageIDBeingRespondedTo, answer.Status) == (0x8001, 9, 0xC000)
    assert answer.AffectedSOPInstanceUID == instance
    echo = response(sock)  # the C-ECHO-RSP sent to the hub got no answer, so the echo's comes next
    assert (echo.CommandField, echo.Status) == (0x8030, 0x0000)
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    assert services.stored == []


@pytest.mark.parametrize(
    ("before", "sent", "reason"),
    [
        (False, p_data((CT_CONTEXT, 0x03, b"")), 0x02),  # P-DATA before any association
        (False, b"\x01\x00\x00\x00\x00\x04garbage!"[:10], 0x06),  # an A-ASSOCIATE-RQ pynetdicom cannot read
        (True, b"\x09\x00\x00\x00\x00\x00", 0x01),  # no such PDU type
        (True, b"\x04\x00" + struct.pack(">L", PDU_LIMIT + 1), 0x06),  # longer than any PDU the hub takes
        (True, associate_rq(), 0x02),  # a second A-ASSOCIATE-RQ
        (True, p_data((5, 0x03, echo_rq())), 0x06),  # a context that was never proposed
        (True, p_data((CT_CONTEXT, 0x03, b"\x08\x00\x16\x00\x02\x00\x00\x00AB")), 0x06),  # not group 0000
        (True, p_data((CT_CONTEXT, 0x02, b"data")), 0x06),  # a data set with no command before it
        (True, b"\x04\x00\x00\x00\x00\x05\x00\x00\x00\x09\x01", 0x06),  # an item longer than its PDU
    ],
)
def test_what_cannot_be_answered_in_dimse_is_aborted_and_the_listener_goes_on(
    peer: Any, before: bool, sent: bytes, reason: int
) -> None:
    sock = peer(associate=before)
    sock.sendall(sent)
    assert_aborted(sock, reason)
    assert_still_serving(peer)


@pytest.mark.parametrize("missing", ["abstract_syntax", "transfer_syntax"])
def test_an_associate_rq_that_cannot_be_negotiated_is_aborted(peer: Any, missing: str) -> None:
    sock = peer()
    sock.sendall(raw_associate_rq(**{missing: False}))  # pynetdicom reads it, but cannot negotiate it
    assert_aborted(sock, 0x06)
    assert_still_serving(peer)


def test_a_foreign_application_context_an_unknown_caller_and_another_protocol_version_are_rejected(
    peer: Any,
) -> None:
    for rq, source, diagnostic in (
        (associate_rq(context="1.2.3.4"), 1, 0x02),
        (associate_rq(calling="NOBODY"), 1, 0x03),
        (raw_associate_rq(version=2), 2, 0x02),  # bit 0 clear: not protocol version 1
    ):
        sock = peer()
        sock.sendall(rq)
        pdu_type, pdu = read_pdu(sock)
        rejection = A_ASSOCIATE_RJ()
        rejection.decode(pdu)
        assert (pdu_type, rejection.result, rejection.source, rejection.reason_diagnostic) == (3, 1, source, diagnostic)
    assert_still_serving(peer)


def test_an_idle_association_is_aborted(peer: Any) -> None:
    sock = peer(associate=True)  # the fixture's server aborts after 0.5 s without a PDU
    pdu_type, _pdu = read_pdu(sock)
    assert pdu_type == 7 and sock.recv(1) == b""


def test_an_association_in_use_outlives_the_idle_timeout(peer: Any) -> None:
    sock = peer(associate=True)  # the fixture's server aborts after 0.5 s without a PDU
    for _ in range(6):  # 1.2 s in all, never 0.5 s quiet
        time.sleep(0.2)
        sock.sendall(p_data((ECHO_CONTEXT, 0x03, echo_rq())))
        assert response(sock).Status == 0x0000


def test_a_connection_cut_mid_instance_stores_nothing(peer: Any, services: Services) -> None:
    sock = peer(associate=True)
    instance = generate_uid()
    sock.sendall(p_data((CT_CONTEXT, 0x03, store_rq(instance)), (CT_CONTEXT, 0x00, data_set(instance)[:20])))
    sock.close()
    assert_still_serving(peer)
    assert services.stored == []


def test_answers_fit_the_peers_maximum_pdu_and_async_operations_are_one_at_a_time(
    peer: Any, services: Services
) -> None:
    services.status = Status(0xA700, "the hub's broker did not confirm; send again later")
    sock = peer()
    sock.sendall(associate_rq(max_pdu=32, async_ops=True))
    pdu_type, pdu = read_pdu(sock)
    assert pdu_type == 2
    accepted = A_ASSOCIATE_AC()
    accepted.decode(pdu)
    (window,) = [i for i in accepted.to_primitive().user_information
                 if isinstance(i, AsynchronousOperationsWindowNegotiation)]  # fmt: skip
    assert (window.maximum_number_operations_invoked, window.maximum_number_operations_performed) == (1, 1)
    assert accepted.to_primitive().maximum_length_received == dicom_ul.MAX_PDU
    instance = generate_uid()
    sock.sendall(p_data((CT_CONTEXT, 0x03, store_rq(instance)), (CT_CONTEXT, 0x02, data_set(instance))))
    sizes = []
    joined = b""
    while True:
        _pdu_type, pdu = read_pdu(sock)
        sizes.append(len(pdu) - 6)
        joined += pdu[12:]
        if pdu[11] & 0x02:
            break
    assert max(sizes) <= 32 and len(sizes) > 3
    assert decode(DicomBytesIO(joined), True, True).ErrorComment == "the hub's broker did not confirm; send again later"


def test_each_read_rearms_tcp_quickack() -> None:
    if dicom_ul._TCP_QUICKACK is None:
        pytest.skip("TCP_QUICKACK is Linux's")
    calls: list[tuple[int, int, int]] = []

    class Sock:
        def setsockopt(self, *args: int) -> None:
            calls.append(args)

    class Transport(asyncio.Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return Sock() if name == "socket" else ("127.0.0.1", 1)

        def write(self, data: Any) -> None:
            pass

    acceptor = dicom_ul._Acceptor(dicom_ul.DicomServer(Services(), [], 1, dicom_ul.MAX_INSTANCE), 1.0, 1.0)
    acceptor._transport = Transport()
    for chunk in (b"\x07\x00", b"\x00\x00"):  # parts of a PDU: each read re-arms it
        acceptor.data_received(chunk)
    assert calls == [(socket.IPPROTO_TCP, dicom_ul._TCP_QUICKACK, 1)] * 2


def test_the_listener_closes_with_associations_in_progress(loop: LoopThread, services: Services) -> None:
    contexts = [build_context(CTImageStorage, [ExplicitVRLittleEndian])]
    server = loop.run(dicom_ul.serve_dicom(services, "127.0.0.1", 0, contexts=contexts, max_associations=1)).result(10)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(associate_rq())
    assert read_pdu(sock)[0] == 2
    done = threading.Event()
    loop.run(server.close()).add_done_callback(lambda _f: done.set())
    assert done.wait(10)
    assert read_pdu(sock)[0] == 7  # aborted, so its sender knows to send again
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


def test_an_instance_over_the_limit_is_refused_unheld_and_the_association_goes_on(
    loop: LoopThread, services: Services
) -> None:
    with serving(loop, services, max_instance=1000) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == 2
        large, small = generate_uid(), generate_uid()
        sock.sendall(p_data((CT_CONTEXT, 0x03, store_rq(large, message_id=1))))
        for _ in range(3):  # 3,000 bytes of data set in three fragments
            sock.sendall(p_data((CT_CONTEXT, 0x00, bytes(1000))))
        sock.sendall(p_data((CT_CONTEXT, 0x02, data_set(large))))
        refused = response(sock)
        assert (refused.Status, refused.AffectedSOPInstanceUID, refused.MessageIDBeingRespondedTo) == (0xA700, large, 1)
        assert "over the hub's limit of 1000" in refused.ErrorComment
        sock.sendall(p_data((CT_CONTEXT, 0x03, store_rq(small, message_id=2)), (CT_CONTEXT, 0x02, data_set(small))))
        assert response(sock).Status == 0x0000
        assert [request.sop_instance for request in services.stored] == [small]
        sock.close()


def test_a_half_closed_peer_gets_its_answers_and_the_release(loop: LoopThread, peer: Any, services: Services) -> None:
    loop.call(services.release.clear)
    sock = peer(associate=True)
    instance = generate_uid()
    sock.sendall(p_data((CT_CONTEXT, 0x03, store_rq(instance)), (CT_CONTEXT, 0x02, data_set(instance))))
    sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
    sock.shutdown(socket.SHUT_WR)  # sent all it has to send; still reading
    time.sleep(0.2)  # the EOF arrives while the instance is in the hub's hands
    loop.call(services.release.set)
    assert response(sock).AffectedSOPInstanceUID == instance
    assert read_pdu(sock)[0] == 6  # A-RELEASE-RP
    assert sock.recv(1) == b""


def test_the_idle_timeout_counts_from_the_last_answer_too(loop: LoopThread, peer: Any, services: Services) -> None:
    loop.call(services.release.clear)
    sock = peer(associate=True)  # the fixture's server aborts after 0.5 s idle
    instance = generate_uid()
    sock.sendall(p_data((CT_CONTEXT, 0x03, store_rq(instance)), (CT_CONTEXT, 0x02, data_set(instance))))
    time.sleep(0.8)  # a slow store: the last PDU came 0.8 s ago
    loop.call(services.release.set)
    assert response(sock).Status == 0x0000
    time.sleep(0.3)  # past 1 s from the last PDU, 0.3 s from the answer
    sock.sendall(p_data((ECHO_CONTEXT, 0x03, echo_rq())))
    assert response(sock).Status == 0x0000


def test_a_peer_that_stops_reading_is_not_read_and_is_dropped(loop: LoopThread, services: Services) -> None:
    with serving(loop, services, artim_timeout=0.5) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the peer's window fills soon
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == 2
        sock.setblocking(False)
        echo = p_data((ECHO_CONTEXT, 0x03, echo_rq()))
        sent, stuck_since = 0, None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # C-ECHO after C-ECHO, never reading an answer
            try:
                sock.send(echo)
                sent, stuck_since = sent + 1, None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 0.3:
                    break  # the hub stopped reading: TCP holds the rest at the peer
                time.sleep(0.01)
        assert stuck_since is not None, f"the hub read {sent} requests and kept answering a peer that never reads"
        deadline = time.monotonic() + 10  # idle 0.5 s, then the abort, then 0.5 s for the peer to close
        while server.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.connections, "the connection was kept although the peer neither read nor closed"
        sock.close()

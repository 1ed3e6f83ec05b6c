"""The DICOM Upper Layer of the hub's SCP, as an asyncio protocol (PS3.8 section 9 and Annex E; PS3.7).

    server = await serve_dicom(services, host, port)   # on the loop that ``services`` awaits on
    server.associations                                 # the associations in progress
    await server.close()                                # abort them (their senders retry) and stop

Why not pynetdicom's association: it runs two threads per association that poll each other with 1 ms
sleeps, and bench/dicom_ingest.py measured 3.4 ms per C-STORE for it alone, answering at once (about
295 instances/s against Orthanc's 180 for the whole of its work). That leaves less time for the hub's
own work (blob fsync, adapter, broker confirm) than that work takes, whatever the hub does. Here a
connection is an ``asyncio.Protocol`` on the broker's loop: no thread, no poll, and the confirm is
awaited where the PDUs are read.

pynetdicom still does the parts where the standard's detail lives: it decodes the A-ASSOCIATE-RQ,
negotiates presentation contexts and SCP/SCU roles (``negotiate_as_acceptor``) and encodes the
A-ASSOCIATE-AC and -RJ. This module frames PDUs, joins P-DATA fragments into DIMSE messages, and
reads and writes the command elements of C-STORE and C-ECHO (implicit VR little endian, group 0000).

What a peer gets:
- an A-ASSOCIATE-RJ for whatever ``Services.associate`` refuses, for a protocol version without bit 0,
  a foreign application context, and too many associations at once (rejected-transient, local limit
  exceeded);
- a C-STORE-RSP or C-ECHO-RSP per request, in order (0xC000 for a C-STORE-RQ without a data set);
  any other DIMSE request is answered with its response command and status 0x0211 (unrecognised
  operation); C-CANCEL, and a DIMSE response (the hub asks nothing), get nothing;
- status 0xA700 (out of resources) for an instance larger than ``max_instance`` bytes, which is
  not held: the association goes on;
- A-RELEASE-RP after the answers to everything received before the A-RELEASE-RQ;
- A-ABORT for what cannot be answered within DIMSE: a PDU of unknown type or longer than
  ``PDU_LIMIT``, a PDU out of place, a fragment on a context that was not accepted, a command set or an
  A-ASSOCIATE-RQ that cannot be used; also for an association idle (nothing received, nothing
  answered) for ``idle_timeout`` seconds.
A peer that half-closes its end still gets the answers to what it sent. A peer that stops reading
is not read from either, so the hub never buffers more than asyncio's high-water mark for it; once
the hub has aborted, rejected or released, the connection is dropped after ``ARTIM_TIMEOUT`` if the
peer does not close it (PS3.8 state Sta13). No input makes the server stop; a connection that breaks
mid-instance leaves nothing behind but what the handler already kept.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationVersionNameNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

__all__ = [
    "ARTIM_TIMEOUT",
    "MAX_INSTANCE",
    "PDU_LIMIT",
    "Association",
    "DicomServer",
    "Rejection",
    "Services",
    "Status",
    "StoreRequest",
    "serve_dicom",
]

log = logging.getLogger("hub.gateways.dicom")

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
MAX_PDU = 65536  # what the hub receives per P-DATA-TF, told to the peer in the A-ASSOCIATE-AC
PDU_LIMIT = 4 * 1024 * 1024  # a longer PDU of any type is refused with A-ABORT
ACSE_TIMEOUT = 30.0  # seconds from connect to the A-ASSOCIATE-RQ (pynetdicom's acse_timeout)
IDLE_TIMEOUT = 60.0  # seconds without a PDU before an association is aborted (pynetdicom's network_timeout)
ARTIM_TIMEOUT = 30.0  # seconds a peer has to close its end after the hub's A-ABORT, -RJ or A-RELEASE-RP
MAX_INSTANCE = 2 * 1024**3  # bytes of one data set; a larger one is refused (0xA700), not held
_AHEAD = 4  # requests a peer may send ahead of their answers before the hub stops reading
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

_ASSOCIATE_RQ, _ASSOCIATE_AC, _ASSOCIATE_RJ, _P_DATA, _RELEASE_RQ, _RELEASE_RP, _ABORT = range(1, 8)
_RELEASE_RP_PDU = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_C_STORE_RQ, _C_ECHO_RQ, _C_CANCEL_RQ = 0x0001, 0x0030, 0x0FFF
_NO_DATA_SET = 0x0101
_UNRECOGNISED_OPERATION = 0x0211
_HANDLER_FAILED = 0xC211  # pynetdicom's status for a C-STORE handler that raised
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000
# A-ABORT provider reasons (PS3.8 9.3.8)
_UNRECOGNISED_PDU, _UNEXPECTED_PDU, _INVALID_PARAMETER = 0x01, 0x02, 0x06
_HEADER = struct.Struct(">BxL")
_ITEM = struct.Struct(">LBB")
_ELEMENT = struct.Struct("<HHL")


class Rejection(tuple[int, int, int]):
    """An A-ASSOCIATE-RJ's result, source and reason/diagnostic (PS3.8 9.3.4)."""

    __slots__ = ()

    def __new__(cls, result: int, source: int, reason: int) -> Rejection:
        return super().__new__(cls, (result, source, reason))


CALLING_AE_NOT_RECOGNISED = Rejection(0x01, 0x01, 0x03)  # rejected-permanent, service user
CALLED_AE_NOT_RECOGNISED = Rejection(0x01, 0x01, 0x07)
LOCAL_LIMIT_EXCEEDED = Rejection(0x02, 0x03, 0x02)  # rejected-transient, service provider (presentation)
NO_SUCH_APPLICATION_CONTEXT = Rejection(0x01, 0x01, 0x02)
PROTOCOL_VERSION_NOT_SUPPORTED = Rejection(0x01, 0x02, 0x02)  # rejected-permanent, service provider (ACSE)


@dataclass(frozen=True, slots=True)
class Association:
    """Who is on the other end, as the A-ASSOCIATE-RQ said."""

    calling_ae: str
    called_ae: str
    peer: str  # host:port


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """A C-STORE-RQ with its data set as received (the command's UIDs are '' when it had none)."""

    association: Association
    sop_class: str  # Affected SOP Class UID (0000,0002)
    sop_instance: str  # Affected SOP Instance UID (0000,1000)
    transfer_syntax: str  # the presentation context's
    data_set: bytearray


@dataclass(frozen=True, slots=True)
class Status:
    """A C-STORE-RSP's status, Error Comment (ASCII, at most 64) and Offending Element."""

    code: int
    comment: str | None = None
    offending: int | None = None


class Services(Protocol):
    """What the SCP does with an association and its instances; both run on the server's loop."""

    def associate(self, association: Association) -> Rejection | None: ...

    def store(self, request: StoreRequest) -> Awaitable[Status]: ...


@dataclass(slots=True)
class _Message:
    """A DIMSE message being received: its context, command and data set fragments."""

    context_id: int
    command: bytearray = field(default_factory=bytearray)
    data_set: bytearray | None = None
    fields: dict[int, bytes] = field(default_factory=dict)
    size: int = 0  # bytes of data set received, kept or not
    too_large: bool = False  # over the server's max_instance: its fragments are counted, not kept


class DicomServer:
    """A listening SCP: ``port`` is where, ``associations`` what is in progress, ``close`` stops it."""

    def __init__(
        self, services: Services, contexts: Sequence[PresentationContext], max_associations: int, max_instance: int
    ) -> None:
        self.services = services
        self.contexts = list(contexts)
        self.max_associations = max_associations
        self.max_instance = max_instance
        self.associations: set[_Acceptor] = set()  # established ones
        self.connections: set[_Acceptor] = set()
        self._server: asyncio.Server | None = None
        self.host = ""
        self.port = 0

    async def close(self) -> None:
        """Stop listening and abort every association in progress."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.abort(0x00)
        if self._server is not None:
            await self._server.wait_closed()


async def serve_dicom(
    services: Services,
    host: str,
    port: int,
    *,
    contexts: Sequence[PresentationContext],
    max_associations: int,
    max_instance: int = MAX_INSTANCE,
    idle_timeout: float = IDLE_TIMEOUT,
    artim_timeout: float = ARTIM_TIMEOUT,
) -> DicomServer:
    """Listen on ``host``:``port`` (0 picks a free port) on the running loop."""
    server = DicomServer(services, contexts, max_associations, max_instance)
    loop = asyncio.get_running_loop()
    server._server = await loop.create_server(lambda: _Acceptor(server, idle_timeout, artim_timeout), host, port)
    server.host, server.port = server._server.sockets[0].getsockname()[:2]
    return server


class _Acceptor(asyncio.Protocol):
    """One connection: association negotiation, then DIMSE messages answered one after another."""

    def __init__(self, server: DicomServer, idle_timeout: float, artim_timeout: float) -> None:
        self._server = server
        self._idle_timeout = idle_timeout
        self._artim_timeout = artim_timeout
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._association: Association | None = None
        self._accepted: dict[int, str] = {}  # context id -> transfer syntax
        self._peer_max = 0  # the peer's maximum PDU length; 0 is none
        self._message: _Message | None = None
        self._queue: deque[tuple[int, _Message] | None] = deque()  # None: the A-RELEASE-RQ
        self._serving: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0  # loop time of the last whole PDU received or answer sent (or the connect)
        self._closed = False
        self._eof = False  # the peer has half-closed: answer what it sent, then close
        self._write_paused = False  # the peer does not read: neither does the hub
        self.peer = "?"

    # -- the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._server.connections.add(self)
        self._last_activity = self._loop_time()
        self._arm_timer(ACSE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        self._server.associations.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def eof_received(self) -> bool:
        self._eof = True
        return self._serving is not None  # True: the transport stays open for the answers still to come

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Read only while the peer reads its answers and is not far ahead of them."""
        if self._transport is None or self._closed:
            return
        if self._write_paused or len(self._queue) > _AHEAD:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except Exception as exc:  # a last guard: what escapes here would end the connection without a word
            log.error("aborted association from %s: %s while reading its PDUs", self.peer, type(exc).__name__)
            log.debug("DICOM Upper Layer failure", exc_info=True)
            self.abort(_INVALID_PARAMETER)

    def _receive(self, data: bytes) -> None:
        if _TCP_QUICKACK is not None:
            # Linux leaves quick-ACK mode after each ACK: re-armed, a sender that keeps Nagle's algorithm on
            # (most modalities) gets its last segment ACKed at once, not after the 40 ms delayed ACK.
            sock = cast(asyncio.Transport, self._transport).get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        if self._buffer:
            self._buffer += data
            view = memoryview(self._buffer)
        else:
            view = memoryview(data)
        used = self._read_pdus(view)
        view.release()
        if self._buffer:
            del self._buffer[:used]
        elif used < len(data) and not self._closed:
            self._buffer += data[used:]

    def _read_pdus(self, view: memoryview) -> int:
        """Handle each whole PDU in ``view``; returns how many bytes they took."""
        used = 0
        while len(view) - used >= 6 and not self._closed:
            pdu_type, length = _HEADER.unpack_from(view, used)
            if length > PDU_LIMIT:
                log.warning("aborted association from %s: PDU of %d bytes", self.peer, length)
                self.abort(_INVALID_PARAMETER)
                return used
            end = used + 6 + length
            if end > len(view):
                break
            self._last_activity = self._loop_time()
            self._on_pdu(pdu_type, view[used:end])
            used = end
        return used

    def _on_pdu(self, pdu_type: int, pdu: memoryview) -> None:
        if self._association is None:
            if pdu_type == _ASSOCIATE_RQ:
                self._on_associate(bytes(pdu))
            elif pdu_type == _ABORT:
                self._close()
            else:
                self._protocol_error(_UNEXPECTED_PDU, f"PDU type {pdu_type} before association")
        elif pdu_type == _P_DATA:
            self._on_data(pdu)
        elif pdu_type == _RELEASE_RQ:
            self._enqueue(None)
        elif pdu_type == _ABORT:
            self._close()
        elif pdu_type in (_ASSOCIATE_RQ, _ASSOCIATE_AC, _ASSOCIATE_RJ, _RELEASE_RP):
            self._protocol_error(_UNEXPECTED_PDU, f"PDU type {pdu_type} in an association")
        else:
            self._protocol_error(_UNRECOGNISED_PDU, f"unknown PDU type {pdu_type}")

    # -- association

    def _on_associate(self, pdu: bytes) -> None:
        request = A_ASSOCIATE_RQ()
        try:
            request.decode(pdu)
            primitive = request.to_primitive()
        except Exception as exc:  # pynetdicom's decoder raises what the bytes make it raise
            self._protocol_error(_INVALID_PARAMETER, f"unreadable A-ASSOCIATE-RQ ({type(exc).__name__})")
            return
        association = Association(
            str(primitive.calling_ae_title).strip(), str(primitive.called_ae_title).strip(), self.peer
        )
        server = self._server
        if not request.protocol_version & 0x0001:  # PS3.8 9.3.2: bit 0 is version 1, the only one
            rejection: Rejection | None = PROTOCOL_VERSION_NOT_SUPPORTED
        elif str(primitive.application_context_name) != APPLICATION_CONTEXT:
            rejection = NO_SUCH_APPLICATION_CONTEXT
        else:
            rejection = server.services.associate(association)
        if rejection is None and len(server.associations) >= server.max_associations:
            log.warning("refused association from %s: %d associations in progress", self.peer,
                        len(server.associations))  # fmt: skip
            rejection = LOCAL_LIMIT_EXCEEDED
        if rejection is not None:
            self._reject(rejection)
            return
        try:
            acceptance = self._accept(primitive)
        except Exception as exc:  # negotiate_as_acceptor raises on contexts without the sub-items it needs
            self._protocol_error(_INVALID_PARAMETER, f"an A-ASSOCIATE-RQ unfit to negotiate ({type(exc).__name__})")
            return
        self._association = association
        server.associations.add(self)
        if self._timer is not None:  # the ACSE timeout is over; the idle timeout begins
            self._timer.cancel()
        self._arm_timer(self._idle_timeout)
        self._write(acceptance)  # last: once the peer has it, the association is in place here

    def _reject(self, rejection: Rejection) -> None:
        primitive = A_ASSOCIATE()
        primitive.result, primitive.result_source, primitive.diagnostic = rejection
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(primitive)
        self._write(pdu.encode())
        self._close()

    def _accept(self, request: A_ASSOCIATE) -> bytes:
        """Negotiate the contexts and roles of ``request``; returns the A-ASSOCIATE-AC to send."""
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in request.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
        }
        results, role_replies = negotiate_as_acceptor(
            request.presentation_context_definition_list, self._server.contexts, roles
        )
        self._accepted = {cast(int, cx.context_id): str(cx.transfer_syntax[0]) for cx in results if cx.result == 0x00}
        self._peer_max = request.maximum_length_received or 0
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title = request.calling_ae_title
        primitive.called_ae_title = request.called_ae_title
        primitive.result = 0x00
        primitive.result_source = 0x01
        primitive.presentation_context_definition_results_list = results
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        primitive.user_information = [version, *role_replies]
        if any(isinstance(item, AsynchronousOperationsWindowNegotiation) for item in request.user_information):
            window = AsynchronousOperationsWindowNegotiation()  # one operation at a time each way
            window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 1
            primitive.user_information.append(window)
        primitive.maximum_length_received = MAX_PDU
        primitive.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(primitive)
        return bytes(pdu.encode())

    # -- DIMSE messages

    def _on_data(self, pdu: memoryview) -> None:
        """Join the PDU's fragments (PS3.8 E.1, E.2) into messages; queue each one that is whole."""
        at, end = 6, len(pdu)
        while at < end:
            if end - at < 6:
                self._protocol_error(_INVALID_PARAMETER, "a P-DATA-TF item cut short")
                return
            length, context_id, control = _ITEM.unpack_from(pdu, at)
            value_end = at + 4 + length
            if length < 2 or value_end > end:
                self._protocol_error(_INVALID_PARAMETER, f"a P-DATA-TF item of length {length}")
                return
            if context_id not in self._accepted:
                self._protocol_error(_INVALID_PARAMETER, f"a fragment on presentation context {context_id}")
                return
            message = self._message
            if message is None:
                message = self._message = _Message(context_id)
            elif message.context_id != context_id:
                self._protocol_error(_INVALID_PARAMETER, "a message's fragments on two presentation contexts")
                return
            value = pdu[at + 6 : value_end]
            if control & 0x01:  # command
                if message.data_set is not None:
                    self._protocol_error(_INVALID_PARAMETER, "a command fragment after the data set began")
                    return
                message.command += value
                if control & 0x02 and not self._on_command(message):
                    return
            elif message.data_set is None:
                self._protocol_error(_INVALID_PARAMETER, "a data set fragment before its command")
                return
            else:
                self._add_fragment(message, value)
                if control & 0x02:
                    self._message = None
                    self._enqueue((message.context_id, message))
            at = value_end

    def _add_fragment(self, message: _Message, value: memoryview) -> None:
        message.size += len(value)
        if message.too_large:
            return
        if message.size > self._server.max_instance:
            log.warning("refusing an instance from %s: over %d bytes", self.peer, self._server.max_instance)
            message.too_large = True
            message.data_set = bytearray()  # what came so far is let go; the rest is only counted
            return
        cast(bytearray, message.data_set).extend(value)

    def _on_command(self, message: _Message) -> bool:
        """A whole command set: queue the message, or wait for its data set. False after an abort."""
        fields = _read_command(message.command)
        if fields is None or 0x0100 not in fields:
            self._protocol_error(_INVALID_PARAMETER, "an unreadable command set")
            return False
        message.fields = fields
        if _us(fields.get(0x0800, b"\x01\x01")) == _NO_DATA_SET:
            self._message = None
            self._enqueue((message.context_id, message))
        else:
            message.data_set = bytearray()
        return True

    def _enqueue(self, item: tuple[int, _Message] | None) -> None:
        self._queue.append(item)
        if self._serving is None:
            self._serving = asyncio.get_running_loop().create_task(self._serve())
        self._update_reading()  # a peer far ahead of its answers waits in TCP

    async def _serve(self) -> None:
        try:
            while self._queue and not self._closed:
                item = self._queue.popleft()
                if item is None:
                    self._write(_RELEASE_RP_PDU)
                    self._close()
                    return
                await self._answer(*item)
                self._last_activity = self._loop_time()
                self._update_reading()
            if self._eof and not self._closed:  # all that the half-closed peer sent is answered
                self._close()
        finally:
            self._serving = None

    async def _answer(self, context_id: int, message: _Message) -> None:
        fields = message.fields
        command = _us(fields[0x0100])
        sop_instance = fields.get(0x1000, b"") if command == _C_STORE_RQ else None  # a C-STORE-RSP names it
        if command == _C_STORE_RQ and message.too_large:
            limit = self._server.max_instance
            status = Status(_OUT_OF_RESOURCES, f"{message.size} bytes: over the hub's limit of {limit}")
        elif command == _C_STORE_RQ and message.data_set is not None:
            status = await self._store(context_id, message)
        elif command == _C_STORE_RQ:
            status = Status(_CANNOT_UNDERSTAND, "a C-STORE-RQ without a data set")
        elif command == _C_ECHO_RQ:
            status = Status(0x0000)
        elif command == _C_CANCEL_RQ:
            return
        elif command & 0x8000:  # the hub sends no requests, so no response can be due
            log.warning("ignored DIMSE response 0x%04x from %s: the hub asked nothing", command, self.peer)
            return
        else:
            log.warning("answered DIMSE command 0x%04x from %s: unrecognised operation", command, self.peer)
            status = Status(_UNRECOGNISED_OPERATION)
        response = _response(command | 0x8000, fields.get(0x0002, b""), fields.get(0x0110, b"\x00\x00"), status,
                             sop_instance)  # fmt: skip
        self._send_command(context_id, response)

    async def _store(self, context_id: int, message: _Message) -> Status:
        fields = message.fields
        request = StoreRequest(
            cast(Association, self._association),
            _text(fields.get(0x0002, b"")),
            _text(fields.get(0x1000, b"")),
            self._accepted[context_id],
            cast(bytearray, message.data_set),
        )
        try:
            return await self._server.services.store(request)
        except Exception as exc:  # the services answer for themselves; this is the last guard
            log.error("C-STORE handler failed on %s: %s", self.peer, type(exc).__name__)
            return Status(_HANDLER_FAILED, f"the hub failed on this instance ({type(exc).__name__})")

    def _send_command(self, context_id: int, command: bytes) -> None:
        """``command`` in P-DATA-TF PDUs no longer than the peer takes."""
        room = len(command) if self._peer_max == 0 else max(self._peer_max - 6, 1)
        pdus = []
        for at in range(0, len(command), room):
            fragment = command[at : at + room]
            control = 0x03 if at + room >= len(command) else 0x01
            pdus.append(_HEADER.pack(_P_DATA, len(fragment) + 6) + _ITEM.pack(len(fragment) + 2, context_id, control))
            pdus.append(fragment)
        self._write(b"".join(pdus))

    # -- ending

    def _protocol_error(self, reason: int, what: str) -> None:
        log.warning("aborted association from %s: %s", self.peer, what)
        self.abort(reason)

    def abort(self, reason: int) -> None:
        """A-ABORT from the service provider (or, with reason 0, the hub closing) and close."""
        source = 0x02 if reason else 0x00
        self._write(bytes((_ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason)))
        self._close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        self._closed = True
        self._server.associations.discard(self)
        self._queue.clear()
        if self._transport is not None:
            self._transport.close()  # after what is written has gone, if the peer reads it
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._artim_timeout, self._drop)

    def _drop(self) -> None:
        """ARTIM expired: the peer neither took what was left to send nor closed its end."""
        if self._transport is not None:
            log.warning("dropped the connection from %s: it did not close after the association ended", self.peer)
            self._transport.abort()

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _arm_timer(self, seconds: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def _timed_out(self) -> None:
        """Abort when idle for the timeout; re-armed (not per PDU) while it was not, or the hub is busy."""
        quiet = self._loop_time() - self._last_activity
        if self._serving is not None:  # waiting on the hub, not on the peer
            self._arm_timer(self._idle_timeout)
        elif self._association is not None and quiet < self._idle_timeout:
            self._arm_timer(self._idle_timeout - quiet)
        else:
            log.warning("aborted association from %s: nothing received or answered for %g s", self.peer, quiet)
            self.abort(0x00)


# -- command sets: implicit VR little endian, group 0000 (PS3.7 E.1)


def _read_command(data: bytearray) -> dict[int, bytes] | None:
    """Element number -> value of each group 0000 element; None when the bytes are no command set."""
    fields: dict[int, bytes] = {}
    at, end = 0, len(data)
    while at < end:
        if end - at < 8:
            return None
        group, element, length = _ELEMENT.unpack_from(data, at)
        at += 8
        if group != 0 or at + length > end:
            return None
        fields[element] = bytes(data[at : at + length])
        at += length
    return fields


def _response(command: int, sop_class: bytes, message_id: bytes, status: Status, sop_instance: bytes | None) -> bytes:
    """A response's command set, no data set; a C-STORE-RSP also names the Affected SOP Instance UID."""
    elements = [(0x0002, _ui(sop_class)), (0x0100, _u16(command)), (0x0120, message_id), (0x0800, b"\x01\x01"),
                (0x0900, _u16(status.code))]  # fmt: skip
    if status.offending is not None:
        elements.append((0x0901, _u16(status.offending >> 16) + _u16(status.offending & 0xFFFF)))
    if status.comment:
        comment = status.comment.encode("ascii", "replace")[:64]
        elements.append((0x0902, comment + b" " if len(comment) % 2 else comment))
    if sop_instance is not None:
        elements.append((0x1000, _ui(sop_instance)))
    return _command_set(elements)


def _command_set(elements: Sequence[tuple[int, bytes]]) -> bytes:
    body = b"".join(_ELEMENT.pack(0, element, len(value)) + value for element, value in elements)
    return _ELEMENT.pack(0, 0x0000, 4) + len(body).to_bytes(4, "little") + body


def _ui(value: bytes) -> bytes:
    return value + b"\x00" if len(value) % 2 else value


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "little")


def _us(value: bytes) -> int:
    return int.from_bytes(value[:2], "little")


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ")

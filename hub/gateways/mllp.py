"""The MLLP listener: HL7 v2 over TCP (or TLS) from member sites, on the broker's own loop.

    listener = await start_mllp(intake, config, config.gateways.mllp)   # on intake.broker.loop
    listener.port
    await listener.close()           # stop accepting, answer what was received, close connections

Each message gets one original-mode ACK, sent only once the broker has settled its fate:

    AA   its exams are confirmed on their centre queues (notices ride along as ERR warnings)
    AE   it is parked on hub.parked.intake with its reason; ERR segments say what is wrong and where
    AR   nothing was kept (the broker did not confirm, or the hub failed): the sender sends it again

A member is known by MSH-4 (its institution code or one of its ``hl7_facilities``), which picks
its fallback charset for messages without MSH-18 and becomes the exams' origin. A frame over
``max_frame_bytes`` is answered AE from its head (the first ``hub.mllp.HEAD_BYTES``, which hold
the MSH), and only that head is parked, with the whole size in the reason. A frame that never
ends (abandoned for a new one, cut off by the connection's end, or still open when the connection
has been idle for ``idle_timeout``) is parked with that reason and gets no ACK: its sender has
none to wait for, or no longer waits. A frame ended by FS without CR is read and answered once the
next frame or the end of the stream shows it is whole.

Each connection is an ``asyncio.Protocol``, which is faster than a StreamReader/StreamWriter pair:
no reader task and no second buffer per connection, the framer sees each read as it comes, and
asyncio sets TCP_NODELAY on accepted sockets, so ACKs do not wait on Nagle. Messages on a
connection are answered in order, one at a time, however a sender pipelines them; a sender far
ahead of its ACKs is held back by TCP. A connection with no traffic for ``idle_timeout`` seconds
is closed. Logs carry the peer, the control id, the institution code and the outcome, never a
name or an ID number.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

from adapters import hl7v2
from hub.config import Config, Institution, MllpGateway
from hub.envelope import Exam
from hub.errors import AdapterError, BrokerError, ConfigError, InvalidMessage, MissingField, Problem, raised_at
from hub.intake import Intake
from hub.mllp import Framer, Oversized, Unfinished, frame

__all__ = ["MllpListener", "start_mllp"]

log = logging.getLogger("hub.gateways.mllp")

_MAX_QUEUED = 32  # frames received but not yet answered before a connection stops reading
_OFFLOAD_BYTES = 256 * 1024  # messages this large are read on a worker thread, not on the loop
_RETRY = "the hub could not store the message now; send it again"
_FAILED = "the hub failed on this message; send it again"


async def start_mllp(intake: Intake, config: Config, settings: MllpGateway) -> MllpListener:
    """Listen on ``settings.host``:``settings.port`` (0 picks a free port); call on ``intake.broker.loop``."""
    loop = asyncio.get_running_loop()
    if loop is not intake.broker.loop:
        raise RuntimeError("start_mllp must run on the broker's loop (intake.broker.loop)")
    shared = _Shared(_Responder(intake, config, settings.max_frame_bytes), settings)
    server = await loop.create_server(
        lambda: _Connection(shared), settings.host, settings.port, ssl=_tls_context(settings)
    )
    listener = MllpListener(server, shared)
    log.info("MLLP listening on %s:%d%s", settings.host, listener.port, " (TLS)" if settings.tls_cert else "")
    return listener


def _tls_context(settings: MllpGateway) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"gateways.mllp: cannot load tls_cert {settings.tls_cert} / tls_key {settings.tls_key}: {exc}"
        ) from exc
    return context


class MllpListener:
    """A running listener: where it is bound, and ``close``."""

    def __init__(self, server: asyncio.Server, shared: _Shared) -> None:
        self._server = server
        self._shared = shared
        host, port = server.sockets[0].getsockname()[:2]
        self.address: tuple[str, int] = (str(host), int(port))

    @property
    def port(self) -> int:
        return self.address[1]

    async def close(self, timeout: float = 20.0) -> None:
        """Stop accepting; answer every message already received in full; close the connections.

        A connection still waiting on the broker after ``timeout`` seconds is cut: its sender gets
        no ACK and sends again (exam ids are stable, so a repeat is recognisably the same exam).
        """
        self._shared.closing = True
        self._server.close()
        connections = list(self._shared.connections)
        for connection in connections:
            connection.finish()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=timeout)
            for connection in connections:
                connection.abort()
        if self._shared.parking:
            await asyncio.wait(list(self._shared.parking), timeout=timeout)
        await self._server.wait_closed()
        log.info("MLLP listener on port %d closed", self.port)


@dataclass(eq=False)
class _Shared:
    """What a listener's connections share."""

    responder: _Responder
    settings: MllpGateway
    connections: set[_Connection] = field(default_factory=set)
    closing: bool = False
    parking: set[asyncio.Task[None]] = field(default_factory=set)  # frames of connections already gone

    def park_later(self, item: Unfinished, peer: str) -> None:
        task = asyncio.get_running_loop().create_task(self.responder.park_unfinished(item, peer))
        self.parking.add(task)
        task.add_done_callback(self.parking.discard)


class _Connection(asyncio.Protocol):
    """One sender's connection: frames in, ACKs out in the same order, one message at a time."""

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._framer = Framer(shared.settings.max_frame_bytes)
        self._inbox: deque[bytes | Oversized | Unfinished] = deque()
        self._transport: asyncio.Transport | None = None
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()  # cleared while the peer is not reading its ACKs
        self._busy = False  # a message is with the adapter or the broker
        self._finishing = False  # the listener is closing, or the peer has sent all it will
        self.peer = "unknown"
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unknown")
        self._writable.set()
        self._shared.connections.add(self)
        self._rearm()
        log.debug("%s connected", self.peer)
        if self._shared.closing:  # accepted (or its TLS handshake done) just as the listener closed
            self.finish()

    def data_received(self, data: bytes) -> None:
        self._rearm()
        self._inbox.extend(self._framer.feed(data))
        if len(self._inbox) >= _MAX_QUEUED and self._transport is not None:
            self._transport.pause_reading()  # a sender far ahead of its ACKs waits in TCP, not in memory
        self._kick()

    def eof_received(self) -> bool:
        self._end_of_stream("cut off: the connection ended before its end block (FS CR)")
        self._finishing = True
        self._kick()
        # Keep the write side open to answer what came; TLS cannot half-close, so there asyncio closes.
        return self._transport is not None and self._transport.get_extra_info("sslcontext") is None

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._shared.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        cut = self._framer.end_of_stream("cut off: the connection was lost before its end block (FS CR)")
        if cut is not None:
            self._inbox.append(cut)
        unanswered = [item for item in self._inbox if not isinstance(item, Unfinished)]
        if unanswered:  # never answered, so their sender will send them again
            log.warning("%s: connection closed with %d message(s) unanswered", self.peer, len(unanswered))
        for item in self._inbox:
            if isinstance(item, Unfinished):
                self._shared.park_later(item, self.peer)
        self._inbox.clear()
        self._writable.set()
        if not self.closed.done():
            self.closed.set_result(None)
        log.debug("%s disconnected", self.peer)

    # -- the listener

    def finish(self) -> None:
        """Read nothing more; answer what has come in full, then close."""
        self._finishing = True
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()
        self._kick()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- the work

    def _kick(self) -> None:
        if self._worker is not None and not self._worker.done():
            return
        if self._inbox:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        elif self._finishing and self._transport is not None:
            self._transport.close()

    async def _work(self) -> None:
        try:
            while self._inbox and self._transport is not None:
                item = self._inbox.popleft()
                self._resume_reading()
                self._busy = True
                try:
                    if isinstance(item, Unfinished):
                        await self._shared.responder.park_unfinished(item, self.peer)
                        continue
                    reply = await self._shared.responder.reply(item, self.peer)
                finally:
                    self._busy = False
                await self._writable.wait()
                if self._transport is None:
                    return  # the sender left before its answer: it will send the message again
                self._transport.write(frame(reply))
                self._rearm()
            if self._finishing and self._transport is not None:
                self._transport.close()
        except Exception as exc:  # a bug here must cost one connection, never the listener
            log.error("%s: connection failed: %s at %s", self.peer, type(exc).__name__, raised_at(exc))
            self.abort()

    def _resume_reading(self) -> None:
        transport = self._transport
        room = len(self._inbox) < _MAX_QUEUED // 2
        if transport is not None and not self._finishing and room and not transport.is_reading():
            transport.resume_reading()

    def _rearm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self._shared.settings.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        if self._busy:  # waiting on the broker is not the sender being idle
            self._rearm()
            return
        idle = self._shared.settings.idle_timeout
        if self._end_of_stream(f"cut off: no end block (FS CR) came within gateways.mllp.idle_timeout ({idle:g} s)"):
            self._rearm()  # answer or park it first; the next idle period closes the connection
            self._kick()
            return
        log.info("%s: idle for %g s, closing", self.peer, idle)
        if self._transport is None:
            return
        if self._writable.is_set():
            self._transport.close()
        else:  # it stopped reading its ACKs too: nothing left to flush to
            self._transport.abort()

    def _end_of_stream(self, reason: str) -> bool:
        """Queue the frame in progress, whole or Unfinished with ``reason``; whether there was one."""
        item = self._framer.end_of_stream(reason)
        if item is not None:
            self._inbox.append(item)
        return item is not None


class _Responder:
    """One message in, its ACK out: identify the member, read, publish or park."""

    def __init__(self, intake: Intake, config: Config, max_frame_bytes: int) -> None:
        self.intake = intake
        self.config = config
        self.max_frame_bytes = max_frame_bytes

    async def reply(self, item: bytes | Oversized, peer: str) -> bytes:
        # An oversized frame is answered from its head, which carries the whole MSH.
        raw = item.head if isinstance(item, Oversized) else item
        charset = origin = None
        try:
            institution, problem = self._member(raw)
            if institution is not None:
                charset, origin = institution.charset, institution.code
            if isinstance(item, Oversized):
                problem = InvalidMessage(
                    f"the message is {item.size} bytes, over this hub's limit of {self.max_frame_bytes} bytes "
                    "(gateways.mllp.max_frame_bytes); only its first part was kept"
                )
            if problem is None:
                try:
                    exams = await self._read(raw, charset, origin)
                except AdapterError as exc:
                    problem = exc
                else:
                    await self.intake.accept(exams, raw)
                    reply = hl7v2.ack(raw, "AA", _warnings(exams), charset=charset)
                    # Accepted messages log at DEBUG: at INFO the line costs a third of reading the message.
                    _log(peer, reply, charset, origin, "AA", f"{len(exams)} exam(s)", logging.DEBUG)
                    return reply
            await self.intake.park(raw, problem, format="hl7v2", origin=origin, peer=peer, charset=charset)
            reply = hl7v2.ack(raw, "AE", problem, charset=charset)
            where = ",".join(p.location or "-" for p in problem.problems)
            _log(peer, reply, charset, origin, "AE", f"parked, {type(problem).__name__} at {where}")
            return reply
        except BrokerError as exc:
            reply = hl7v2.ack(raw, "AR", _RETRY, charset=charset)
            _log(peer, reply, charset, origin, "AR", f"not confirmed: {type(exc).__name__}", logging.WARNING)
            return reply
        except Exception as exc:  # the listener answers and stays up whatever goes wrong
            reply = hl7v2.ack(raw, "AR", _FAILED, charset=charset)
            _log(peer, reply, charset, origin, "AR", f"failed: {type(exc).__name__} at {raised_at(exc)}", logging.ERROR)
            return reply

    async def park_unfinished(self, item: Unfinished, peer: str) -> None:
        """Keep a frame that never ended, with why; it gets no ACK (its sender gave up on it, or left)."""
        problem = InvalidMessage(f"MLLP frame {item.reason}; {item.size} bytes received", location="MLLP")
        try:
            institution, _ = self._member(item.head)
            charset, origin = (institution.charset, institution.code) if institution else (None, None)
            await self.intake.park(item.head, problem, format="hl7v2", origin=origin, peer=peer, charset=charset)
        except Exception as exc:  # logged, and the listener stays up; the sender had no ACK, so it sends again
            log.error("%s: could not park an unfinished frame of %d bytes: %s", peer, item.size, type(exc).__name__)
            return
        log.warning("%s: parked an unfinished frame of %d bytes from %s: %s", peer, item.size, origin, item.reason)

    async def _read(self, raw: bytes, charset: str | None, origin: str | None) -> list[Exam]:
        read = partial(hl7v2.read, raw, charset=charset, origin=origin, centres=self.config.routing)
        if len(raw) < _OFFLOAD_BYTES:
            return read()
        return await asyncio.get_running_loop().run_in_executor(None, read)  # the loop serves everyone else

    def _member(self, raw: bytes) -> tuple[Institution | None, AdapterError | None]:
        """The sending member, or why the message cannot be taken from it."""
        facility = hl7v2.sender(raw)
        institution = self.config.institution_by_facility(facility) if facility else None
        if institution is not None:
            return institution, None
        if facility:
            return None, InvalidMessage(
                f"unknown sending facility {facility!r}: MSH-4 must be a consortium member's institution code",
                location="MSH-4",
            )
        try:  # no MSH-4 to read: a broken header is the better answer, when that is what it is
            hl7v2.read(raw, centres=self.config.routing)
        except AdapterError as exc:
            if (exc.location or "").startswith("MSH"):
                return None, exc
        return None, MissingField(
            "MSH-4 (sending facility) is empty: it must be the member's institution code", location="MSH-4"
        )


def _warnings(exams: Sequence[Exam]) -> AdapterError | None:
    """The exams' notices as one error, which ``ack`` writes as ERR warnings to an AA."""
    notices = list(dict.fromkeys((n.location, n.message) for exam in exams for n in exam.notices))
    if not notices:
        return None
    problems = tuple(Problem(location, message) for location, message in notices)
    return AdapterError(problems[0].message, problems=problems)


def _log(
    peer: str, reply: bytes, charset: str | None, origin: str | None, code: str, detail: str, level: int = logging.INFO
) -> None:
    if not log.isEnabledFor(level):
        return
    try:  # the control id as the ACK echoes it, which is what the sender will match
        control_id = hl7v2.read_ack(reply, charset=charset).control_id or "-"
    except AdapterError:
        control_id = "-"
    log.log(level, "%s control id %s from %s: %s, %s", peer, control_id, origin or "unknown member", code, detail)

"""MLLP framing, separate from HL7 parsing: <VT> message <FS><CR>.

    framer = Framer(max_frame_bytes=16 << 20)
    for item in framer.feed(chunk):      # bytes in, whole frames out, no sockets
        ...                              # bytes, or Oversized for a frame over the limit

``MllpClient`` sends a frame and waits for the reply frame, over asyncio
streams: report egress, ``hub replay`` and the tests use it.

Bytes outside a frame (line noise, a sender's stray CR) are skipped. A frame
that never ends comes out as ``Unfinished``, for the listener to park: one its
sender abandoned (a new start byte before its end), or one cut off when the
stream ends (``end_of_stream``). A frame ended by FS alone, without the CR,
is taken whole when the next start byte or the end of the stream shows that
nothing more belongs to it, as lenient MLLP receivers do. A frame larger than
the limit is not buffered whole: its first ``HEAD_BYTES`` are kept, however the
stream was cut into reads, so the listener can still answer it (MSH-10) and
park what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from hub.errors import HubError

__all__ = ["END", "HEAD_BYTES", "START", "Framer", "MllpClient", "MllpError", "Oversized", "Unfinished", "frame"]

START = b"\x0b"
END = b"\x1c\r"
HEAD_BYTES = 64 * 1024
_ABANDONED = "abandoned: a new start block (VT) came before its end block (FS CR)"


class MllpError(HubError):
    """The MLLP peer did not answer with a frame: closed, timed out, or unreachable."""


@dataclass(frozen=True, slots=True)
class Oversized:
    head: bytes  # the frame's first HEAD_BYTES
    size: int  # its whole size


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A frame that never reached its end block: what was kept of it (at most HEAD_BYTES), and why."""

    head: bytes
    size: int  # bytes received of it
    reason: str


def frame(payload: bytes) -> bytes:
    return START + payload + END


class Framer:
    """Whole frames out of a byte stream, fed as it arrives; no sockets, so it is tested by feeding bytes.

    A start byte inside an unfinished frame means its sender gave up on it and began again (VT never
    occurs inside an HL7 message in UTF-8, GBK or GB18030): the unfinished bytes come out as
    ``Unfinished`` and the new frame is read, unless they end with FS, which then ended the frame.
    Past ``max_frame_bytes`` a frame's first ``HEAD_BYTES`` are kept and the rest is only counted,
    so memory stays bounded whatever a sender does.
    """

    def __init__(self, max_frame_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._keep = max(max_frame_bytes, HEAD_BYTES)  # bytes of a frame held: all of it, or past the limit its head
        self._buffer = bytearray()
        self._size = 0  # bytes of the current frame so far, held or not
        self._in_frame = False
        self._ends_with_fs = False  # its last byte is FS: an end marker may be split across two reads

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame received so far (0 between frames)."""
        return self._size if self._in_frame else 0

    def feed(self, data: bytes) -> list[bytes | Oversized | Unfinished]:
        out: list[bytes | Oversized | Unfinished] = []
        pos, length = 0, len(data)
        while pos < length:
            if not self._in_frame:
                start = data.find(START, pos)
                if start < 0:
                    break  # noise between frames
                self._begin()
                pos = start + 1
                continue
            if self._ends_with_fs and data[pos] == END[1]:
                self._drop_last()
                out.append(self._finish())
                pos += 1
                continue
            end = data.find(END, pos)
            stop = length if end < 0 else end
            restart = data.find(START, pos, stop)
            if restart >= 0:  # a new frame began before this one ended
                self._append(data, pos, restart)
                out.append(self._close(_ABANDONED))
                continue
            self._append(data, pos, stop)
            if end < 0:
                break
            out.append(self._finish())
            pos = end + len(END)
        return out

    def end_of_stream(self, reason: str) -> bytes | Oversized | Unfinished | None:
        """The frame in progress when the stream ends: whole if FS ended it, else Unfinished with ``reason``."""
        return self._close(reason) if self._in_frame else None

    def _close(self, reason: str) -> bytes | Oversized | Unfinished:
        """The frame in progress, with no more bytes to come: whole if FS ended it, else Unfinished."""
        if self._ends_with_fs:
            self._drop_last()
            return self._finish()
        item = Unfinished(bytes(self._buffer[:HEAD_BYTES]), self._size, reason)
        self._reset()
        return item

    def _begin(self) -> None:
        self._reset()
        self._in_frame = True

    def _reset(self) -> None:
        self._buffer.clear()
        self._size = 0
        self._in_frame = False
        self._ends_with_fs = False

    def _append(self, data: bytes, start: int, stop: int) -> None:
        if stop <= start:
            return
        room = self._keep - len(self._buffer)
        if room > 0:
            self._buffer += memoryview(data)[start : min(stop, start + room)]
        self._size += stop - start
        self._ends_with_fs = data[stop - 1] == END[0]

    def _drop_last(self) -> None:
        if len(self._buffer) == self._size:
            del self._buffer[-1]
        self._size -= 1

    def _finish(self) -> bytes | Oversized:
        item: bytes | Oversized
        if self._size > self.max_frame_bytes:
            item = Oversized(bytes(self._buffer[:HEAD_BYTES]), self._size)
        else:
            item = bytes(self._buffer)
        self._reset()
        return item


class MllpClient:
    """One MLLP connection: send a message, wait for its reply. Not for concurrent use."""

    def __init__(
        self, host: str, port: int, *, timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._ssl = ssl_context
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = Framer()
        self._ready: list[bytes | Oversized] = []  # reply frames; an Unfinished one is no reply

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader_alive = self._reader is not None and not self._reader.at_eof()  # a member may drop idle connections
        if reader_alive and self._reader is not None and self._writer is not None and not self._writer.is_closing():
            return self._reader, self._writer
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self._ssl), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise MllpError(f"cannot connect to {self.host}:{self.port}: {exc or type(exc).__name__}") from exc
        self._reader, self._writer = reader, writer
        self._framer, self._ready = Framer(), []
        return reader, writer

    async def send(self, payload: bytes) -> bytes:
        """Send one message; its reply frame. MllpError (and a closed connection) when none comes."""
        reader, writer = await self._connect()
        try:
            writer.write(frame(payload))
            await writer.drain()
            return await asyncio.wait_for(self._reply(reader), self.timeout)
        except (OSError, TimeoutError, MllpError) as exc:
            await self.close()
            if isinstance(exc, MllpError):
                raise
            raise MllpError(f"no reply from {self.host}:{self.port}: {exc or type(exc).__name__}") from exc

    async def _reply(self, reader: asyncio.StreamReader) -> bytes:
        while not self._ready:
            chunk = await reader.read(65536)
            if not chunk:
                raise MllpError(f"{self.host}:{self.port} closed the connection without a reply")
            self._ready += [item for item in self._framer.feed(chunk) if not isinstance(item, Unfinished)]
        reply = self._ready.pop(0)
        return reply.head if isinstance(reply, Oversized) else reply

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

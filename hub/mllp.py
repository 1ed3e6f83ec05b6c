"""MLLP framing, separate from HL7 parsing: <VT> message <FS><CR>.

    framer = Framer(max_frame_bytes=16 << 20)
    for item in framer.feed(chunk):      # bytes in, whole frames out, no sockets
        ...                              # bytes, or Oversized for a frame over the limit

``MllpClient`` sends a frame and waits for the reply frame, over asyncio
streams: report egress, ``hub replay`` and the tests use it.

Bytes outside a frame (line noise, a sender's stray CR) are skipped. A frame
larger than the limit is not buffered whole: its first ``HEAD_BYTES`` are kept
so the listener can still answer it (MSH-10) and park what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from hub.errors import HubError

__all__ = ["END", "HEAD_BYTES", "START", "Framer", "MllpClient", "MllpError", "Oversized", "frame"]

START = b"\x0b"
END = b"\x1c\r"
HEAD_BYTES = 64 * 1024


class MllpError(HubError):
    """The MLLP peer did not answer with a frame: closed, timed out, or unreachable."""


@dataclass(frozen=True, slots=True)
class Oversized:
    head: bytes  # the frame's first HEAD_BYTES
    size: int  # its whole size


def frame(payload: bytes) -> bytes:
    return START + payload + END


class Framer:
    def __init__(self, max_frame_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._skipped = 0  # bytes of an oversized frame dropped so far
        self._head = b""

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held (0 between frames)."""
        return len(self._buffer) if self._in_frame else 0

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        out: list[bytes | Oversized] = []
        view = memoryview(data)
        while view:
            if not self._in_frame:
                start = bytes(view).find(START)
                if start < 0:
                    return out  # noise between frames
                view = view[start + 1 :]
                self._in_frame = True
                self._buffer.clear()
            view = self._take(view, out)
        return out

    def _take(self, view: memoryview, out: list[bytes | Oversized]) -> memoryview:
        # The end marker may straddle two reads, so look for it in what is held plus what came.
        held = len(self._buffer)
        self._buffer += view
        end = self._buffer.find(END, max(0, held - 1))
        if end < 0:
            self._cap()
            return view[len(view) :]
        consumed = end + len(END) - held
        payload = bytes(self._buffer[:end])
        self._buffer.clear()
        self._in_frame = False
        if self._skipped:
            out.append(Oversized(self._head, self._skipped + len(payload)))
            self._skipped, self._head = 0, b""
        elif len(payload) > self.max_frame_bytes:
            out.append(Oversized(payload[:HEAD_BYTES], len(payload)))
        else:
            out.append(payload)
        return view[consumed:]

    def _cap(self) -> None:
        """Past the limit, keep the head and one byte (an end marker may start there), drop the rest."""
        if self._skipped + len(self._buffer) <= self.max_frame_bytes:
            return
        if not self._skipped:
            self._head = bytes(self._buffer[:HEAD_BYTES])
        keep = self._buffer[-1:]
        self._skipped += len(self._buffer) - 1
        self._buffer = bytearray(keep)


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
        self._ready: list[bytes | Oversized] = []

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None and not self._writer.is_closing():
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
            self._ready += self._framer.feed(chunk)
        reply = self._ready.pop(0)
        return reply.head if isinstance(reply, Oversized) else reply

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

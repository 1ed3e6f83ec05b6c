"""Stand-in member systems that take reports, as a township's RIS or LIS would.

    receiver = await MllpReceiver.start()          # on any running loop; port 0
    receiver.port, receiver.received               # what arrived, in order
    fhir = await FhirReceiver.start()              # POST {base}/DiagnosticReport -> 201

For ``hub demo``, the benches and tests: the hub's egress delivers to these the
way it delivers to a member. ``MllpReceiver`` answers AA (in the message's own
charset) unless told to answer AE or to stay silent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn

from adapters import hl7v2
from hub.mllp import Framer, Oversized, Unfinished, frame

__all__ = ["FhirReceiver", "MllpReceiver", "Received"]

Answer = Literal["AA", "AE", "silent"]


@dataclass(frozen=True, slots=True)
class Received:
    body: bytes
    at: float  # time.monotonic() on arrival


@dataclass
class MllpReceiver:
    answer: Answer = "AA"
    server: asyncio.Server | None = None
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    connections: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    @classmethod
    async def start(cls, host: str = "127.0.0.1", port: int = 0, answer: Answer = "AA") -> MllpReceiver:
        receiver = cls(answer)
        receiver.server = await asyncio.start_server(receiver.serve, host, port)
        return receiver

    @property
    def port(self) -> int:
        assert self.server is not None, "start() it first"
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer()
        task = asyncio.current_task()
        assert task is not None  # the server runs each connection as a task of its own
        self.connections[task] = writer
        try:
            while chunk := await reader.read(65536):
                for item in framer.feed(chunk):
                    if isinstance(item, Unfinished):  # its sender gave up on it
                        continue
                    message = item.head if isinstance(item, Oversized) else item
                    self.received.append(Received(message, time.monotonic()))
                    self.arrived.set()
                    if self.answer != "silent":
                        writer.write(frame(hl7v2.ack(message, self.answer, None if self.answer == "AA" else "refused")))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self.connections.pop(task, None)

    async def close(self) -> None:
        """Stop listening and end the connections still open (Python 3.11's server.close leaves them)."""
        if self.server is not None:
            self.server.close()
            # Closing a connection ends its read with EOF: cancelling its task instead makes Python 3.11's
            # StreamReaderProtocol log the CancelledError as an "Exception in callback".
            for writer in list(self.connections.values()):
                writer.close()
            await asyncio.gather(*self.connections, return_exceptions=True)
            await self.server.wait_closed()


@dataclass
class FhirReceiver:
    server: uvicorn.Server
    task: asyncio.Task[None]
    status: int = 201
    received: list[Received] = field(default_factory=list)

    @classmethod
    async def start(cls, host: str = "127.0.0.1", port: int = 0, status: int = 201) -> FhirReceiver:
        holder: list[FhirReceiver] = []

        async def app(
            scope: dict[str, Any],
            receive: Callable[[], Awaitable[dict[str, Any]]],
            send: Callable[[dict[str, Any]], Awaitable[None]],
        ) -> None:
            body = b""
            while True:
                event = await receive()
                body += event.get("body", b"")
                if not event.get("more_body"):
                    break
            taken = scope["method"] == "POST" and scope["path"].endswith("/DiagnosticReport")
            code = holder[0].status if taken else 404
            if taken:
                holder[0].received.append(Received(body, time.monotonic()))
            answer = json.dumps(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "information" if code < 300 else "error",
                            "code": "informational" if code < 300 else "processing",
                        }
                    ],
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [(b"content-type", b"application/fhir+json")],
                }
            )
            await send({"type": "http.response.body", "body": answer})

        config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        receiver = cls(server, task, status)
        holder.append(receiver)
        return receiver

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.server.should_exit = True
        await self.task

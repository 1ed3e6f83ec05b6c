"""hub replay over MLLP judges an ACK by its MSA-2 as well as its code."""

from __future__ import annotations

import asyncio
from pathlib import Path

from adapters import hl7v2
from hub.mllp import Framer, MllpClient, frame
from hub.replay import Outcome, _send_mllp

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "messages" / "hl7v2"


def replay_against(answer: bytes, path: Path) -> Outcome:
    """Replay ``path`` to a listener that answers every frame with ``answer``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer()
        while not framer.feed(await reader.read(65536)):
            pass
        writer.write(frame(answer))
        await writer.drain()
        writer.close()

    async def run() -> Outcome:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        client = MllpClient("127.0.0.1", server.sockets[0].getsockname()[1], timeout=10)
        try:
            return await _send_mllp(client, path, path.read_bytes())
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


def test_an_aa_for_another_message_is_not_an_acceptance() -> None:
    sent, other = SAMPLES / "lab-cbc-gb18030.hl7", SAMPLES / "ecg-resting-oru.hl7"
    outcome = replay_against(hl7v2.ack(other.read_bytes(), "AA"), sent)
    assert not outcome.accepted
    assert f"does not answer MSH-10 {hl7v2.control_id(sent.read_bytes())!r}" in outcome.detail


def test_an_aa_for_the_message_sent_is_an_acceptance() -> None:
    sent = SAMPLES / "lab-cbc-gb18030.hl7"
    outcome = replay_against(hl7v2.ack(sent.read_bytes(), "AA"), sent)
    assert (outcome.accepted, outcome.detail) == (True, "AA")

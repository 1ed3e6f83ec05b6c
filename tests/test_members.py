"""The stand-in member systems of hub demo and the benches: an MLLP receiver answers and closes cleanly."""

import asyncio

from adapters import hl7v2
from hub.members import MllpReceiver
from hub.mllp import Framer, frame

ORU = (
    "MSH|^~\\&|LAB|12330112470101234B|HIS|12330112473455672X|20261202100000||ORU^R01|RPT-1|P|2.5.1|||||CHN|GB18030\r"
    "PID|||H0042||王^秀英\r"
).encode("gb18030")


def test_it_answers_each_message_and_close_ends_the_connections_still_open() -> None:
    errors: list[dict[str, object]] = []

    async def run() -> tuple[str, bytes, int, int]:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        receiver = await MllpReceiver.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
        writer.write(frame(ORU))
        await writer.drain()
        (answer,) = Framer().feed(await asyncio.wait_for(reader.read(65536), 5))
        open_before = len(receiver.connections)
        await asyncio.wait_for(receiver.close(), 5)  # with the sender's connection still open
        after = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.sleep(0.05)  # the loop runs the callbacks of the ended connection task
        return hl7v2.read_ack(answer).code, after, open_before, len(receiver.connections)

    code, after, open_before, open_after = asyncio.run(run())
    assert code == "AA"
    assert (open_before, after, open_after) == (1, b"", 0)
    assert errors == []  # a cancelled connection task made asyncio report "Exception in callback"

"""MLLP framing fed bytes with no sockets, and MllpClient against a tiny asyncio ACK server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.mllp import END, HEAD_BYTES, START, Framer, MllpClient, MllpError, Oversized, Unfinished, frame

MESSAGE = "MSH|^~\\&|LIS|12330112472334561L|CONSORTIUM-HUB|12330112470101234B|||ORU^R01|YQ0007|P|2.5.1\rPID|1||||张伟\r"
RAW = MESSAGE.encode("gb18030")


def feed_in_chunks(framer: Framer, data: bytes, size: int) -> list[bytes | Oversized | Unfinished]:
    out: list[bytes | Oversized | Unfinished] = []
    for at in range(0, len(data), size):
        out += framer.feed(data[at : at + size])
    return out


# -- the Framer


def test_a_frame_fed_whole_and_byte_by_byte_is_the_same_frame() -> None:
    assert Framer().feed(frame(RAW)) == [RAW]
    assert feed_in_chunks(Framer(), frame(RAW), 1) == [RAW]


def test_an_end_marker_split_across_two_feeds() -> None:
    framer = Framer()
    assert framer.feed(START + RAW + b"\x1c") == []
    assert framer.pending == len(RAW) + 1
    assert framer.feed(b"\r") == [RAW]
    assert framer.pending == 0


def test_fs_not_followed_by_cr_is_content_even_across_feeds() -> None:
    framer = Framer()
    assert framer.feed(START + b"a\x1c") == []
    assert framer.feed(b"b\x1c\r") == [b"a\x1cb"]


def test_noise_between_frames_is_skipped() -> None:
    stream = b"\r\n  noise" + frame(b"one") + b"\r\x00\xff" + frame(b"two") + b"\n"
    assert Framer().feed(stream) == [b"one", b"two"]


def test_back_to_back_frames_in_one_feed_and_an_empty_frame() -> None:
    assert Framer().feed(frame(b"a") + frame(b"") + frame(RAW)) == [b"a", b"", RAW]


ABANDONED = "abandoned: a new start block (VT) came before its end block (FS CR)"


def test_a_frame_abandoned_by_a_new_start_byte_comes_out_unfinished() -> None:
    framer = Framer()
    assert framer.feed(START + b"MSH|^~\\&|half of a mess") == []
    assert framer.pending > 0
    assert framer.feed(frame(RAW)) == [Unfinished(b"MSH|^~\\&|half of a mess", 23, ABANDONED), RAW]
    assert Framer().feed(START + b"half" + frame(b"whole")) == [Unfinished(b"half", 4, ABANDONED), b"whole"]


def test_an_unfinished_frame_keeps_only_its_head() -> None:
    payload = RAW + b"x" * (2 * HEAD_BYTES)
    (cut,) = feed_in_chunks(Framer(max_frame_bytes=1000), START + payload + START, 4096)
    assert cut == Unfinished(payload[:HEAD_BYTES], len(payload), ABANDONED)


@pytest.mark.parametrize("chunk", [1, 3, 10**6])
def test_a_frame_ended_by_fs_alone_is_whole_once_the_next_frame_starts(chunk: int) -> None:
    stream = START + RAW + b"\x1c" + START + b"next" + b"\x1c"
    framer = Framer()
    assert feed_in_chunks(framer, stream, chunk) == [RAW]
    assert framer.end_of_stream("cut off") == b"next"  # and at the end of the stream


def test_the_end_of_the_stream_gives_the_frame_in_progress_with_its_reason() -> None:
    framer = Framer()
    assert framer.end_of_stream("cut off") is None
    framer.feed(b"noise between frames")
    assert framer.end_of_stream("cut off") is None
    framer.feed(START + RAW[:40])
    assert framer.end_of_stream("cut off") == Unfinished(RAW[:40], 40, "cut off")
    assert framer.pending == 0
    assert framer.feed(frame(b"again")) == [b"again"]


@pytest.mark.parametrize("chunk", [1, 7, 1000, HEAD_BYTES + 3, 10**7])
def test_oversized_frame_keeps_the_same_head_however_it_arrives(chunk: int) -> None:
    payload = RAW + b"x" * (3 * HEAD_BYTES)
    framer = Framer(max_frame_bytes=1000)
    out = feed_in_chunks(framer, frame(payload) + frame(RAW), chunk)
    assert out == [Oversized(payload[:HEAD_BYTES], len(payload)), RAW]


def test_oversized_frame_under_the_head_size_is_kept_whole_in_its_head() -> None:
    payload = RAW + b"x" * 500
    (item,) = feed_in_chunks(Framer(max_frame_bytes=100), frame(payload), 10)
    assert item == Oversized(payload, len(payload))


def test_a_frame_at_the_limit_is_not_oversized() -> None:
    assert Framer(max_frame_bytes=len(RAW)).feed(frame(RAW)) == [RAW]
    assert Framer(max_frame_bytes=len(RAW) - 1).feed(frame(RAW)) == [Oversized(RAW, len(RAW))]


def test_memory_stays_bounded_while_an_oversized_frame_streams_in() -> None:
    framer = Framer(max_frame_bytes=HEAD_BYTES)
    for _ in range(100):
        framer.feed(b"y" * HEAD_BYTES if framer.pending else START + b"y" * HEAD_BYTES)
    assert framer.pending == 100 * HEAD_BYTES
    assert len(framer._buffer) <= HEAD_BYTES  # what it holds: the head only


def without_markers(data: bytes) -> bytes:
    data = data.replace(START, b"")
    while END in data:  # removing one may join a lone FS and CR into another
        data = data.replace(END, b"")
    return data


frames_st = st.lists(st.binary(max_size=300).map(without_markers), max_size=6)
noise_st = st.binary(max_size=20).map(lambda b: b.replace(START, b""))


@given(frames=frames_st, noise=noise_st, cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12))
def test_any_cut_of_the_stream_gives_the_same_frames(frames: list[bytes], noise: bytes, cuts: list[int]) -> None:
    stream = noise.join(frame(f) for f in frames) + noise
    framer, out, previous = Framer(max_frame_bytes=200), [], 0
    for cut in [*sorted(c for c in cuts if c <= len(stream)), len(stream)]:
        out += framer.feed(stream[previous:cut])
        previous = cut
    assert out == [f if len(f) <= 200 else Oversized(f[:HEAD_BYTES], len(f)) for f in frames]


# -- MllpClient against a tiny server


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    listening = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield listening.sockets[0].getsockname()[1]
    finally:
        listening.close()
        await listening.wait_closed()


async def ack_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every frame with ACK<its payload>."""
    framer = Framer()
    while chunk := await reader.read(65536):
        for item in framer.feed(chunk):
            assert isinstance(item, bytes)
            writer.write(frame(b"ACK" + item))
    writer.close()


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):
        pass


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the whole frame (closing with unread data would be a reset), then close without a word."""
    await reader.readuntil(END)
    writer.close()


def test_client_sends_several_messages_on_one_connection() -> None:
    async def run() -> list[bytes]:
        async with server(ack_each) as port:
            client = MllpClient("127.0.0.1", port, timeout=5)
            try:
                return [await client.send(RAW), await client.send(b"second"), await client.send(RAW * 300)]
            finally:
                await client.close()

    assert asyncio.run(run()) == [b"ACK" + RAW, b"ACKsecond", b"ACK" + RAW * 300]


def test_client_times_out_when_no_reply_comes_and_connects_again() -> None:
    async def run() -> None:
        async with server(never_answer) as port:
            client = MllpClient("127.0.0.1", port, timeout=0.2)
            with pytest.raises(MllpError, match="no reply"):
                await client.send(RAW)
            with pytest.raises(MllpError, match="no reply"):  # a fresh connection, not a stale reply
                await client.send(RAW)
            await client.close()

    asyncio.run(run())


def test_client_fails_when_the_peer_closes_without_a_reply() -> None:
    async def run() -> None:
        async with server(hang_up) as port:
            client = MllpClient("127.0.0.1", port, timeout=5)
            with pytest.raises(MllpError, match="closed the connection"):
                await client.send(RAW)
            await client.close()

    asyncio.run(run())


def test_client_fails_when_nobody_listens() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> None:
        client = MllpClient("127.0.0.1", port, timeout=5)
        with pytest.raises(MllpError, match="cannot connect"):
            await client.send(RAW)

    asyncio.run(run())

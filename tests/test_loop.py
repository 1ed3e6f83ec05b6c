"""The broker's loop thread: work handed to it from other threads runs there, in order."""

import asyncio
import threading

import pytest

from hub.loop import LoopThread


def test_calls_from_other_threads_run_on_the_loop_in_order() -> None:
    io = LoopThread("test-loop")
    seen: list[tuple[int, bool]] = []
    done = threading.Event()
    for n in range(5):
        io.call(lambda n=n: seen.append((n, io.is_current)))
    io.call(done.set)
    assert done.wait(5)
    assert seen == [(n, True) for n in range(5)]
    assert not io.is_current
    io.stop()
    assert io.loop.is_closed()


def test_a_coroutine_runs_on_the_loop_and_the_loop_cannot_stop_itself() -> None:
    io = LoopThread("test-loop")

    async def inside() -> str:
        with pytest.raises(RuntimeError, match="own loop"):
            io.stop()
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert io.run(inside()).result(5) == "test-loop"
    io.stop()

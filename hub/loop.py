"""An asyncio event loop on a thread of its own: the broker's I/O loop, which the gateways share.

Code running on the loop (the MLLP and FHIR gateways, report egress) publishes
without a thread hop; other threads hand work to it with ``call``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    @property
    def is_current(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return threading.get_ident() == self._thread.ident

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop: at once when already there, else soon."""
        if self.is_current:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coroutine`` on the loop from any other thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop (when nothing has yet) and wait for its thread; not from the loop itself."""
        if self.is_current:
            raise RuntimeError("a LoopThread cannot be stopped from its own loop")
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()

    def join(self, timeout: float) -> None:
        """Wait for the loop to stop by itself (when its owner called ``loop.stop``)."""
        self._thread.join(timeout)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()

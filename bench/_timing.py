"""Rates measured in rounds, candidates interleaved so that machine noise hits all of them alike."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


def pin_to_one_core() -> str:
    """Run on one core, as the figures are stated per core."""
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def _rate(fn: Callable[[], object], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


@dataclass(frozen=True)
class Rates:
    samples: dict[str, list[float]]  # calls per second, one per round

    def __getitem__(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, name: str, baseline: str) -> float:
        """Median over rounds of name/baseline, each pair measured back to back, so drift cancels."""
        return statistics.median(a / b for a, b in zip(self.samples[name], self.samples[baseline], strict=True))


def rates(candidates: Mapping[str, Callable[[], object]], *, rounds: int = 5, seconds: float = 0.4) -> Rates:
    """Calls per second of each candidate over ``rounds`` interleaved rounds."""
    for fn in candidates.values():
        fn()  # warm caches and lazy imports outside the clock
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name].append(_rate(fn, seconds))
    return Rates(samples)


def verdict(ok: bool) -> str:
    return "meets goal" if ok else "MISSES goal"

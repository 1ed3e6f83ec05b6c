"""A slow second reading of an input that failed, to find where it is cut off.

pydicom ends a data set quietly when the input runs out inside an element
(a short value, or a partial element header), so a truncated transfer can
look like a message that merely lacks its later elements. Reading it again
through a buffer that notes the first short read tells the two apart, and
names the element being read at that point.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

__all__ = ["PIXEL_TAGS", "Probe", "probe", "tag_location"]

PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_SPECIFIC_CHARACTER_SET = 0x00080005


def tag_location(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass(frozen=True, slots=True)
class Probe:
    truncated: bool
    last_tag: int | None  # the last top-level element whose header was read

    @property
    def location(self) -> str:
        return tag_location(self.last_tag) if self.last_tag is not None else "preamble"


class _ShortReadBuffer(BytesIO):
    """Notes whether a read came up short: the input ends inside something pydicom was reading."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._size = len(data)
        self.short = False

    def read(self, size: int | None = -1, /) -> bytes:
        start = self.tell()
        data = super().read(size)
        # Zero bytes exactly at the end is how a data set ends; anything else short is a cut.
        if size is not None and size > 0 and len(data) < size and (data or start != self._size):
            self.short = True
        return data


class _LastElement:
    """A pydicom ``stop_when`` callback: remembers the last top-level element, stops at pixel data."""

    __slots__ = ("tag",)

    def __init__(self) -> None:
        self.tag: int | None = None

    def __call__(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag in PIXEL_TAGS:
            return True
        self.tag = int(tag)
        return False


def probe(data: bytes, force: bool) -> Probe:
    buffer = _ShortReadBuffer(data)
    last = _LastElement()
    # This pass only looks for where reading stops; what failed was reported by the first one.
    with contextlib.suppress(Exception):
        read_partial(buffer, stop_when=last, force=force, specific_tags=[_SPECIFIC_CHARACTER_SET])
    return Probe(truncated=buffer.short, last_tag=last.tag)

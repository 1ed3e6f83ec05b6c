"""Typed access to the elements of one data set, with the DICOM location of every read.

``Elements.at`` always names the element being read, so that an unexpected
library error can still be reported where it happened.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from adapters._common import canonical_system
from adapters.dicom import _tags as tags
from adapters.dicom._items import ItemError, Node, read_items, value_of
from adapters.dicom._probe import tag_location
from adapters.dicom._text import TextDecoder
from hub.envelope import Coding, Notice
from hub.errors import DecodeError, InvalidMessage, MissingField

__all__ = ["Elements"]

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # leading zeros are common in the field, so not rejected


class Elements:
    __slots__ = ("_location", "_prefix", "_tag", "notices", "text")

    def __init__(self, text: TextDecoder) -> None:
        self.text = text
        self.notices: list[Notice] = []
        self._location = "preamble"
        # The location of the element being read, kept as its parts: formatting it for every
        # element read would cost more than reading many of them.
        self._prefix = ""
        self._tag: int | None = None

    @property
    def at(self) -> str:
        """The location of the element being read."""
        return self._location if self._tag is None else self._prefix + tag_location(self._tag)

    @at.setter
    def at(self, location: str) -> None:
        self._location = location
        self._tag = None

    def string(self, dataset: Node, tag: int, prefix: str = "") -> str | None:
        self._prefix = prefix
        self._tag = tag
        return self.text.text(dataset, tag, prefix)

    def person_name(self, dataset: Node, tag: int, prefix: str = "") -> str | None:
        self._prefix = prefix
        self._tag = tag
        return self.text.person_name(dataset, tag, prefix)

    def uid(self, dataset: Node, tag: int, prefix: str = "") -> str | None:
        value = self.string(dataset, tag, prefix)
        if value is not None and (len(value) > 64 or not _UID.fullmatch(value)):
            raise InvalidMessage("not a valid UID: digits and dots, at most 64 characters", location=self.at)
        return value

    def items(self, dataset: Node, tag: int, prefix: str = "") -> Sequence[Node]:
        """The items of a sequence element; empty when it is absent."""
        self._prefix = prefix
        self._tag = tag
        element = dataset.get_item(tag)
        if element is None:
            return ()
        if isinstance(element, RawDataElement):
            return self._parse_items(element)
        value = element.value
        if value is None or value in (b"", ""):
            return ()
        if not isinstance(value, DicomSequence):
            raise DecodeError("expected a sequence (VR SQ)", location=self.at)
        return value

    def _parse_items(self, element: RawDataElement) -> Sequence[Node]:
        if not element.value:
            return ()
        if element.VR not in (None, "SQ", "UN"):
            raise DecodeError(f"expected a sequence (VR SQ), found VR {element.VR}", location=self.at)
        # A sequence sent as UN is encoded Implicit VR Little Endian (PS3.5 6.2.2).
        implicit, little = (True, True) if element.VR == "UN" else (element.is_implicit_VR, element.is_little_endian)
        try:
            return read_items(element.value, implicit_vr=implicit, little_endian=little)
        except ItemError as exc:
            raise DecodeError(f"the sequence cannot be read: {exc}", location=self.at) from exc

    def integer(self, dataset: Node, tag: int, prefix: str = "") -> int | None:
        """A binary (US, UL, SS...) or IS integer, first value."""
        self._prefix = prefix
        self._tag = tag
        value = value_of(dataset, tag)
        if isinstance(value, (MultiValue, list, tuple)):
            value = value[0] if value else None
        if value is None or value == "":
            return None
        if not isinstance(value, (int, str, float)):
            raise DecodeError("expected an integer", location=self.at)
        return int(value)

    def decimal(self, dataset: Node, tag: int, prefix: str = "") -> float | None:
        """The first value of a DS element; None when absent, with a notice when it is not a finite number."""
        text = self.string(dataset, tag, prefix)
        if text is None:
            return None
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            self.notices.append(Notice(location=self.at, message=f"not a decimal number: {text[:16]!r}; ignored"))
            return None
        return number

    def coding(self, item: Node, prefix: str) -> Coding | None:
        """A Coding from a code sequence item (Code Value, Coding Scheme Designator, Code Meaning)."""
        code = (
            self.string(item, tags.CODE_VALUE, prefix)
            or self.string(item, tags.LONG_CODE_VALUE, prefix)
            or self.string(item, tags.URN_CODE_VALUE, prefix)
        )
        if code is None:
            return None
        return Coding(
            code=code,
            system=canonical_system(self.string(item, tags.CODING_SCHEME_DESIGNATOR, prefix)),
            display=self.string(item, tags.CODE_MEANING, prefix),
        )

    def first_coding(self, dataset: Node, tag: int, prefix: str = "") -> Coding | None:
        items = self.items(dataset, tag, prefix)
        if not items:
            return None
        location = f"{prefix}{tag_location(tag)}[0]"
        coding = self.coding(items[0], location)
        if coding is None:
            raise MissingField("the code item has no Code Value (0008,0100)", location=location + "(0008,0100)")
        return coding

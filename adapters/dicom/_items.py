"""The items of a sequence of defined length, read without building pydicom Datasets.

pydicom leaves a sequence of defined length raw until it is used, and then
builds a Dataset per item. Building Datasets dominated the adapter's own
cost: on the CT sample, the two items of Other Patient IDs Sequence took
27 us with ``read_sequence`` and 11 us as plain element maps from pydicom's
``data_element_generator``, and the adapter has to stay within 0.8x of a
bare ``dcmread``. So only the item framing (PS3.5 7.5) is read here; the
elements themselves are still read by pydicom.
"""

from __future__ import annotations

from io import BytesIO
from typing import Literal

from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator

__all__ = ["Item", "Node", "read_items", "value_of"]

_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF


class Item:
    """One sequence item: its elements by tag, raw until read."""

    __slots__ = ("_elements",)

    def __init__(self, elements: dict[int, RawDataElement | DataElement]) -> None:
        self._elements = elements

    def get_item(self, tag: int) -> RawDataElement | DataElement | None:
        return self._elements.get(tag)


Node = Dataset | Item


class ItemError(ValueError):
    """The sequence's item framing is broken."""


def read_items(value: bytes, *, implicit_vr: bool, little_endian: bool) -> list[Item]:
    fp = BytesIO(value)
    order: Literal["little", "big"] = "little" if little_endian else "big"
    items: list[Item] = []
    while header := fp.read(8):
        if len(header) < 8:
            raise ItemError("the sequence ends inside an item header")
        tag = int.from_bytes(header[:2], order) << 16 | int.from_bytes(header[2:4], order)
        length = int.from_bytes(header[4:8], order)
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM:
            raise ItemError(f"expected an item (FFFE,E000), found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if length == _UNDEFINED_LENGTH:  # the generator stops at the item delimiter
            elements = data_element_generator(fp, implicit_vr, little_endian)
        else:
            content = fp.read(length)
            if len(content) < length:
                raise ItemError("an item runs past the end of the sequence")
            elements = data_element_generator(BytesIO(content), implicit_vr, little_endian)
        items.append(Item({element.tag: element for element in elements}))
    return items


def value_of(node: Node, tag: int) -> object:
    """The converted value of an element (numbers, binary VRs); None when absent."""
    if isinstance(node, Dataset):
        return node[tag].value if tag in node else None
    element = node.get_item(tag)
    if element is None:
        return None
    if isinstance(element, RawDataElement):
        element = convert_raw_data_element(element)
    return element.value

"""Text values of DICOM elements, decoded per Specific Character Set (0008,0005).

pydicom decodes GB18030, GBK and ISO_IR 192 well, but two cases that Chinese
member sites send need our own handling:

- ``ISO 2022 IR 58`` (GB2312 through ISO 2022 code extension): pydicom 3.0.2
  leaves the ``ESC $ ) A`` designation in the decoded text. The designation
  only puts GB2312 into G1, so once the escape sequences are dropped the bytes
  are plain EUC-CN (ASCII in GL, GB2312 in GR).
- no Specific Character Set at all, with GBK bytes: pydicom silently turns
  them into Latin-1 mojibake. Here a per-sender fallback applies, and without
  one the sender is told to fix its configuration.

Values are decoded strictly: bytes that do not fit the declared character set
are a DecodeError at the element, never replacement characters.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence

from pydicom.charset import decode_bytes, python_encoding
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from adapters.dicom._items import Node
from adapters.dicom._probe import tag_location
from hub.errors import DecodeError

__all__ = ["TextDecoder", "format_person_name", "resolve_fallback_charset"]

_IR58_TERMS = frozenset({"ISO 2022 IR 58", "ISO 2022 58"})
_IR58_ESCAPES = (b"\x1b$)A", b"\x1b(B")  # G1 := GB2312; G0 := ASCII
_IR58_ESCAPES_TEXT = ("\x1b$)A", "\x1b(B")
# GB18030 decodes every GB2312 (EUC-CN) byte sequence the same way, and also
# the GBK-only characters that some senders slip into IR 58 text.
_IR58_CODEC = "gb18030"
_PN_DELIMITERS = {0x5C, 0x5E, 0x3D}
_TEXT_DELIMITERS = {0x5C}
_STRIP = " \x00"
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


def _codec_name(python_codec: str) -> str:
    return codecs.lookup(python_codec).name


def resolve_fallback_charset(charset: str) -> str:
    """The Python codec for a sender's fallback charset, given as a DICOM term or a codec name."""
    term = charset.strip()
    for candidate in (term, term.upper()):
        if candidate in python_encoding and candidate not in ("", "ISO_IR 6", "ISO 2022 IR 6"):
            return _codec_name(python_encoding[candidate])
    try:
        return _codec_name(term)
    except LookupError as exc:
        raise DecodeError(
            f"the fallback charset configured for this sender ({charset!r}) is neither a DICOM Specific"
            " Character Set term (GB18030, GBK, ISO_IR 192...) nor a Python codec name",
            location="(0008,0005)",
        ) from exc


class TextDecoder:
    """Decodes the text values of one data set.

    ``codec`` is the Python codec the text is read with: the declared
    character set's, the fallback's when none is declared, else ``ascii``.
    """

    __slots__ = ("_encodings", "_mode", "_problem", "codec")

    def __init__(self, terms: Sequence[str], fallback: str | None) -> None:
        declared = [term.strip(_STRIP) for term in terms]
        self._problem: str | None = None
        self._encodings: list[str] = []
        if not any(declared):
            self._mode = "fallback" if fallback else "ascii"
            self.codec = fallback or "ascii"
        elif _IR58_TERMS.intersection(declared):
            self._mode = "ir58"
            self.codec = _IR58_CODEC
            self._encodings = [python_encoding.get(term or "ISO_IR 6", "iso8859") for term in declared]
        elif len(declared) == 1:
            self._mode = "single"
            encoding = python_encoding.get(declared[0])
            if encoding is None:
                self._problem = f"unknown Specific Character Set {declared[0]!r}"
                self.codec = "ascii"
            else:
                self.codec = _codec_name(encoding)
        else:
            # Other ISO 2022 code extensions (Japanese, Korean...): pydicom handles their escapes.
            self._mode = "iso2022"
            unknown = [term for term in declared[1:] if term not in python_encoding]
            if unknown:
                self._problem = f"unknown Specific Character Set term {unknown[0]!r}"
            self._encodings = [python_encoding.get(term or "ISO_IR 6", "iso8859") for term in declared]
            self.codec = _codec_name(self._encodings[1] if len(self._encodings) > 1 else self._encodings[0])

    def decode(self, value: bytes, prefix: str, tag: int, *, person_name: bool = False) -> str:
        """``value`` as text; on failure a DecodeError at ``prefix`` + the tag (built only then: this is hot)."""
        if value.isascii() and b"\x1b" not in value:
            return value.decode("ascii")
        location = prefix + tag_location(tag)
        if self._problem is not None:
            raise DecodeError(
                f"{self._problem}: non-ASCII text cannot be read; use a defined term such as GB18030 or ISO_IR 192",
                location="(0008,0005)",
            )
        if self._mode == "ascii":
            raise DecodeError(
                "non-ASCII text but no Specific Character Set (0008,0005): set it on the sending device"
                " (GB18030 or ISO_IR 192), or configure a fallback charset for this sender",
                location=location,
            )
        try:
            if self._mode == "ir58":
                return self._decode_ir58(value, person_name=person_name)
            if self._mode == "iso2022":
                return self._decode_iso2022(value, person_name=person_name)
            return value.decode(self.codec)
        except UnicodeError as exc:
            raise DecodeError(
                f"the bytes are not valid {self.codec} text; check Specific Character Set (0008,0005)"
                " against what the device really writes",
                location=location,
            ) from exc

    def _decode_ir58(self, value: bytes, *, person_name: bool) -> str:
        for escape in _IR58_ESCAPES:
            value = value.replace(escape, b"")
        if b"\x1b" in value:  # other code extensions mixed in: leave them to pydicom
            return self._decode_iso2022(value, person_name=person_name)
        return value.decode(_IR58_CODEC)

    def _decode_iso2022(self, value: bytes, *, person_name: bool) -> str:
        return decode_bytes(value, self._encodings, _PN_DELIMITERS if person_name else _TEXT_DELIMITERS)

    def _clean_converted(self, text: str) -> str:
        # A value pydicom already converted (a Dataset the caller built or read) keeps the
        # IR 58 designations pydicom left behind; they carry no text.
        if self._mode == "ir58":
            for escape in _IR58_ESCAPES_TEXT:
                text = text.replace(escape, "")
        return text

    def text(self, dataset: Node, tag: int, prefix: str = "", *, person_name: bool = False) -> str | None:
        """The first value of a string element, stripped of padding; None when absent or empty."""
        element = dataset.get_item(tag)
        if element is None:
            return None
        value = element.value
        if value is None:
            return None
        if isinstance(value, bytes):
            text = self.decode(value, prefix, tag, person_name=person_name)
        elif isinstance(value, PersonName):
            original = getattr(value, "original_string", None)
            if isinstance(original, bytes):
                text = self.decode(original, prefix, tag, person_name=True)
            else:
                text = self._clean_converted(str(value))
        elif isinstance(value, (MultiValue, list, tuple)):
            text = self._clean_converted(str(value[0])) if value else ""
        else:
            text = self._clean_converted(str(value))
        first = text.split("\\", 1)[0].strip(_STRIP)
        return first or None

    def person_name(self, dataset: Node, tag: int, prefix: str = "") -> str | None:
        text = self.text(dataset, tag, prefix, person_name=True)
        return format_person_name(text) if text else None


def format_person_name(value: str) -> str | None:
    """A display name from a DICOM PN value.

    The ideographic group (``Wang^Xiuying=王^秀英``) is preferred, as the
    alphabetic group of a Chinese name is usually a romanisation. CJK names
    are joined without separators (王秀英); others family name first, with
    spaces (Zhang Wei).
    """
    groups = value.split("=")
    chosen = groups[0]
    if len(groups) > 1 and groups[1].replace("^", "").strip():
        chosen = groups[1]
    parts = [part.strip() for part in chosen.split("^")[:3] if part.strip()]
    if not parts:
        return None
    separator = "" if any(_CJK.search(part) for part in parts) else " "
    return separator.join(parts)

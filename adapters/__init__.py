"""Pure format adapters: bytes in, envelopes out, and back. No I/O, no broker.

    from adapters import hl7v2, fhir, dicom

``detect_format`` tells which adapter a byte string is for.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from hub.errors import DecodeError

if TYPE_CHECKING:
    from hub.envelope import Centre, Exam

__all__ = ["Format", "detect_format", "dicom", "fhir", "hl7v2", "read"]

Format = Literal["hl7v2", "fhir", "dicom"]

_BOM = b"\xef\xbb\xbf"


def detect_format(raw: bytes) -> Format | None:
    """The format of ``raw`` from its first bytes, or None when it is none of the three."""
    if len(raw) >= 132 and raw[128:132] == b"DICM":
        return "dicom"
    head = raw.removeprefix(_BOM).lstrip(b" \t\r\n\x0b")
    if head.startswith(b"MSH") and len(head) > 3:
        return "hl7v2"
    if head.startswith((b"{", b"[")):
        return "fhir"
    return None


def read(
    raw: bytes,
    *,
    format: Format | None = None,
    origin: str | None = None,
    charset: str | None = None,
    centres: Mapping[str, Centre] | None = None,
    received_at: datetime | None = None,
) -> list[Exam]:
    """Exams from ``raw`` in any supported format, detected from its first bytes when not given.

    ``charset`` is the sender's fallback for HL7 v2 and DICOM; FHIR JSON is always UTF-8.
    """
    from adapters import dicom, fhir, hl7v2

    kind = format or detect_format(raw)
    if kind == "hl7v2":
        return hl7v2.read(raw, charset=charset, origin=origin, centres=centres, received_at=received_at)
    if kind == "fhir":
        return fhir.read(raw, origin=origin, centres=centres, received_at=received_at)
    if kind == "dicom":
        return [dicom.read(raw, origin=origin, charset=charset, received_at=received_at)]
    raise DecodeError("not HL7 v2 (MSH...), FHIR JSON ({...}) or DICOM Part 10 (DICM at byte 128)", location="$")


def __getattr__(name: str) -> object:
    # Import the format modules on first use, so `import adapters` stays cheap.
    if name in ("dicom", "fhir", "hl7v2"):
        import importlib

        return importlib.import_module(f"adapters.{name}")
    raise AttributeError(f"module 'adapters' has no attribute {name!r}")

"""FHIR R4 JSON to exams, and reports back to FHIR.

``read`` takes a message, transaction, batch or collection Bundle, or a lone
ServiceRequest or DiagnosticReport, validates it with the fhir.resources R4B
models and returns one ``Exam`` per ServiceRequest (or per DiagnosticReport
that answers none). ``write_report`` turns a ``Report`` into a DiagnosticReport
with its patient and observations contained.

Failures are ``AdapterError`` subclasses whose locations are FHIR paths such as
``Bundle.entry[2].resource.subject``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from adapters._common import CHINA_TZ, utc_now
from adapters.fhir._exams import Context, read_exams
from adapters.fhir._parse import parse
from adapters.fhir._report import write_report
from hub.envelope import Centre, Exam

__all__ = ["read", "write_report"]


def read(
    raw: bytes | Mapping[str, Any],
    *,
    origin: str | None = None,
    centres: Mapping[str, Centre] | None = None,
    received_at: datetime | None = None,
) -> list[Exam]:
    """The exams in a FHIR R4 JSON message (bytes, or the already-decoded dict).

    ``origin`` overrides the sending institution the message names; ``centres``
    maps order codes to centres ahead of the category's section code.
    """
    if received_at is None:
        received_at = utc_now()
    elif received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=CHINA_TZ)
    context = Context(
        origin=origin.strip() if origin and origin.strip() else None, centres=centres, received_at=received_at
    )
    return read_exams(parse(raw), context)

"""HL7 v2 adapter: order and result messages in, Exam envelopes out; ORU^R01 reports and ACKs back.

    exams = hl7v2.read(raw)                       # ORU^R01, ORM^O01, OML^O21, OMG^O19
    reply = hl7v2.ack(raw, "AA")                  # original-mode ACK for the sender
    message = hl7v2.write_report(report)          # ORU^R01 v2.5.1 for the member site (strict=True: hl7apy)
    hl7v2.read_ack(reply).code                    # "AA": what a member answered to a report
    hl7v2.sender(raw)                             # MSH-4, read before the charset is known
    hl7v2.control_id(raw)                         # MSH-10, which an ACK's MSA-2 echoes

Pure: bytes in, envelopes out. The reader, the ACK writer and the report
writer work on ER7 text directly for speed; hl7apy checks structure when
``read(..., strict=True)`` asks for it and builds the report under strict
validation when ``write_report(..., strict=True)`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from adapters.hl7v2._ack import ack
from adapters.hl7v2._peek import Ack, control_id, read_ack, sender
from adapters.hl7v2._reader import read as _read
from adapters.hl7v2._strict import validate
from adapters.hl7v2._writer import write_report
from hub.envelope import Centre, Exam

__all__ = ["Ack", "ack", "control_id", "read", "read_ack", "sender", "write_report"]


def read(
    raw: bytes,
    *,
    charset: str | None = None,
    origin: str | None = None,
    centres: Mapping[str, Centre] | None = None,
    received_at: datetime | None = None,
    strict: bool = False,
) -> list[Exam]:
    """One Exam per order group (ORC + OBR, or OBR alone) of an HL7 v2 message.

    ``charset`` is the sender's character set when MSH-18 is empty (default
    UTF-8). ``origin`` overrides MSH-4. ``centres`` maps order codes (OBR-4.1)
    to centres ahead of the OBR-24 section. ``strict`` also checks the message
    structure with hl7apy (about 30 messages a second). Every failure is an
    AdapterError whose location names the segment and field; a naive
    ``received_at`` is a TypeError (a caller's bug, not the sender's).
    """
    exams = _read(raw, charset=charset, origin=origin, centres=centres, received_at=received_at)
    if strict:
        validate(raw, charset)
    return exams

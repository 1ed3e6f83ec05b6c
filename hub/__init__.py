"""Consortium shared-services hub.

The envelope (``Exam``, ``Report`` and their parts) and the error tree are the
public surface; adapters live in the ``adapters`` package.
"""

from hub.envelope import (
    SCHEMA_VERSION,
    Attachment,
    Centre,
    Coding,
    Exam,
    Identifier,
    Notice,
    Observation,
    Patient,
    Performer,
    Priority,
    Report,
    ReportStatus,
    Source,
    Waveform,
)
from hub.errors import (
    AdapterError,
    DecodeError,
    EnvelopeError,
    HubError,
    InvalidMessage,
    MissingField,
    NotAsDeclared,
    Problem,
    UnsupportedMessage,
)

__all__ = [
    "SCHEMA_VERSION",
    "AdapterError",
    "Attachment",
    "Centre",
    "Coding",
    "DecodeError",
    "EnvelopeError",
    "Exam",
    "HubError",
    "Identifier",
    "InvalidMessage",
    "MissingField",
    "NotAsDeclared",
    "Notice",
    "Observation",
    "Patient",
    "Performer",
    "Priority",
    "Problem",
    "Report",
    "ReportStatus",
    "Source",
    "UnsupportedMessage",
    "Waveform",
]

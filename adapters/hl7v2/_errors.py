"""A private refinement of InvalidMessage, so an ACK can tell "required field missing" (HL7 error 101)."""

from __future__ import annotations

from hub.errors import InvalidMessage

__all__ = ["MissingField"]


class MissingField(InvalidMessage):
    """A required field or segment is absent or empty."""

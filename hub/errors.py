"""The hub's one error tree.

    HubError
    ├── AdapterError            input that an adapter cannot turn into an envelope
    │   ├── DecodeError         bytes that are not a readable message (charset, syntax, JSON, DICOM)
    │   ├── UnsupportedMessage  a readable message of a kind the hub does not take
    │   └── InvalidMessage      a supported message whose content breaks a rule
    │       ├── MissingField    a required segment, field, element or reference is absent
    │       └── NotAsDeclared   not the message its transport announced (a C-STORE's Affected SOP UIDs)
    ├── EnvelopeError           bytes that are not a valid envelope of this schema version
    ├── ConfigError             a consortium config that is unreadable or breaks a rule (file, key, what)
    └── BrokerError             the broker did not take a message
        ├── BrokerUnavailable   no connection, or it dropped before the confirm: try again later
        ├── Unroutable          no queue is bound for the routing key (publishing is mandatory)
        └── PublishRefused      the broker nacked the message or refused it (e.g. a forged user_id)

Every AdapterError carries one or more problems. A problem names where it is
(an HL7 segment-field such as ``PID-3``, a FHIR path such as
``Bundle.entry[2].resource.subject``, or a DICOM tag such as ``(0010,0010)``)
and says what a sender can do about it. Library exceptions are mapped at the
adapter boundary with ``raise ... from exc``; no KeyError, IndexError or
UnicodeDecodeError leaves an adapter.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

__all__ = [
    "AdapterError",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "DecodeError",
    "EnvelopeError",
    "HubError",
    "InvalidMessage",
    "MissingField",
    "NotAsDeclared",
    "Problem",
    "PublishRefused",
    "Unroutable",
    "UnsupportedMessage",
    "raised_at",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input, and where."""

    location: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class AdapterError(HubError):
    """An input could not be turned into an envelope."""

    def __init__(
        self,
        message: str,
        *,
        location: str | None = None,
        problems: tuple[Problem, ...] | list[Problem] = (),
    ) -> None:
        first = Problem(location, message)
        self.problems: tuple[Problem, ...] = tuple(problems) or (first,)
        super().__init__(str(self.problems[0]) if problems else str(first))

    @property
    def location(self) -> str | None:
        return self.problems[0].location

    @property
    def message(self) -> str:
        return self.problems[0].message


class DecodeError(AdapterError):
    """The bytes are not a readable message: charset, syntax, JSON or DICOM encoding."""


class UnsupportedMessage(AdapterError):
    """A readable message of a type, version or class the hub does not take."""


class InvalidMessage(AdapterError):
    """A supported message whose content breaks a rule (a required field is missing, say)."""


class MissingField(InvalidMessage):
    """A required segment, field, element or reference is absent or empty (HL7 error code 101)."""


class NotAsDeclared(InvalidMessage):
    """The message is not the one its transport announced: a data set whose SOP Class or Instance UID is
    not the C-STORE request's Affected one."""


class EnvelopeError(HubError):
    """Bytes that do not decode to an envelope of this schema version."""


class ConfigError(HubError):
    """The consortium config cannot be read or breaks a rule; the message names the file and key."""


class BrokerError(HubError):
    """The broker did not take a message; a sender must not be acknowledged."""


class BrokerUnavailable(BrokerError):
    """No connection to the broker, or it dropped before the message was confirmed."""


class Unroutable(BrokerError):
    """No queue is bound for the message's routing key."""


class PublishRefused(BrokerError):
    """The broker nacked the message, or refused it outright (a user_id that is not the login user)."""


def raised_at(exc: BaseException) -> str:
    """Where an exception was raised (file:line), for logs: never its message, which may hold patient data."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"

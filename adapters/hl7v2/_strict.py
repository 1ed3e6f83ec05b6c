"""Structure validation with hl7apy, for ``read(..., strict=True)``.

hl7apy raises only its first complaint and treats a choice group (such as
ORM^O01's OBR/RQD/RQ1/... choice in v2.5) as a sequence, which rejects every
valid ORM. So this walks the parsed tree itself: hl7apy checks each segment's
fields, this module checks group cardinality, and segments hl7apy could not
place in the message structure (it drops them silently) are reported too.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import hl7apy
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from adapters.hl7v2._er7 import location
from adapters.hl7v2._reader import Parsed, parse
from hub.errors import InvalidMessage, Problem, UnsupportedMessage

__all__ = ["validate"]

_ELEMENT = re.compile(r"\b([A-Z][A-Z0-9]{2})_(\d+)(?:\.[A-Z0-9]+_(\d+))?")


def validate(raw: bytes, charset: str | None) -> None:
    """Raise InvalidMessage listing what hl7apy finds wrong with the structure of ``raw``."""
    parsed = parse(raw, charset)
    version = parsed.msh.field(12).split(parsed.delimiters.component, 1)[0].strip()
    if version not in hl7apy.SUPPORTED_LIBRARIES:
        raise UnsupportedMessage(
            f"strict mode validates HL7 versions {', '.join(sorted(hl7apy.SUPPORTED_LIBRARIES))}, not {version!r}",
            location="MSH-12",
        )
    try:
        message = parse_message(_er7(parsed), validation_level=VALIDATION_LEVEL.TOLERANT)
    except (HL7apyException, ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise InvalidMessage(f"hl7apy cannot parse the message: {exc}", location="MSH") from exc
    problems: list[Problem] = []
    placed: Counter[str] = Counter()
    _walk(message, problems, placed)
    counts: Counter[str] = Counter()
    for segment in parsed.segments:
        counts[segment.name] += 1
        if counts[segment.name] > placed[segment.name] and not segment.name.startswith("Z"):
            problems.append(
                Problem(segment.where(), f"segment {segment.name} has no place in the {message.name} structure")
            )
    if problems:
        raise InvalidMessage(problems[0].message, location=problems[0].location, problems=problems)


def _er7(parsed: Parsed) -> str:
    field = parsed.delimiters.field
    lines = [
        field.join(s.fields[:1] + s.fields[2:]) if s.name == "MSH" else field.join(s.fields) for s in parsed.segments
    ]
    return "\r".join(lines)


def _walk(element: Any, problems: list[Problem], placed: Counter[str]) -> None:
    if element.classname == "Segment":
        placed[element.name] += 1
        try:
            element.validate()
        except (HL7apyException, ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            problems.append(Problem(_where(element.name, placed[element.name], str(exc)), f"hl7apy: {exc}"))
        return
    reference = getattr(element, "reference", None)
    if reference is None:
        problems.append(
            Problem("MSH-9", "hl7apy knows no structure for this message; check MSH-9.3 (message structure)")
        )
        for child in element.children:
            _walk(child, problems, placed)
        return
    kind, children = reference[0], reference[1]
    present = Counter(child.name for child in element.children)
    if kind == "choice":
        if not any(present[ref[0]] for ref in children):
            problems.append(Problem(None, f"{element.name} needs one of {', '.join(ref[0] for ref in children)}"))
    else:
        for ref in children:
            name, (least, most) = ref[0], ref[2]
            if present[name] < least:
                where = name if len(name) == 3 else None
                problems.append(Problem(where, f"{element.name} misses required {name}"))
            elif most != -1 and present[name] > most:
                problems.append(Problem(None, f"{element.name} allows {name} at most {most} time(s)"))
    for child in element.children:
        _walk(child, problems, placed)


def _where(segment: str, nth: int, complaint: str) -> str:
    match = _ELEMENT.search(complaint)
    if match is None or match.group(1) != segment:
        return location(segment, nth)
    where = location(segment, nth, int(match.group(2)))
    return f"{where}.{match.group(3)}" if match.group(3) else where

"""A small, fast ER7 (pipe-and-hat) layer: delimiters, segments, escaping.

hl7apy parses a 16-segment ORU at ~40 msg/s here and python-hl7 at ~900, both
below the hub's figure, so the hot path splits strings itself and unescapes only
the fields a reader asks for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hub.errors import DecodeError

__all__ = [
    "DEFAULT_DELIMITERS",
    "Delimiters",
    "Segment",
    "escape",
    "location",
    "parse_delimiters",
    "split_segments",
    "unescape",
]

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_ANY_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        """The MSH-2 value."""
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT_DELIMITERS = Delimiters()


def parse_delimiters(msh_line: str) -> Delimiters:
    """The delimiters MSH-1 and MSH-2 declare; DecodeError at MSH when they are not usable."""
    if not msh_line.startswith("MSH") or len(msh_line) < 8:
        raise DecodeError(
            "the message does not start with a complete MSH segment (MSH, field separator, encoding characters)",
            location="MSH",
        )
    field = msh_line[3]
    end = msh_line.find(field, 4)
    chars = msh_line[4:] if end == -1 else msh_line[4:end]
    # MSH-2 holds four characters, or five from v2.7 on (the truncation character, unused here).
    if len(chars) not in (4, 5):
        raise DecodeError("MSH-2 must hold the four encoding characters, such as ^~\\&", location="MSH-2")
    delimiters = (field, *chars)
    if len(set(delimiters)) != len(delimiters) or any(c.isalnum() or c.isspace() for c in delimiters):
        raise DecodeError(
            "MSH-1 and MSH-2 must be distinct characters that are neither letters, digits nor spaces",
            location="MSH-2",
        )
    return Delimiters(field, chars[0], chars[1], chars[2], chars[3])


def split_segments(text: str, field: str) -> list[str]:
    """The segments of ``text``, separated by CR, LF or CRLF; empty lines are dropped.

    A line that does not start with a segment ID and follows a bare LF is taken as
    a line break the sender left unescaped inside the previous segment's last field.
    """
    if "\n" not in text:
        lines = text.split("\r")
        if all(_is_segment_start(line, field) for line in lines if line):
            return [line for line in lines if line]
    segments: list[str] = []
    previous_break = ""
    position = 0
    for number, match in enumerate(_ANY_BREAK.finditer(text + "\r"), start=1):
        line = text[position : match.start()]
        position = match.end()
        if line:
            if _is_segment_start(line, field):
                segments.append(line)
            elif previous_break == "\n" and segments:
                segments[-1] += "\n" + line
            else:
                raise DecodeError(
                    f"line {number} does not start with a segment ID followed by the field separator",
                    location=f"segment {len(segments) + 1}",
                )
        previous_break = match.group()
    return segments


def _is_segment_start(line: str, field: str) -> bool:
    return _SEGMENT_ID.match(line) is not None and (len(line) == 3 or line[3] == field)


def location(name: str, nth: int, field: int | None = None, repetition: int | None = None) -> str:
    """An HL7 location such as ``PID-3``, ``OBX[4]-5`` or ``PID-3[2]``; the first occurrence has no index."""
    where = name if nth == 1 else f"{name}[{nth}]"
    if field is None:
        return where
    where = f"{where}-{field}"
    return where if repetition is None or repetition == 1 else f"{where}[{repetition}]"


class Segment:
    """One segment; ``field(n)`` is the raw (still escaped) text of field n, MSH counted the HL7 way."""

    __slots__ = ("fields", "name", "nth")

    def __init__(self, line: str, delimiters: Delimiters, nth: int) -> None:
        fields = line.split(delimiters.field)
        if fields[0] == "MSH":
            fields.insert(1, delimiters.field)
        self.fields = fields
        self.name = fields[0]
        self.nth = nth

    def field(self, n: int) -> str:
        fields = self.fields
        return fields[n] if n < len(fields) else ""

    def where(self, field: int | None = None, repetition: int | None = None) -> str:
        return location(self.name, self.nth, field, repetition)


_LINE_BREAK = re.compile(r"\.br|\.sp\s*\d*")
# Highlighting, formatting commands, ISO 2022 character-set switches and locally defined escapes.
_DROPPED = re.compile(r"H|N|\.fi|\.nf|\.ce|\.(?:in|ti|sk)\s*[+-]?\d*|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{6}|Z[0-9A-Za-z]*")
_HEX = re.compile(r"X((?:[0-9A-Fa-f]{2})+)")


def unescape(value: str, delimiters: Delimiters, codec: str = "utf-8") -> str:
    """Resolve HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\ ...) in one leaf value.

    Highlighting and character-set switches are dropped; an escape character
    without a closing one, or an unknown sequence, is kept as written.
    """
    esc = delimiters.escape
    if esc not in value:
        return value
    out: list[str] = []
    position = 0
    while True:
        start = value.find(esc, position)
        if start == -1:
            out.append(value[position:])
            break
        end = value.find(esc, start + 1)
        if end == -1:
            out.append(value[position:])
            break
        out.append(value[position:start])
        replacement = _resolve(value[start + 1 : end], delimiters, codec)
        if replacement is None:
            # Not an escape sequence: keep the escape character and rescan from the next one.
            out.append(esc)
            position = start + 1
            continue
        out.append(replacement)
        position = end + 1
    return "".join(out)


def _resolve(body: str, d: Delimiters, codec: str) -> str | None:
    simple = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": d.escape}
    if body in simple:
        return simple[body]
    if _LINE_BREAK.fullmatch(body):
        return "\n"
    hex_bytes = _HEX.fullmatch(body)
    if hex_bytes:
        return bytes.fromhex(hex_bytes.group(1)).decode(codec, "replace")
    if _DROPPED.fullmatch(body):
        return ""
    return None


def escape(text: str, delimiters: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Escape ``text`` for one leaf value; line breaks become \\.br\\."""
    esc = delimiters.escape
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in (
        (delimiters.field, "F"),
        (delimiters.component, "S"),
        (delimiters.subcomponent, "T"),
        (delimiters.repetition, "R"),
    ):
        if char in out:
            out = out.replace(char, f"{esc}{code}{esc}")
    if "\r" in out or "\n" in out:
        out = out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{esc}.br{esc}")
    return out

"""MSH-18 character sets: which Python codec reads a message, and how to name one in MSH-18."""

from __future__ import annotations

from dataclasses import dataclass

from hub.errors import DecodeError

__all__ = ["Decoded", "codec_for", "decode_message", "label_for", "scrape_header"]

UTF8_BOM = b"\xef\xbb\xbf"

# HL7 table 0211 names and the variants senders really put in MSH-18, compared with
# case, spaces, hyphens, underscores and slashes removed.
_CODECS = {
    "ASCII": "ascii",
    "USASCII": "ascii",
    "UNICODEUTF8": "utf-8",
    "UTF8": "utf-8",
    "ISOIR192": "utf-8",
    # GBK and GB 2312 are subsets of GB 18030, and senders that say GBK often send
    # GB 18030-only characters (rare name characters), so all of them read as GB 18030.
    "GB180302000": "gb18030",
    "GB180302005": "gb18030",
    "GB180302022": "gb18030",
    "GB18030": "gb18030",
    "GBK": "gb18030",
    "CP936": "gb18030",
    "GB2312": "gb18030",
    "EUCCN": "gb18030",
    "BIG5": "big5",
    "LATIN1": "iso8859-1",
    **{f"8859{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    **{f"ISO8859{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}

_LABELS = {
    "ascii": "ASCII",
    "utf-8": "UNICODE UTF-8",
    "gb18030": "GB 18030-2000",
    "big5": "BIG-5",
    **{f"iso8859-{n}": f"8859/{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}

_IGNORED = str.maketrans("", "", " -_/.")


def codec_for(label: str) -> str | None:
    """The Python codec for an MSH-18 value (or a codec name), or None when it is not one we read."""
    return _CODECS.get(label.upper().translate(_IGNORED))


def label_for(codec: str) -> str:
    """The HL7 table 0211 name of a codec returned by ``codec_for``."""
    return _LABELS[codec]


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    codec: str
    msh18: str


def scrape_header(data: bytes, fallback: str | None) -> tuple[str, str]:
    """The MSH line as text and its MSH-18 value, read before the message's charset is known.

    Every charset we take is ASCII-compatible, but GB 18030 trail bytes can equal
    ``|`` or ``^``; decoding the line first (UTF-8, then the sender's fallback, then
    GB 18030) keeps those bytes inside their characters.
    """
    end = len(data)
    for stop in (b"\r", b"\n"):
        found = data.find(stop, 0, end)
        if found != -1:
            end = found
    line_bytes = data[:end]
    line = ""
    for codec in ("utf-8", fallback, "gb18030", "iso8859-1"):
        if codec is None:
            continue
        try:
            line = line_bytes.decode(codec)
            break
        except UnicodeDecodeError:
            continue
    if len(line) < 8 or not line.startswith("MSH"):
        return line, ""
    fields = line.split(line[3])
    if len(fields) < 18:
        return line, ""
    repetition = fields[1][1:2] or "~"
    return line, fields[17].split(repetition)[0].strip()


def decode_message(raw: bytes, fallback: str | None) -> Decoded:
    """Decode a whole message with the codec MSH-18 names, else ``fallback``, else UTF-8."""
    bom = raw.startswith(UTF8_BOM)
    data = (raw[len(UTF8_BOM) :] if bom else raw).lstrip(b" \t\r\n\x0b")
    fallback_codec = _fallback_codec(fallback, bom=bom)
    _, msh18 = scrape_header(data, fallback_codec)
    if msh18:
        codec = codec_for(msh18)
        if codec is None:
            supported = "UNICODE UTF-8, GB 18030-2000 (or GBK), ASCII, 8859/1"
            raise DecodeError(f"MSH-18 names a character set we do not read; use one of {supported}", location="MSH-18")
    else:
        codec = fallback_codec
    try:
        return Decoded(data.decode(codec), codec, msh18)
    except UnicodeDecodeError as exc:
        segment = _segment_at(data, exc.start)
        declared = f"MSH-18 '{msh18}'" if msh18 else "the sender's configured charset"
        raise DecodeError(
            f"byte 0x{data[exc.start]:02x} is not valid {codec} ({declared}); send the segment in the declared charset",
            location=segment,
        ) from exc


def _fallback_codec(fallback: str | None, *, bom: bool) -> str:
    if bom:
        return "utf-8"
    if fallback is None:
        return "utf-8"
    codec = codec_for(fallback)
    if codec is None:
        raise DecodeError(
            f"MSH-18 is empty and the configured fallback charset {fallback!r} is unknown", location="MSH-18"
        )
    return codec


def _segment_at(data: bytes, offset: int) -> str:
    """The location ("OBX[3]", "PID") of the segment holding byte ``offset``."""
    counts: dict[bytes, int] = {}
    name = b"MSH"
    start = 0
    while True:
        line_end = min((i for i in (data.find(b"\r", start), data.find(b"\n", start)) if i != -1), default=len(data))
        if line_end > start:
            name = data[start : start + 3]
            counts[name] = counts.get(name, 0) + 1
        if line_end >= offset or line_end >= len(data):
            break
        start = line_end + 1
    label = name.decode("ascii", "replace") if name.isalnum() else "segment"
    nth = counts.get(name, 1)
    return label if nth == 1 else f"{label}[{nth}]"

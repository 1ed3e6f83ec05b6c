"""PID and OBX segments onto the envelope's Patient, Observation and Attachment."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from adapters._common import RESIDENT_ID_SYSTEM, canonical_system, in_source, split_resident_ids
from adapters.hl7v2._er7 import Delimiters, Segment, unescape
from adapters.hl7v2._values import OBSERVATION_STATUS, SEX, media_type, parse_date, parse_dtm, parse_number
from hub.envelope import Attachment, Coding, Identifier, Notice, Observation, Patient
from hub.errors import InvalidMessage, MissingField

__all__ = ["Context", "read_observations", "read_patient"]

_RESIDENT_OID = RESIDENT_ID_SYSTEM.removeprefix("urn:oid:")
_RESIDENT_TYPES = frozenset({"NI", "ID", "身份证"})
_TEXT_TYPES = frozenset({"ST", "TX", "FT"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})


class Context:
    """What every field reader needs: the delimiters, the codec, the raw bytes (for attachment URIs)."""

    __slots__ = ("_dtm", "codec", "comp", "delimiters", "esc", "raw", "rep", "sub")

    def __init__(self, delimiters: Delimiters, codec: str, raw: bytes) -> None:
        self.delimiters = delimiters
        self.codec = codec
        self.raw = raw
        self.comp = delimiters.component
        self.rep = delimiters.repetition
        self.sub = delimiters.subcomponent
        self.esc = delimiters.escape
        self._dtm: dict[str, datetime | None] = {}

    def leaf(self, value: str) -> str:
        """A leaf value, unescaped and stripped."""
        if self.esc in value:
            value = unescape(value, self.delimiters, self.codec)
        return value.strip()

    def components(self, value: str) -> list[str]:
        return value.split(self.comp)

    def component(self, value: str, n: int) -> str:
        """Component n (1-based) of the first repetition, unescaped; its first subcomponent for composites."""
        if not value:
            return ""
        if self.rep in value:
            value = value.split(self.rep, 1)[0]
        if n == 1:
            if self.comp in value:
                value = value.split(self.comp, 1)[0]
        else:
            parts = value.split(self.comp)
            if n > len(parts):
                return ""
            value = parts[n - 1]
        if self.sub in value:
            value = value.split(self.sub, 1)[0]
        if self.esc in value:
            value = unescape(value, self.delimiters, self.codec)
        return value.strip()

    def dtm(self, value: str) -> datetime | None:
        """parse_dtm, remembered for the message: OBX-14 often repeats one time for every result."""
        try:
            return self._dtm[value]
        except KeyError:
            parsed = self._dtm[value] = parse_dtm(value)
            return parsed


def read_patient(pid: Segment, ctx: Context) -> tuple[Patient, tuple[Notice, ...]]:
    d = ctx.delimiters
    candidates: list[tuple[Identifier, str, bool]] = []
    seen: set[str] = set()
    for number, repetition in enumerate(pid.field(3).split(d.repetition), start=1):
        parts = ctx.components(repetition)
        value = ctx.leaf(parts[0].split(d.subcomponent, 1)[0])
        if not value:
            continue
        authority = parts[3].split(d.subcomponent) if len(parts) > 3 else []
        namespace, universal, universal_type = (ctx.leaf(p) for p in (*authority, "", "", "")[:3])
        id_type = ctx.leaf(parts[4].split(d.subcomponent, 1)[0]) if len(parts) > 4 else ""
        system = _system(namespace, universal, universal_type)
        claims = (
            id_type.upper() in _RESIDENT_TYPES
            or _RESIDENT_OID in (universal, namespace)
            or system == RESIDENT_ID_SYSTEM
        )
        identifier = Identifier(value=value, system=system, type=id_type or None)
        candidates.append((identifier, pid.where(3, number), claims))
        seen.add(value)
    legacy = ctx.component(pid.field(19), 1)
    if legacy and legacy not in seen:
        # PID-19 (SSN in the standard) is where many Chinese HIS put the 身份证 number.
        candidates.append((Identifier(value=legacy, type="SS"), pid.where(19), True))
    national_id, local_ids, notices = split_resident_ids(candidates)

    birth_date, well_formed = parse_date(ctx.component(pid.field(7), 1))
    if not well_formed:
        raise InvalidMessage("birth date is not an HL7 date (YYYYMMDD)", location=pid.where(7))
    if birth_date is None and pid.field(7):
        notices += (Notice(location=pid.where(7), message="birth date holds no day; left empty"),)
    patient = Patient(
        national_id=national_id,
        local_ids=local_ids,
        name=_name(pid.field(5), ctx),
        sex=SEX.get(ctx.component(pid.field(8), 1).upper(), "unknown"),
        birth_date=birth_date,
    )
    return patient, notices


def _system(namespace: str, universal: str, universal_type: str) -> str | None:
    if universal:
        kind = universal_type.upper()
        if kind == "ISO" or (not kind and universal.replace(".", "").isdigit()):
            return f"urn:oid:{universal}"
        return universal
    return namespace or None


def _name(value: str, ctx: Context) -> str | None:
    parts = ctx.components(value.split(ctx.delimiters.repetition, 1)[0])
    family = ctx.leaf(parts[0].split(ctx.delimiters.subcomponent, 1)[0])
    given = ctx.leaf(parts[1]) if len(parts) > 1 else ""
    if family and given:
        return family + given if _is_cjk(family + given) else f"{family} {given}"
    return family or given or None


def _is_cjk(text: str) -> bool:
    return any("\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or ch >= "\U00020000" for ch in text)


@dataclass(slots=True)
class Results:
    observations: list[Observation] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


def read_observations(segments: list[Segment], ctx: Context) -> Results:
    results = Results()
    for obx in segments:
        value_type = ctx.component(obx.field(2), 1).upper()
        if value_type in ("ED", "RP"):
            attachment = _attachment(obx, value_type, ctx)
            if attachment is not None:
                results.attachments.append(attachment)
            continue
        value = _value(obx, value_type, ctx, results.notices)
        observed_at = None
        if obx.field(14):
            observed_at = ctx.dtm(ctx.component(obx.field(14), 1))
            if observed_at is None:
                raise InvalidMessage("observation time is not an HL7 date/time", location=obx.where(14))
        results.observations.append(
            Observation(
                code=_coding(obx, ctx),
                value=value,
                unit=ctx.component(obx.field(6), 1) or None,
                reference_range=ctx.leaf(obx.field(7)) or None,
                flag=ctx.component(obx.field(8), 1) or None,
                status=OBSERVATION_STATUS.get(ctx.component(obx.field(11), 1).upper(), "unknown"),
                observed_at=observed_at,
            )
        )
    return results


def _coding(obx: Segment, ctx: Context) -> Coding:
    parts = ctx.components(obx.field(3).split(ctx.delimiters.repetition, 1)[0])
    values = [ctx.leaf(p) for p in parts[:5]] + [""] * (5 - min(len(parts), 5))
    code, display, system, alternate = values[0], values[1], values[2], values[3]
    if not code and not alternate:
        raise MissingField("observation identifier (OBX-3) is empty", location=obx.where(3))
    if code:
        return Coding(code=code, system=canonical_system(system), display=display or None)
    return Coding(code=alternate, system=canonical_system(values[4]), display=display or None)


def _value(obx: Segment, value_type: str, ctx: Context, notices: list[Notice]) -> float | str | None:
    d = ctx.delimiters
    raw = obx.field(5)
    if not raw:
        return None
    repetitions = raw.split(d.repetition)
    if value_type == "NM":
        number = parse_number(ctx.leaf(raw)) if len(repetitions) == 1 else None
        if number is not None:
            return number
        notices.append(Notice(location=obx.where(5), message="NM value is not a plain number; kept as text"))
        return "; ".join(ctx.leaf(r) for r in repetitions) or None
    if value_type == "SN":
        parts = [ctx.leaf(p) for p in ctx.components(repetitions[0])[:4]]
        comparator, first, separator, second = (*parts, "", "", "")[:4]
        if comparator in ("", "=") and not separator and not second:
            number = parse_number(first)
            if number is not None:
                return number
        return f"{comparator}{first}{separator}{second}" or None
    if value_type in _CODED_TYPES:
        texts = []
        for repetition in repetitions:
            parts = [ctx.leaf(p.split(d.subcomponent, 1)[0]) for p in ctx.components(repetition)]
            display = parts[1] if len(parts) > 1 else ""
            original = parts[8] if len(parts) > 8 else ""
            texts.append(display or original or parts[0])
        return "; ".join(t for t in texts if t) or None
    if value_type in _TEXT_TYPES or not value_type:
        return "\n".join(ctx.leaf(r) for r in repetitions).strip() or None
    # Dates, times, identifiers and other composites: their components as written.
    texts = [" ".join(c for c in (ctx.leaf(p) for p in ctx.components(r)) if c) for r in repetitions]
    return "; ".join(t for t in texts if t) or None


def _attachment(obx: Segment, value_type: str, ctx: Context) -> Attachment | None:
    value = obx.field(5).split(ctx.delimiters.repetition, 1)[0]
    if not value:
        return None
    parts = ctx.components(value)
    title = ctx.component(obx.field(3), 2) or ctx.component(obx.field(3), 1) or None
    if value_type == "RP":
        pointer = ctx.leaf(parts[0])
        if not pointer:
            return None
        kind, subtype = (ctx.leaf(p) for p in (*parts[2:4], "", "")[:2])
        return Attachment(uri=pointer, media_type=media_type(kind, subtype), title=title)
    if len(parts) < 5:
        raise InvalidMessage(
            "ED value needs source^type of data^subtype^encoding^data",
            location=obx.where(5),
        )
    kind, subtype, encoding = (ctx.leaf(p) for p in parts[1:4])
    data = ctx.leaf(parts[4])
    payload = _payload(encoding.upper(), data, obx, ctx)
    return Attachment(
        uri=in_source(f"OBX[{obx.nth}]-5"),
        media_type=media_type(kind, subtype),
        size=None if payload is None else len(payload),
        sha256=None if payload is None else hashlib.sha256(payload).hexdigest(),
        title=title,
    )


def _payload(encoding: str, data: str, obx: Segment, ctx: Context) -> bytes | None:
    try:
        if encoding == "BASE64":
            return base64.b64decode("".join(data.split()), validate=True)
        if encoding == "HEX":
            return bytes.fromhex(data)
        if encoding == "A":
            return data.encode(ctx.codec)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessage(f"ED data is not valid {encoding.title()}", location=obx.where(5)) from exc
    return None

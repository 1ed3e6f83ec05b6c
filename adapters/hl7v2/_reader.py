"""HL7 v2 order and result messages (ORU^R01, ORM^O01, OML^O21, OMG^O19) onto Exam envelopes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from adapters._common import canonical_system, resolve_centre, utc_now
from adapters.hl7v2._charset import decode_message
from adapters.hl7v2._er7 import Delimiters, Segment, parse_delimiters, split_segments
from adapters.hl7v2._fields import Context, read_observations, read_patient
from adapters.hl7v2._values import parse_dtm, priority
from hub.envelope import Centre, Coding, Exam, Notice, Patient, Source
from hub.errors import InvalidMessage, MissingField, UnsupportedMessage
from hub.ids import derive_exam_id

__all__ = ["SUPPORTED_TYPES", "Parsed", "parse", "read"]

SUPPORTED_TYPES = frozenset({("ORU", "R01"), ("ORM", "O01"), ("OML", "O21"), ("OMG", "O19")})


@dataclass(frozen=True, slots=True)
class Parsed:
    """A decoded message split into segments."""

    delimiters: Delimiters
    segments: list[Segment]
    codec: str
    msh18: str

    @property
    def msh(self) -> Segment:
        return self.segments[0]


def parse(raw: bytes, charset: str | None) -> Parsed:
    decoded = decode_message(raw, charset)
    text = decoded.text
    end = min((i for i in (text.find("\r"), text.find("\n")) if i != -1), default=len(text))
    delimiters = parse_delimiters(text[:end])
    counts: dict[str, int] = {}
    segments = []
    for line in split_segments(text, delimiters.field):
        name = line[:3]
        nth = counts[name] = counts.get(name, 0) + 1
        segments.append(Segment(line, delimiters, nth))
    return Parsed(delimiters, segments, decoded.codec, decoded.msh18)


@dataclass(slots=True)
class _Group:
    """One order: an ORC and its OBR (or an OBR alone), with the OBX and TQ1 that follow."""

    patient: Segment | None
    orc: Segment | None = None
    obr: Segment | None = None
    tq1: Segment | None = None
    obx: list[Segment] = field(default_factory=list)


def read(
    raw: bytes,
    *,
    charset: str | None = None,
    origin: str | None = None,
    centres: Mapping[str, Centre] | None = None,
    received_at: datetime | None = None,
) -> list[Exam]:
    if received_at is not None and received_at.utcoffset() is None:
        raise TypeError("received_at must be timezone-aware")
    parsed = parse(raw, charset)
    ctx = Context(parsed.delimiters, parsed.codec, raw)
    msh = parsed.msh
    _check_type(msh, ctx)
    sender = (origin or "").strip() or ctx.component(msh.field(4), 1) or ctx.component(msh.field(4), 2)
    if not sender:
        raise MissingField(
            "sending facility (MSH-4) is empty; the hub cannot tell which institution sent this", location="MSH-4"
        )
    groups, orphans = _groups(parsed.segments)
    source = Source(
        format="hl7v2",
        message_id=ctx.leaf(msh.field(10)) or None,
        charset=parsed.codec,
        received_at=received_at or utc_now(),
    )
    message_notices = tuple(
        Notice(location=orc.where(), message="order control segment without an OBR; not read as an exam")
        for orc in orphans
    )
    patients: dict[int, tuple[Patient, tuple[Notice, ...]]] = {}
    exams = []
    for group in groups:
        pid = group.patient
        if pid is None:
            raise MissingField("no PID segment precedes the order; send the patient before the orders", location="PID")
        if id(pid) not in patients:
            patients[id(pid)] = read_patient(pid, ctx)
        patient, patient_notices = patients[id(pid)]
        exams.append(_exam(group, patient, patient_notices + message_notices, sender, centres, source, ctx))
    return exams


def _check_type(msh: Segment, ctx: Context) -> None:
    message_type = ctx.component(msh.field(9), 1).upper()
    trigger = ctx.component(msh.field(9), 2).upper()
    if (message_type, trigger) not in SUPPORTED_TYPES:
        shown = f"{message_type}^{trigger}" if message_type else "an empty message type"
        raise UnsupportedMessage(
            f"the hub takes ORU^R01, ORM^O01, OML^O21 and OMG^O19, not {shown}",
            location="MSH-9",
        )


def _groups(segments: list[Segment]) -> tuple[list[_Group], list[Segment]]:
    groups: list[_Group] = []
    patient: Segment | None = None
    current: _Group | None = None
    for segment in segments[1:]:
        name = segment.name
        if name == "OBX":
            if current is not None:
                current.obx.append(segment)
        elif name == "OBR":
            if current is None or current.obr is not None:
                current = _Group(patient)
                groups.append(current)
            current.obr = segment
        elif name == "ORC":
            current = _Group(patient, orc=segment)
            groups.append(current)
        elif name == "TQ1":
            if current is not None and current.tq1 is None:
                current.tq1 = segment
        elif name == "PID":
            patient = segment
            current = None
        elif name == "MSH":
            raise UnsupportedMessage("one message per frame: batches are not taken", location=segment.where())
    if not any(True for segment in segments if segment.name == "PID"):
        raise MissingField("the message has no PID segment; the hub needs the patient", location="PID")
    complete = [group for group in groups if group.obr is not None]
    if not complete:
        raise MissingField("the message holds no order detail (OBR segment)", location="OBR")
    orphans = [group.orc for group in groups if group.obr is None and group.orc is not None]
    return complete, orphans


def _exam(
    group: _Group,
    patient: Patient,
    notices: tuple[Notice, ...],
    sender: str,
    centres: Mapping[str, Centre] | None,
    source: Source,
    ctx: Context,
) -> Exam:
    obr = group.obr
    assert obr is not None  # _groups keeps complete groups only
    orc = group.orc
    order_code = ctx.component(obr.field(4), 1)
    if not order_code:
        raise MissingField("universal service identifier (OBR-4) is empty", location=obr.where(4))
    section = ctx.component(obr.field(24), 1)
    centre = resolve_centre(order_code=order_code, section=section, overrides=centres)
    if centre is None:
        shown = f"section '{section}'" if section else "no diagnostic service section"
        raise InvalidMessage(
            f"order code '{order_code}' with {shown} has no centre mapping; send OBR-24 (e.g. LAB, CT, EC, SP)",
            location=obr.where(24),
        )
    placer = (ctx.component(orc.field(2), 1) if orc else "") or ctx.component(obr.field(2), 1)
    accession = (ctx.component(orc.field(3), 1) if orc else "") or ctx.component(obr.field(3), 1)
    if not placer and not accession:
        raise MissingField(
            "neither a placer order number (ORC-2/OBR-2) nor a filler order number (ORC-3/OBR-3) is present",
            location=obr.where(2),
        )
    performed_at = None
    if obr.field(7):
        performed_at = parse_dtm(ctx.component(obr.field(7), 1))
        if performed_at is None:
            raise InvalidMessage("observation date/time is not an HL7 date/time", location=obr.where(7))
    try:
        results = read_observations(group.obx, ctx)
        return Exam(
            exam_id=derive_exam_id(sender, placer_order=placer or None, accession=accession or None),
            origin=sender,
            centre=centre,
            priority=priority(_priority_code(group, ctx)),
            patient=patient,
            service=Coding(
                code=order_code,
                system=canonical_system(ctx.component(obr.field(4), 3)),
                display=ctx.component(obr.field(4), 2) or None,
            ),
            placer_order=placer or None,
            accession=accession or None,
            performed_at=performed_at,
            observations=tuple(results.observations),
            attachments=tuple(results.attachments),
            source=source,
            notices=notices + tuple(results.notices),
        )
    except ValidationError as exc:
        raise InvalidMessage(
            f"the order does not make a valid exam: {exc.errors()[0]['msg']}", location=obr.where()
        ) from exc


def _priority_code(group: _Group, ctx: Context) -> str:
    """Priority from ORC-7.6, TQ1-9, OBR-27.6 or OBR-5, the first one given."""
    candidates = (
        ctx.component(group.orc.field(7), 6) if group.orc else "",
        ctx.component(group.tq1.field(9), 1) if group.tq1 else "",
        ctx.component(group.obr.field(27), 6) if group.obr else "",
        ctx.component(group.obr.field(5), 1) if group.obr else "",
    )
    return next((code for code in candidates if code), "")

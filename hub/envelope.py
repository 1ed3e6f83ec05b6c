"""The versioned envelope every adapter produces and every stage consumes.

``Exam`` is what a member site sends to be read; ``Report`` is what a centre
sends back. Both are frozen pydantic models that encode to UTF-8 JSON. Large
payloads (images, waveforms, PDFs) are never inline: an ``Attachment`` refers
to them by URI. A URI that is only a fragment, such as ``#OBX[3]-5``, points
inside the source message, which ``Source.uri`` locates once it is stored.

Patient names and ID numbers are left out of ``repr()``, so an envelope that
ends up in a log line does not leak them.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any, Final, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hub.errors import EnvelopeError
from hub.ids import derive_report_id, valid_resident_id

__all__ = [
    "SCHEMA_VERSION",
    "Attachment",
    "Centre",
    "Coding",
    "Exam",
    "Identifier",
    "Notice",
    "Observation",
    "ObservationStatus",
    "Patient",
    "Performer",
    "Priority",
    "Report",
    "ReportStatus",
    "Sex",
    "Source",
    "SourceFormat",
    "Waveform",
    "json_schemas",
]

SCHEMA_VERSION: Final = "1"

Centre = Literal["imaging", "ecg", "lab", "pathology"]
Priority = Literal["routine", "urgent", "stat"]
ReportStatus = Literal["preliminary", "final", "amended", "cancelled"]
SourceFormat = Literal["hl7v2", "fhir", "dicom"]
Sex = Literal["male", "female", "other", "unknown"]
# FHIR's Observation.status vocabulary; HL7 v2 OBX-11 codes are mapped onto it.
ObservationStatus = Literal[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
]

NonEmpty = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Coding(_Model):
    """A coded concept: an order code, an observation code, a unit."""

    code: NonEmpty
    system: str | None = None
    display: str | None = None


class Identifier(_Model):
    """A local identifier, such as a medical record number, with the namespace that issued it."""

    value: NonEmpty
    system: str | None = None
    type: str | None = None


class Patient(_Model):
    national_id: str | None = Field(default=None, repr=False)
    local_ids: tuple[Identifier, ...] = Field(default=(), repr=False)
    name: str | None = Field(default=None, repr=False)
    sex: Sex = "unknown"
    birth_date: date | None = Field(default=None, repr=False)

    @field_validator("national_id")
    @classmethod
    def _national_id_is_valid(cls, value: str | None) -> str | None:
        if value is not None and not valid_resident_id(value):
            raise ValueError("national_id fails the GB 11643 check; keep it as a local id")
        return value


class Observation(_Model):
    code: Coding
    value: float | str | None = None
    unit: str | None = None
    reference_range: str | None = None
    # HL7 table 0078 abnormal flags (L, H, LL, HH, N, A, AA), as FHIR interpretation codes too.
    flag: str | None = None
    status: ObservationStatus = "final"
    observed_at: AwareDatetime | None = None


class Attachment(_Model):
    uri: NonEmpty
    media_type: NonEmpty
    size: Annotated[int, Field(ge=0)] | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    title: str | None = None


class Waveform(_Model):
    """The shape of an ECG (or other) waveform; the samples stay in ``data``."""

    channels: Annotated[int, Field(ge=1)]
    sampling_frequency: Annotated[float, Field(gt=0)]
    samples_per_channel: Annotated[int, Field(ge=0)] | None = None
    leads: tuple[str, ...] = ()
    data: Attachment | None = None


class Source(_Model):
    format: SourceFormat
    message_id: str | None = None
    charset: str | None = None
    received_at: AwareDatetime
    # Where the message itself is kept (e.g. urn:sha256:<hex> in the blob store), set by whoever
    # stores it; attachment URIs that are only a fragment resolve against it.
    uri: str | None = None


class Notice(_Model):
    """Something an adapter accepted but wants the sender to know, such as an invalid resident ID."""

    location: str | None = None
    message: str


class Performer(_Model):
    name: NonEmpty
    id: str | None = None


class _Envelope(_Model):
    schema_version: Literal["1"] = SCHEMA_VERSION

    def encode(self) -> bytes:
        """UTF-8 JSON."""
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def decode(cls, data: bytes | str) -> Self:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise EnvelopeError(f"not a valid {cls.__name__} envelope: {exc}") from exc


class Exam(_Envelope):
    """An order sent to a shared centre to be read, with its data or references to it."""

    exam_id: NonEmpty
    origin: NonEmpty
    centre: Centre
    priority: Priority = "routine"
    patient: Patient
    service: Coding
    placer_order: str | None = None
    accession: str | None = None
    study_uid: str | None = None
    performed_at: AwareDatetime | None = None
    observations: tuple[Observation, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    waveform: Waveform | None = None
    source: Source
    notices: tuple[Notice, ...] = ()


class Report(_Envelope):
    """What a centre sends back for one exam."""

    report_id: NonEmpty
    exam_id: NonEmpty
    origin: NonEmpty
    centre: Centre
    status: ReportStatus
    patient: Patient
    service: Coding
    placer_order: str | None = None
    accession: str | None = None
    study_uid: str | None = None
    findings: str | None = None
    conclusion: str | None = None
    observations: tuple[Observation, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    performer: Performer | None = None
    performer_institution: str | None = None
    issued_at: AwareDatetime
    critical: bool = False
    critical_items: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _critical_items_need_critical(self) -> Self:
        if self.critical_items and not self.critical:
            raise ValueError("critical_items given but critical is false")
        return self

    @classmethod
    def answering(cls, exam: Exam, *, status: ReportStatus, revision: int = 0, **fields: Any) -> Report:
        """A report for ``exam``, carrying its identifiers, with a stable ``report_id``."""
        base: dict[str, Any] = {
            "report_id": derive_report_id(exam.exam_id, status, revision),
            "exam_id": exam.exam_id,
            "origin": exam.origin,
            "centre": exam.centre,
            "status": status,
            "patient": exam.patient,
            "service": exam.service,
            "placer_order": exam.placer_order,
            "accession": exam.accession,
            "study_uid": exam.study_uid,
        }
        return cls.model_validate(base | fields)


def json_schemas() -> dict[str, str]:
    """The JSON Schema text of each envelope, keyed by file name, as shipped in ``schemas/``."""
    schemas = {}
    for model in (Exam, Report):
        name = model.__name__.lower()
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"urn:consortium-hub:schema:{name}:{SCHEMA_VERSION}",
            **model.model_json_schema(),
        }
        schemas[f"{name}.schema.json"] = json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    return schemas

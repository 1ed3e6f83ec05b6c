"""DICOM header -> Exam."""

from __future__ import annotations

import os
import re
import struct
from datetime import date, datetime, time, timedelta, timezone, tzinfo

from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, TM

from adapters._common import CHINA_TZ, RESIDENT_ID_SYSTEM, split_resident_ids, utc_now
from adapters.dicom import _tags as tags
from adapters.dicom._classes import centre_for
from adapters.dicom._elements import Elements
from adapters.dicom._items import Node
from adapters.dicom._load import Loaded, load
from adapters.dicom._text import TextDecoder, resolve_fallback_charset
from adapters.dicom._waveform import read_measurements, read_waveform
from hub.envelope import (
    Attachment,
    Coding,
    Exam,
    Identifier,
    Notice,
    Observation,
    Patient,
    Priority,
    Sex,
    Source,
    Waveform,
)
from hub.errors import AdapterError, DecodeError, InvalidMessage, MissingField, NotAsDeclared, UnsupportedMessage
from hub.ids import derive_exam_id

__all__ = ["read"]

_PRIORITIES: dict[str, Priority] = {"STAT": "stat", "HIGH": "urgent"}
_SEXES: dict[str, Sex] = {"M": "male", "F": "female", "O": "other"}
_RESIDENT_OID = RESIDENT_ID_SYSTEM.removeprefix("urn:oid:")
_UTC_OFFSET = re.compile(r"([+-])(\d\d)(\d\d)")
# What pydicom may raise while converting a value on access; anything else is a bug of ours.
_LIBRARY_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    LookupError,
    OverflowError,
    EOFError,
    OSError,
    NotImplementedError,
    RecursionError,
    struct.error,
)


def read(
    source: bytes | bytearray | memoryview | os.PathLike[str] | str | Dataset,
    *,
    origin: str | None = None,
    charset: str | None = None,
    received_at: datetime | None = None,
    affected_sop_class: str | None = None,
    affected_sop_instance: str | None = None,
) -> Exam:
    """The exam in one DICOM instance: a header read without its pixel data.

    ``source`` is the instance's bytes (a Part 10 file, or a bare data set as
    received over the network), a path to a file, or a pydicom Dataset.
    ``origin`` overrides Institution Code Sequence (0008,0082). ``charset`` is
    the sender's fallback for text that arrives without Specific Character Set
    (0008,0005), as a DICOM term ("GBK") or a Python codec name ("gbk").
    ``affected_sop_class`` and ``affected_sop_instance`` are the UIDs a C-STORE
    request announced: a data set that names others raises NotAsDeclared.
    Raises DecodeError, UnsupportedMessage or InvalidMessage, each at a tag.
    """
    fallback = resolve_fallback_charset(charset) if charset and charset.strip() else None
    if received_at is None:
        received_at = utc_now()
    elif received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=CHINA_TZ)
    loaded = load(source)
    elements = Elements(TextDecoder((), fallback))
    affected = (affected_sop_class, affected_sop_instance)
    try:
        return _exam(loaded, elements, origin, fallback, received_at, affected)
    except InvalidMessage as exc:
        # A required element that is missing may have been cut off: then say so.
        truncated = loaded.truncation()
        if truncated is not None:
            raise truncated from exc
        raise
    except AdapterError:
        raise
    except ValidationError as exc:
        error = exc.errors()[0]  # only the path and message: the input value may be patient data
        field = ".".join(str(part) for part in error["loc"])
        message = f"the value makes an invalid exam ({field}: {error['msg']})"
        raise InvalidMessage(message, location=elements.at) from exc
    except _LIBRARY_ERRORS as exc:
        raise DecodeError(f"the element cannot be read ({type(exc).__name__})", location=elements.at) from exc


def _as_announced(element: str, announced: str | None, found: str, location: str) -> None:
    """``found`` in the data set must be what the C-STORE request announced, when one did."""
    if announced is not None and found != announced:
        message = f"the data set's {element} is not the C-STORE request's Affected {element}"
        raise NotAsDeclared(message, location=location)


def _exam(
    loaded: Loaded,
    elements: Elements,
    origin: str | None,
    fallback: str | None,
    received_at: datetime,
    affected: tuple[str | None, str | None],
) -> Exam:
    dataset = loaded.dataset
    elements.text = TextDecoder(_charset_terms(dataset, elements), fallback)
    sop_class = elements.uid(dataset, tags.SOP_CLASS_UID)
    if sop_class is None:
        raise MissingField("SOP Class UID is missing; every instance must carry it", location="(0008,0016)")
    centre = centre_for(sop_class)
    if centre is None:
        raise UnsupportedMessage(
            f"SOP class {sop_class} ({UID(sop_class).name}) is not read by any shared centre;"
            " the hub takes image instances and ECG waveforms",
            location="(0008,0016)",
        )
    _as_announced("SOP Class UID", affected[0], sop_class, "(0008,0016)")
    if centre != "ecg" and loaded.pixel_data is False:
        raise DecodeError(
            "an image instance without Pixel Data: the input is truncated or carries no image; send it again",
            location="(7FE0,0010)",
        )
    instance = elements.uid(dataset, tags.SOP_INSTANCE_UID)
    if instance is None:
        raise MissingField("SOP Instance UID is missing; every instance must carry it", location="(0008,0018)")
    _as_announced("SOP Instance UID", affected[1], instance, "(0008,0018)")
    sender = _origin(dataset, elements, origin)

    study_uid = elements.uid(dataset, tags.STUDY_INSTANCE_UID)
    accession = elements.string(dataset, tags.ACCESSION_NUMBER)
    placer_order = elements.string(dataset, tags.PLACER_ORDER_NUMBER)
    requests = elements.items(dataset, tags.REQUEST_ATTRIBUTES_SEQUENCE)
    for index, request in enumerate(requests):
        prefix = f"(0040,0275)[{index}]"
        placer_order = placer_order or elements.string(request, tags.PLACER_ORDER_NUMBER, prefix)
        accession = accession or elements.string(request, tags.ACCESSION_NUMBER, prefix)
    if not (placer_order or accession or study_uid):
        raise InvalidMessage(
            "no order identifier: send Placer Order Number (0040,2016), Accession Number (0008,0050)"
            " or Study Instance UID (0020,000D)",
            location="(0020,000D)",
        )

    patient = _patient(dataset, elements)
    service = (
        elements.first_coding(dataset, tags.REQUESTED_PROCEDURE_CODE_SEQUENCE)
        or (
            elements.first_coding(requests[0], tags.REQUESTED_PROCEDURE_CODE_SEQUENCE, "(0040,0275)[0]")
            if requests
            else None
        )
        or elements.first_coding(dataset, tags.PROCEDURE_CODE_SEQUENCE)
    )
    modality = elements.string(dataset, tags.MODALITY)
    if service is None:
        if modality is None:
            raise InvalidMessage(
                "no procedure code and no Modality: send Requested Procedure Code Sequence (0032,1064)",
                location="(0008,0060)",
            )
        service = Coding(code=modality, display=elements.string(dataset, tags.STUDY_DESCRIPTION))

    performed_at = _performed_at(dataset, elements)
    priority = _PRIORITIES.get((elements.string(dataset, tags.REQUESTED_PROCEDURE_PRIORITY) or "").upper(), "routine")

    # No sha256: hashing a full-size instance costs as much as reading its header, and the
    # blob store that keeps the instance hashes it anyway.
    instance_attachment = Attachment(
        uri=f"urn:oid:{instance}",
        media_type="application/dicom",
        size=len(loaded.raw) if loaded.raw is not None else None,
        title=elements.string(dataset, tags.SERIES_DESCRIPTION) or modality,
    )
    waveform: Waveform | None = None
    observations: tuple[Observation, ...] = ()
    if centre == "ecg":
        waveform = read_waveform(dataset, elements)
        observations = read_measurements(dataset, elements, performed_at)
    elements.at = "(0008,0018)"  # a validation failure from here on concerns the instance as a whole
    return Exam(
        exam_id=derive_exam_id(sender, placer_order=placer_order, accession=accession, study_uid=study_uid),
        origin=sender,
        centre=centre,
        priority=priority,
        patient=patient,
        service=service,
        placer_order=placer_order,
        accession=accession,
        study_uid=study_uid,
        performed_at=performed_at,
        observations=observations,
        attachments=(instance_attachment,),
        waveform=waveform,
        source=Source(format="dicom", message_id=instance, charset=elements.text.codec, received_at=received_at),
        notices=tuple(elements.notices),
    )


def _charset_terms(dataset: Node, elements: Elements) -> list[str]:
    elements.at = "(0008,0005)"
    element = dataset.get_item(tags.SPECIFIC_CHARACTER_SET)
    value = None if element is None else element.value
    if value is None:
        return []
    if isinstance(value, bytes):
        return value.decode("latin-1").split("\\")
    if isinstance(value, str):
        return value.split("\\")
    return [str(term) for term in value]


def _origin(dataset: Node, elements: Elements, given: str | None) -> str:
    if given and given.strip():
        return given.strip()
    institutions = elements.items(dataset, tags.INSTITUTION_CODE_SEQUENCE)
    code = None
    if institutions:
        # An 18-character unified social credit code belongs in Long Code Value; many devices use Code Value.
        code = elements.string(institutions[0], tags.CODE_VALUE, "(0008,0082)[0]") or elements.string(
            institutions[0], tags.LONG_CODE_VALUE, "(0008,0082)[0]"
        )
    if code is None:
        raise InvalidMessage(
            "no sending institution: put its code (unified social credit code) in Institution Code Sequence,"
            " or configure the origin for this sender",
            location="(0008,0082)",
        )
    return code


def _patient(dataset: Node, elements: Elements) -> Patient:
    name = elements.person_name(dataset, tags.PATIENT_NAME)
    candidates: list[tuple[Identifier, str, bool]] = []
    main_id = _identifier(dataset, elements, "")
    if main_id is not None:
        candidates.append(main_id)
    for index, item in enumerate(elements.items(dataset, tags.OTHER_PATIENT_IDS_SEQUENCE)):
        other = _identifier(item, elements, f"(0010,1002)[{index}]")
        if other is not None:
            candidates.append(other)
    national_id, local_ids, notices = split_resident_ids(candidates)
    elements.notices.extend(notices)
    sex = _SEXES.get((elements.string(dataset, tags.PATIENT_SEX) or "").upper(), "unknown")
    birth_date = _date(dataset, elements, tags.PATIENT_BIRTH_DATE)
    return Patient(national_id=national_id, local_ids=local_ids, name=name, sex=sex, birth_date=birth_date)


def _identifier(item: Node, elements: Elements, prefix: str) -> tuple[Identifier, str, bool] | None:
    """A patient identifier with its issuer, and whether the sender labelled it a resident ID (身份证号)."""
    value = elements.string(item, tags.PATIENT_ID, prefix)
    if value is None:
        return None
    location = elements.at
    issuer = elements.string(item, tags.ISSUER_OF_PATIENT_ID, prefix)
    kind = elements.string(item, tags.TYPE_OF_PATIENT_ID, prefix)
    entity = entity_type = type_code = None
    qualifiers = elements.items(item, tags.ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE, prefix)
    if qualifiers:
        qualifier = f"{prefix}(0010,0024)[0]"
        entity = elements.string(qualifiers[0], tags.UNIVERSAL_ENTITY_ID, qualifier)
        entity_type = elements.string(qualifiers[0], tags.UNIVERSAL_ENTITY_ID_TYPE, qualifier)
        type_code = elements.string(qualifiers[0], tags.IDENTIFIER_TYPE_CODE, qualifier)  # HL7 table 0203
    claims_resident_id = (
        any(label and "身份证" in label for label in (issuer, kind))
        or any(label and label.removeprefix("urn:oid:") == _RESIDENT_OID for label in (issuer, entity))
        or type_code == "NNCHN"
    )
    if claims_resident_id:
        system: str | None = RESIDENT_ID_SYSTEM
    elif entity and entity_type == "ISO":
        system = f"urn:oid:{entity}"
    else:
        system = issuer or entity
    return Identifier(value=value, system=system, type=type_code), location, claims_resident_id


def _date(dataset: Node, elements: Elements, tag: int) -> date | None:
    text = elements.string(dataset, tag)
    if text is None:
        return None
    try:
        parsed = DA(text)
    except ValueError:
        parsed = None
    if parsed is None:
        elements.notices.append(Notice(location=elements.at, message="not a DICOM date (YYYYMMDD); ignored"))
        return None
    return date(parsed.year, parsed.month, parsed.day)


def _performed_at(dataset: Node, elements: Elements) -> datetime | None:
    zone = _timezone(dataset, elements)
    study_date = _date(dataset, elements, tags.STUDY_DATE)
    if study_date is not None:
        text = elements.string(dataset, tags.STUDY_TIME)
        try:
            study_time = TM(text) if text else None
        except ValueError:
            study_time = None
            elements.notices.append(Notice(location=elements.at, message="not a DICOM time (HHMMSS); ignored"))
        clock = time(0) if study_time is None else study_time.replace(tzinfo=None)
        return datetime.combine(study_date, clock, tzinfo=zone)
    text = elements.string(dataset, tags.ACQUISITION_DATETIME)
    if text is None:
        return None
    try:
        acquired = DT(text)
    except ValueError:
        acquired = None
    if acquired is None:
        elements.notices.append(Notice(location=elements.at, message="not a DICOM date-time; ignored"))
        return None
    moment = datetime(*acquired.timetuple()[:6], acquired.microsecond, tzinfo=acquired.tzinfo)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def _timezone(dataset: Node, elements: Elements) -> tzinfo:
    text = elements.string(dataset, tags.TIMEZONE_OFFSET_FROM_UTC)  # e.g. +0800
    if text is None:
        return CHINA_TZ
    match = _UTC_OFFSET.fullmatch(text)
    if match is None or int(match[2]) > 14 or int(match[3]) > 59:
        elements.notices.append(Notice(location=elements.at, message="not a UTC offset (+HHMM); +0800 assumed"))
        return CHINA_TZ
    offset = timedelta(hours=int(match[2]), minutes=int(match[3]))
    return timezone(-offset if match[1] == "-" else offset)

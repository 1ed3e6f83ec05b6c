"""The ECG parts of an exam: the waveform's shape and its measurements. Samples are never decoded here."""

from __future__ import annotations

from datetime import datetime

from pydicom.dataelem import RawDataElement

from adapters._common import in_source
from adapters.dicom import _tags as tags
from adapters.dicom._elements import Elements
from adapters.dicom._items import Node
from hub.envelope import Attachment, Notice, Observation, Waveform
from hub.errors import InvalidMessage, MissingField

__all__ = ["read_measurements", "read_waveform"]

_GROUP = "(5400,0100)[0]"
WAVEFORM_DATA_LOCATION = f"{_GROUP}(5400,1010)"


def read_waveform(dataset: Node, elements: Elements) -> Waveform:
    """The first multiplex group of Waveform Sequence (5400,0100), the rhythm strip in a 12-lead ECG.

    The samples stay in the instance: the data attachment points inside it.
    """
    groups = elements.items(dataset, tags.WAVEFORM_SEQUENCE)
    if not groups:
        raise MissingField("an ECG instance needs a Waveform Sequence of recorded leads", location="(5400,0100)")
    group = groups[0]
    channels = elements.integer(group, tags.NUMBER_OF_WAVEFORM_CHANNELS, _GROUP)
    if channels is None or channels < 1:
        raise InvalidMessage("Number of Waveform Channels must be 1 or more", location=elements.at)
    samples = elements.integer(group, tags.NUMBER_OF_WAVEFORM_SAMPLES, _GROUP)
    if samples is not None and samples < 0:
        raise InvalidMessage("Number of Waveform Samples cannot be negative", location=elements.at)
    frequency = elements.decimal(group, tags.SAMPLING_FREQUENCY, _GROUP)
    if frequency is None or frequency <= 0:
        raise InvalidMessage("Sampling Frequency must be a positive number of Hz", location=f"{_GROUP}(003A,001A)")
    return Waveform(
        channels=channels,
        sampling_frequency=frequency,
        samples_per_channel=samples,
        leads=_leads(group, elements),
        data=_data(group, elements),
    )


def _leads(group: Node, elements: Elements) -> tuple[str, ...]:
    leads: list[str] = []
    for index, channel in enumerate(elements.items(group, tags.CHANNEL_DEFINITION_SEQUENCE, _GROUP)):
        prefix = f"{_GROUP}(003A,0200)[{index}]"
        sources = elements.items(channel, tags.CHANNEL_SOURCE_SEQUENCE, prefix)
        source = sources[0] if sources else None
        name = None
        if source is not None:
            item = f"{prefix}(003A,0208)[0]"
            name = elements.string(source, tags.CODE_MEANING, item) or elements.string(source, tags.CODE_VALUE, item)
        leads.append(name or f"Channel {index + 1}")
    return tuple(leads)


def _data(group: Node, elements: Elements) -> Attachment:
    elements.at = WAVEFORM_DATA_LOCATION
    element = group.get_item(tags.WAVEFORM_DATA)
    if element is None:
        raise MissingField("Waveform Data (5400,1010) is missing", location=WAVEFORM_DATA_LOCATION)
    payload = element.value if isinstance(element.value, bytes) else None
    if payload is not None:
        size: int | None = len(payload)
    else:
        size = element.length if isinstance(element, RawDataElement) else None
    return Attachment(
        uri=in_source(WAVEFORM_DATA_LOCATION),
        media_type="application/octet-stream",
        size=size,
        title=elements.string(group, tags.MULTIPLEX_GROUP_LABEL, _GROUP),  # e.g. RHYTHM
    )


def read_measurements(dataset: Node, elements: Elements, observed_at: datetime | None) -> tuple[Observation, ...]:
    """The numeric annotations of Waveform Annotation Sequence (0040,B020): intervals, axes, heart rate."""
    observations: list[Observation] = []
    for index, item in enumerate(elements.items(dataset, tags.WAVEFORM_ANNOTATION_SEQUENCE)):
        if item.get_item(tags.NUMERIC_VALUE) is None:  # text and position annotations are skipped
            continue
        prefix = f"(0040,B020)[{index}]"
        value = elements.decimal(item, tags.NUMERIC_VALUE, prefix)
        if value is None:
            continue
        concepts = elements.items(item, tags.CONCEPT_NAME_CODE_SEQUENCE, prefix)
        code = elements.coding(concepts[0], f"{prefix}(0040,A043)[0]") if concepts else None
        if code is None:
            elements.notices.append(
                Notice(location=prefix, message="a measurement without a coded Concept Name (0040,A043) was ignored")
            )
            continue
        units = elements.items(item, tags.MEASUREMENT_UNITS_CODE_SEQUENCE, prefix)
        unit = elements.string(units[0], tags.CODE_VALUE, f"{prefix}(0040,08EA)[0]") if units else None
        observations.append(Observation(code=code, value=value, unit=unit, observed_at=observed_at))
    return tuple(observations)

"""FHIR Observations to envelope observations, and SampledData to a Waveform that points into the message."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, get_args

from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.observation import ObservationComponent
from fhir.resources.R4B.sampleddata import SampledData

from adapters._common import in_source
from adapters.fhir._elements import coding_of, moment, number
from adapters.fhir._graph import Located
from hub.envelope import Attachment, Coding, Observation, ObservationStatus, Waveform
from hub.errors import InvalidMessage

__all__ = ["FINDINGS_CODE", "Readings", "read_observations"]

# write_report sends a report's findings text as an Observation with this LOINC code
# ("Procedure findings Narrative"); it is report text, not a measurement, so the reader leaves it out.
FINDINGS_CODE = ("http://loinc.org", "59776-5")
FHIR_JSON = "application/fhir+json"
_STATUSES: dict[str | None, ObservationStatus] = {status: status for status in get_args(ObservationStatus)}


@dataclass(slots=True)
class Readings:
    observations: list[Observation] = field(default_factory=list)
    waveform: Waveform | None = None
    first_observed_at: datetime | None = None


class _Channel(NamedTuple):
    data: SampledData
    component: int | None  # None: the Observation's own valueSampledData
    lead: str | None

    def path(self, observation_path: str) -> str:
        if self.component is None:
            return f"{observation_path}.valueSampledData"
        return f"{observation_path}.component[{self.component}].valueSampledData"


def read_observations(located: Iterable[Located]) -> Readings:
    """Observations in order, their components flattened; the first SampledData found becomes the waveform."""
    readings = Readings()
    for item in located:
        observation = item.resource
        if not isinstance(observation, FhirObservation) or _is_findings(observation):
            continue
        channels = _read_one(observation, item.path, readings)
        if channels and readings.waveform is None:
            readings.waveform = _waveform(channels, item.path)
    return readings


def _is_findings(observation: FhirObservation) -> bool:
    codings = observation.code.coding if observation.code else None  # required, yet the models let null through
    return any((coding.system, coding.code) == FINDINGS_CODE for coding in codings or ())


def _read_one(observation: FhirObservation, path: str, readings: Readings) -> list[_Channel]:
    status = _STATUSES.get(observation.status)
    if status is None:
        raise InvalidMessage(
            f"Observation.status must be one of {', '.join(get_args(ObservationStatus))}", location=f"{path}.status"
        )
    code = coding_of(observation.code)
    if code is None:
        raise InvalidMessage("the observation needs a code or a text", location=f"{path}.code")
    observed_at = (
        moment(observation.effectiveDateTime)
        or moment(observation.effectiveInstant)
        or moment(observation.effectivePeriod.start if observation.effectivePeriod else None)
    )
    if readings.first_observed_at is None:
        readings.first_observed_at = observed_at
    channels: list[_Channel] = []
    if observation.valueSampledData is not None:
        channels.append(_Channel(observation.valueSampledData, None, None))
    reading = _reading(observation, code, path, status, observed_at)
    # A 12-lead ECG or a blood pressure has no value of its own: its components carry them.
    if reading.value is not None or not observation.component:
        readings.observations.append(reading)
    for index, component in enumerate(observation.component or ()):
        if component.valueSampledData is not None:
            channels.append(_Channel(component.valueSampledData, index, _lead(component)))
            continue
        component_path = f"{path}.component[{index}]"
        component_code = coding_of(component.code)
        if component_code is None:
            raise InvalidMessage("the component needs a code or a text", location=f"{component_path}.code")
        readings.observations.append(_reading(component, component_code, component_path, status, observed_at))
    return channels


def _reading(
    element: FhirObservation | ObservationComponent,
    code: Coding,
    path: str,
    status: ObservationStatus,
    observed_at: datetime | None,
) -> Observation:
    """An Observation or one of its components as an envelope observation."""
    value, unit = _value(element, path)
    return Observation(
        code=code,
        value=value,
        unit=unit,
        reference_range=_reference_range(element),
        flag=_flag(element),
        status=status,
        observed_at=observed_at,
    )


def _lead(component: ObservationComponent) -> str | None:
    """A lead's name, such as "II" or "V1": the display of its code (MDC codes display as lead names)."""
    if component.code is None:
        return None
    for coding in component.code.coding or ():
        if coding.display or coding.code:
            return coding.display or coding.code
    return component.code.text


def _value(holder: FhirObservation | ObservationComponent, path: str) -> tuple[float | str | None, str | None]:
    if holder.valueQuantity is not None:
        quantity = holder.valueQuantity
        return number(quantity.value, f"{path}.valueQuantity.value"), quantity.unit or quantity.code
    if holder.valueString is not None:
        return holder.valueString, None
    if holder.valueCodeableConcept is not None:
        concept = holder.valueCodeableConcept
        coding = coding_of(concept)
        return concept.text or (coding.display or coding.code if coding else None), None
    if holder.valueInteger is not None:
        return float(holder.valueInteger), None
    if holder.valueBoolean is not None:
        return "true" if holder.valueBoolean else "false", None
    if holder.valueDateTime is not None:
        return str(holder.valueDateTime), None
    if holder.valueRange is not None:
        low = holder.valueRange.low.value if holder.valueRange.low else None
        high = holder.valueRange.high.value if holder.valueRange.high else None
        return _range_text(low, high), None
    return None, None


def _range_text(low: object, high: object) -> str | None:
    if low is not None and high is not None:
        return f"{low}-{high}"
    if low is not None:
        return f">={low}"
    if high is not None:
        return f"<={high}"
    return None


def _reference_range(holder: FhirObservation | ObservationComponent) -> str | None:
    for reference_range in holder.referenceRange or ():
        if reference_range.text:
            return reference_range.text
        low = reference_range.low.value if reference_range.low else None
        high = reference_range.high.value if reference_range.high else None
        text = _range_text(low, high)
        if text:
            return text
    return None


def _flag(holder: FhirObservation | ObservationComponent) -> str | None:
    for concept in holder.interpretation or ():
        for coding in concept.coding or ():
            if coding.code:
                return coding.code
    return None


def _waveform(channels: list[_Channel], path: str) -> Waveform:
    frequencies = set()
    for channel in channels:
        period = float(channel.data.period) if channel.data.period is not None else 0.0
        frequency = 1000.0 / period if period > 0 else math.inf
        if not math.isfinite(frequency):
            raise InvalidMessage(
                "SampledData.period (ms between samples) must be above 0", location=f"{channel.path(path)}.period"
            )
        frequencies.add(frequency)
    if len(frequencies) > 1:
        raise InvalidMessage("all leads of a waveform must share one SampledData.period", location=f"{path}.component")
    counts = set()
    total_channels = 0
    for channel in channels:
        dimensions = channel.data.dimensions or 1
        total_channels += dimensions
        counts.add(_sample_count(channel.data.data) // dimensions)
    leads = tuple(channel.lead for channel in channels if channel.lead)
    location = channels[0].path(path) if len(channels) == 1 else f"{path}.component"
    return Waveform(
        channels=total_channels,
        sampling_frequency=frequencies.pop(),
        samples_per_channel=counts.pop() if len(counts) == 1 else None,
        leads=leads if len(leads) == total_channels else (),
        # Size and hash are left out: the samples are spread over several JSON strings, not one byte range.
        data=Attachment(uri=in_source(location), media_type=FHIR_JSON),
    )


def _sample_count(data: str | None) -> int:
    if not data:
        return 0
    text = data.strip()
    if not text:
        return 0
    # str.split() on 12 leads of 5000 samples costs a quarter of the Bundle's validation, and even a
    # search for double spaces costs 6%; counting separators is cheap and exact for the single spaces
    # the spec requires. Line breaks or tabs (cheap to look for) get the exact count.
    if "\n" in text or "\t" in text or "\r" in text:
        return len(text.split())
    return text.count(" ") + 1

"""ECG pre-read: the heart rate from the waveform itself, as a preliminary report for the ECG centre.

    hub worker ecg --config examples/consortium.toml --handler examples/workers/ecg.py:read_ecg

The waveform is not in the exam: its ``waveform.data`` URI points into the
source message the gateway stored (a DICOM instance's WaveformData, or a FHIR
Bundle's SampledData), which this reads from the blob store. R peaks are found
on lead II (a Pan-Tompkins-style energy envelope); the rate is 60 / median RR.
Where there is no waveform (an HL7 ORU that carries only measurements), the
sender's own heart rate is used and the report says so. A rate under 40 or
over 150 per minute is a critical value (危急值).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import statistics
import sys
from array import array
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread

from hub.config import default_data_dir
from hub.envelope import Coding, Exam, Observation, Performer, Report
from hub.store.blobs import BlobNotFound, BlobStore

__all__ = ["EcgPreread", "heart_rate", "lead_ii", "read_ecg"]

HEART_RATE = Coding(code="8867-4", system="http://loinc.org", display="心率")
LEAD_CENTRE = "12330112470101234B"  # 临安区人民医院心电中心
_PATH_STEP = re.compile(r"\.?([A-Za-z]+)(?:\[(\d+)\])?")


def heart_rate(samples: list[float], rate: float) -> float | None:
    """Beats per minute from one lead, or None when fewer than three beats are found."""
    if len(samples) < 2 * rate:
        return None
    energy = [(b - a) ** 2 for a, b in itertools.pairwise(samples)]
    window = max(1, int(0.12 * rate))
    running, envelope = 0.0, []
    for i, value in enumerate(energy):
        running += value - (energy[i - window] if i >= window else 0.0)
        envelope.append(running)
    threshold = 0.35 * max(envelope)
    refractory = int(0.25 * rate)
    peaks: list[int] = []
    for i in range(1, len(envelope) - 1):
        is_peak = envelope[i] >= threshold and envelope[i - 1] <= envelope[i] > envelope[i + 1]
        if is_peak and (not peaks or i - peaks[-1] > refractory):
            peaks.append(i)
    if len(peaks) < 3:
        return None
    rr = statistics.median(b - a for a, b in itertools.pairwise(peaks)) / rate
    return 60.0 / rr


def lead_ii(exam: Exam, blobs: BlobStore) -> tuple[list[float], float] | None:
    """Lead II samples and the sampling rate, from the stored source; None when there is none."""
    waveform = exam.waveform
    if waveform is None or waveform.data is None or not exam.source.uri:
        return None
    try:
        source = blobs.read(exam.source.uri)
    except BlobNotFound:
        return None
    index = next((n for n, lead in enumerate(waveform.leads) if re.fullmatch(r"(Lead )?II", lead)), 0)
    if exam.source.format == "dicom":
        return _dicom_lead(source, index), waveform.sampling_frequency
    if exam.source.format == "fhir":
        return _fhir_lead(source, waveform.data.uri, index), waveform.sampling_frequency
    return None


def _dicom_lead(instance: bytes, index: int) -> list[float]:
    group = dcmread(BytesIO(instance)).WaveformSequence[0]
    channels = int(group.NumberOfWaveformChannels)
    samples = array("h", group.WaveformData)
    if sys.byteorder == "big":
        samples.byteswap()
    return [float(v) for v in samples[index::channels]]


def _fhir_lead(bundle: bytes, fragment: str, index: int) -> list[float]:
    node: Any = json.loads(bundle)
    for name, position in _PATH_STEP.findall(fragment.lstrip("#").removeprefix("Bundle")):
        node = node[name] if not position else node[name][int(position)]
    leads = [c for c in node if "valueSampledData" in c]
    sampled = leads[index]["valueSampledData"]
    factor = float(sampled.get("factor", 1))
    return [float(v) * factor for v in sampled["data"].split() if v not in ("E", "U", "L")]


class EcgPreread:
    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def __call__(self, exam: Exam) -> Report:
        waveform = lead_ii(exam, self.blobs)
        rate = heart_rate(*waveform) if waveform else None
        how = "由波形自动计算"
        if rate is None:
            rate = next(
                (float(o.value) for o in exam.observations if o.code.code == "8867-4" and isinstance(o.value, float)),
                None,
            )
            how = "采用送检方测量值"
        if rate is None:
            return _report(exam, None, "未能取得心率：无可用波形或测量值，请医师阅图", critical=False)
        critical = rate < 40 or rate > 150
        rhythm = "心动过缓" if rate < 60 else "心动过速" if rate > 100 else "心率正常"
        text = f"心率 {rate:.0f} 次/分（{how}），{rhythm}。自动预读，待心电图医师确认"
        return _report(exam, rate, text, critical=critical)


def _report(exam: Exam, rate: float | None, conclusion: str, *, critical: bool) -> Report:
    observations = ()
    if rate is not None:
        flag = "LL" if rate < 40 else "HH" if rate > 150 else "L" if rate < 60 else "H" if rate > 100 else "N"
        observations = (
            Observation(
                code=HEART_RATE,
                value=round(rate),
                unit="/min",
                reference_range="60-100",
                flag=flag,
                status="preliminary",
            ),
        )
    return Report.answering(
        exam,
        status="preliminary",
        issued_at=datetime.now(UTC),
        conclusion=conclusion,
        observations=observations,
        performer=Performer(name="心电自动预读", id="ECG-AUTO"),
        performer_institution=LEAD_CENTRE,
        critical=critical,
        critical_items=(f"心率 {rate:.0f} 次/分",) if critical and rate is not None else (),
    )


@functools.cache
def _default() -> EcgPreread:
    return EcgPreread(BlobStore(Path(default_data_dir()) / "blobs"))


def read_ecg(exam: Exam) -> Report:
    """The handler for `hub worker ecg`: blobs from the hub's data directory (one store per process)."""
    return _default()(exam)

"""Every FHIR sample decodes to what examples/messages/fhir/EXPECTED.toml says (received_at aside)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from adapters import fhir
from hub import errors
from hub.envelope import Exam

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "messages" / "fhir"
EXPECTED: dict[str, Any] = tomllib.loads((SAMPLES / "EXPECTED.toml").read_text("utf-8"))
IDENTIFIERS = ("placer_order", "accession", "study_uid")


def test_every_sample_is_documented() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in SAMPLES.glob("*.json"))


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if "error" not in e))
def test_sample_reads_as_documented(name: str) -> None:
    expected = EXPECTED[name]
    raw = (SAMPLES / name).read_bytes()
    exams = fhir.read(raw)
    assert len(exams) == expected["exam_count"]
    for exam, wanted in zip(exams, expected["exams"], strict=True):
        assert exam.source.format == "fhir"
        assert exam.source.message_id == expected["message_id"]
        assert exam.source.charset == "utf-8"
        _check_exam(exam, wanted, raw)


def _check_exam(exam: Exam, wanted: dict[str, Any], raw: bytes) -> None:
    assert exam.centre == wanted["centre"]
    assert exam.priority == wanted["priority"]
    assert exam.origin == wanted["origin"]
    assert exam.service.code == wanted["service_code"]
    for key in IDENTIFIERS:
        assert getattr(exam, key) == wanted.get(key), key
    assert exam.patient.national_id == wanted.get("national_id")
    assert [i.value for i in exam.patient.local_ids] == wanted["local_ids"]
    assert exam.patient.name == wanted["patient_name"]
    assert exam.patient.sex == wanted["sex"]
    assert exam.patient.birth_date == wanted["birth_date"]
    assert exam.performed_at == wanted["performed_at"]
    assert len(exam.observations) == wanted["observation_count"]
    by_code = {o.code.code: o for o in exam.observations}
    for observation in wanted.get("observations", []):
        actual = by_code[observation["code"]]
        for key, value in observation.items():
            if key != "code":
                assert getattr(actual, key) == value, (observation["code"], key)
    assert [n.location for n in exam.notices] == wanted.get("notices", [])

    if "waveform" in wanted:
        waveform = wanted["waveform"]
        assert exam.waveform is not None
        assert exam.waveform.channels == waveform["channels"]
        assert exam.waveform.sampling_frequency == waveform["sampling_frequency"]
        assert exam.waveform.samples_per_channel == waveform["samples_per_channel"]
        assert list(exam.waveform.leads) == waveform["leads"]
        assert exam.waveform.data is not None
        assert exam.waveform.data.uri == "#" + waveform["location"]
    else:
        assert exam.waveform is None
    assert len(exam.attachments) == len(wanted.get("attachments", []))
    for attachment, expected in zip(exam.attachments, wanted.get("attachments", []), strict=True):
        assert attachment.media_type == expected["media_type"]
        assert attachment.size == expected["size"]
        assert attachment.title == expected["title"]
        assert attachment.uri == "#" + expected["location"]


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if "error" in e))
def test_bad_sample_fails_as_documented(name: str) -> None:
    expected = EXPECTED[name]
    with pytest.raises(errors.AdapterError) as caught:
        fhir.read((SAMPLES / name).read_bytes())
    assert type(caught.value).__name__ == expected["error"]
    locations = [p.location for p in caught.value.problems]
    if "locations" in expected:
        assert locations == expected["locations"]
    else:
        assert locations[0] == expected["location"]
    assert all(p.message for p in caught.value.problems)

"""The HL7 v2 samples decode to what examples/messages/hl7v2/EXPECTED.toml says, written by hand from them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from adapters import hl7v2
from hub import errors
from hub.envelope import Exam

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "messages" / "hl7v2"
EXPECTED: dict[str, Any] = tomllib.loads((SAMPLES / "EXPECTED.toml").read_text("utf-8"))


def test_every_sample_is_documented_and_every_entry_has_a_sample() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.hl7")) == sorted(EXPECTED)


def test_the_bench_sample_is_a_16_segment_oru() -> None:
    raw = (SAMPLES / "lab-cbc-gb18030.hl7").read_bytes()
    names = [line[:3] for line in raw.decode("gb18030").split("\r") if line]
    assert names == ["MSH", "PID", "PV1", "ORC", "OBR"] + ["OBX"] * 11


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if not n.startswith("bad-")))
def test_good_sample(name: str) -> None:
    expected = EXPECTED[name]
    exams = hl7v2.read((SAMPLES / name).read_bytes())
    assert len(exams) == expected["exam_count"] == len(expected["exams"])
    for exam, want in zip(exams, expected["exams"], strict=True):
        assert exam.source.format == "hl7v2"
        assert exam.source.charset == expected["charset"]
        assert exam.source.message_id == expected["message_id"]
        _check_exam(exam, want)


def _check_exam(exam: Exam, want: dict[str, Any]) -> None:
    assert exam.centre == want["centre"]
    assert exam.priority == want["priority"]
    assert exam.origin == want["origin"]
    assert exam.service.code == want["service_code"]
    assert exam.service.display == want["service_display"]
    assert exam.placer_order == want.get("placer_order")
    assert exam.accession == want.get("accession")
    assert exam.study_uid == want.get("study_uid")
    assert exam.patient.national_id == want.get("national_id")
    assert [i.value for i in exam.patient.local_ids] == want["local_ids"]
    assert exam.patient.name == want["patient_name"]
    assert exam.patient.sex == want["sex"]
    assert exam.patient.birth_date == want["birth_date"]
    assert exam.performed_at == want.get("performed_at")
    assert len(exam.observations) == want["observation_count"]
    assert len(exam.attachments) == want["attachment_count"]
    assert [a.media_type for a in exam.attachments] == want.get("attachment_media_types", [])
    by_code = {o.code.code: o for o in exam.observations}
    assert {code: by_code[code].value for code in want["observations"]} == want["observations"]
    assert {code: by_code[code].flag for code in want["flags"]} == want["flags"]
    assert {code: by_code[code].unit for code in want["units"]} == want["units"]
    assert [n.location for n in exam.notices] == want["notices"]


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n.startswith("bad-")))
def test_bad_sample(name: str) -> None:
    expected = EXPECTED[name]
    error_class = getattr(errors, expected["error"])
    with pytest.raises(error_class) as caught:
        hl7v2.read((SAMPLES / name).read_bytes())
    assert caught.value.location == expected["location"]
    assert caught.value.message  # something a sender can act on

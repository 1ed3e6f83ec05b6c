"""The DICOM samples decode to what examples/messages/dicom/EXPECTED.toml says, and can be rebuilt exactly."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from adapters import dicom
from hub import errors
from hub.envelope import Exam
from hub.resources import data_dir

SAMPLES = data_dir("examples") / "messages" / "dicom"
EXPECTED: dict[str, Any] = tomllib.loads((SAMPLES / "EXPECTED.toml").read_text("utf-8"))


def test_every_sample_is_described_and_every_description_has_a_sample() -> None:
    assert set(EXPECTED) == {path.name for path in SAMPLES.glob("*.dcm")}


def test_the_samples_stay_small() -> None:
    assert sum(path.stat().st_size for path in SAMPLES.glob("*.dcm")) < 1_000_000


@pytest.mark.parametrize("name", sorted(name for name in EXPECTED if "error" not in EXPECTED[name]))
def test_sample_decodes_as_expected(name: str) -> None:
    expected = EXPECTED[name]
    exam = dicom.read((SAMPLES / name).read_bytes(), **expected.get("read_kwargs", {}))
    assert expected["exam_count"] == 1  # one DICOM instance is one exam
    _check_exam(exam, expected["exams"][0])


@pytest.mark.parametrize("name", sorted(name for name in EXPECTED if "without_kwargs" in EXPECTED[name]))
def test_sample_needs_its_read_kwargs(name: str) -> None:
    failure = EXPECTED[name]["without_kwargs"]
    with pytest.raises(getattr(errors, failure["error"])) as raised:
        dicom.read((SAMPLES / name).read_bytes())
    assert raised.value.location == failure["location"]


@pytest.mark.parametrize("name", sorted(name for name in EXPECTED if "error" in EXPECTED[name]))
def test_bad_sample_fails_where_expected(name: str) -> None:
    assert name.startswith("bad-")
    expected = EXPECTED[name]
    with pytest.raises(getattr(errors, expected["error"])) as raised:
        dicom.read((SAMPLES / name).read_bytes())
    assert raised.value.location == expected["location"]
    assert raised.value.message  # something a sender can act on


def _check_exam(exam: Exam, expected: dict[str, Any]) -> None:
    assert exam.centre == expected["centre"]
    assert exam.priority == expected["priority"]
    assert exam.origin == expected["origin"]
    assert exam.service.model_dump() == {"system": None, **expected["service"]}
    assert exam.placer_order == expected.get("placer_order")
    assert exam.accession == expected.get("accession")
    assert exam.study_uid == expected.get("study_uid")
    assert exam.patient.national_id == expected["national_id"]
    assert [identifier.value for identifier in exam.patient.local_ids] == expected["local_ids"]
    assert exam.patient.name == expected["patient_name"]
    assert exam.patient.sex == expected["sex"]
    assert exam.patient.birth_date == expected["birth_date"]
    assert exam.performed_at == expected["performed_at"]
    assert exam.source.format == "dicom"
    assert exam.source.charset == expected["charset"]
    assert exam.source.message_id is not None
    assert exam.attachments[0].uri == f"urn:oid:{exam.source.message_id}"
    assert exam.attachments[0].title == expected["attachment_title"]
    assert len(exam.observations) == expected["observation_count"]
    assert len(exam.notices) == expected["notice_count"]
    observed = {obs.code.code: obs for obs in exam.observations}
    for wanted in expected.get("observations", []):
        got = observed[wanted["code"]]
        assert (got.code.system, got.code.display, got.value, got.unit) == (
            wanted["system"],
            wanted["display"],
            wanted["value"],
            wanted["unit"],
        )
    if "waveform" in expected:
        shape = expected["waveform"]
        assert exam.waveform is not None
        assert exam.waveform.channels == shape["channels"]
        assert exam.waveform.sampling_frequency == shape["sampling_frequency"]
        assert exam.waveform.samples_per_channel == shape["samples_per_channel"]
        assert list(exam.waveform.leads) == expected["leads"]
        assert exam.waveform.data is not None
        assert exam.waveform.data.size == shape["data_size"]
        assert exam.waveform.data.title == shape["title"]
        assert exam.waveform.data.uri.endswith("#" + shape["data_location"])
    else:
        assert exam.waveform is None


def _load_sample_maker() -> ModuleType:
    script = data_dir("examples") / "make_dicom_samples.py"
    spec = importlib.util.spec_from_file_location("make_dicom_samples", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_dicom_samples_rebuilds_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    maker = _load_sample_maker()
    assert maker.main([str(tmp_path)]) == 0
    built = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    committed = {path.name: path.read_bytes() for path in SAMPLES.glob("*.dcm")}
    assert built.keys() == committed.keys()
    for name, content in built.items():
        assert content == committed[name], f"{name} differs from the committed sample"

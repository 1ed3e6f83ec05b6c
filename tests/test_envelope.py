from datetime import UTC, date, datetime, timedelta, timezone

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hub.envelope import (
    Attachment,
    Coding,
    Exam,
    Identifier,
    Observation,
    Patient,
    Performer,
    Report,
    Source,
    Waveform,
)
from hub.errors import EnvelopeError
from hub.resources import load_schema

CST = timezone(timedelta(hours=8))


def make_exam(**overrides: object) -> Exam:
    fields: dict[str, object] = {
        "exam_id": "ex-0001",
        "origin": "12330112472334561L",
        "centre": "lab",
        "priority": "stat",
        "patient": Patient(
            national_id="11010519491231002X",
            local_ids=(Identifier(value="MR0099", system="於潜镇中心卫生院", type="MR"),),
            name="王秀英",
            sex="female",
            birth_date=date(1949, 12, 31),
        ),
        "service": Coding(code="CBC", system="L", display="血常规"),
        "placer_order": "LIS-20261122-001",
        "performed_at": datetime(2026, 11, 22, 8, 30, tzinfo=CST),
        "observations": (
            Observation(
                code=Coding(code="WBC", display="白细胞计数"),
                value=32.5,
                unit="10*9/L",
                reference_range="3.5-9.5",
                flag="HH",
            ),
            Observation(code=Coding(code="COMMENT"), value="标本轻度溶血"),
        ),
        "attachments": (Attachment(uri="#OBX[3]-5", media_type="application/pdf"),),
        "source": Source(format="hl7v2", message_id="MSG0001", charset="gb18030", received_at=datetime.now(UTC)),
    }
    fields.update(overrides)
    return Exam.model_validate(fields)


def test_exam_round_trips_through_utf8_json() -> None:
    exam = make_exam()
    raw = exam.encode()
    assert isinstance(raw, bytes)
    assert "王秀英".encode() in raw  # UTF-8, not \u escapes
    assert Exam.decode(raw) == exam


def test_encoded_exam_and_report_validate_against_shipped_schemas() -> None:
    exam = make_exam(waveform=Waveform(channels=12, sampling_frequency=500, leads=("I", "II")))
    jsonschema.validate(exam.model_dump(mode="json"), load_schema("exam"))
    report = Report.answering(exam, status="final", issued_at=datetime.now(UTC), conclusion="白细胞显著升高")
    jsonschema.validate(report.model_dump(mode="json"), load_schema("report"))


def test_envelopes_are_frozen() -> None:
    exam = make_exam()
    with pytest.raises(ValidationError):
        exam.priority = "routine"  # type: ignore[misc]


def test_invalid_national_id_is_refused() -> None:
    with pytest.raises(ValidationError, match="GB 11643"):
        Patient(national_id="110105194912310021")


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValidationError):
        make_exam(performed_at=datetime(2026, 11, 22, 8, 30))


def test_unknown_fields_and_centres_are_refused() -> None:
    with pytest.raises(ValidationError):
        make_exam(centre="dental")
    with pytest.raises(ValidationError):
        make_exam(colour="blue")


def test_repr_leaves_out_patient_name_and_ids() -> None:
    text = repr(make_exam()) + str(make_exam())
    assert "王秀英" not in text
    assert "11010519491231002X" not in text
    assert "MR0099" not in text


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{}", b'{"schema_version": "99"}', "王".encode("gb18030")],
)
def test_decode_rejects_what_is_not_an_envelope(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Exam.decode(raw)


def test_decode_rejects_another_schema_version() -> None:
    raw = make_exam().encode().replace(b'"schema_version":"1"', b'"schema_version":"2"')
    with pytest.raises(EnvelopeError, match="schema_version"):
        Exam.decode(raw)


def test_report_answering_carries_the_exam_identifiers_and_a_stable_id() -> None:
    exam = make_exam()
    issued = datetime(2026, 11, 22, 9, 0, tzinfo=CST)
    first = Report.answering(exam, status="final", issued_at=issued, performer=Performer(name="李主任"))
    second = Report.answering(exam, status="final", issued_at=issued + timedelta(minutes=5))
    assert first.report_id == second.report_id
    assert (first.exam_id, first.origin, first.centre) == (exam.exam_id, exam.origin, exam.centre)
    assert first.patient == exam.patient
    assert first.placer_order == exam.placer_order
    assert Report.answering(exam, status="amended", issued_at=issued).report_id != first.report_id
    assert Report.decode(first.encode()) == first


def test_critical_items_need_the_critical_flag() -> None:
    exam = make_exam()
    with pytest.raises(ValidationError, match="critical"):
        Report.answering(exam, status="final", issued_at=datetime.now(UTC), critical_items=("WBC",))


cjk = st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=8)
values = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))


@given(name=cjk, values=st.lists(values, max_size=8), priority=st.sampled_from(["routine", "urgent", "stat"]))
def test_any_exam_round_trips(name: str, values: list[float | str | None], priority: str) -> None:
    observations = tuple(Observation(code=Coding(code=f"C{i}"), value=v) for i, v in enumerate(values))
    exam = make_exam(patient=Patient(name=name), observations=observations, priority=priority)
    assert Exam.decode(exam.encode()) == exam

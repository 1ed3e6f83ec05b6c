"""adapters.fhir.write_report: an R4 DiagnosticReport that validates, and reads back to the same exam."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from adapters import fhir
from adapters._common import CHINA_TZ, RESIDENT_ID_SYSTEM
from hub.envelope import Attachment, Coding, Exam, Observation, Performer, Report

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "messages" / "fhir"
READABLE = sorted(p.name for p in SAMPLES.glob("*.json") if not p.name.startswith("bad-"))
LEAD = "12330112470101234B"
ISSUED = datetime(2024, 6, 12, 9, 31, 5, tzinfo=CHINA_TZ)


def exam_of(name: str) -> Exam:
    return fhir.read((SAMPLES / name).read_bytes())[0]


def lab_report(**fields: Any) -> Report:
    exam = exam_of("lab-panel-transaction.json")
    base: dict[str, Any] = {
        "status": "final",
        "observations": tuple(o.model_copy(update={"status": "final"}) for o in exam.observations),
        "performer": Performer(name="陈晓燕", id="LA0312"),
        "performer_institution": LEAD,
        "issued_at": ISSUED,
        "conclusion": "肾功能轻度受损，请结合临床",
    }
    return Report.answering(exam, **(base | fields))


def test_report_validates_with_the_r4b_diagnostic_report_model() -> None:
    resource = fhir.write_report(lab_report(findings="肌酐 96 μmol/L，尿素 7.9 mmol/L"))
    model = DiagnosticReport.model_validate(resource)
    assert model.status == "final"
    assert [c.get_resource_type() for c in model.contained or ()] == ["Patient"] + ["Observation"] * 6
    json.dumps(resource, ensure_ascii=False, allow_nan=False)  # plain JSON data


@pytest.mark.parametrize("name", READABLE)
def test_round_trip_gives_the_same_patient_orders_and_observations(name: str) -> None:
    exam = exam_of(name)
    report = Report.answering(exam, status="preliminary", observations=exam.observations, issued_at=ISSUED)
    (back,) = fhir.read(fhir.write_report(report))
    assert back.exam_id == exam.exam_id
    assert back.origin == exam.origin
    assert back.centre == exam.centre
    assert back.service == exam.service
    assert (back.placer_order, back.accession, back.study_uid) == (exam.placer_order, exam.accession, exam.study_uid)
    assert back.patient == exam.patient
    assert back.observations == exam.observations
    assert [n.location for n in back.notices] == ["DiagnosticReport.contained[0].identifier[0]" for _ in exam.notices]


def test_round_trip_through_json_bytes() -> None:
    report = lab_report()
    raw = json.dumps(fhir.write_report(report), ensure_ascii=False).encode("utf-8")
    (back,) = fhir.read(raw)
    assert back.exam_id == report.exam_id
    assert back.patient.name == "王秀英"
    assert [o.status for o in back.observations] == ["final"] * 5


def test_patient_travels_contained_with_national_and_local_ids() -> None:
    resource = fhir.write_report(lab_report())
    patient = resource["contained"][0]
    assert resource["subject"] == {"reference": "#patient"}
    assert patient["identifier"][0]["system"] == RESIDENT_ID_SYSTEM
    assert patient["identifier"][0]["value"] == "330112196211050425"
    assert patient["identifier"][1]["value"] == "GH0008734"
    assert patient["name"] == [{"text": "王秀英"}]
    assert (patient["gender"], patient["birthDate"]) == ("female", "1962-11-05")


def test_orders_are_referenced_by_identifier_with_their_assigner() -> None:
    exam = exam_of("imaging-servicerequest.json")
    resource = fhir.write_report(Report.answering(exam, status="final", issued_at=ISSUED))
    placer, accession = resource["basedOn"]
    assert placer["identifier"]["type"]["coding"][0]["code"] == "PLAC"
    assert placer["identifier"]["value"] == "YQ20240612-031"
    assert accession["identifier"]["type"]["coding"][0]["code"] == "ACSN"
    assert accession["identifier"]["assigner"]["identifier"]["value"] == "12330112472334561L"


@pytest.mark.parametrize("status", ["preliminary", "final", "amended", "cancelled"])
def test_status_is_carried_over(status: str) -> None:
    resource = fhir.write_report(lab_report(status=status))
    assert resource["status"] == status
    DiagnosticReport.model_validate(resource)


@pytest.mark.parametrize(
    ("sample", "section"),
    [
        ("lab-panel-transaction.json", "LAB"),
        ("imaging-servicerequest.json", "RAD"),
        ("ecg-message-bundle.json", "EC"),
        ("notice-resident-id-check-digit.json", "SP"),
    ],
)
def test_category_follows_the_centre(sample: str, section: str) -> None:
    resource = fhir.write_report(Report.answering(exam_of(sample), status="final", issued_at=ISSUED))
    assert resource["category"][0]["coding"][0]["code"] == section


def test_findings_travel_as_a_loinc_observation_left_out_of_the_exam() -> None:
    resource = fhir.write_report(lab_report(findings="双肾未见明显异常回声"))
    findings = resource["contained"][-1]
    assert findings["code"]["coding"][0]["code"] == "59776-5"
    assert findings["valueString"] == "双肾未见明显异常回声"
    assert resource["result"][-1] == {"reference": f"#{findings['id']}"}
    assert resource["conclusion"] == "肾功能轻度受损，请结合临床"
    assert len(fhir.read(resource)[0].observations) == 5


def test_critical_report_is_tagged_and_names_its_items() -> None:
    exam = exam_of("ecg-message-bundle.json")
    critical = Observation(code=Coding(code="8867-4", system="http://loinc.org"), value=182.0, unit="/min", flag="HH")
    report = Report.answering(
        exam,
        status="final",
        issued_at=ISSUED,
        observations=(critical,),
        conclusion="室上性心动过速",
        critical=True,
        critical_items=("室上性心动过速，心室率182次/分",),
    )
    resource = fhir.write_report(report)
    DiagnosticReport.model_validate(resource)
    assert resource["meta"]["tag"][0]["code"] == "AA"
    assert resource["conclusionCode"] == [{"text": "室上性心动过速，心室率182次/分"}]
    assert resource["contained"][1]["interpretation"][0]["coding"][0]["code"] == "HH"
    assert "meta" not in fhir.write_report(report.model_copy(update={"critical": False, "critical_items": ()}))


def test_performer_and_institution() -> None:
    resource = fhir.write_report(lab_report())
    person, institution = resource["performer"]
    assert person == {"type": "Practitioner", "display": "陈晓燕", "identifier": {"value": "LA0312"}}
    assert institution["identifier"]["value"] == LEAD
    assert resource["issued"] == "2024-06-12T09:31:05+08:00"


def test_text_values_and_attachments() -> None:
    exam = exam_of("imaging-report-collection.json")
    observation = Observation(code=Coding(code="ASSESS", display="印象"), value="未见急性出血", status="final")
    pdf = Attachment(uri="urn:sha256:" + "0" * 64 + "#blob", media_type="application/pdf", size=1024, title="报告")
    report = Report.answering(exam, status="final", issued_at=ISSUED, observations=(observation,), attachments=(pdf,))
    resource = fhir.write_report(report)
    DiagnosticReport.model_validate(resource)
    assert resource["contained"][1]["valueString"] == "未见急性出血"
    assert resource["imagingStudy"][0]["identifier"]["value"] == "urn:oid:1.2.156.112605.189250941.20240612.91530.418"
    (back,) = fhir.read(resource)
    assert back.observations == (observation,)
    assert back.attachments == (pdf,)


def test_infinite_value_is_written_as_text_not_as_a_bad_decimal() -> None:
    observation = Observation(code=Coding(code="X"), value=float("inf"))
    resource = fhir.write_report(lab_report(observations=(observation,)))
    DiagnosticReport.model_validate(resource)
    assert resource["contained"][1]["valueString"] == "inf"

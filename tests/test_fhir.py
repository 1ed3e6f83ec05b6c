"""adapters.fhir.read: references, validation, origin, centre, patient, observations, waveforms, errors."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters import fhir
from adapters._common import CHINA_TZ, RESIDENT_ID_SYSTEM
from hub.errors import AdapterError, DecodeError, InvalidMessage, UnsupportedMessage
from hub.ids import derive_exam_id

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "messages" / "fhir"
USCC = "urn:oid:2.16.156.10011.1.5"
CHANGHUA = "12330112473455672X"
LEAD = "12330112470101234B"
_CACHE: dict[str, dict[str, Any]] = {}


def sample(name: str) -> dict[str, Any]:
    """A fresh copy of a sample, to change freely."""
    if name not in _CACHE:
        _CACHE[name] = json.loads((SAMPLES / name).read_bytes())
    return copy.deepcopy(_CACHE[name])


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode("utf-8")


def imaging_request() -> dict[str, Any]:
    return sample("imaging-servicerequest.json")


def error_of(raw: bytes | dict[str, Any], **kwargs: Any) -> AdapterError:
    with pytest.raises(AdapterError) as caught:
        fhir.read(raw, **kwargs)
    return caught.value


# -- the public surface


def test_public_api_is_read_and_write_report() -> None:
    assert sorted(fhir.__all__) == ["read", "write_report"]


# -- input forms


def test_dict_input_reads_like_bytes() -> None:
    message = sample("ecg-message-bundle.json")
    from_bytes = fhir.read(encode(message))[0]
    from_dict = fhir.read(message)[0]
    assert from_dict.exam_id == from_bytes.exam_id
    assert from_dict.patient == from_bytes.patient
    assert from_dict.observations == from_bytes.observations
    assert from_dict.waveform == from_bytes.waveform
    assert from_dict.waveform is not None and from_dict.waveform.data is not None
    assert from_dict.waveform.data.uri == "#Bundle.entry[6].resource.component"


def test_utf8_bom_is_accepted() -> None:
    raw = b"\xef\xbb\xbf" + (SAMPLES / "ecg-message-bundle.json").read_bytes()
    exam = fhir.read(raw)[0]
    assert exam.patient.name == "张伟"
    assert exam.waveform is not None and exam.waveform.data is not None
    assert exam.waveform.data.uri.startswith("#Bundle.entry[")


def test_gb18030_bytes_are_a_decode_error_at_the_root() -> None:
    error = error_of(json.dumps(imaging_request(), ensure_ascii=False).encode("gb18030"))
    assert isinstance(error, DecodeError)
    assert error.location == "$"
    assert "UTF-8" in error.message


def test_invalid_json_names_line_and_column() -> None:
    error = error_of(b'{"resourceType": "ServiceRequest",\n  "status": }')
    assert isinstance(error, DecodeError)
    assert error.location == "$"
    assert "line 2 column 13" in error.message


def test_nan_is_not_json() -> None:
    error = error_of(b'{"resourceType": "Bundle", "type": "collection", "total": NaN}')
    assert isinstance(error, DecodeError)
    assert error.location == "$"


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"x"', b'{"id": "no-resource-type"}'])
def test_json_that_is_not_a_fhir_resource_is_unsupported(raw: bytes) -> None:
    error = error_of(raw)
    assert isinstance(error, UnsupportedMessage)
    assert error.location in ("resourceType", "Bundle.type")


def test_json_nested_past_the_recursion_limit_is_a_decode_error() -> None:
    raw = b'{"resourceType": "ServiceRequest", "note": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert isinstance(error_of(raw), DecodeError)


def test_input_that_is_neither_bytes_nor_dict_is_a_decode_error() -> None:
    assert isinstance(error_of("{}"), DecodeError)  # type: ignore[arg-type]


def test_received_at_defaults_to_now_and_naive_means_china_time() -> None:
    before = datetime.now(UTC)
    exam = fhir.read(imaging_request())[0]
    assert before <= exam.source.received_at <= datetime.now(UTC)
    given = fhir.read(imaging_request(), received_at=datetime(2024, 6, 12, 10, 21))[0]
    assert given.source.received_at == datetime(2024, 6, 12, 10, 21, tzinfo=CHINA_TZ)


# -- kinds of message


@pytest.mark.parametrize("kind", ["searchset", "history", "document", "transaction-response"])
def test_unsupported_bundle_types(kind: str) -> None:
    message = sample("lab-panel-transaction.json")
    message["type"] = kind
    error = error_of(message)
    assert isinstance(error, UnsupportedMessage)
    assert error.location == "Bundle.type"


def test_batch_bundle_reads_like_a_transaction() -> None:
    message = sample("lab-panel-transaction.json")
    message["type"] = "batch"
    assert fhir.read(message)[0].placer_order == "GH20240612-0153"


@pytest.mark.parametrize("resource_type", ["Patient", "Observation", "Task"])
def test_lone_resources_other_than_orders_and_reports_are_unsupported(resource_type: str) -> None:
    error = error_of({"resourceType": resource_type, "id": "x"})
    assert isinstance(error, UnsupportedMessage)
    assert error.location == "resourceType"


def test_bundle_without_orders_or_reports_is_unsupported() -> None:
    message = sample("imaging-report-collection.json")
    del message["entry"][3]  # the DiagnosticReport
    error = error_of(message)
    assert isinstance(error, UnsupportedMessage)


def test_message_bundle_must_start_with_its_header() -> None:
    message = sample("ecg-message-bundle.json")
    message["entry"].append(message["entry"].pop(0))
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[0].resource"


def test_message_focus_must_resolve() -> None:
    message = sample("ecg-message-bundle.json")
    message["entry"][0]["resource"]["focus"] = [{"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}]
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[0].resource.focus[0]"


def test_message_about_a_patient_is_unsupported() -> None:
    message = sample("ecg-message-bundle.json")
    message["entry"][0]["resource"]["focus"] = [{"reference": message["entry"][3]["fullUrl"]}]
    error = error_of(message)
    assert isinstance(error, UnsupportedMessage)
    assert error.location == "Bundle.entry[0].resource.focus[0]"


def test_message_focus_on_a_report_reads_its_order() -> None:
    message = sample("lab-panel-transaction.json")
    header = {
        "resourceType": "MessageHeader",
        "eventCoding": {"system": "http://example.org/fhir/message-events", "code": "lab-review-request"},
        "source": {"endpoint": "https://lis.gaohong.example/fhir"},
        "focus": [{"reference": message["entry"][6]["fullUrl"]}],
    }
    message["type"] = "message"
    message["entry"].insert(0, {"fullUrl": "urn:uuid:8b0f1f9e-5a4d-4c1e-9b7a-2d3c4e5f6a7b", "resource": header})
    for entry in message["entry"]:
        entry.pop("request", None)
    exam = fhir.read(message)[0]
    assert exam.placer_order == "GH20240612-0153"
    assert len(exam.observations) == 5


def test_two_orders_in_a_transaction_give_two_exams() -> None:
    message = sample("lab-panel-transaction.json")
    second = copy.deepcopy(message["entry"][5])
    second["fullUrl"] = "urn:uuid:2f6c1d3e-7b8a-4c9d-8e0f-1a2b3c4d5e6f"
    second["resource"]["identifier"][0]["value"] = "GH20240612-0154"
    second["resource"]["code"] = {
        "coding": [{"system": "http://loinc.org", "code": "24331-1", "display": "Lipid panel"}]
    }
    message["entry"].append(second)
    exams = fhir.read(message)
    assert [e.placer_order for e in exams] == ["GH20240612-0153", "GH20240612-0154"]
    assert [len(e.observations) for e in exams] == [5, 0]
    assert exams[0].exam_id != exams[1].exam_id


# -- validation with the R4B models


def test_bundle_validation_reaches_nested_and_contained_resources() -> None:
    message = sample("lab-panel-transaction.json")
    message["entry"][3]["resource"]["contained"] = [{"resourceType": "Patient", "id": "mother", "gender": 1}]
    message["entry"][5]["resource"]["authoredOn"] = "2024-06-12 07:35"
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert [p.location for p in error.problems] == [
        "Bundle.entry[3].resource.contained[0].gender",
        "Bundle.entry[5].resource.authoredOn",
    ]


def test_unknown_element_is_named() -> None:
    request = imaging_request()
    request["urgency"] = "high"
    error = error_of(request)
    assert isinstance(error, InvalidMessage)
    assert error.location == "ServiceRequest.urgency"


def test_unknown_nested_resource_type_is_an_invalid_message_not_a_key_error() -> None:
    message = sample("lab-panel-transaction.json")
    message["entry"][4]["resource"]["resourceType"] = "Sample"
    error = error_of(encode(message))
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[4].resource.resourceType"


def test_library_crash_on_a_number_where_a_url_goes_is_an_invalid_message() -> None:
    # fhir.resources raises AttributeError here, not a ValidationError.
    message = sample("ecg-message-bundle.json")
    message["entry"][0]["resource"]["destination"][0]["endpoint"] = 0
    error = error_of(encode(message))
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[0]"


def test_dict_that_is_not_json_data_is_a_decode_error() -> None:
    request: dict[str, Any] = imaging_request()
    request["note"] = {"not", "json"}
    assert isinstance(error_of(request), DecodeError)


def test_wrong_resource_type_in_a_reference_target_is_named() -> None:
    message = sample("lab-panel-transaction.json")
    message["entry"][5]["resource"]["subject"] = {"reference": message["entry"][0]["fullUrl"]}  # the Organization
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[5].resource.subject"
    assert "Patient" in error.message


@pytest.mark.parametrize(
    ("entry", "field", "value"),
    [(5, "status", "ordered"), (6, "status", "done"), (5, "priority", "emergency")],
)
def test_required_code_bindings_are_checked(entry: int, field: str, value: str) -> None:
    message = sample("lab-panel-transaction.json")
    message["entry"][entry]["resource"][field] = value
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert error.location == f"Bundle.entry[{entry}].resource.{field}"


# -- references


def test_relative_versioned_and_contained_references_resolve() -> None:
    message = sample("imaging-report-collection.json")
    report = message["entry"][3]["resource"]
    report["subject"] = {"reference": "Patient/bq-p-0031/_history/3"}
    report["imagingStudy"] = [{"reference": "ImagingStudy/bq-is-0418"}]
    exam = fhir.read(message)[0]
    assert exam.patient.name == "陈桂兰"
    assert exam.study_uid == "1.2.156.112605.189250941.20240612.91530.418"


def test_unresolved_subject_is_named_at_its_path() -> None:
    request = imaging_request()
    request["subject"] = {"reference": "#patient"}  # the contained Patient's id is "pat"
    error = error_of(request)
    assert isinstance(error, InvalidMessage)
    assert error.location == "ServiceRequest.subject"


def test_identifier_only_subject_gives_the_patient_from_the_identifier() -> None:
    request = imaging_request()
    del request["contained"]
    request["subject"] = {
        "identifier": {"system": RESIDENT_ID_SYSTEM, "value": "330112197007210035"},
        "display": "李建国",
    }
    patient = fhir.read(request)[0].patient
    assert patient.national_id == "330112197007210035"
    assert patient.name == "李建国"


def test_subject_without_reference_or_identifier_is_invalid() -> None:
    request = imaging_request()
    request["subject"] = {"display": "李建国"}
    error = error_of(request)
    assert isinstance(error, InvalidMessage)
    assert error.location == "ServiceRequest.subject"


def test_lone_report_with_a_contained_order_reads_the_order() -> None:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "contained": [
            {"resourceType": "Patient", "id": "p", "name": [{"text": "王秀英"}], "gender": "female"},
            {
                "resourceType": "ServiceRequest",
                "id": "o",
                "identifier": [{"value": "GH20240612-0153"}],
                "status": "active",
                "intent": "order",
                "category": [{"coding": [{"code": "LAB"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "24362-6"}]},
                "subject": {"reference": "#p"},
                "requester": {"identifier": {"system": USCC, "value": "12330112475697894G"}},
            },
            {
                "resourceType": "Observation",
                "id": "k",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}], "text": "钾"},
                "valueQuantity": {"value": 4.2, "unit": "mmol/L"},
            },
        ],
        "basedOn": [{"reference": "#o"}],
        "status": "final",
        "code": {"text": "肾功能"},
        "subject": {"reference": "#p"},
        "result": [{"reference": "#k"}],
    }
    exam = fhir.read(report)[0]
    assert exam.placer_order == "GH20240612-0153"
    assert exam.origin == "12330112475697894G"
    assert exam.service.code == "24362-6"
    assert [(o.code.code, o.value, o.unit) for o in exam.observations] == [("2823-3", 4.2, "mmol/L")]


# -- origin


def test_origin_parameter_overrides_the_message() -> None:
    exam = fhir.read(sample("ecg-message-bundle.json"), origin=LEAD)[0]
    assert exam.origin == LEAD
    assert exam.exam_id == derive_exam_id(LEAD, placer_order="CH20240612-0007")


def test_origin_prefers_the_uscc_identifier_of_the_sender() -> None:
    message = sample("ecg-message-bundle.json")
    organization = message["entry"][1]["resource"]
    organization["identifier"].insert(0, {"system": "https://his.changhua.example/org", "value": "CH-001"})
    assert fhir.read(message)[0].origin == CHANGHUA


def test_message_without_a_sender_identity_is_invalid_at_the_sender() -> None:
    message = sample("ecg-message-bundle.json")
    del message["entry"][1]["resource"]["identifier"]
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[0].resource.sender"
    assert fhir.read(message, origin=CHANGHUA)[0].origin == CHANGHUA


def test_lone_order_without_a_requester_is_invalid_at_the_requester() -> None:
    request = imaging_request()
    del request["requester"]
    error = error_of(request)
    assert isinstance(error, InvalidMessage)
    assert error.location == "ServiceRequest.requester"


def test_origin_falls_back_to_the_patients_managing_organization() -> None:
    request = imaging_request()
    del request["requester"]
    request["contained"][0]["managingOrganization"] = {"identifier": {"system": USCC, "value": "12330112472334561L"}}
    assert fhir.read(request)[0].origin == "12330112472334561L"


# -- order numbers, centre, priority, times


def test_order_without_any_order_number_is_invalid() -> None:
    request = imaging_request()
    del request["identifier"]
    error = error_of(request)
    assert isinstance(error, InvalidMessage)
    assert error.location == "ServiceRequest.identifier"


def test_untyped_identifier_is_the_placer_order_number() -> None:
    request = imaging_request()
    request["identifier"] = [{"value": "YQ-0001"}, {"type": {"coding": [{"code": "FILL"}]}, "value": "F-9"}]
    exam = fhir.read(request)[0]
    assert (exam.placer_order, exam.accession) == ("YQ-0001", "F-9")


def test_accession_alone_identifies_the_exam() -> None:
    request = imaging_request()
    request["identifier"] = request["identifier"][1:]
    exam = fhir.read(request)[0]
    assert exam.placer_order is None
    assert exam.exam_id == derive_exam_id("12330112472334561L", accession="DR2406120031")


def test_unknown_section_is_invalid_unless_the_caller_maps_the_order_code() -> None:
    request = imaging_request()
    request["category"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005"}]}]
    error = error_of(request)
    assert isinstance(error, InvalidMessage)
    assert error.location == "ServiceRequest.category"
    assert fhir.read(request, centres={"FS-DR-0101": "imaging"})[0].centre == "imaging"


def test_caller_centre_map_wins_over_the_section() -> None:
    assert fhir.read(imaging_request(), centres={"FS-DR-0101": "pathology"})[0].centre == "pathology"


@pytest.mark.parametrize(
    ("fhir_priority", "priority"), [("routine", "routine"), ("urgent", "urgent"), ("asap", "urgent"), ("stat", "stat")]
)
def test_priority_mapping(fhir_priority: str, priority: str) -> None:
    request = imaging_request()
    request["priority"] = fhir_priority
    assert fhir.read(request)[0].priority == priority


def test_task_never_lowers_the_orders_priority() -> None:
    message = sample("notice-resident-id-check-digit.json")
    message["entry"][4]["resource"]["priority"] = "stat"
    assert fhir.read(message)[0].priority == "stat"


def test_task_without_an_order_is_invalid() -> None:
    message = sample("notice-resident-id-check-digit.json")
    message["entry"][1]["resource"]["focus"] = {"reference": message["entry"][2]["fullUrl"]}  # the Patient
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[1].resource.focus"


def test_times_without_offset_are_china_time_with_a_notice() -> None:
    message = sample("lab-panel-transaction.json")
    message["timestamp"] = "2024-06-12T08:51:30"
    message["entry"][6]["resource"]["effectiveDateTime"] = "2024-06-12T07:42"
    exam = fhir.read(encode(message))[0]
    assert exam.performed_at == datetime(2024, 6, 12, 7, 42, tzinfo=CHINA_TZ)
    assert [n.location for n in exam.notices] == ["Bundle.entry[6].resource.effectiveDateTime", "Bundle.timestamp"]


def test_time_without_offset_does_not_hide_other_problems() -> None:
    message = sample("lab-panel-transaction.json")
    message["entry"][6]["resource"]["effectiveDateTime"] = "2024-06-12T07:42:00"
    message["entry"][3]["resource"]["gender"] = 2
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert [p.location for p in error.problems] == ["Bundle.entry[3].resource.gender"]


def test_partial_dates_are_left_out() -> None:
    request = imaging_request()
    request["occurrenceDateTime"] = "2024-06"
    request["contained"][0]["birthDate"] = "1970"
    exam = fhir.read(request)[0]
    assert exam.performed_at is None
    assert exam.patient.birth_date is None


# -- patient


def test_western_name_joins_given_then_family_with_a_space() -> None:
    request = imaging_request()
    request["contained"][0]["name"] = [{"family": "Smith", "given": ["John", "A"]}]
    assert fhir.read(request)[0].patient.name == "John A Smith"


def test_official_name_is_preferred() -> None:
    request = imaging_request()
    request["contained"][0]["name"] = [{"use": "nickname", "text": "老李"}, {"use": "official", "text": "李建国"}]
    assert fhir.read(request)[0].patient.name == "李建国"


def test_resident_id_labelled_by_type_text() -> None:
    request = imaging_request()
    request["contained"][0]["identifier"] = [{"type": {"text": "身份证"}, "value": "330112197007210035"}]
    assert fhir.read(request)[0].patient.national_id == "330112197007210035"


def test_valid_looking_but_unlabelled_number_stays_local() -> None:
    request = imaging_request()
    request["contained"][0]["identifier"] = [{"system": "https://his.yuqian.example/x", "value": "330112197007210035"}]
    patient = fhir.read(request)[0].patient
    assert patient.national_id is None
    assert [i.value for i in patient.local_ids] == ["330112197007210035"]


def test_bad_resident_id_becomes_a_notice_and_a_local_id() -> None:
    exam = fhir.read((SAMPLES / "notice-resident-id-check-digit.json").read_bytes())[0]
    assert exam.patient.national_id is None
    assert exam.patient.local_ids[0].system == RESIDENT_ID_SYSTEM
    assert exam.patient.birth_date == date(1985, 9, 19)
    (notice,) = exam.notices
    assert notice.location == "Bundle.entry[2].resource.identifier[0]"
    assert "330112198509190287" not in notice.message


# -- observations and waveforms


NEGATIVE = {"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}


def observation_message(**value: Any) -> dict[str, Any]:
    """The lab transaction with the creatinine Observation's value replaced."""
    message = sample("lab-panel-transaction.json")
    observation = message["entry"][7]["resource"]
    del observation["valueQuantity"]
    observation.update(value)
    return message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"valueString": "阴性"}, "阴性"),
        (
            {"valueCodeableConcept": {"coding": [{"code": "260385009", "display": "Negative"}], "text": "阴性(-)"}},
            "阴性(-)",
        ),
        ({"valueCodeableConcept": {"coding": [{"code": "260385009", "display": "Negative"}]}}, "Negative"),
        ({"valueInteger": 3}, 3.0),
        ({"valueBoolean": False}, "false"),
        ({"valueRange": {"low": {"value": 2}, "high": {"value": 5}}}, "2-5"),
        ({"dataAbsentReason": {"text": "溶血"}}, None),
    ],
)
def test_observation_value_types(value: dict[str, Any], expected: float | str | None) -> None:
    observation = fhir.read(observation_message(**value))[0].observations[0]
    assert observation.value == expected


def test_quantity_unit_falls_back_to_the_ucum_code() -> None:
    message = sample("lab-panel-transaction.json")
    del message["entry"][7]["resource"]["valueQuantity"]["unit"]
    assert fhir.read(message)[0].observations[0].unit == "umol/L"


def test_observation_basedon_the_order_belongs_to_its_exam() -> None:
    message = sample("lab-panel-transaction.json")
    message["entry"][6]["resource"]["result"] = message["entry"][6]["resource"]["result"][:2]
    message["entry"][9]["resource"]["basedOn"] = [{"reference": message["entry"][5]["fullUrl"]}]
    codes = [o.code.code for o in fhir.read(message)[0].observations]
    assert codes == ["14933-6", "14682-9", "22664-7"]


def test_single_multi_dimension_sampled_data() -> None:
    message = sample("ecg-message-bundle.json")
    observation = message["entry"][6]["resource"]
    observation["component"] = observation["component"][12:]
    observation["valueSampledData"] = {
        "origin": {"value": 0},
        "period": 4,
        "dimensions": 2,
        "data": "1 2 3 4 5 6 7 8",
    }
    waveform = fhir.read(message)[0].waveform
    assert waveform is not None and waveform.data is not None
    assert (waveform.channels, waveform.sampling_frequency, waveform.samples_per_channel) == (2, 250.0, 4)
    assert waveform.data.uri.endswith("#Bundle.entry[6].resource.valueSampledData")


def test_sample_count_is_exact_with_line_breaks() -> None:
    message = sample("ecg-message-bundle.json")
    observation = message["entry"][6]["resource"]
    observation["component"] = observation["component"][:1]
    observation["component"][0]["valueSampledData"]["data"] = "1 2 3\n4 5\n6"
    waveform = fhir.read(message)[0].waveform
    assert waveform is not None
    assert waveform.samples_per_channel == 6
    assert waveform.leads == ("I",)
    assert waveform.data is not None and waveform.data.uri.endswith("component[0].valueSampledData")


def test_null_required_codes_get_past_the_models_and_are_handled() -> None:
    message = sample("ecg-message-bundle.json")
    message["entry"][6]["resource"]["component"][5]["code"] = None  # the models let null through
    waveform = fhir.read(message)[0].waveform
    assert waveform is not None
    assert waveform.channels == 12
    assert waveform.leads == ()  # all leads named or none
    message["entry"][6]["resource"]["code"] = None
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[6].resource.code"


def test_leads_sampled_at_different_rates_are_invalid() -> None:
    message = sample("ecg-message-bundle.json")
    message["entry"][6]["resource"]["component"][3]["valueSampledData"]["period"] = 1
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[6].resource.component"


def test_zero_sampling_period_is_invalid() -> None:
    message = sample("ecg-message-bundle.json")
    message["entry"][6]["resource"]["component"][0]["valueSampledData"]["period"] = 0
    error = error_of(message)
    assert isinstance(error, InvalidMessage)
    assert error.location == "Bundle.entry[6].resource.component[0].valueSampledData.period"


def test_presented_form_by_url_keeps_the_url() -> None:
    message = sample("imaging-report-collection.json")
    message["entry"][3]["resource"]["presentedForm"] = [
        {"contentType": "application/pdf", "url": "https://pacs.banqiao.example/reports/0418.pdf", "size": 52011}
    ]
    (attachment,) = fhir.read(message)[0].attachments
    assert attachment.uri == "https://pacs.banqiao.example/reports/0418.pdf"
    assert attachment.size == 52011
    assert attachment.sha256 is None

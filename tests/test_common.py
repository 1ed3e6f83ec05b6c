"""Helpers shared by the adapters: coding systems, centres, resident ids."""

from pathlib import Path

from adapters import dicom, fhir, hl7v2
from adapters._common import canonical_system, resolve_centre, split_resident_ids, v2_system
from hub.envelope import Identifier

MESSAGES = Path(__file__).resolve().parents[1] / "examples" / "messages"


def test_coding_systems_have_one_name_in_the_envelope() -> None:
    assert canonical_system("LN") == canonical_system("ln") == "http://loinc.org"
    assert canonical_system("DCM") == "http://dicom.nema.org/resources/ontology/DCM"
    assert canonical_system("99LAYGT") == "99LAYGT"  # local systems pass through
    assert canonical_system("") is None
    for name in ("LN", "SCT", "UCUM", "DCM", "L", "99LAYGT"):
        assert v2_system(canonical_system(name)) == name


def test_loinc_codes_from_hl7_and_fhir_samples_share_a_system() -> None:
    from_hl7 = {o.code.system for e in hl7v2.read((MESSAGES / "hl7v2" / "lab-cbc-gb18030.hl7").read_bytes())
                for o in e.observations}  # fmt: skip
    from_fhir = {o.code.system for e in fhir.read((MESSAGES / "fhir" / "lab-panel-transaction.json").read_bytes())
                 for o in e.observations}  # fmt: skip
    assert from_hl7 == from_fhir == {"http://loinc.org"}


def test_hl7_report_writes_the_v2_name_back() -> None:
    from datetime import UTC, datetime

    from hub.envelope import Report

    exam = hl7v2.read((MESSAGES / "hl7v2" / "lab-cbc-gb18030.hl7").read_bytes())[0]
    report = Report.answering(exam, status="final", issued_at=datetime.now(UTC), observations=exam.observations)
    text = hl7v2.write_report(report).decode()
    assert "^LN|" in text or "^LN^" in text
    assert "loinc.org" not in text


def test_dicom_scheme_designators_are_canonical() -> None:
    exam = dicom.read(MESSAGES / "dicom" / "ecg-12lead.dcm")
    assert exam.service.system == "99LAYGT"
    assert all(o.code.system and "://" not in o.code.system for o in exam.observations)  # SCPECG is local


def test_resolve_centre_prefers_the_callers_order_code_map() -> None:
    assert resolve_centre(order_code="CT001", section="CT") == "imaging"
    assert resolve_centre(order_code="CT001", section="ct") == "imaging"
    assert resolve_centre(order_code="CT001", section="CT", overrides={"CT001": "pathology"}) == "pathology"
    assert resolve_centre(order_code="X", section="EC") == "ecg"
    assert resolve_centre(order_code="X", section="ZZ") is None
    assert resolve_centre(order_code=None, section=None) is None


def test_split_resident_ids_keeps_failures_local_with_a_notice() -> None:
    good, bad, mrn = "11010519491231002X", "110105194912310021", "MR0001"
    national, local, notices = split_resident_ids(
        [
            (Identifier(value=bad, type="NI"), "PID-3[1]", True),
            (Identifier(value=mrn, type="MR"), "PID-3[2]", False),
            (Identifier(value=good, type="NI"), "PID-19", True),
        ]
    )
    assert national == good
    assert [i.value for i in local] == [bad, mrn]
    assert [n.location for n in notices] == ["PID-3[1]"]
    assert bad not in notices[0].message


def test_an_unlabelled_valid_number_is_not_taken_as_a_national_id() -> None:
    national, local, notices = split_resident_ids([(Identifier(value="11010519491231002X"), "PID-3", False)])
    assert national is None
    assert len(local) == 1
    assert notices == ()

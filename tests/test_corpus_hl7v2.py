"""The six FHIR-Converter HL7 v2 samples (MIT) in ../shared/corpus/hl7v2: what read() makes of each, and its ACK.

None of them sends OBR-24, so without a caller's order-code map each stops at OBR-24; with one, the
samples that carry order numbers become exams.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from adapters import hl7v2
from hub.envelope import Centre, Exam
from hub.errors import AdapterError, InvalidMessage, UnsupportedMessage

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "hl7v2"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus/hl7v2 is not present")

CENTRES: dict[str, Centre] = {
    "24317-0": "lab",  # Hemogram and platelet count
    "26464-8": "lab",  # Differential WBC count
    "57698-3": "lab",  # Lipid panel
    "24725-4": "imaging",  # CT head
    "15545": "lab",  # Glucose
}


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def error_of(raw: bytes, **options: object) -> AdapterError:
    with pytest.raises(AdapterError) as caught:
        hl7v2.read(raw, **options)  # type: ignore[arg-type]
    return caught.value


def test_the_corpus_is_the_six_known_files() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.hl7")) == [
        "LAB-ORU-1.hl7",
        "OMG-O19-01.hl7",
        "OML-O21-01.hl7",
        "ORM-O01-01.hl7",
        "ORU-R01-RMGEAD.hl7",
        "OUL-R22-01.hl7",
    ]


def test_lab_oru_1_has_no_sending_facility() -> None:
    raw = corpus("LAB-ORU-1.hl7")  # BOM, LF line ends, MSH-4 empty
    error = error_of(raw)
    assert isinstance(error, InvalidMessage)
    assert error.location == "MSH-4"
    assert error_of(raw, origin="12330112472334561L").location == "OBR-24"
    first, second = hl7v2.read(raw, origin="12330112472334561L", centres=CENTRES)
    assert (first.placer_order, first.accession, second.placer_order, second.accession) == (
        "88502218",
        "82503246",
        "855238581",
        "890775544",
    )
    assert [len(first.observations), len(second.observations)] == [5, 5]
    leukocytes, erythrocytes = first.observations[:2]
    assert (leukocytes.value, leukocytes.status) == (None, "registered")
    assert (erythrocytes.value, erythrocytes.unit, erythrocytes.status) == (4.06, "tera.l-1", "preliminary")
    assert erythrocytes.observed_at == datetime(2014, 10, 6, 6, 27, tzinfo=timezone(timedelta(hours=7)))
    assert (first.patient.name, first.patient.sex, first.patient.birth_date) == (
        "DUCK DONALD",
        "male",
        date(1924, 10, 10),
    )
    # PID-19 holds a US SSN, which fails GB 11643: a local id and a notice.
    assert first.patient.national_id is None
    assert [i.value for i in first.patient.local_ids] == ["10006579", "123121234"]
    assert [n.location for n in first.notices] == ["PID-19"]


def test_omg_o19_has_no_order_number() -> None:
    raw = corpus("OMG-O19-01.hl7")
    assert error_of(raw).location == "OBR-24"
    error = error_of(raw, centres=CENTRES)
    assert isinstance(error, InvalidMessage)
    assert error.location == "OBR-2"


def test_oml_o21() -> None:
    raw = corpus("OML-O21-01.hl7")
    assert error_of(raw).location == "OBR-24"
    (exam,) = hl7v2.read(raw, centres=CENTRES)
    assert (exam.origin, exam.centre, exam.priority) == ("GHHSFacility", "lab", "routine")
    assert (exam.placer_order, exam.accession) == ("1101", "1201")
    assert [o.value for o in exam.observations] == ["Salmonella", "27; 25"]
    assert len(exam.attachments) == 2
    assert exam.attachments[0].uri == "https://testurl.com"
    assert exam.attachments[1].uri.startswith("http://172.16.237.4/CaseCenter/index.php?ContainerType=CaseView&")
    assert [n.location for n in exam.notices] == ["PID-19", "OBX[3]-5"]


def test_orm_o01() -> None:
    raw = corpus("ORM-O01-01.hl7")
    assert error_of(raw).location == "OBR-24"
    (exam,) = hl7v2.read(raw, centres=CENTRES)
    assert (exam.centre, exam.service.code, exam.placer_order, exam.accession) == ("imaging", "24725-4", "1101", "1201")
    assert exam.patient.name == "EVERYMAN ADAM"
    assert [o.value for o in exam.observations] == ["60; 120"]
    assert [n.location for n in exam.notices] == ["PID-19", "OBX-5"]


def test_oru_r01_rmgead() -> None:
    raw = corpus("ORU-R01-RMGEAD.hl7")
    assert error_of(raw).location == "OBR-24"
    (exam,) = hl7v2.read(raw, centres=CENTRES)
    assert (exam.origin, exam.placer_order, exam.accession) == ("ELAB-3", "845439", "1045813")
    assert exam.performed_at == datetime(2002, 2, 15, 7, 30, tzinfo=timezone(timedelta(hours=6)))
    (glucose,) = exam.observations
    assert (glucose.value, glucose.unit, glucose.reference_range, glucose.flag) == (182.0, "mg/dl", "70_105", "H")
    assert (exam.patient.name, exam.patient.sex, exam.patient.birth_date) == (
        "EVERYWOMAN EVE",
        "female",
        date(1962, 3, 20),
    )
    assert exam.notices == ()


def test_oul_r22_is_unsupported() -> None:
    error = error_of(corpus("OUL-R22-01.hl7"))
    assert (type(error), error.location) == (UnsupportedMessage, "MSH-9")


@pytest.mark.parametrize("name", [p.name for p in sorted(CORPUS.glob("*.hl7"))] if CORPUS.is_dir() else [])
def test_the_ack_to_each_parses_and_validates_with_hl7apy(name: str) -> None:
    raw = corpus(name)
    try:
        exams: list[Exam] = hl7v2.read(raw, origin="12330112472334561L", centres=CENTRES)
        reply = hl7v2.ack(raw, "AA")
    except AdapterError as error:
        exams = []
        reply = hl7v2.ack(raw, "AE", error)
    message = parse_message(reply.decode("utf-8"), validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    original = parse_message(raw.decode("utf-8-sig").replace("\n", "\r"))
    assert message.msa.msa_1.to_er7() == ("AA" if exams else "AE")
    assert message.msa.msa_2.to_er7() == original.msh.msh_10.to_er7()
    assert message.msh.msh_12.to_er7() == original.msh.msh_12.to_er7()

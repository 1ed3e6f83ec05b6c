"""The person index on SQLite and PostgreSQL: matching on a valid resident ID only, local ids, conflicts."""

from __future__ import annotations

import logging
from datetime import date

import pytest
import test_recognition
from pydantic import ValidationError
from sqlalchemy import select

from hub.envelope import Identifier, Patient
from hub.ids import resident_id_check_digit, valid_resident_id
from hub.store.db import Database
from hub.store.identity import ConflictRow, PersonIndex

# One migrated database of each kind for the module, emptied before each test (see test_recognition).
migrated_store, database = test_recognition.migrated_store, test_recognition.database

YUQIAN = "12330112472334561L"  # 於潜镇中心卫生院
CHANGHUA = "12330112473455672X"  # 昌化镇卫生院
LEAD = "12330112470101234B"  # 临安区人民医院
ZHANG = "330112198003151239"  # male (17th digit odd), born 1980-03-15
LI = "330112199207084562"  # female, born 1992-07-08
STANDARD = "11010519491231002X"  # the example number of GB 11643 itself: female, born 1949-12-31
OLD_MAN = "440524188001010014"  # male, born 1880-01-01
MR = "urn:oid:1.2.156.112633.1.2.1"  # a member HIS's medical record number namespace


def patient(national_id: str | None = ZHANG, *local: str, name: str | None = "张伟", **fields: object) -> Patient:
    ids = tuple(Identifier(value=value, system=MR, type="MR") for value in local)
    return Patient.model_validate({"national_id": national_id, "local_ids": ids, "name": name, **fields})


@pytest.fixture
def persons(database: Database) -> PersonIndex:
    return PersonIndex(database)


# -- GB 11643


@pytest.mark.parametrize("number", [STANDARD, ZHANG, LI, "33011220150101002X", "11010519491231002x"])
def test_valid_resident_ids_pass_gb_11643(number: str) -> None:
    assert valid_resident_id(number)
    assert Patient(national_id=number).national_id == number


@pytest.mark.parametrize(
    "number",
    [
        "330112198003151238",  # check digit off by one
        "11010519491231002Y",  # not a check character
        "33011219800230" + "123" + resident_id_check_digit("33011219800230123"),  # 30 February, right check digit
        "330112800315123",  # an old 15-digit number: no check digit to verify
        "33011219800315123９",  # a full-width digit
    ],
)
def test_invalid_resident_ids_never_become_a_national_id(number: str) -> None:
    assert not valid_resident_id(number)
    with pytest.raises(ValidationError):
        Patient(national_id=number)


def test_a_number_that_fails_its_check_matches_no_one(persons: PersonIndex) -> None:
    """Two members send the same bad number as a local id: no match is made on it."""
    bad = "330112198003151238"
    first = persons.resolve(Patient(local_ids=(Identifier(value=bad, type="NNCHN"),), name="张伟"), YUQIAN)
    second = persons.resolve(Patient(local_ids=(Identifier(value=bad, type="NNCHN"),), name="张伟"), CHANGHUA)
    assert first.person_id != second.person_id
    assert persons.by_national_id(bad) is None


# -- matching


def test_the_same_national_id_from_two_members_is_one_person(persons: PersonIndex) -> None:
    first = persons.resolve(patient(ZHANG, "MR0001"), YUQIAN)
    second = persons.resolve(patient(ZHANG, "0088123", name="张伟"), CHANGHUA)
    assert first.new and not second.new
    assert first.person_id == second.person_id
    person = persons.by_national_id(ZHANG)
    assert person is not None and person.id == first.person_id
    assert (person.name, person.sex, person.birth_date) == ("张伟", "male", date(1980, 3, 15))
    assert set(person.local_ids) == {(YUQIAN, MR, "MR0001"), (CHANGHUA, MR, "0088123")}


def test_a_lower_case_check_x_is_the_same_number(persons: PersonIndex) -> None:
    first = persons.resolve(patient(STANDARD, name="王芳"), LEAD)
    second = persons.resolve(patient(STANDARD.lower(), name="王芳"), YUQIAN)
    assert first.person_id == second.person_id
    assert persons.by_national_id(STANDARD.lower()) == persons.by_national_id(STANDARD)


def test_name_and_birth_date_alone_never_match(persons: PersonIndex) -> None:
    first = persons.resolve(patient(None, "MR0001", name="张伟", birth_date=date(1980, 3, 15)), YUQIAN)
    second = persons.resolve(patient(None, "MR0001", name="张伟", birth_date=date(1980, 3, 15)), CHANGHUA)
    third = persons.resolve(patient(LI, name="张伟", birth_date=date(1980, 3, 15)), LEAD)
    assert len({first.person_id, second.person_id, third.person_id}) == 3


def test_a_local_id_finds_its_person_at_its_institution_only(persons: PersonIndex) -> None:
    resolved = persons.resolve(patient(ZHANG, "MR0001"), YUQIAN)
    by_any_system = persons.by_local_id(YUQIAN, "MR0001")
    by_system = persons.by_local_id(YUQIAN, "MR0001", system=MR)
    assert by_any_system is not None and by_any_system.id == resolved.person_id
    assert by_system == by_any_system
    assert persons.by_local_id(YUQIAN, "MR0001", system="urn:other") is None
    assert persons.by_local_id(CHANGHUA, "MR0001") is None
    assert persons.by_local_id(YUQIAN, "MR0002") is None


def test_a_patient_without_national_id_keeps_its_person_and_is_linked_later(persons: PersonIndex) -> None:
    first = persons.resolve(patient(None, "MR0042", name="李娜"), YUQIAN)
    again = persons.resolve(patient(None, "MR0042", name="李娜"), YUQIAN)
    assert first.new and not again.new and first.person_id == again.person_id
    elsewhere = persons.resolve(patient(LI, "66001", name="李娜"), CHANGHUA)  # the same woman, by her ID number
    assert elsewhere.person_id != first.person_id
    both = persons.resolve(patient(LI, "MR0042", name="李娜"), YUQIAN)  # a message carrying both links them
    assert both.person_id == elsewhere.person_id and not both.new
    person = persons.by_local_id(YUQIAN, "MR0042")
    assert person is not None and person.id == elsewhere.person_id and person.national_id == LI
    assert set(person.local_ids) == {(YUQIAN, MR, "MR0042"), (CHANGHUA, MR, "66001")}
    merged = persons.person(first.person_id)  # an id handed out before the merge still resolves
    assert merged is not None and merged.id == elsewhere.person_id


def test_a_local_only_person_takes_the_first_national_id_it_is_sent_with(persons: PersonIndex) -> None:
    first = persons.resolve(patient(None, "MR0042", name="李娜"), YUQIAN)
    linked = persons.resolve(patient(LI, "MR0042", name="李娜"), YUQIAN)
    assert linked.person_id == first.person_id and not linked.new
    person = persons.by_national_id(LI)
    assert person is not None and (person.sex, person.birth_date) == ("female", date(1992, 7, 8))  # from the number


def test_ambiguous_local_id_without_system_is_refused(persons: PersonIndex) -> None:
    persons.resolve(Patient(national_id=ZHANG, local_ids=(Identifier(value="1001", system="HIS"),)), YUQIAN)
    persons.resolve(Patient(national_id=LI, local_ids=(Identifier(value="1001", system="LIS"),)), YUQIAN)
    with pytest.raises(ValueError, match="give its system"):
        persons.by_local_id(YUQIAN, "1001")
    li = persons.by_local_id(YUQIAN, "1001", system="LIS")
    assert li is not None and li.national_id == LI


# -- conflicts


def test_a_demographic_conflict_is_flagged_and_the_person_is_kept(persons: PersonIndex, database: Database) -> None:
    cases: list[tuple[str, str, dict[str, object], str, str]] = [
        (ZHANG, "name", {"name": "张卫"}, "张伟", "张卫"),
        (OLD_MAN, "sex", {"sex": "female"}, "male", "female"),
        (STANDARD, "birth_date", {"birth_date": date(1949, 12, 13)}, "1949-12-31", "1949-12-13"),
    ]
    for n, (number, field, fields, held, incoming) in enumerate(cases):
        first = persons.resolve(patient(number, f"MR000{n}", name="张伟"), YUQIAN)
        assert first.conflicts == ()
        clashing = patient(number, f"008812{n}", **({"name": "张伟"} | fields))
        second = persons.resolve(clashing, CHANGHUA)
        assert second.person_id == first.person_id
        assert [(c.field, c.held, c.incoming, c.origin) for c in second.conflicts] == [
            (field, held, incoming, CHANGHUA)
        ]
        again = persons.resolve(clashing, CHANGHUA)  # the same message again: flagged, recorded once
        assert len(again.conflicts) == 1
        assert [c.field for c in persons.conflicts(first.person_id)] == [field]
        person = persons.by_national_id(number)
        assert person is not None and person.name == "张伟"  # not overwritten
        assert (person.sex, person.birth_date) == (
            {
                "name": ("male", date(1980, 3, 15)),
                "sex": ("male", date(1880, 1, 1)),
                "birth_date": ("female", date(1949, 12, 31)),
            }[field]
        )
    with database.session() as session:
        assert len(session.scalars(select(ConflictRow)).all()) == 3


def test_a_birth_date_the_number_contradicts_is_a_conflict(persons: PersonIndex) -> None:
    resolved = persons.resolve(patient(ZHANG, birth_date=date(1981, 3, 15)), YUQIAN)
    assert [(c.field, c.held, c.incoming) for c in resolved.conflicts] == [("birth_date", "1980-03-15", "1981-03-15")]


def test_gaps_are_filled_without_a_conflict_and_spacing_is_no_difference(persons: PersonIndex) -> None:
    persons.resolve(patient(ZHANG, name=None), YUQIAN)
    filled = persons.resolve(patient(ZHANG, name="张 伟"), CHANGHUA)
    same = persons.resolve(patient(ZHANG, name="张伟"), LEAD)
    assert filled.conflicts == () and same.conflicts == ()
    person = persons.by_national_id(ZHANG)
    assert person is not None and person.name == "张 伟"


def test_a_local_id_that_is_another_national_ids_is_a_conflict(persons: PersonIndex) -> None:
    zhang = persons.resolve(patient(ZHANG, "MR0001"), YUQIAN)
    li = persons.resolve(patient(LI, "MR0001", name="李娜"), YUQIAN)  # the HIS reused a number
    assert li.person_id != zhang.person_id
    assert [(c.field, c.held, c.incoming) for c in li.conflicts] == [
        ("local_id", f"person {zhang.person_id}", f"{MR}|MR0001")
    ]
    owner = persons.by_local_id(YUQIAN, "MR0001")
    assert owner is not None and owner.id == zhang.person_id  # the link stays where it was


def test_names_and_numbers_stay_out_of_logs_and_reprs(persons: PersonIndex, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    persons.resolve(patient(ZHANG, "MR0001", name="张伟"), YUQIAN)
    resolved = persons.resolve(patient(ZHANG, "MR0001", name="张卫"), YUQIAN)
    person = persons.by_national_id(ZHANG)
    text = caplog.text + repr(resolved) + repr(person) + repr(persons.conflicts())
    for secret in (ZHANG, "张伟", "张卫", "MR0001", "1980-03-15"):
        assert secret not in text

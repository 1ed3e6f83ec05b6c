from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.ids import (
    derive_exam_id,
    derive_report_id,
    parse_resident_id,
    resident_id_check_digit,
    uscc_check_char,
    valid_resident_id,
    valid_uscc,
)

# Published examples of valid numbers (the GB 11643 standard's own, and a well-known USCC).
KNOWN_RESIDENT_IDS = ["11010519491231002X", "440524188001010014"]
KNOWN_USCC = ["91350100M000100Y43"]


@pytest.mark.parametrize("number", KNOWN_RESIDENT_IDS)
def test_known_resident_ids_are_valid(number: str) -> None:
    assert valid_resident_id(number)
    assert valid_resident_id(number.lower())


def test_parse_resident_id_reads_birth_date_sex_and_region() -> None:
    parsed = parse_resident_id("11010519491231002X")
    assert parsed is not None
    assert parsed.region == "110105"
    assert parsed.birth_date == date(1949, 12, 31)
    assert parsed.sex == "female"  # 17th digit 2 is even
    assert parse_resident_id("440524188001010014").sex == "male"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "number",
    [
        "110105194912310021",  # wrong check digit
        "11010519491331002X",  # month 13 (check digit recomputed below would still fail the date)
        "11010519491231002",  # 17 characters
        "1101051949123100２X",  # full-width digit
        "",
        "ABCDEFGHIJKLMNOPQR",
    ],
)
def test_invalid_resident_ids(number: str) -> None:
    assert not valid_resident_id(number)


def test_date_is_checked_even_with_a_correct_check_digit() -> None:
    body = "11010519490230002"  # 30 February
    assert not valid_resident_id(body + resident_id_check_digit(body))


birth_dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2026, 12, 31))


@given(region=st.from_regex(r"[1-6][0-9]{5}", fullmatch=True), born=birth_dates, seq=st.integers(0, 999))
def test_any_number_with_its_check_digit_is_valid(region: str, born: date, seq: int) -> None:
    body = f"{region}{born:%Y%m%d}{seq:03d}"
    number = body + resident_id_check_digit(body)
    assert valid_resident_id(number)


@given(
    region=st.from_regex(r"[1-6][0-9]{5}", fullmatch=True),
    born=birth_dates,
    seq=st.integers(0, 999),
    position=st.integers(0, 17),
    delta=st.integers(1, 9),
)
def test_every_single_digit_error_is_caught(region: str, born: date, seq: int, position: int, delta: int) -> None:
    body = f"{region}{born:%Y%m%d}{seq:03d}"
    number = body + resident_id_check_digit(body)
    alphabet = "0123456789X" if position == 17 else "0123456789"
    wrong = alphabet[(alphabet.index(number[position]) + delta) % len(alphabet)]
    assert not valid_resident_id(number[:position] + wrong + number[position + 1 :])


@pytest.mark.parametrize("code", KNOWN_USCC)
def test_known_uscc_is_valid(code: str) -> None:
    assert valid_uscc(code)


@given(body=st.text(alphabet="0123456789ABCDEFGHJKLMNPQRTUWXY", min_size=17, max_size=17), position=st.integers(0, 17))
def test_uscc_catches_single_character_errors(body: str, position: int) -> None:
    code = body + uscc_check_char(body)
    assert valid_uscc(code)
    alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    wrong = alphabet[(alphabet.index(code[position]) + 1) % len(alphabet)]
    assert not valid_uscc(code[:position] + wrong + code[position + 1 :])


def test_uscc_rejects_letters_outside_the_alphabet() -> None:
    assert not valid_uscc("91350100M000100I43")  # I is not in the GB 32100 alphabet


def test_exam_id_is_stable_and_prefers_the_placer_order() -> None:
    first = derive_exam_id("12330112472334561L", placer_order="LIS2026-0001", accession="A1")
    again = derive_exam_id(" 12330112472334561L", placer_order="LIS2026-0001 ", study_uid="1.2.3")
    assert first == again
    assert first.startswith("ex-")
    assert first != derive_exam_id("12330112472334561L", accession="A1")


def test_exam_id_separates_origins_and_identifier_kinds() -> None:
    ids = {
        derive_exam_id("A", placer_order="1"),
        derive_exam_id("B", placer_order="1"),
        derive_exam_id("A", accession="1"),
        derive_exam_id("A", study_uid="1"),
    }
    assert len(ids) == 4


def test_exam_id_needs_an_order_identifier() -> None:
    with pytest.raises(ValueError, match="placer order"):
        derive_exam_id("A", placer_order=" ", accession=None)


def test_report_id_depends_on_status_and_revision() -> None:
    assert derive_report_id("ex-1", "final") == derive_report_id("ex-1", "final")
    assert len({derive_report_id("ex-1", "final"), derive_report_id("ex-1", "preliminary"),
                derive_report_id("ex-1", "final", 1)}) == 3  # fmt: skip

"""The recognition registry on SQLite and PostgreSQL: recording, amendments, lookups, overrides, the audit.

The helpers here (CONFIG, lab_report, ...) are shared by the registry service, FHIR search and CLI tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from databases import database_url_for
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from hub.config import Config, parse_config
from hub.envelope import Attachment, Coding, Identifier, Observation, Patient, Performer, Report
from hub.ids import derive_exam_id, derive_report_id
from hub.store.db import Base, Database, open_database
from hub.store.recognition import RETEST_REASONS, Registry, recognised_result_id

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = (ROOT / "examples" / "consortium.toml").read_text("utf-8")
# The example consortium, with its valid QC passes moved out of reach of the calendar; CT's stays lapsed.
CONFIG: Config = parse_config(EXAMPLE.replace("2027-12-31", "2099-12-31"), base=ROOT / "examples")
LEAD = "12330112470101234B"  # 临安区人民医院: its centres passed QC
YUQIAN = "12330112472334561L"  # 於潜镇中心卫生院: a member, no QC of its own
CHANGHUA = "12330112473455672X"  # 昌化镇卫生院
LOINC = "http://loinc.org"
CBC = (LOINC, "58410-2")  # 血常规, valid 7 days, 浙HR
ECG = (LOINC, "11524-6")  # 十二导联心电图, valid 30 days, HR
CT = ("99LAYGT", "CT0201")  # 胸部CT平扫: the lead's QC lapsed on 2026-06-30
ZHANG = "330112198003151239"
LI = "330112199207084562"
CST = timezone(timedelta(hours=8))
ISSUED = datetime(2026, 11, 20, 9, 30, tzinfo=CST)
FINDINGS = "白细胞计数明显增高，中性粒细胞比例增高"
CONCLUSION = "白细胞显著升高，提示细菌感染可能，请结合临床"
CENTRES = {CBC: "lab", ECG: "ecg", CT: "imaging", (LOINC, "24325-3"): "lab"}
DICOM = Attachment(uri="urn:sha256:" + "ab" * 32, media_type="application/dicom", title="胸部CT 序列1")
PDF = Attachment(uri="urn:sha256:" + "cd" * 32, media_type="application/pdf", title="检验报告单")


def zhang(national_id: str | None = ZHANG, name: str = "张伟") -> Patient:
    return Patient(
        national_id=national_id,
        local_ids=(Identifier(value="MR0001", system="HIS"),),
        name=name,
        sex="male",
        birth_date=date(1980, 3, 15),
    )


def white_cells(value: float = 18.5) -> Observation:
    return Observation(
        code=Coding(code="6690-2", system=LOINC, display="白细胞计数"),
        value=value,
        unit="10*9/L",
        reference_range="3.5-9.5",
        flag="H",
    )


def lab_report(
    item: tuple[str, str] = CBC,
    *,
    status: str = "final",
    revision: int = 0,
    order: str = "LAB-20261120-0001",
    patient: Patient | None = None,
    performer: str | None = LEAD,
    issued: datetime = ISSUED,
    observations: tuple[Observation, ...] | None = None,
    attachments: tuple[Attachment, ...] = (DICOM, PDF),
    origin: str = YUQIAN,
) -> Report:
    exam_id = derive_exam_id(origin, placer_order=order)
    fields: dict[str, Any] = {
        "report_id": derive_report_id(exam_id, status, revision),
        "exam_id": exam_id,
        "origin": origin,
        "centre": CENTRES.get(item, "lab"),
        "status": status,
        "patient": patient or zhang(),
        "service": Coding(system=item[0], code=item[1]),
        "placer_order": order,
        "findings": FINDINGS,
        "conclusion": CONCLUSION,
        "observations": (white_cells(),) if observations is None else observations,
        "attachments": attachments,
        "performer": Performer(name="李建国", id="D0012"),
        "performer_institution": performer,
        "issued_at": issued,
    }
    return Report.model_validate(fields)


REGISTRY_TABLES = (
    "persons",
    "person_local_ids",
    "person_conflicts",
    "recognised_results",
    "recognition_reports",
    "recognition_qc",
    "recognition_lookups",
    "recognition_overrides",
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def migrated_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """One migrated database of each kind per test module: a PostgreSQL database costs a second to make."""
    with database_url_for(request.param, tmp_path_factory.mktemp("store")) as url:
        db = open_database(url)
        db.migrate()
        yield db
        db.close()


@pytest.fixture
def database(migrated_store: Database) -> Database:
    """Instead of conftest's: the module's migrated database, with the person index and registry emptied."""
    tables = [t for t in reversed(Base.metadata.sorted_tables) if t.name in REGISTRY_TABLES]
    with migrated_store.engine.begin() as connection:
        for table in tables:
            connection.execute(table.delete())
    return migrated_store


@pytest.fixture
def registry(database: Database) -> Registry:
    return Registry(database, CONFIG)


def rows(database: Database, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` as the database holds it, JSON text decoded (SQLite keeps it \\u-escaped)."""
    with database.engine.connect() as connection:
        return [
            {k: _decoded(v) for k, v in row._mapping.items()}
            for row in connection.execute(text(f"SELECT * FROM {table}"))
        ]


def _decoded(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        return json.loads(value)
    return value


# -- recording


def test_a_final_report_of_a_catalogue_item_is_recognised_with_its_values_and_images(registry: Registry) -> None:
    outcome = registry.record(lab_report())
    assert (outcome.status, outcome.reason) == ("recorded", None)
    result = outcome.result
    assert result is not None and outcome.broadcasts == (result,)
    assert result.result_id == recognised_result_id(lab_report().report_id)
    assert (result.mark, result.item.display, result.centre) == ("浙HR", "血常规", "lab")
    assert (result.valid_from, result.valid_until) == (date(2026, 11, 20), date(2026, 11, 27))  # 7 days
    assert result.observations == (white_cells(),)
    assert result.attachments == (DICOM,)  # the PDF renders the whole report, conclusion and all
    assert (result.national_id, result.source_report_id, result.source_status) == (
        ZHANG,
        lab_report().report_id,
        "final",
    )
    assert result.performer_institution == LEAD
    assert result.issued_at == ISSUED


def test_neither_conclusion_nor_findings_text_is_stored(registry: Registry, database: Database) -> None:
    outcome = registry.record(lab_report())
    assert outcome.result is not None
    stored = repr(rows(database, "recognised_results") + rows(database, "recognition_reports"))
    assert "18.5" in stored and "白细胞计数" in stored  # the values are there
    assert CONCLUSION not in stored and FINDINGS not in stored
    assert "conclusion" not in stored and "findings" not in stored
    broadcast = outcome.result.encode().decode()
    assert CONCLUSION not in broadcast and FINDINGS not in broadcast and "检验报告单" not in broadcast


def test_valid_from_is_the_issue_day_in_china(registry: Registry) -> None:
    late = datetime(2026, 11, 20, 17, 30, tzinfo=UTC)  # 01:30 on 21 November in Beijing
    outcome = registry.record(lab_report(issued=late))
    assert outcome.result is not None
    assert (outcome.result.valid_from, outcome.result.valid_until) == (date(2026, 11, 21), date(2026, 11, 28))


def test_a_report_that_is_not_eligible_says_why(registry: Registry, database: Database) -> None:
    refused = {
        "not final": lab_report(status="preliminary", order="1"),
        "not in the catalogue": lab_report((LOINC, "2345-7"), order="2"),  # glucose: not a 互认 item
        "no national id": lab_report(patient=zhang(national_id=None), order="3"),
        "QC missing": lab_report(performer=YUQIAN, order="4"),  # a township lab that never passed EQA
        "QC lapsed": lab_report(CT, attachments=(DICOM,), order="5"),
    }
    also = [
        (lab_report(("99LAYGT", "58410-2"), order="6"), "not in the catalogue"),  # the right code, another system
        (lab_report(issued=datetime(2100, 1, 1, 9, tzinfo=CST), order="7"), "QC lapsed"),  # after the pass ends
    ]
    for report, reason in [*((r, why) for why, r in refused.items()), *also]:
        outcome = registry.record(report)
        assert (outcome.status, outcome.reason, outcome.result, outcome.broadcasts) == (
            "not eligible",
            reason,
            None,
            (),
        )
    assert rows(database, "recognised_results") == []
    assert sorted(r["reason"] for r in rows(database, "recognition_reports")) == sorted(
        [*refused, *(why for _, why in also)]
    )


def test_a_report_naming_no_performer_counts_the_lead_hospitals_qc(registry: Registry) -> None:
    outcome = registry.record(lab_report(performer=None))
    assert outcome.status == "recorded" and outcome.result is not None
    assert outcome.result.performer_institution == LEAD


def test_qc_must_hold_on_the_day_the_report_was_issued(registry: Registry) -> None:
    last_day = registry.record(lab_report(issued=datetime(2099, 12, 31, 20, tzinfo=CST)))
    day_after = registry.record(lab_report(order="LAB-2", issued=datetime(2099, 12, 31, 16, 30, tzinfo=UTC)))
    assert (last_day.status, day_after.status, day_after.reason) == ("recorded", "not eligible", "QC lapsed")


def test_recording_is_idempotent_by_report_id(registry: Registry, database: Database) -> None:
    first = registry.record(lab_report())
    again = registry.record(lab_report())
    assert (again.status, again.result) == ("already recorded", first.result)
    assert again.broadcasts == first.broadcasts  # announced again: the first announcement may have been lost
    assert len(rows(database, "recognised_results")) == 1
    refused = lab_report(performer=YUQIAN, order="LAB-2")
    assert registry.record(refused).reason == registry.record(refused).reason == "QC missing"


def test_an_amended_report_supersedes_the_result_of_its_exam(registry: Registry) -> None:
    final = registry.record(lab_report())
    amended = registry.record(lab_report(status="amended", revision=1, observations=(white_cells(12.1),)))
    assert final.result is not None and amended.result is not None
    assert amended.status == "recorded"
    assert amended.result.supersedes == (final.result.result_id,)
    assert amended.result.source_status == "amended"
    found = registry.lookup(national_id=ZHANG, item=CBC, as_of=date(2026, 11, 21), who="test")
    assert [r.result_id for r in found.results] == [amended.result.result_id]
    assert found.results[0].observations[0].value == 12.1
    replay = registry.record(lab_report())  # the final's copy again: it stays superseded, announced no more
    assert replay.result is not None and replay.result.state == "superseded"
    assert replay.result.superseded_by == amended.result.result_id and replay.broadcasts == ()


def test_an_amended_report_that_is_not_eligible_revokes_the_result(registry: Registry) -> None:
    final = registry.record(lab_report())
    amended = registry.record(lab_report(status="amended", revision=1, performer=YUQIAN))
    assert (amended.status, amended.reason) == ("not eligible", "QC missing")
    assert final.result is not None
    assert [(r.result_id, r.state) for r in amended.broadcasts] == [(final.result.result_id, "revoked")]
    found = registry.lookup(national_id=ZHANG, item=CBC, as_of=date(2026, 11, 21), who="test")
    assert (found.results, found.reason, found.detail) == ((), "not eligible", "QC missing")


def test_a_cancelled_report_revokes_the_result(registry: Registry) -> None:
    final = registry.record(lab_report())
    other = registry.record(lab_report(order="LAB-OTHER", issued=ISSUED - timedelta(days=1)))
    cancelled = registry.record(lab_report(status="cancelled"))
    assert final.result is not None and other.result is not None
    assert (cancelled.status, cancelled.reason) == ("revoked", "cancelled")
    assert [(r.result_id, r.state) for r in cancelled.revoked] == [(final.result.result_id, "revoked")]
    assert cancelled.revoked[0].revoked_at is not None
    found = registry.lookup(national_id=ZHANG, item=CBC, as_of=date(2026, 11, 21), who="test")
    assert [r.result_id for r in found.results] == [other.result.result_id]  # another exam's result stands
    again = registry.record(lab_report(status="cancelled"))
    assert again.status == "already recorded" and again.broadcasts == cancelled.revoked
    nothing = registry.record(lab_report(status="cancelled", order="LAB-NEVER-FINAL"))
    assert (nothing.status, nothing.reason, nothing.broadcasts) == ("not eligible", "cancelled", ())


# -- lookup


def test_the_validity_window_holds_both_of_its_days(registry: Registry) -> None:
    registry.record(lab_report())

    def look(day: date) -> tuple[str, int, str | None]:
        found = registry.lookup(national_id=ZHANG, item=CBC, as_of=day, who="test")
        return found.reason, len(found.results), found.detail

    assert look(date(2026, 11, 19)) == ("none found", 0, None)
    assert look(date(2026, 11, 20)) == ("found", 1, None)
    assert look(date(2026, 11, 27)) == ("found", 1, None)
    assert look(date(2026, 11, 28)) == ("expired", 0, "valid until 2026-11-27")
    at = datetime(2026, 11, 27, 16, 30, tzinfo=UTC)  # already 28 November in Beijing
    assert registry.lookup(national_id=ZHANG, item=CBC, as_of=at, who="test").reason == "expired"


def test_lookup_says_why_there_is_nothing(registry: Registry) -> None:
    registry.record(lab_report())
    registry.record(lab_report(CT, order="CT-1", attachments=(DICOM,)))
    day = date(2026, 11, 21)
    assert registry.lookup(national_id=ZHANG, item=CBC, as_of=day, who="t").reason == "found"
    glucose = registry.lookup(national_id=ZHANG, item=(LOINC, "2345-7"), as_of=day, who="t")
    assert (glucose.reason, glucose.detail) == ("not eligible", "not in the catalogue")
    ct = registry.lookup(national_id=ZHANG, item=CT, as_of=day, who="t")
    assert (ct.reason, ct.detail) == ("not eligible", "QC lapsed")
    assert registry.lookup(national_id=ZHANG, item=ECG, as_of=day, who="t").reason == "none found"
    assert registry.lookup(national_id=LI, item=CBC, as_of=day, who="t").reason == "none found"
    assert registry.lookup(national_id="330112198003151238", item=CBC, as_of=day, who="t").reason == "none found"


def test_lookup_by_person_id_and_results_of_several_members(registry: Registry) -> None:
    first = registry.record(lab_report(issued=ISSUED - timedelta(days=2)))
    second = registry.record(lab_report(order="CH-77", origin=CHANGHUA, patient=zhang(name="张伟")))
    found = registry.lookup(person_id=first.person_id, item=CBC, as_of=date(2026, 11, 21), who="t")
    assert first.result is not None and second.result is not None
    assert [r.result_id for r in found.results] == [first.result.result_id, second.result.result_id]  # oldest first
    assert found.person is not None and found.person.national_id == ZHANG
    with pytest.raises(ValueError, match="national_id or by person_id"):
        registry.lookup(item=CBC, who="t")


def test_every_lookup_is_audited_without_the_number_in_clear(registry: Registry, database: Database) -> None:
    registry.record(lab_report())
    day = date(2026, 11, 21)
    registry.lookup(national_id=ZHANG, item=CBC, as_of=day, who=CHANGHUA, via="fhir")
    registry.lookup(national_id=ZHANG, item=CT, as_of=day, who="cli:wang")
    registry.lookup(national_id=LI, item=CBC, as_of=day, who=CHANGHUA)
    trail = registry.audit()
    assert [(e.who, e.via, e.item, e.as_of, e.reason, e.results) for e in trail] == [
        (CHANGHUA, "fhir", CBC, day, "found", 1),
        ("cli:wang", "api", CT, day, "none found", 0),
        (CHANGHUA, "api", CBC, day, "none found", 0),
    ]
    person = registry.persons.by_national_id(ZHANG)
    assert person is not None
    assert [e.person_id for e in trail] == [person.id, person.id, None]
    assert [e.national_id_sha256 for e in trail] == [None, None, hashlib.sha256(LI.encode()).hexdigest()]
    assert [e.results for e in registry.audit(person_id=person.id)] == [1, 0]
    stored = repr(rows(database, "recognition_lookups"))
    assert ZHANG not in stored and LI not in stored


# -- overrides


def test_a_re_test_override_is_recorded_with_its_reason(registry: Registry) -> None:
    recorded = registry.record(lab_report())
    assert recorded.result is not None
    at = datetime(2026, 11, 21, 8, 15, tzinfo=CST)
    made = []
    for reason in RETEST_REASONS:
        override = registry.override(
            national_id=ZHANG,
            item=CBC,
            reason=reason,
            detail="患者突发高热，复查血常规",
            clinician="王建华",
            institution=CHANGHUA,
            at=at,
        )
        assert (override.reason, override.item, override.clinician, override.at) == (reason, CBC, "王建华", at)
        assert override.overridden == (recorded.result.result_id,)
        made.append(override)
    assert registry.overrides(person_id=recorded.person_id) == made
    later = registry.override(
        national_id=ZHANG,
        item=CBC,
        reason="emergency",
        clinician="王建华",
        institution=LEAD,
        at=at + timedelta(days=30),
    )
    assert later.overridden == ()  # nothing was valid any more: recorded all the same


def test_overrides_outside_the_allowed_categories_are_refused(registry: Registry, database: Database) -> None:
    registry.record(lab_report())
    common: dict[str, Any] = {"national_id": ZHANG, "item": CBC, "clinician": "王建华", "institution": CHANGHUA}
    with pytest.raises(ValueError, match="not one of emergency"):
        registry.override(reason="patient insists", **common)
    with pytest.raises(ValueError, match="needs the reason"):
        registry.override(reason="other", detail="  ", **common)
    with pytest.raises(ValueError, match="not in the recognition catalogue"):
        registry.override(**(common | {"item": (LOINC, "2345-7")}), reason="emergency")
    with pytest.raises(ValueError, match="does not know"):
        registry.override(**(common | {"national_id": LI}), reason="emergency")
    assert registry.overrides() == []
    person = registry.persons.by_national_id(ZHANG)
    assert person is not None
    insert = text(
        "INSERT INTO recognition_overrides (person_id, item_system, item_code, reason, clinician, institution, at,"
        " overridden, recorded_at) VALUES (:p, 's', 'c', 'convenience', 'x', 'y', :at, '[]', :at)"
    )
    with pytest.raises(IntegrityError), database.engine.begin() as connection:  # the database refuses it too
        connection.execute(insert, {"p": person.id, "at": ISSUED})


# -- QC status


def test_qc_passes_come_from_the_config_and_new_ones_can_be_recorded(registry: Registry, database: Database) -> None:
    passes = {(q.institution, q.item, q.valid_until, q.source) for q in registry.qc_passes()}
    assert (LEAD, "CT0201", date(2026, 6, 30), "config") in passes and len(passes) == 4
    assert registry.record(lab_report(CT, order="CT-1")).reason == "QC lapsed"
    registry.record_qc_pass(LEAD, "CT0201", date(2027, 6, 30))  # re-certified
    assert registry.qc_valid_until(LEAD, "CT0201") == date(2027, 6, 30)
    assert registry.record(lab_report(CT, order="CT-2")).status == "recorded"
    with pytest.raises(ValueError, match="not an institution"):
        registry.record_qc_pass("91350100M000100Y43", "CT0201", date(2027, 6, 30))
    with pytest.raises(ValueError, match="not in the recognition catalogue"):
        registry.record_qc_pass(LEAD, "2345-7", date(2027, 6, 30))
    fewer = CONFIG.model_copy(
        update={"recognition": CONFIG.recognition.model_copy(update={"qc": CONFIG.recognition.qc[:1]})}
    )
    synced = Registry(database, fewer)  # a pass taken out of the config is gone; the one recorded stays
    assert {(q.item, q.source) for q in synced.qc_passes()} == {("58410-2", "config"), ("CT0201", "api")}

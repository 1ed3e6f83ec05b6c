"""`hub recognition lookup|override|qc`: the command functions, on a config whose store is the test database."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import test_recognition
from test_recognition import CBC, CHANGHUA, CONCLUSION, CT, EXAMPLE, LEAD, LI, ZHANG, lab_report

from hub.cli import _add_common
from hub.recognition_cli import add_commands
from hub.store.db import Database
from hub.store.recognition import Registry

migrated_store, database = test_recognition.migrated_store, test_recognition.database


@pytest.fixture
def config_file(database: Database, tmp_path: Path) -> Path:
    url = database.engine.url.render_as_string(hide_password=False)
    text = EXAMPLE.replace("2027-12-31", "2099-12-31").replace("[hub]\n", f'[hub]\ndatabase = "{url}"\n', 1)
    path = tmp_path / "consortium.toml"
    path.write_text(text, "utf-8")
    return path


@pytest.fixture
def registry(database: Database) -> Registry:
    return Registry(database, test_recognition.CONFIG)


def hub(config: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hub")
    add_commands(parser.add_subparsers(dest="command", required=True), _add_common)
    args = parser.parse_args([*argv, "--config", str(config)])
    status: int = args.run(args)
    return status


def test_lookup_prints_the_recognised_results_and_is_audited(
    config_file: Path, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.record(lab_report(issued=datetime.now(UTC)))
    assert (
        hub(config_file, "recognition", "lookup", "--national-id", ZHANG, "--item", "|".join(CBC), "--who", "王建华")
        == 0
    )
    out = capsys.readouterr().out
    assert "血常规: found, 1 recognised result(s)" in out
    assert "[浙HR] 血常规" in out and "白细胞计数: 18.5 10*9/L (3.5-9.5) H" in out
    assert CONCLUSION not in out
    assert [(e.who, e.via, e.reason) for e in registry.audit()] == [("王建华", "cli", "found")]


def test_lookup_as_json_and_the_reason_when_there_is_none(
    config_file: Path, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.record(lab_report(CT, order="CT-1", issued=datetime.now(UTC)))
    registry.record(lab_report(issued=datetime(2026, 11, 20, 9, tzinfo=UTC)))
    item = ["--item", "|".join(CBC), "--as-of", "2026-11-21", "--json"]
    assert hub(config_file, "recognition", "lookup", "--national-id", ZHANG, *item) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["reason"] == "found"
    assert [(r["mark"], r["valid_until"], r["observations"][0]["value"]) for r in found["results"]] == [
        ("浙HR", "2026-11-27", 18.5)
    ]
    assert hub(config_file, "recognition", "lookup", "--national-id", ZHANG, "--item", "|".join(CT)) == 1
    assert capsys.readouterr().out.strip() == "胸部CT平扫: not eligible (QC lapsed)"
    assert hub(config_file, "recognition", "lookup", "--national-id", LI, "--item", "|".join(CBC)) == 1
    assert capsys.readouterr().out.strip() == "血常规: none found"
    with pytest.raises(SystemExit):  # argparse refuses an item without its system
        hub(config_file, "recognition", "lookup", "--national-id", ZHANG, "--item", "58410-2")


def test_override_records_an_allowed_reason_and_refuses_others(
    config_file: Path, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.record(lab_report(issued=datetime.now(UTC)))
    who = ["--national-id", ZHANG, "--item", "|".join(CBC), "--clinician", "王建华", "--institution", CHANGHUA]
    assert hub(config_file, "recognition", "override", *who, "--reason", "pre-surgery-or-transfusion") == 0
    assert "override" in capsys.readouterr().out
    assert hub(config_file, "recognition", "override", *who, "--reason", "patient-request") == 2
    assert "not one of emergency" in capsys.readouterr().err
    assert [(o.reason, o.clinician, len(o.overridden)) for o in registry.overrides()] == [
        ("pre-surgery-or-transfusion", "王建华", 1)
    ]


def test_qc_list_and_add(config_file: Path, registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub(config_file, "recognition", "qc", "list") == 0
    listed = capsys.readouterr().out
    assert f"{LEAD}  CT0201       until 2026-06-30  lapsed  (config)" in listed
    assert f"{LEAD}  58410-2      until 2099-12-31  valid   (config)" in listed
    assert (
        hub(config_file, "recognition", "qc", "add", "--institution", LEAD, "--item", "CT0201", "--until", "2099-06-30")
        == 0
    )
    assert registry.qc_valid_until(LEAD, "CT0201") == date(2099, 6, 30)
    assert (
        hub(config_file, "recognition", "qc", "add", "--institution", LEAD, "--item", "NOPE", "--until", "2099-06-30")
        == 2
    )
    assert "not in the recognition catalogue" in capsys.readouterr().err

"""hub exams / sla / alerts: the commands print what the store holds, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_alerts import critical_report
from test_ledger import CHANGHUA, LEAD, YUQIAN, at, lifecycle

from hub.cli import _add_common
from hub.config import load_config
from hub.events import Event
from hub.ledger_cli import CST, add_commands, parse_since
from hub.publish import report_messages
from hub.store.alerts import Alerts
from hub.store.db import open_database
from hub.store.ledger import Ledger

CONFIG = """
[consortium]
name = "临安区医共体"
lead = "{lead}"

[hub]
database = "{url}"

[[institutions]]
code = "{lead}"
name = "临安区人民医院"
kind = "lead"

[[institutions]]
code = "{yuqian}"
name = "於潜镇中心卫生院"

[[institutions]]
code = "{changhua}"
name = "昌化镇卫生院"
"""


def hub(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hub")
    add_commands(parser.add_subparsers(dest="command", required=True), _add_common)
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status


@pytest.fixture
def config_path(database_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "consortium.toml"
    path.write_text(CONFIG.format(lead=LEAD, yuqian=YUQIAN, changhua=CHANGHUA, url=database_url), "utf-8")
    return path


@pytest.fixture
def store(config_path: Path):  # type: ignore[no-untyped-def]
    config = load_config(config_path)
    database = open_database(config.database_url)
    database.migrate()
    yield Ledger(database, config), Alerts(database, config)
    database.close()


def test_exams_list_and_show_print_what_the_ledger_holds(
    store, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    ledger, _alerts = store
    ledger.record(
        [*lifecycle("ex-yq", 8, priority="stat"), *lifecycle("ex-ch", None, queued=1, origin=CHANGHUA, centre="lab")]
    )
    assert hub("exams", "list", "--config", str(config_path)) == 0
    newest, oldest = capsys.readouterr().out.splitlines()
    assert "ex-ch" in newest and "in_reading" in newest and "昌化镇卫生院" in newest
    assert "ex-yq" in oldest and "delivered" in oldest and "8.0 min" in oldest and "於潜镇中心卫生院" in oldest
    assert "2026-03-02 08:00:00" in oldest  # China Standard Time

    assert hub("exams", "list", "--origin", CHANGHUA, "--json", "--config", str(config_path)) == 0
    [listed] = json.loads(capsys.readouterr().out)
    [held] = ledger.exams(origin=CHANGHUA)
    assert (listed["exam_id"], listed["state"], listed["queued_at"]) == (
        "ex-ch",
        held.state,
        held.queued_at.isoformat(),
    )

    assert hub("exams", "show", "ex-yq", "--json", "--config", str(config_path)) == 0
    shown = json.loads(capsys.readouterr().out)
    exam = ledger.exam("ex-yq")
    assert [t["transition"] for t in shown["transitions"]] == [t.transition for t in exam.transitions]
    assert (shown["turnaround_minutes"], shown["due_at"]) == (8.0, at(10).isoformat())
    assert hub("exams", "show", "ex-yq", "--config", str(config_path)) == 0
    text = capsys.readouterr().out
    assert "於潜镇中心卫生院" in text and "delivered" in text and "mllp://127.0.0.1:6601" in text
    assert hub("exams", "show", "ex-none", "--config", str(config_path)) == 1
    assert "no exam ex-none" in capsys.readouterr().err


def test_sla_report_gives_the_figures_per_member_and_centre(
    store, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    ledger, _alerts = store
    for n, minutes in enumerate([6, 12, 9]):  # 於潜 ECG stat, due after 10: one late
        ledger.record(lifecycle(f"ex-{n}", minutes, priority="stat", queued=(n - 3) * 24 * 60))  # days before T0
    ledger.record(lifecycle("ex-ch", 50, origin=CHANGHUA, centre="lab", priority="routine"))
    since = (at(0) - timedelta(days=1, hours=1)).astimezone(CST).replace(tzinfo=None).isoformat()
    assert hub("sla", "report", "--json", "--since", since, "--config", str(config_path)) == 0
    figures = {(f["origin"], f["centre"]): f for f in json.loads(capsys.readouterr().out)}
    assert figures[YUQIAN, "ecg"] == {
        "origin": YUQIAN,
        "name": "於潜镇中心卫生院",
        "centre": "ecg",
        "volume": 1,
        "reported": 1,
        "median_minutes": 9.0,
        "p90_minutes": 9.0,
        "breaches": 0,
        "breach_rate": 0.0,
    }
    assert figures[CHANGHUA, "lab"]["median_minutes"] == 50.0
    assert hub("sla", "report", "--config", str(config_path)) == 0
    text = capsys.readouterr().out
    yuqian = next(line for line in text.splitlines() if "於潜镇中心卫生院" in line)
    assert yuqian.split()[:7] == ["ecg", "3", "3", "9.0", "min", "12.0", "min"]
    assert "33.3%" in yuqian
    with pytest.raises(SystemExit, match="--since: 'next tuesday' is neither"):
        hub("sla", "report", "--since", "next tuesday", "--config", str(config_path))


def test_alerts_list_and_ack(store, config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    ledger, alerts = store
    report = critical_report()
    [issued] = [Event.decode(m.body) for m in report_messages(report, at=at(3)) if m.exchange == "hub.events"]
    ledger.record([issued])
    [critical] = alerts.alerts()
    assert hub("alerts", "list", "--institution", YUQIAN, "--open", "--config", str(config_path)) == 0
    out = capsys.readouterr().out
    assert critical.alert_id in out and "OPEN" in out and "於潜镇中心卫生院" in out
    assert hub("alerts", "ack", critical.alert_id, "--by", "王医生", "--config", str(config_path)) == 0
    assert "acknowledged by 王医生" in capsys.readouterr().out
    recorded = alerts.alert(critical.alert_id)
    assert recorded is not None and recorded.acknowledged_by == "王医生"
    assert hub("alerts", "ack", critical.alert_id, "--by", "李护士", "--config", str(config_path)) == 0
    assert "was already acknowledged by 王医生" in capsys.readouterr().out
    assert hub("alerts", "list", "--open", "--json", "--config", str(config_path)) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert hub("alerts", "ack", "al-unknown", "--by", "王医生", "--config", str(config_path)) == 1


def test_since_takes_spans_and_china_standard_time() -> None:
    now = datetime(2026, 3, 9, 0, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("2026-03-02T08:00") == datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # CST without an offset
    assert parse_since("2026-03-02T08:00+00:00") == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither an ISO date"):
        parse_since("last week")

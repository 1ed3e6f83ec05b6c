"""Alerts: the envelope, SLA breaches and escalations with an injected clock, acknowledgement, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime

from test_ledger import CHANGHUA, LEAD, YUQIAN, at, consortium, lifecycle, report_step

from hub.alerts import Alert, alert_id, alert_message, critical_alert
from hub.envelope import Coding, Patient, Report
from hub.store.alerts import Alerts
from hub.store.db import Database
from hub.store.ledger import Ledger
from hub.topology import ALERTS


def critical_report(exam_id: str = "ex-k1") -> Report:
    return Report(
        report_id=f"rp-{exam_id}",
        exam_id=exam_id,
        origin=YUQIAN,
        centre="lab",
        status="final",
        patient=Patient(name="张伟", national_id="33011219620821031X", sex="male"),
        service=Coding(code="58410-2", display="血常规"),
        placer_order="YQ-LAB-0001",
        issued_at=datetime(2026, 3, 2, 1, 0, tzinfo=UTC),
        critical=True,
        critical_items=("血钾 6.8 mmol/L", "血小板 12×10^9/L"),
    )


def test_a_critical_alert_names_its_items_and_order_but_not_the_patient() -> None:
    report = critical_report()
    alert = critical_alert(report, at(1))
    assert (alert.kind, alert.institution, alert.report_id, alert.critical_count) == ("critical", YUQIAN, "rp-ex-k1", 2)
    assert alert.alert_id == alert_id("critical", "rp-ex-k1") == critical_alert(report, at(9)).alert_id  # stable
    message = alert_message(alert)
    assert (message.exchange, message.routing_key) == (ALERTS, f"critical.{YUQIAN}.lab")
    assert message.message_id == f"{alert.alert_id}:{YUQIAN}"
    assert Alert.decode(message.body) == alert
    assert "血钾 6.8 mmol/L" in message.body.decode() and "YQ-LAB-0001" in message.body.decode()
    assert "张伟" not in message.body.decode() and "33011219620821031X" not in message.body.decode()
    assert alert_message(alert, LEAD).routing_key == f"critical.{LEAD}.lab"


def test_an_sla_breach_is_flagged_and_alerted_once(database: Database) -> None:
    config = consortium()
    ledger, alerts = Ledger(database, config), Alerts(database, config)
    ledger.record(
        [
            *lifecycle("ex-open", None, priority="stat"),  # ECG stat: due at 10
            *lifecycle("ex-on-time", 6, priority="stat"),
            *lifecycle("ex-lab", None, centre="lab", priority="stat"),  # due at 30
        ]
    )
    assert alerts.raise_sla_breaches(at(9.9)) == []
    [breach] = alerts.raise_sla_breaches(at(10))
    assert (breach.kind, breach.exam_id, breach.institution, breach.due_at) == ("sla", "ex-open", YUQIAN, at(10))
    assert breach.published_at is None
    assert alerts.recipients(breach) == [YUQIAN, LEAD]  # the origin, and the lead hospital whose centre is late
    assert alerts.raise_sla_breaches(at(11)) == []  # once
    ledger.record(lifecycle("ex-late", 12, queued=1, priority="stat"))  # its report came after it was due
    assert [a.exam_id for a in alerts.raise_sla_breaches(at(13))] == ["ex-late"]
    flagged = {e.exam_id: e.breached for e in ledger.exams()}
    assert flagged == {"ex-open": True, "ex-on-time": False, "ex-lab": False, "ex-late": True}

    assert [a.exam_id for a in alerts.alerts(institution=LEAD)] == ["ex-late", "ex-open"]  # its copies
    assert alerts.alerts(institution=CHANGHUA) == []
    assert {a.alert_id for a in alerts.unpublished()} == {breach.alert_id, alert_id("sla", "ex-late")}
    alerts.mark_published([breach.alert_id], at(13))
    assert [a.exam_id for a in alerts.unpublished()] == ["ex-late"]


def test_an_unacknowledged_critical_alert_escalates_once_per_level(database: Database) -> None:
    config = consortium(alerts={"escalate_after_minutes": 15})
    ledger, alerts = Ledger(database, config), Alerts(database, config, levels=2)
    ledger.record(
        [
            *lifecycle("ex-k", None, centre="lab"),
            report_step("report.issued", "ex-k", 5, centre="lab", critical_count=1),
        ]
    )
    [critical] = alerts.alerts()
    assert (critical.kind, critical.institution, critical.raised_at, critical.published_at) == (
        "critical",
        YUQIAN,
        at(5),
        at(5),  # it went out with the report
    )
    assert alerts.escalate(at(19.9)) == []
    [first] = alerts.escalate(at(20))
    assert (first.kind, first.level, first.institution, first.escalates) == ("escalation", 1, LEAD, critical.alert_id)
    assert alerts.escalate(at(34)) == []  # level 2 waits 15 minutes after level 1
    [second] = alerts.escalate(at(35))
    assert second.level == 2
    assert alerts.escalate(at(200)) == []  # no more than `levels`
    assert alerts.alert(critical.alert_id).level == 2  # type: ignore[union-attr]
    assert [a.alert_id for a in alerts.unpublished()] == [first.alert_id, second.alert_id]


def test_acknowledging_stops_escalation_and_is_idempotent(database: Database) -> None:
    config = consortium(alerts={"escalate_after_minutes": 10, "escalate_to": CHANGHUA})
    ledger, alerts = Ledger(database, config), Alerts(database, config)
    ledger.record([report_step("report.issued", "ex-k", 0, critical_count=1)])
    [critical] = alerts.alerts(institution=YUQIAN)
    [escalation] = alerts.escalate(at(10))
    assert escalation.institution == CHANGHUA  # alerts.escalate_to
    acknowledged = alerts.acknowledge(escalation.alert_id, "王医生", at(12))  # from the escalation: its alert
    assert acknowledged is not None
    assert (acknowledged.alert_id, acknowledged.acknowledged_by, acknowledged.acknowledged_at) == (
        critical.alert_id,
        "王医生",
        at(12),
    )
    again = alerts.acknowledge(critical.alert_id, "李护士", at(30))
    assert again is not None and (again.acknowledged_by, again.acknowledged_at) == ("王医生", at(12))
    assert alerts.alert(escalation.alert_id).acknowledged_by == "王医生"  # type: ignore[union-attr]
    assert alerts.escalate(at(100)) == []
    assert alerts.alerts(open_only=True) == []
    assert [a.kind for a in alerts.alerts(institution=CHANGHUA)] == ["escalation"]
    assert alerts.acknowledge("al-nonexistent", "王医生") is None


def test_an_sla_alert_stops_escalating_once_its_late_report_comes(database: Database) -> None:
    config = consortium(alerts={"escalate_after_minutes": 15})
    ledger, alerts = Ledger(database, config), Alerts(database, config)
    ledger.record(lifecycle("ex-s", None, priority="stat"))
    [breach] = alerts.raise_sla_breaches(at(10))
    ledger.record([report_step("report.issued", "ex-s", 20)])
    assert alerts.escalate(at(40)) == []
    assert alerts.alert(breach.alert_id).level == 0  # type: ignore[union-attr]

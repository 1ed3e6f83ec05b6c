"""``hub exams``, ``hub sla`` and ``hub alerts``: what the ledger holds, read from the store.

    hub exams list [--origin CODE] [--centre C] [--state S] [--since 7d] [--json]
    hub exams show EXAM_ID [--json]
    hub sla report [--since ISO|7d] [--until ISO] [--json]
    hub alerts list [--institution CODE] [--open] [--json]
    hub alerts ack ALERT_ID --by NAME

Each command opens the store at ``config.database_url`` (migrating it first)
and prints what is there. Text output gives times in China Standard Time and
names institutions by their names; ``--json`` gives codes and UTC ISO times.
``hub.cli`` wires these in with ``add_commands(subparsers, common)``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TextIO, get_args

from hub.config import Config
from hub.envelope import Centre
from hub.store.alerts import Alerts
from hub.store.db import open_database
from hub.store.ledger import STATES, ExamRecord, Ledger, SlaFigures

__all__ = [
    "CST",
    "add_commands",
    "cmd_alerts_ack",
    "cmd_alerts_list",
    "cmd_exams_list",
    "cmd_exams_show",
    "cmd_sla_report",
    "parse_since",
    "print_sla",
]

CST = timezone(timedelta(hours=8), "CST")
_RELATIVE = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m`` before now, or an ISO date or time (China Standard Time when it has no offset)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO date or time nor a span like 7d, 12h or 30m") from None
    return moment.replace(tzinfo=CST) if moment.tzinfo is None else moment


def add_commands(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``exams``, ``sla`` and ``alerts`` to the ``hub`` command's subparsers."""
    exams = subparsers.add_parser("exams", help="the exam ledger: each exam's state and timestamps")
    exam_actions = exams.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = exam_actions.add_parser("list", help="the latest exams first")
    listing.add_argument("--origin", metavar="CODE", help="a member's institution code")
    listing.add_argument("--centre", choices=get_args(Centre))
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--since", metavar="ISO|7d", help="queued since then")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _finish(listing, common, cmd_exams_list)
    show = exam_actions.add_parser("show", help="one exam with every transition")
    show.add_argument("exam_id", metavar="EXAM_ID")
    _finish(show, common, cmd_exams_show)

    sla = subparsers.add_parser("sla", help="turnaround against the SLA targets")
    sla_actions = sla.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = sla_actions.add_parser("report", help="per member and centre: volume, median, p90, breach rate")
    report.add_argument("--since", metavar="ISO|7d", help="exams queued since then (default: all)")
    report.add_argument("--until", metavar="ISO", help="and before then (default: now)")
    _finish(report, common, cmd_sla_report)

    alerts = subparsers.add_parser("alerts", help="critical values, SLA breaches and escalations")
    alert_actions = alerts.add_subparsers(dest="action", required=True, metavar="ACTION")
    alert_list = alert_actions.add_parser("list", help="the latest alerts first")
    alert_list.add_argument("--institution", metavar="CODE", help="alerts sent to it or about its exams")
    alert_list.add_argument("--open", action="store_true", help="only those not acknowledged")
    alert_list.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _finish(alert_list, common, cmd_alerts_list)
    ack = alert_actions.add_parser("ack", help="record that an alert was received and acted on")
    ack.add_argument("alert_id", metavar="ALERT_ID")
    ack.add_argument("--by", required=True, metavar="NAME", help="who acknowledges it")
    common(ack)
    ack.set_defaults(run=cmd_alerts_ack)


def _finish(
    parser: argparse.ArgumentParser,
    common: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    common(parser)
    parser.set_defaults(run=run)


# -- the commands


def cmd_exams_list(args: argparse.Namespace) -> int:
    with _store(args) as (config, ledger, _alerts):
        since = _moment(args.since, "--since")
        found = ledger.exams(origin=args.origin, centre=args.centre, state=args.state, since=since, limit=args.limit)
    if args.json:
        return _print_json([_exam_json(e) for e in found])
    for exam in found:
        flags = ",".join(f for f, on in (("breached", exam.breached), ("critical", exam.critical)) if on) or "-"
        turnaround = _minutes(exam.turnaround)
        print(f"{exam.exam_id}  {exam.centre:<9} {exam.priority or '-':<7} {exam.state:<11} "
              f"{_local(exam.queued_at)}  {turnaround:>9}  {flags:<17} {_name(config, exam.origin)}")  # fmt: skip
    print(f"{len(found)} exam(s)", file=sys.stderr)
    return 0


def cmd_exams_show(args: argparse.Namespace) -> int:
    with _store(args) as (config, ledger, _alerts):
        exam = ledger.exam(args.exam_id)
    if exam is None:
        print(f"hub exams show: no exam {args.exam_id} in the ledger", file=sys.stderr)
        return 1
    if args.json:
        return _print_json(_exam_json(exam) | {"transitions": [_jsonable(asdict(t)) for t in exam.transitions]})
    lines = [
        f"exam        {exam.exam_id}",
        f"member      {_name(config, exam.origin)} ({exam.origin})",
        f"centre      {exam.centre}, {exam.priority or 'priority not known yet'}",
        f"state       {exam.state}",
        f"due         {_local(exam.due_at)}{'  BREACHED' if exam.breached else ''}",
        f"turnaround  {_minutes(exam.turnaround)}",
        f"critical    {f'yes, {exam.critical_count} item(s)' if exam.critical else 'no'}",
        "transitions:",
    ]
    for t in exam.transitions:
        extra = "  ".join(x for x in (t.report_id, t.endpoint, t.detail) if x)
        lines.append(f"  {_local(t.at)}  {t.transition:<11} {extra}")
    print("\n".join(lines))
    return 0


def cmd_sla_report(args: argparse.Namespace) -> int:
    with _store(args) as (config, ledger, _alerts):
        since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
        figures = ledger.sla_report(since, until)
    if args.json:
        return _print_json([_figures_json(config, f) for f in figures])
    period = f"{_local(since) if since else 'the start'} to {_local(until) if until else 'now'} (CST)"
    print(f"SLA report, exams queued from {period}; turnaround to the first report a clinician can act on")
    print_sla(config, figures)
    return 0


def print_sla(config: Config, figures: Sequence[SlaFigures], out: TextIO | None = None, indent: str = "") -> None:
    """The SLA table for a person to read (the CLI's and the demo's)."""
    out = out or sys.stdout  # looked up now: tests and callers swap sys.stdout
    print(f"{indent}{'centre':<10}{'volume':>7}{'reported':>9}{'median':>10}{'p90':>10}{'breaches':>9}{'rate':>8}"
          "  member", file=out)  # fmt: skip
    for f in figures:
        print(f"{indent}{f.centre:<10}{f.volume:>7}{f.reported:>9}{_minutes(f.median):>10}{_minutes(f.p90):>10}"
              f"{f.breaches:>9}{f.breach_rate:>8.1%}  {_name(config, f.origin)}", file=out)  # fmt: skip


def cmd_alerts_list(args: argparse.Namespace) -> int:
    with _store(args) as (config, _ledger, alerts):
        found = alerts.alerts(institution=args.institution, open_only=args.open, limit=args.limit)
    if args.json:
        return _print_json([_jsonable(asdict(a)) for a in found])
    for alert in found:
        status = f"acknowledged by {alert.acknowledged_by}" if alert.acknowledged_at else "OPEN"
        print(f"{alert.alert_id}  {alert.kind:<10} level {alert.level}  {_local(alert.raised_at)}  {alert.exam_id}  "
              f"{status}  to {_name(config, alert.institution)}, about {_name(config, alert.origin)}")  # fmt: skip
    print(f"{len(found)} alert(s)", file=sys.stderr)
    return 0


def cmd_alerts_ack(args: argparse.Namespace) -> int:
    with _store(args) as (_config, _ledger, alerts):
        before = alerts.alert(args.alert_id)
        alert = alerts.acknowledge(args.alert_id, args.by)
    if alert is None:
        print(f"hub alerts ack: no alert {args.alert_id}", file=sys.stderr)
        return 1
    already = before is not None and before.acknowledged_at is not None
    verb = "was already acknowledged" if already else "acknowledged"
    print(f"{alert.alert_id} ({alert.kind}, exam {alert.exam_id}) {verb} by {alert.acknowledged_by} "
          f"at {_local(alert.acknowledged_at)}")  # fmt: skip
    return 0


# -- helpers


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[tuple[Config, Ledger, Alerts]]:
    from hub.cli import _config  # noqa: PLC0415  (hub.cli imports this module)

    config = _config(args)
    database = open_database(config.database_url)
    try:
        database.migrate()
        yield config, Ledger(database, config), Alerts(database, config)
    finally:
        database.close()


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise SystemExit(f"hub: {option}: {exc}") from None


def _name(config: Config, code: str) -> str:
    institution = config.institution(code)
    return institution.name if institution else code


def _local(moment: datetime | None) -> str:
    return moment.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _in_minutes(span: timedelta | None) -> float | None:
    return span.total_seconds() / 60 if span is not None else None


def _minutes(span: timedelta | None) -> str:
    if span is None:
        return "-"
    seconds = span.total_seconds()
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}


def _exam_json(exam: ExamRecord) -> dict[str, Any]:
    data = _jsonable({k: v for k, v in asdict(exam).items() if k != "transitions"})
    return data | {"turnaround_minutes": _in_minutes(exam.turnaround)}


def _figures_json(config: Config, figures: SlaFigures) -> dict[str, Any]:
    return {
        "origin": figures.origin,
        "name": _name(config, figures.origin),
        "centre": figures.centre,
        "volume": figures.volume,
        "reported": figures.reported,
        "median_minutes": _in_minutes(figures.median),
        "p90_minutes": _in_minutes(figures.p90),
        "breaches": figures.breaches,
        "breach_rate": figures.breach_rate,
    }


def _print_json(data: object) -> int:
    print(json.dumps(data, ensure_ascii=False, indent=2))
    return 0

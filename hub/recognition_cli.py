"""``hub recognition``: look up recognised results, record re-test overrides, list and add QC passes.

    hub recognition lookup --national-id 110105194912310025 --item 'http://loinc.org|58410-2' [--as-of 2026-11-20]
                           [--json] [--who NAME]
    hub recognition override --national-id ... --item ... --reason emergency --clinician 王建华 --institution CODE
                             [--detail TEXT] [--at 2026-11-20T09:30+08:00]
    hub recognition qc list
    hub recognition qc add --institution CODE --item 58410-2 --until 2027-12-31

``add_commands(subparsers, common)`` adds them to the ``hub`` parser (``common`` adds --config and
--broker). Each opens the store at the config's database URL, migrated (which changes nothing on
a store already migrated). A lookup is audited like any other, as ``--who`` (default
``cli:<login>``) via ``cli``. Exit status: 0 when a lookup finds results (or a command succeeds), 1
when it finds none (the reason is printed), 2 when the arguments are refused.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from hub.store.recognition import LookupResult, Registry

__all__ = ["add_commands", "cmd_lookup", "cmd_override", "cmd_qc_add", "cmd_qc_list", "print_lookup"]


def _item(text: str) -> tuple[str, str]:
    system, bar, code = text.partition("|")
    if not (bar and system and code):
        raise argparse.ArgumentTypeError(f"give the item as SYSTEM|CODE, e.g. http://loinc.org|58410-2, not {text!r}")
    return system, code


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the time with its offset, e.g. {text}+08:00")
    return value


@contextmanager
def _registry(args: argparse.Namespace) -> Iterator[Registry]:
    from hub.cli import _config  # noqa: PLC0415  (lazy, like every command of hub.cli: `hub --help` stays fast)
    from hub.store.db import open_database  # noqa: PLC0415
    from hub.store.recognition import Registry  # noqa: PLC0415

    config = _config(args)
    database = open_database(config.database_url)
    try:
        database.migrate()
        yield Registry(database, config)
    finally:
        database.close()


def cmd_lookup(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        found = registry.lookup(national_id=args.national_id, item=args.item, as_of=args.as_of, who=args.who, via="cli")
        display = next((i.display for i in registry.config.recognition.items if (i.system, i.code) == args.item), None)
    if args.json:
        print(json.dumps(_lookup_json(found), ensure_ascii=False, indent=2))
    else:
        print_lookup(found, display or "|".join(args.item))
    return 0 if found.results else 1


def _lookup_json(found: LookupResult) -> dict[str, Any]:
    return {
        "reason": found.reason,
        "detail": found.detail,
        "person_id": found.person.id if found.person else None,
        "results": [r.model_dump(mode="json") for r in found.results],
    }


def print_lookup(found: LookupResult, item: str, out: TextIO | None = None, indent: str = "") -> None:
    """A lookup's answer for a person to read (the CLI's and the demo's)."""
    out = out or sys.stdout  # looked up now: tests and callers swap sys.stdout
    if not found.results:
        print(f"{indent}{item}: {found.reason}" + (f" ({found.detail})" if found.detail else ""), file=out)
        return
    print(f"{indent}{item}: {found.reason}, {len(found.results)} recognised result(s)", file=out)
    for result in found.results:
        print(
            indent + f"  [{result.mark}] {result.item.display or result.item.code}  valid {result.valid_from} to "
            f"{result.valid_until}  report {result.source_report_id} by {result.performer_institution}",
            file=out,
        )
        for o in result.observations:
            value = " ".join(str(part) for part in (o.value, o.unit) if part is not None)
            extras = " ".join(
                part for part in (f"({o.reference_range})" if o.reference_range else "", o.flag or "") if part
            )
            print(f"{indent}    {o.code.display or o.code.code}: {value} {extras}".rstrip(), file=out)
        for a in result.attachments:
            print(f"{indent}    {a.media_type}: {a.uri}", file=out)


def cmd_override(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        try:
            override = registry.override(
                national_id=args.national_id,
                item=args.item,
                reason=args.reason,
                detail=args.detail,
                clinician=args.clinician,
                institution=args.institution,
                at=args.at,
            )
        except ValueError as exc:
            print(f"hub recognition override: {exc}", file=sys.stderr)
            return 2
    print(f"override {override.id} recorded: {override.reason}, {len(override.overridden)} valid result(s) re-tested")
    return 0


def cmd_qc_list(args: argparse.Namespace) -> int:
    from hub.store.recognition import recognition_day  # noqa: PLC0415

    today = recognition_day()
    with _registry(args) as registry:
        passes = registry.qc_passes()
    for qc in passes:
        state = "valid" if qc.valid_until >= today else "lapsed"
        print(f"{qc.institution}  {qc.item:<12} until {qc.valid_until}  {state:<6}  ({qc.source})")
    return 0


def cmd_qc_add(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        try:
            registry.record_qc_pass(args.institution, args.item, args.until)
        except ValueError as exc:
            print(f"hub recognition qc add: {exc}", file=sys.stderr)
            return 2
    print(f"QC pass recorded: {args.institution} for {args.item} until {args.until}")
    return 0


def add_commands(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``recognition lookup|override|qc`` to the ``hub`` command's subparsers."""
    recognition = subparsers.add_parser("recognition", help="mutual recognition (互认): lookups, overrides, QC passes")
    actions = recognition.add_subparsers(dest="action", required=True, metavar="ACTION")

    lookup = actions.add_parser("lookup", help="a patient's recognised results of an item, or why there are none")
    _patient_and_item(lookup)
    lookup.add_argument("--as-of", type=date.fromisoformat, metavar="DATE", help="valid on this day (default today)")
    lookup.add_argument("--json", action="store_true", help="print JSON")
    lookup.add_argument("--who", default=f"cli:{getpass.getuser()}", help="who looks, for the audit trail")
    common(lookup)
    lookup.set_defaults(run=cmd_lookup)

    override = actions.add_parser("override", help="record a re-test despite a recognised result, with its reason")
    _patient_and_item(override)
    override.add_argument(
        "--reason",
        required=True,
        help="emergency, condition-changed, fast-changing-value, pre-surgery-or-transfusion, forensic-assessment "
        "or other (which needs --detail)",
    )
    override.add_argument("--detail", help="what the reason is, in words")
    override.add_argument("--clinician", required=True, help="who re-tests")
    override.add_argument("--institution", required=True, metavar="CODE", help="where")
    override.add_argument("--at", type=_aware, help="when, ISO 8601 with offset (default now)")
    common(override)
    override.set_defaults(run=cmd_override)

    qc = actions.add_parser("qc", help="quality-control (EQA) passes: which centre may be recognised for what")
    qc_actions = qc.add_subparsers(dest="qc_action", required=True, metavar="ACTION")
    qc_list = qc_actions.add_parser("list", help="every QC pass, with whether it is still valid")
    common(qc_list)
    qc_list.set_defaults(run=cmd_qc_list)
    qc_add = qc_actions.add_parser("add", help="record a new QC pass")
    qc_add.add_argument("--institution", required=True, metavar="CODE")
    qc_add.add_argument("--item", required=True, metavar="CODE", help="a catalogue item's code")
    qc_add.add_argument("--until", required=True, type=date.fromisoformat, metavar="DATE", help="last valid day")
    common(qc_add)
    qc_add.set_defaults(run=cmd_qc_add)


def _patient_and_item(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--national-id", required=True, metavar="ID", help="the resident ID number (身份证号)")
    parser.add_argument(
        "--item", required=True, type=_item, metavar="SYSTEM|CODE", help="e.g. http://loinc.org|58410-2"
    )

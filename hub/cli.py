"""The ``hub`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.topology import Topology

__all__ = ["main"]


def _cmd_read(args: argparse.Namespace) -> int:
    import adapters
    from hub.errors import AdapterError

    status = 0
    for path in args.paths:
        try:
            exams = adapters.read(path.read_bytes(), format=args.format, origin=args.origin, charset=args.charset)
        except AdapterError as exc:
            status = 1
            for problem in exc.problems:
                print(f"{path}: {type(exc).__name__}: {problem}", file=sys.stderr)
            continue
        for exam in exams:
            print(exam.model_dump_json(indent=2))
    return status


def _cmd_schemas(args: argparse.Namespace) -> int:
    from hub.schemas import stale_schemas, write_schemas

    if args.action == "write":
        for path in write_schemas(args.dir):
            print(f"wrote {path}")
        return 0
    stale = stale_schemas(args.dir)
    for name in stale:
        print(f"{args.dir / name} differs from hub/envelope.py; run `hub schemas write`", file=sys.stderr)
    return 1 if stale else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hub.demo import run_demo
    from hub.resources import data_dir

    folder = args.messages or data_dir("examples") / "messages"
    return run_demo(folder, sys.stdout)


DEFAULT_BROKER = "amqp://guest:guest@localhost:5672/%2F"


def _topology(args: argparse.Namespace) -> Topology:
    from hub.topology import Topology

    return Topology(institutions=args.institution)


def _cmd_topology(args: argparse.Namespace) -> int:
    topology = _topology(args)
    if args.action == "show":
        print(topology.describe())
        return 0
    from hub.broker import connect
    from hub.errors import BrokerError

    try:
        with connect(args.broker) as broker:
            broker.declare(topology)
    except BrokerError as exc:
        print(f"hub topology declare: {exc}", file=sys.stderr)
        return 1
    print(f"declared {sum(1 for _ in topology.queues())} queues on {_redacted(args.broker)}")
    return 0


def _load_handler(spec: str) -> object:
    import importlib

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"--handler wants module:function, got {spec!r}")
    return getattr(importlib.import_module(module_name), attribute)


def _cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from hub.broker import connect
    from hub.errors import BrokerError
    from hub.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handler = _load_handler(args.handler)
    try:
        with connect(args.broker) as broker:
            broker.declare(_topology(args))
            Worker(broker, args.centre, handler, concurrency=args.concurrency, prefetch=args.prefetch).run()  # type: ignore[arg-type]
    except BrokerError as exc:
        print(f"hub worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def _add_broker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default=os.environ.get("HUB_BROKER_URL", DEFAULT_BROKER),
        help="broker URL (default: $HUB_BROKER_URL, else RabbitMQ on localhost)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub", description="Consortium shared-services hub: exams to the lead hospital's centres, reports back."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the sample messages through the hub and show what happens")
    demo.add_argument("--messages", type=Path, help="folder of sample messages (default: the shipped examples)")
    demo.set_defaults(run=_cmd_demo)

    read = commands.add_parser("read", help="decode message files into exam envelopes (JSON on stdout)")
    read.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    read.add_argument("--format", choices=["hl7v2", "fhir", "dicom"], help="default: detected from the bytes")
    read.add_argument("--origin", help="sending institution code, overriding what the message says")
    read.add_argument("--charset", help="the sender's fallback charset, e.g. GB18030 or GBK")
    read.set_defaults(run=_cmd_read)

    topology = commands.add_parser("topology", help="show the hub's exchanges and queues, or declare them")
    topology.add_argument("action", choices=["show", "declare"])
    topology.add_argument(
        "--institution", action="append", default=[], metavar="CODE", help="a member's code (repeat for each)"
    )
    _add_broker_option(topology)
    topology.set_defaults(run=_cmd_topology)

    worker = commands.add_parser("worker", help="run a centre's diagnosis worker until SIGTERM")
    worker.add_argument("centre", choices=["imaging", "ecg", "lab", "pathology"])
    worker.add_argument("--handler", required=True, metavar="MODULE:FUNCTION", help="handler(exam) -> Report | None")
    worker.add_argument("--concurrency", type=int, default=4, help="exams handled at once (default 4)")
    worker.add_argument("--prefetch", type=int, help="unacked exams held per lane (default 2 x concurrency)")
    worker.add_argument("--institution", action="append", default=[], metavar="CODE", help="a member's code")
    _add_broker_option(worker)
    worker.set_defaults(run=_cmd_worker)

    schemas = commands.add_parser("schemas", help="write or check the envelope JSON Schemas")
    schemas.add_argument("action", choices=["write", "check"])
    schemas.add_argument("--dir", type=Path, default=Path("schemas"))
    schemas.set_defaults(run=_cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status

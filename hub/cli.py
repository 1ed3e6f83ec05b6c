"""The ``hub`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.broker import Broker
    from hub.config import Config
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
    return run_demo(folder, sys.stdout, broker_url=args.broker)


def _config(args: argparse.Namespace) -> Config:
    """--config, else $HUB_CONFIG, else the shipped example consortium (and say so)."""
    from hub.config import load_config
    from hub.errors import ConfigError
    from hub.resources import data_dir

    path = args.config or os.environ.get("HUB_CONFIG")
    if path is None:
        path = data_dir("examples") / "consortium.toml"
        print(f"hub: no --config or $HUB_CONFIG; using the example consortium {path}", file=sys.stderr)
    try:
        return load_config(path)
    except ConfigError as exc:
        raise SystemExit(f"hub: {exc}") from exc


def _broker_url(args: argparse.Namespace, config: Config | None = None) -> str:
    """--broker, else $HUB_BROKER_URL, else the config's hub.broker, else RabbitMQ on localhost."""
    from hub.broker import DEFAULT_URL

    return args.broker or os.environ.get("HUB_BROKER_URL") or (config and config.hub.broker) or DEFAULT_URL


def _connect(url: str) -> Broker:
    from hub.broker import connect
    from hub.errors import BrokerError

    try:
        return connect(url)
    except BrokerError as exc:
        raise SystemExit(f"hub: {exc} ({_redacted(url)})") from exc


def _topology(args: argparse.Namespace) -> Topology:
    from hub.serve import topology_for
    from hub.topology import Topology

    if args.institution:
        return Topology(institutions=args.institution)
    return topology_for(_config(args))


def _cmd_topology(args: argparse.Namespace) -> int:
    topology = _topology(args)
    if args.action == "show":
        print(topology.describe())
        return 0
    from hub.errors import BrokerError

    url = _broker_url(args)
    try:
        with _connect(url) as broker:
            broker.declare(topology)
    except BrokerError as exc:
        print(f"hub topology declare: {exc}", file=sys.stderr)
        return 1
    print(f"declared {sum(1 for _ in topology.queues())} queues on {_redacted(url)}")
    return 0


def _load_handler(spec: str) -> object:
    """``module:function`` or ``path/to/file.py:function``."""
    import importlib
    import importlib.util

    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        raise SystemExit(f"--handler wants module:function or file.py:function, got {spec!r}")
    if target.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
        if module_spec is None or module_spec.loader is None or not Path(target).is_file():
            raise SystemExit(f"--handler: no file {target}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"--handler: {target} has no {attribute}") from None


def _logging() -> None:
    import logging
    import warnings

    from pydicom import config as pydicom_config  # imported first: its import sets the "pydicom" logger's level

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # pydicom's warnings quote the data set ("Unknown encoding '<(0008,0005) as sent>'"), which may be a
    # patient's name; the adapter reports what it cannot read without the text. Out of the log and stderr.
    pydicom_config.logger.setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pydicom")


def _cmd_worker(args: argparse.Namespace) -> int:
    from hub.errors import BrokerError
    from hub.serve import topology_for
    from hub.worker import Worker

    _logging()
    config = _config(args)
    os.environ["HUB_DATA_DIR"] = str(config.data_dir)  # where handlers find the hub's blobs
    handler = _load_handler(args.handler)
    try:
        with _connect(_broker_url(args, config)) as broker:
            broker.declare(topology_for(config))
            worker = Worker(broker, args.centre, handler, concurrency=args.concurrency,  # type: ignore[arg-type]
                            stat_reserve=args.stat_reserve, prefetch=args.prefetch)  # fmt: skip
            worker.run()
    except BrokerError as exc:
        print(f"hub worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from hub.errors import BrokerError
    from hub.serve import GATEWAYS, Hub

    _logging()
    config = _config(args)
    only = tuple(args.only.split(",")) if args.only else GATEWAYS
    unknown = set(only) - set(GATEWAYS)
    if unknown:
        raise SystemExit(f"hub serve --only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(GATEWAYS)}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with _connect(_broker_url(args, config)) as broker:
            hub = Hub(config, broker, gateways=only)
            hub.start()
            ports = ", ".join(f"{name} on {port}" for name, port in hub.ports.items())
            print(
                f"hub serve: {config.consortium.name}: {ports or 'no listeners'}; Ctrl-C or SIGTERM stops",
                file=sys.stderr,
            )
            stop.wait()
            hub.stop()
    except BrokerError as exc:
        print(f"hub serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from hub.replay import Targets, progress_bar, replay

    config = _config(args)
    broker = _connect(_broker_url(args, config)) if args.via == "direct" else None
    targets = Targets.from_config(config, host=args.host)
    try:
        outcomes = replay(
            args.paths,
            config,
            targets,
            via=args.via,
            origin=args.origin,
            broker=broker,
            on_progress=progress_bar if sys.stderr.isatty() else None,
        )
    except ValueError as exc:
        raise SystemExit(f"hub replay: {exc}") from exc
    finally:
        if broker is not None:
            broker.close()
    for outcome in outcomes:
        mark = "accepted" if outcome.accepted else "rejected"
        print(f"{mark:<8}  {outcome.path}  via {outcome.via}: {outcome.detail}")
    accepted = sum(o.accepted for o in outcomes)
    print(f"{len(outcomes)} sent: {accepted} accepted, {len(outcomes) - accepted} rejected")
    return 0 if accepted == len(outcomes) else 1


def _cmd_reports_pull(args: argparse.Namespace) -> int:
    from hub.pull import pull_reports

    config = _config(args)
    member = config.institution(args.institution)
    if member is None:
        raise SystemExit(f"hub reports pull: {args.institution} is not an institution of {config.consortium.name}")
    with _connect(_broker_url(args, config)) as broker:
        pulled = pull_reports(broker, member, args.out, format=args.format, limit=args.limit)
    for report in pulled:
        print(report.path)
    print(f"{len(pulled)} report(s) for {member.name} written to {args.out}", file=sys.stderr)
    return 0


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="the consortium config (default: $HUB_CONFIG, else the shipped example)"
    )
    parser.add_argument(
        "--broker",
        help="broker URL, amqp://... or memory:// (default: $HUB_BROKER_URL, the config's hub.broker, "
        "else RabbitMQ on localhost)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub",
        description="Consortium shared-services hub: exams from member sites to the lead hospital's centres, "
        "reports back.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_running(commands)
    _add_store_and_tools(commands)
    return parser


def _add_running(commands: Any) -> None:
    """The commands that run the hub: demo, serve, worker, replay, reports."""
    demo = commands.add_parser("demo", help="run the sample consortium end to end and show what happens")
    demo.add_argument("--messages", type=Path, help="folder of sample messages (default: the shipped examples)")
    _add_common(demo)
    demo.set_defaults(run=_cmd_demo)

    serve = commands.add_parser(
        "serve", help="run the configured gateways (MLLP, DICOM, FHIR), report egress, the ledger and the registry"
    )
    serve.add_argument(
        "--only", metavar="LIST", help="a subset, comma-separated: ledger,registry,mllp,dicom,fhir,egress"
    )
    _add_common(serve)
    serve.set_defaults(run=_cmd_serve)

    worker = commands.add_parser("worker", help="run a centre's diagnosis worker until SIGTERM")
    worker.add_argument("centre", choices=["imaging", "ecg", "lab", "pathology"])
    worker.add_argument(
        "--handler",
        required=True,
        metavar="MODULE:FUNCTION",
        help="handler(exam) -> Report | None; or FILE.py:FUNCTION",
    )
    worker.add_argument("--concurrency", type=int, default=4, help="exams handled at once (default 4)")
    stat_help = "extra threads for STAT exams only, so STAT never waits for a routine read (default 1)"
    worker.add_argument("--stat-reserve", type=int, default=1, help=stat_help)
    worker.add_argument("--prefetch", type=int, help="unacked exams held per lane (default 2 x concurrency)")
    _add_common(worker)
    worker.set_defaults(run=_cmd_worker)

    replay = commands.add_parser("replay", help="send message files through the hub as a member's system would")
    replay.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    replay.add_argument(
        "--via",
        choices=["auto", "mllp", "fhir", "dicom", "direct"],
        default="auto",
        help="the path to take (default: by format: HL7 over MLLP, FHIR over HTTP, DICOM C-STORE)",
    )
    replay.add_argument("--origin", metavar="CODE", help="send as this member (its AE title, token or broker user)")
    replay.add_argument("--host", help="where the hub listens (default 127.0.0.1)")
    _add_common(replay)
    replay.set_defaults(run=_cmd_replay)

    reports = commands.add_parser("reports", help="reports for members that pull theirs")
    reports_actions = reports.add_subparsers(dest="action", required=True, metavar="ACTION")
    pull = reports_actions.add_parser("pull", help="take a member's waiting reports and write them to files")
    pull.add_argument("--institution", required=True, metavar="CODE")
    pull.add_argument("--out", type=Path, default=Path("."), help="folder for the report files (default: .)")
    pull.add_argument("--format", choices=["hl7v2", "fhir", "json"], default="hl7v2")
    pull.add_argument("--limit", type=int, help="at most this many")
    _add_common(pull)
    pull.set_defaults(run=_cmd_reports_pull)


def _add_store_and_tools(commands: Any) -> None:
    """Topology, the ledger and registry commands, and the adapter tools."""
    topology = commands.add_parser("topology", help="show the hub's exchanges and queues, or declare them")
    topology.add_argument("action", choices=["show", "declare"])
    topology.add_argument(
        "--institution",
        action="append",
        default=[],
        metavar="CODE",
        help="a member's code (repeat for each; default: the config's institutions)",
    )
    _add_common(topology)
    topology.set_defaults(run=_cmd_topology)

    from hub.ledger_cli import add_commands as add_ledger_commands
    from hub.recognition_cli import add_commands as add_recognition_commands

    add_ledger_commands(commands, _add_common)
    add_recognition_commands(commands, _add_common)

    read = commands.add_parser("read", help="decode message files into exam envelopes (JSON on stdout)")
    read.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    read.add_argument("--format", choices=["hl7v2", "fhir", "dicom"], help="default: detected from the bytes")
    read.add_argument("--origin", help="sending institution code, overriding what the message says")
    read.add_argument("--charset", help="the sender's fallback charset, e.g. GB18030 or GBK")
    read.set_defaults(run=_cmd_read)

    schemas = commands.add_parser("schemas", help="write or check the envelope JSON Schemas")
    schemas.add_argument("action", choices=["write", "check"])
    schemas.add_argument("--dir", type=Path, default=Path("schemas"))
    schemas.set_defaults(run=_cmd_schemas)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status

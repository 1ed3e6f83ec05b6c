"""Ledger figures: write throughput alone, and the end-to-end rate with the ledger off and on, same run.

    python bench/ledger.py [--part write|drain|e2e|all] [--exams N] [--batch B] [--messages N] [--rounds R]

(a) write: the events of N exams (accepted, in_reading, report.issued,
report.delivered; interleaved across exams as the pipeline produces them)
recorded with ``Ledger.record`` in batches of B, on SQLite and on PostgreSQL
(skipped when it is not reachable). Baseline, same run, same database: a plain
INSERT of the same transition rows in the same batches into a table with no key
(no idempotence, no exam rows): the cost of just putting the events on disk.

(a') drain: the LedgerService's capacity, consuming a backlog of the same
events from RabbitMQ into SQLite, as it does after a restart.

(b) e2e: bench/e2e.py's pipeline (MLLP in -> AA -> worker -> report -> egress
-> AA at the member), three times side by side, each in its own scratch vhost,
rounds interleaved (each round starts with another variant):
- off: ledger events off, no ledger;
- events: events on, no ledger (they pile up on hub.ledger): what publishing
  the events costs by itself;
- on: events on, and the LedgerService in its own process, as it is deployed
  beside ``hub serve``, writing to SQLite in the hub's data directory
  (``--e2e-database postgresql``: a scratch PostgreSQL database).
For the on variant it also gives the ledger's sustained rate (the round's
events over the time from its first send until the ledger holds every one of
them) and how long after the round's last report it had them all. Goal: the
ledger is not the end-to-end bottleneck: it keeps up, and on / events stays
>= 0.8x (the events' own cost, on / off, is the price of feeding any ledger
from the broker, printed beside it). CPU per message of each process comes
from /proc. Needs RabbitMQ (HUB_BENCH_AMQP_URL, default localhost) and
rabbitmqctl for (a') and (b); PostgreSQL (HUB_BENCH_POSTGRES_URL) is optional.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the imports)
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]

from _timing import verdict
from broker import drop_vhost, scratch_vhost
from e2e import cpu_seconds, hub_round, member_codes, mllp_port_of, start, write_config
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, create_engine, func, select, text
from sqlalchemy.engine import make_url

from hub.config import Config, load_config
from hub.events import Event
from hub.ids import derive_report_id
from hub.members import MllpReceiver
from hub.store.db import Database, open_database
from hub.store.ledger import Ledger, LedgerTransition

POSTGRES = os.environ.get("HUB_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/postgres")
LEAD = "12330112470101234B"
ORIGINS = ["12330112472334561L", "12330112473455672X", "123301124745767837"]
EVENTS_PER_EXAM = 4
TRANSITIONS_PER_EXAM = 5  # exam.accepted is two: received and queued


# -- (a) write throughput


def exam_events(first: int, count: int) -> list[Event]:
    """The four events of each exam, interleaved: a window of exams in flight at once, as in the pipeline."""
    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    per_exam = []
    for n in range(first, first + count):
        exam_id, origin, at = f"ex-bench-{n:08d}", ORIGINS[n % len(ORIGINS)], t0 + timedelta(seconds=n)
        report_id = derive_report_id(exam_id, "final")
        common = {"exam_id": exam_id, "origin": origin, "centre": "lab"}
        report = {"report_id": report_id, "report_status": "final", "issued_at": at + timedelta(minutes=3)}
        per_exam.append(
            [
                Event(kind="exam.accepted", at=at, priority="stat", received_at=at, **common),
                Event(kind="exam.in_reading", at=at + timedelta(seconds=1), priority="stat", **common),
                Event(
                    kind="report.issued",
                    at=at + timedelta(minutes=3),
                    critical=False,
                    critical_count=0,
                    **report,
                    **common,
                ),
                Event(
                    kind="report.delivered",
                    at=at + timedelta(minutes=3, seconds=1),
                    endpoint="mllp://10.0.0.1:6601",
                    attempts=1,
                    detail="AA",
                    **report,
                    **common,
                ),
            ]
        )
    window = 50  # exams whose events interleave
    events = []
    for start_at in range(0, len(per_exam), window):
        group = per_exam[start_at : start_at + window]
        events += [exam[step] for step in range(EVENTS_PER_EXAM) for exam in group]
    return events


def plain_table() -> Table:
    return Table(
        "bench_plain_transitions",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        *(Column(name, String(64)) for name in ("exam_id", "transition", "report_id", "report_status", "detail")),
        Column("endpoint", String(200)),
        Column("at", DateTime(timezone=True)),
        Column("issued_at", DateTime(timezone=True)),
    )


def plain_rows(events: list[Event]) -> list[dict[str, object]]:
    rows = []
    for e in events:
        kinds = ["received", "queued"] if e.kind == "exam.accepted" else [e.kind.split(".", 1)[1]]
        for kind in kinds:
            rows.append(
                {
                    "exam_id": e.exam_id,
                    "transition": kind,
                    "report_id": e.report_id or "",
                    "report_status": e.report_status,
                    "detail": e.detail,
                    "endpoint": e.endpoint,
                    "at": e.at,
                    "issued_at": e.issued_at,
                }
            )
    return rows


def write_round(
    database: Database, ledger: Ledger, table: Table, events: list[Event], batch: int
) -> tuple[float, float]:
    """Events per second through ``Ledger.record``, and through a plain INSERT of the same rows."""
    began = time.perf_counter()
    for n in range(0, len(events), batch):
        ledger.record(events[n : n + batch])
    ours = len(events) / (time.perf_counter() - began)
    rows = plain_rows(events)
    per_batch = len(rows) * batch // len(events)
    began = time.perf_counter()
    for n in range(0, len(rows), per_batch):
        with database.engine.begin() as connection:
            connection.execute(table.insert(), rows[n : n + per_batch])
    return ours, len(events) / (time.perf_counter() - began)


@contextmanager
def scratch_postgres() -> Iterator[str | None]:
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    name = f"hub_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"  PostgreSQL not reachable at {make_url(POSTGRES).host} ({type(exc).__name__}): skipped")
        admin.dispose()
        yield None
        return
    try:
        yield make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_writes(args: argparse.Namespace, config: Config, folder: Path) -> None:
    print(
        f"(a) ledger writes: {args.exams} exams x {EVENTS_PER_EXAM} events per round, batches of {args.batch} "
        f"events, {args.rounds} interleaved rounds"
    )
    with scratch_postgres() as postgres:
        for label, url in (("SQLite (WAL)", f"sqlite:///{folder / 'writes.db'}"), ("PostgreSQL", postgres)):
            if url is None:
                continue
            database = open_database(url)
            database.migrate()
            table = plain_table()
            table.create(database.engine)
            ledger = Ledger(database, config)
            write_round(database, ledger, table, exam_events(10**7, 200), args.batch)  # warm-up
            ours, plain = [], []
            for r in range(args.rounds):
                o, p = write_round(database, ledger, table, exam_events(r * args.exams, args.exams), args.batch)
                ours.append(o)
                plain.append(p)
            ratio = median(o / p for o, p in zip(ours, plain, strict=True))
            print(
                f"  {label:<13} Ledger.record {median(ours):>9,.0f} events/s   plain INSERT {median(plain):>9,.0f}"
                f" events/s   ratio {ratio:.2f}x"
            )
            database.close()


def bench_drain(args: argparse.Namespace, config: Config, folder: Path) -> None:
    """The LedgerService's capacity: a backlog of events on RabbitMQ's hub.ledger, consumed into SQLite."""
    from hub.broker import connect, wait
    from hub.events import event_message
    from hub.ledger_service import LedgerService
    from hub.topology import Topology

    events = exam_events(0, args.exams)
    vhost, url = scratch_vhost()
    try:
        with connect(url) as broker:
            broker.declare(Topology(institutions=[LEAD, *ORIGINS]))
            for future in [broker.publish(event_message(e)) for e in events]:
                wait(future)
            database = open_database(f"sqlite:///{folder / 'drain.db'}")
            database.migrate()
            service = LedgerService(broker, database, config, clock=lambda: events[0].at)  # nothing falls due
            began, cpu = time.monotonic(), time.process_time()
            service.start()
            while service.recorded < args.exams * TRANSITIONS_PER_EXAM:
                time.sleep(0.01)
            elapsed, cpu = time.monotonic() - began, time.process_time() - cpu
            service.stop()
            database.close()
    finally:
        drop_vhost(vhost)
    print(
        f"(a') LedgerService draining {len(events):,} events from RabbitMQ into SQLite: "
        f"{len(events) / elapsed:,.0f} events/s, {cpu / len(events) * 1e6:,.0f} us CPU per event "
        f"(consume, decode, record, ack)"
    )


# -- (b) end to end, ledger off and on


class Pipeline:
    """hub serve (MLLP, egress) and a lab worker in a scratch vhost; optionally events, and a ledger service."""

    def __init__(
        self,
        label: str,
        events: bool,
        ledger: bool,
        members: list[str],
        ports: dict[str, int],
        args: argparse.Namespace,
    ) -> None:
        self.label, self.events, self.ledger = label, events, ledger
        self.vhost, self.url = scratch_vhost()
        self.folder = Path(tempfile.mkdtemp(prefix="hub-ledger-bench-"))
        self.config_path = write_config(self.folder, members, ports, events, args.egress_connections)
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.database: Database | None = None

    def start(self, database_url: str | None) -> int:
        if database_url:  # else SQLite in the hub's data directory
            config = self.config_path.read_text("utf-8").replace("[hub]\n", f'[hub]\ndatabase = "{database_url}"\n', 1)
            self.config_path.write_text(config, "utf-8")
        common = ["--config", str(self.config_path), "--url", self.url]
        serve = [
            sys.executable,
            "-m",
            "hub",
            "serve",
            "--config",
            str(self.config_path),
            "--broker",
            self.url,
            "--only",
            "mllp,egress",
        ]
        self.processes["hub serve"] = start(serve, self.folder / "serve.log")
        self.processes["worker"] = start(
            [sys.executable, __file__, "--role", "worker", *common], self.folder / "worker.log"
        )
        if self.ledger:
            self.processes["ledger"] = start(
                [sys.executable, __file__, "--role", "ledger", *common], self.folder / "ledger.log"
            )
            self.database = open_database(load_config(self.config_path).database_url)
        return mllp_port_of(self.folder / "serve.log", self.processes["hub serve"])

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(process.pid) for name, process in self.processes.items()}

    def transitions(self) -> int:
        assert self.database is not None
        try:
            with self.database.session() as session:
                return int(session.scalar(select(func.count()).select_from(LedgerTransition)) or 0)
        except Exception:  # the ledger process has not migrated the store yet
            return 0

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.database is not None:
            self.database.close()
        drop_vhost(self.vhost)


async def send_round(
    port: int, members: list[str], receivers: dict[str, MllpReceiver], senders: int, count: int, offset: int
) -> tuple[float, float, float]:
    """Messages per second through the hub; when the round started and when its last report arrived."""
    began = time.monotonic()
    rate, _latencies = await hub_round(port, members, receivers, senders, count, offset)
    return rate, began, max(m.at for r in receivers.values() for m in r.received)


VARIANTS = {  # label: (events, ledger service)
    "off": (False, False),
    "events": (True, False),
    "on": (True, True),
}
DESCRIPTIONS = {
    "off": "ledger off: no events, no ledger",
    "events": "events on, no ledger (they queue up)",
    "on": "ledger on: events + LedgerService",
}


def bench_e2e(args: argparse.Namespace) -> None:
    loop = asyncio.new_event_loop()
    members = member_codes(args.members)
    receivers = {code: loop.run_until_complete(MllpReceiver.start()) for code in members}
    ports = {c: r.port for c, r in receivers.items()}
    pipelines = {name: Pipeline(name, *VARIANTS[name], members, ports, args) for name in args.variants.split(",")}
    print(
        f"(b) end to end: {args.messages} ORU^R01 per round, {args.rounds} interleaved rounds, {args.members} "
        f"members x {args.senders} MLLP senders, each variant in its own vhost; the LedgerService runs in its own "
        f"process, as deployed beside hub serve, on {args.e2e_database or 'SQLite (WAL)'}"
    )
    try:
        with scratch_postgres() if args.e2e_database == "postgresql" else _none() as postgres:
            mllp = {name: p.start(postgres if p.ledger else None) for name, p in pipelines.items()}
            on = pipelines["on"]
            warm_up = min(200, args.messages)
            for name in pipelines:
                loop.run_until_complete(send_round(mllp[name], members, receivers, args.senders, warm_up, 0))
            if wait_for_ledger(on, warm_up * TRANSITIONS_PER_EXAM, 120) is None:
                raise RuntimeError(f"the ledger never caught up; see {on.folder / 'ledger.log'}")
            rates: dict[str, list[float]] = {name: [] for name in pipelines}
            cpu: dict[str, dict[str, float]] = {name: {} for name in pipelines}
            sustained, behind = [], []
            names = list(pipelines)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:  # each round starts elsewhere
                    pipeline, before = pipelines[name], pipelines[name].cpu()
                    held = on.transitions() if name == "on" else 0
                    rate, began, last = loop.run_until_complete(
                        send_round(mllp[name], members, receivers, args.senders, args.messages, (r + 1) * 1_000_000)
                    )
                    rates[name].append(rate)
                    if name == "on":
                        caught_up = wait_for_ledger(on, held + args.messages * TRANSITIONS_PER_EXAM, 300)
                        if caught_up is None:
                            raise RuntimeError("the ledger did not record every event of a round within 300 s")
                        sustained.append(args.messages * EVENTS_PER_EXAM / (caught_up - began))
                        behind.append(max(0.0, caught_up - last))
                    for stage, seconds in pipeline.cpu().items():
                        cpu[name][stage] = cpu[name].get(stage, 0.0) + seconds - before[stage]
            for name in pipelines:
                per_message = ", ".join(
                    f"{stage} {seconds / (args.rounds * args.messages) * 1e6:,.0f}"
                    for stage, seconds in cpu[name].items()
                )
                ratio = median(a / b for a, b in zip(rates[name], rates["off"], strict=True))
                print(
                    f"  {DESCRIPTIONS[name]:<38} {median(rates[name]):>7,.0f} msg/s  {ratio:.2f}x off   "
                    f"CPU us/msg: {per_message}"
                )
            if "events" in rates:
                share = median(a / b for a, b in zip(rates["on"], rates["events"], strict=True))
                print(f"  the ledger's own cost: on / events-only   {share:>5.2f}x  >=0.8x   {verdict(share >= 0.8)}")
            print(
                f"  ledger sustained {median(sustained):,.0f} events/s ({EVENTS_PER_EXAM} per message), all "
                f"recorded {median(behind):.2f} s after the round's last report reached its member"
            )
    finally:
        for pipeline in pipelines.values():
            pipeline.stop()
        for receiver in receivers.values():
            loop.run_until_complete(receiver.close())
        loop.close()


@contextmanager
def _none() -> Iterator[None]:
    yield None


def wait_for_ledger(pipeline: Pipeline, transitions: int, timeout: float) -> float | None:
    """When (time.monotonic) the ledger held ``transitions`` rows, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pipeline.transitions() >= transitions:
            return time.monotonic()
        time.sleep(0.02)
    return None


# -- the processes (b) starts


def run_worker(config_path: Path, url: str) -> None:
    from e2e_handler import answer

    from hub.broker import connect
    from hub.serve import topology_for
    from hub.worker import Worker

    config = load_config(config_path)
    with connect(url) as broker:
        broker.declare(topology_for(config))
        Worker(broker, "lab", answer, concurrency=4, prefetch=200, events=config.hub.events).run()


def run_ledger(config_path: Path, url: str) -> None:
    from hub.broker import connect
    from hub.ledger_service import LedgerService
    from hub.serve import topology_for

    config = load_config(config_path)
    database = open_database(config.database_url)
    database.migrate()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with connect(url) as broker:
        broker.declare(topology_for(config))
        service = LedgerService(broker, database, config)
        service.start()
        stop.wait()
        service.stop()
    database.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["write", "drain", "e2e", "all"], default="all")
    parser.add_argument("--exams", type=int, default=5000, help="(a) exams per round")
    parser.add_argument("--batch", type=int, default=1000, help="(a) events per Ledger.record call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000, help="(b) messages per round")
    parser.add_argument("--members", type=int, default=4, help="(b) member institutions")
    parser.add_argument("--senders", type=int, default=4, help="(b) MLLP connections per member")
    parser.add_argument("--egress-connections", type=int, default=2)
    parser.add_argument("--variants", default="off,events,on", help="(b) a subset of off,events,on; off and on needed")
    parser.add_argument("--e2e-database", choices=["postgresql"], help="(b) the ledger's store (default SQLite)")
    parser.add_argument("--role", choices=["bench", "worker", "ledger"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "worker":
        run_worker(args.config, args.url)
        return
    if args.role == "ledger":
        run_ledger(args.config, args.url)
        return
    config = Config.model_validate(
        {
            "consortium": {"name": "bench", "lead": LEAD},
            "institutions": [{"code": c, "name": c} for c in [LEAD, *ORIGINS]],
        }
    )
    with tempfile.TemporaryDirectory(prefix="hub-ledger-bench-") as folder:
        if args.part in ("write", "all"):
            bench_writes(args, config, Path(folder))
        if args.part in ("drain", "all"):
            bench_drain(args, config, Path(folder))
    if args.part in ("e2e", "all"):
        bench_e2e(args)


if __name__ == "__main__":
    main()

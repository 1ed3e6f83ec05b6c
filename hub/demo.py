"""``hub demo``: the sample consortium end to end, in one command.

RabbitMQ when one is reachable (``$HUB_BROKER_URL``, else localhost), in a
namespace of its own that is deleted afterwards; otherwise the in-process
broker, and it says which. It starts the hub from ``examples/consortium.toml``
(every port 0, a temporary data directory), stand-in member systems that take
reports, and the example workers from ``examples/workers``. Then it replays
``examples/messages`` through the real gateways (MLLP, FHIR, DICOM C-STORE),
waits until the ledger has every report delivered (or pulled), and prints exam
-> report -> delivery with turnaround times. It ends with what the hub
remembered: what the recognition registry made of each report, a lookup that
saves a re-test and the same lookup after the result's validity has run out,
each critical value's alert acknowledged at its origin, and the SLA table.
Exit status 0 means everything did what it should: good samples delivered,
``bad-*`` ones refused with a located error, the lookups as described.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO
from urllib.parse import urlsplit

import adapters
from adapters import hl7v2
from hub.broker import DEFAULT_URL, Broker, connect, wait
from hub.config import Config, Egress, load_config
from hub.envelope import Exam, Report
from hub.errors import AdapterError, BrokerError
from hub.ledger_cli import print_sla
from hub.loop import LoopThread
from hub.members import FhirReceiver, MllpReceiver
from hub.pull import pull_reports
from hub.recognition_cli import print_lookup
from hub.replay import Outcome, Targets, replay
from hub.resources import data_dir
from hub.serve import Hub
from hub.store.alerts import AlertRecord, Alerts
from hub.store.ledger import ExamRecord, Ledger
from hub.store.recognition import RecordOutcome, Registry, recognition_day
from hub.topology import parked_queue
from hub.worker import Worker

__all__ = ["choose_broker", "run_demo", "sample_files"]

_NOT_SAMPLES = {".md", ".toml", ".py"}
_WAIT = 60.0  # seconds for the last report to be delivered


def sample_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix not in _NOT_SAMPLES:
            yield path


def choose_broker(url: str | None = None) -> tuple[Broker, str]:
    """RabbitMQ in a fresh namespace when reachable, else the in-process broker; and what was chosen."""
    url = url or os.environ.get("HUB_BROKER_URL") or DEFAULT_URL
    parts = urlsplit(url)
    if parts.scheme in ("amqp", "amqps"):
        where = f"{parts.hostname}:{parts.port or 5672}"
        try:
            socket.create_connection((parts.hostname or "localhost", parts.port or 5672), timeout=1).close()
            namespace = f"demo-{uuid.uuid4().hex[:8]}."
            broker = connect(url, namespace=namespace)
            return broker, f"RabbitMQ at {where}, in namespace {namespace} (deleted at the end)"
        except (OSError, BrokerError):
            return connect("memory://"), f"in-process broker: no RabbitMQ reachable at {where}"
    return connect(url), "in-process broker" if parts.scheme == "memory" else url


@dataclass
class _Row:
    sample: str
    outcome: Outcome
    exams: list[Exam]
    expect_reject: bool


@dataclass
class _Progress:
    """What the workers' handlers returned, keyed by exam id (None: accepted for human reading)."""

    reports: dict[str, Report | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handled(self, handler: Callable[[Exam], Report | None]) -> Callable[[Exam], Report | None]:
        def recorded(exam: Exam) -> Report | None:
            report = handler(exam)
            with self.lock:
                self.reports[exam.exam_id] = report
            return report

        return recorded


def _load(folder: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"hub_demo_workers_{name}", folder / f"{name}.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_config(examples: Path, data: Path, mllp_ports: dict[str, int], fhir_port: int) -> Config:
    config = load_config(examples / "consortium.toml")
    members = []
    for institution in config.institutions:
        egress = institution.egress
        if egress.kind == "mllp":
            egress = Egress(kind="mllp", url=f"mllp://127.0.0.1:{mllp_ports[institution.code]}")
        elif egress.kind == "fhir":
            egress = Egress(kind="fhir", url=f"http://127.0.0.1:{fhir_port}/fhir")
        token = institution.token() or f"demo-{institution.code}"
        members.append(institution.model_copy(update={"egress": egress, "fhir_token": token, "fhir_token_env": None}))
    g = config.gateways
    gateways = g.model_copy(
        update={
            "mllp": g.mllp.model_copy(update={"port": 0}) if g.mllp else None,
            "fhir": g.fhir.model_copy(update={"port": 0}) if g.fhir else None,
            "dicom": g.dicom.model_copy(update={"port": 0, "study_stable_seconds": 1.0}) if g.dicom else None,
        }
    )
    hub = config.hub.model_copy(update={"data_dir": data, "fsync": False})
    return config.model_copy(update={"institutions": tuple(members), "gateways": gateways, "hub": hub})


def _expected_exams(path: Path, config: Config) -> list[Exam]:
    """The exams a sample should become, read here as the gateway reads it for its sender."""
    raw = path.read_bytes()
    kind = adapters.detect_format(raw)
    member = None
    if kind == "hl7v2":
        facility = hl7v2.sender(raw)
        member = config.institution_by_facility(facility) if facility else None
    elif kind == "dicom":
        try:
            member = config.institution(adapters.dicom.read(raw, charset="iso8859-1").origin)
        except AdapterError:
            member = None
    try:
        return adapters.read(
            raw,
            origin=member.code if member else None,
            charset=member.charset if member else None,
            centres=config.routing,
        )
    except AdapterError:
        return []


def run_demo(folder: Path, out: TextIO, *, broker_url: str | None = None) -> int:
    broker, how = choose_broker(broker_url)
    out.write(f"hub demo: {how}\n")
    members = LoopThread("hub-demo-members")
    hub_log = logging.getLogger("hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # the refusals the samples provoke are in the table, not the log
    try:
        with tempfile.TemporaryDirectory(prefix="hub-demo-") as tmp:
            return _run(folder, out, broker, members, Path(tmp))
    finally:
        hub_log.setLevel(level)
        members.stop()
        broker.close()


def _run(folder: Path, out: TextIO, broker: Broker, members: LoopThread, tmp: Path) -> int:
    examples = data_dir("examples")
    base = load_config(examples / "consortium.toml")
    mllp_members = {
        i.code: wait(members.run(MllpReceiver.start())) for i in base.institutions if i.egress.kind == "mllp"
    }
    fhir_member = wait(members.run(FhirReceiver.start()))
    config = _demo_config(examples, tmp / "data", {c: r.port for c, r in mllp_members.items()}, fhir_member.port)
    progress = _Progress()
    workers_dir = examples / "workers"
    ecg, lab, imaging = (_load(workers_dir, name) for name in ("ecg", "lab", "imaging"))
    hub = Hub(config, broker, egress_retry_delays=(0.5, 1.0, 2.0))
    hub.start()
    workers = [
        Worker(broker, "ecg", progress.handled(ecg.EcgPreread(hub.blobs)), concurrency=2),
        Worker(broker, "lab", progress.handled(lab.review_lab), concurrency=2),
        Worker(broker, "imaging", progress.handled(imaging.read_imaging), concurrency=2),
        Worker(broker, "pathology", progress.handled(imaging.await_pathologist), concurrency=1),
    ]
    try:
        assert hub.database is not None and hub.registry is not None  # Hub starts every piece by default
        ledger = Ledger(hub.database, config)
        for worker in workers:
            worker.start()
        out.write(
            f"consortium: {config.consortium.name}, {len(config.members)} members; gateways on "
            + ", ".join(f"{name} :{port}" for name, port in hub.ports.items())
            + "\n"
        )
        out.write(f"samples: {folder}\n\n")
        paths = list(sample_files(folder))
        targets = Targets(
            mllp_port=hub.ports.get("mllp"),
            fhir_port=hub.ports.get("fhir"),
            dicom_port=hub.ports.get("dicom"),
            dicom_ae_title=config.gateways.dicom.ae_title if config.gateways.dicom else "CONSORTIUM_HUB",
        )
        started = time.monotonic()
        outcomes = replay(paths, config, targets)
        rows = [
            _Row(
                str(p.relative_to(folder)),
                o,
                _expected_exams(p, config) if o.accepted else [],
                p.name.startswith("bad-"),
            )
            for p, o in zip(paths, outcomes, strict=True)
        ]
        _await_reports(broker, config, rows, progress, ledger, tmp / "pulled")
        elapsed = time.monotonic() - started
        wrong = _print(out, rows, progress, ledger, elapsed, broker.message_count(parked_queue("intake")))
        reports = [(row, exam, r) for row in rows for exam in row.exams if (r := progress.reports.get(exam.exam_id))]
        wrong += _show_recognition(out, config, reports, hub.registry)
        wrong += _show_alerts(out, config, reports, Alerts(hub.database, config))
        out.write("\nturnaround by member and centre, from queued to first report (hub sla report):\n")
        print_sla(config, ledger.sla_report(), out, indent="  ")
        out.write(f"\n{wrong} unexpected\n")
        return 1 if wrong or not rows else 0
    finally:
        for worker in workers:
            worker.stop(10)
        hub.stop()
        for mllp_member in mllp_members.values():
            wait(members.run(mllp_member.close()))
        wait(members.run(fhir_member.close()))
        if getattr(broker, "namespace", ""):
            broker.delete(hub.topology)


def _until(done: Callable[[], bool], seconds: float = _WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _await_reports(
    broker: Broker, config: Config, rows: list[_Row], progress: _Progress, ledger: Ledger, pulled: Path
) -> None:
    """Wait until the ledger has each expected exam delivered (or pulled), or it is with a human reader."""
    pull_members = [i for i in config.members if i.egress.kind == "pull"]
    waiting = {e.exam_id for row in rows for e in row.exams}

    def settled() -> bool:
        for member in pull_members:
            pull_reports(broker, member, pulled, format="hl7v2")
        with progress.lock:
            waiting.difference_update(exam_id for exam_id, report in progress.reports.items() if report is None)
        waiting.difference_update({e for e in waiting if (r := ledger.exam(e)) is not None and r.delivered_at})
        return not waiting

    _until(settled)


def _print(out: TextIO, rows: list[_Row], progress: _Progress, ledger: Ledger, elapsed: float, parked: int) -> int:
    width = max((len(r.sample) for r in rows), default=10)
    wrong = 0
    for row in rows:
        as_expected = row.outcome.accepted != row.expect_reject
        lines = [f"{row.outcome.via}: {row.outcome.detail}"[:110]] if not row.outcome.accepted else []
        for exam in row.exams:
            line, ok = _exam_line(exam, progress, ledger.exam(exam.exam_id))
            lines.append(line)
            as_expected = as_expected and ok
        wrong += not as_expected
        mark = "ok " if as_expected else "!! "
        outcome = "accepted" if row.outcome.accepted else "rejected"
        for n, line in enumerate(lines or [""]):
            head = f"{mark}{row.sample:<{width}}  {outcome:<8}" if n == 0 else " " * (width + 13)
            out.write(f"{head}  {line}\n")
    accepted = sum(r.outcome.accepted for r in rows)
    out.write(
        f"\n{len(rows)} samples: {accepted} accepted, {len(rows) - accepted} rejected (parked on "
        f"hub.parked.intake: {parked}), {wrong} unexpected; {elapsed:.1f} s from first send to last "
        f"delivery\n"
    )
    return wrong


def _exam_line(exam: Exam, progress: _Progress, record: ExamRecord | None) -> tuple[str, bool]:
    with progress.lock:
        report: Any = progress.reports.get(exam.exam_id, "none")
    what = f"{exam.centre}/{exam.priority} {exam.service.display or exam.service.code}"
    if report is None:
        return f"{what} -> accepted for human reading (report later)", True
    if report == "none":
        return f"{what} -> no report yet", False
    status = f"{report.status}{' 危急值' if report.critical else ''}"
    if record is None or record.delivered_at is None:
        return f"{what} -> {status} -> not delivered", False
    delivered = next(t for t in reversed(record.transitions) if t.transition == "delivered")
    turnaround = (record.delivered_at - (record.received_at or record.delivered_at)).total_seconds() * 1000
    return f"{what} -> {status} -> {delivered.endpoint} {delivered.detail} in {turnaround:.0f} ms", True


def _show_recognition(out: TextIO, config: Config, reports: list[tuple[_Row, Exam, Report]], registry: Registry) -> int:
    """What the registry made of each report, then a lookup that saves a re-test and one that does not."""
    outcomes: dict[str, RecordOutcome] = {}

    def seen() -> bool:
        for _, _, report in reports:
            if report.report_id not in outcomes and (outcome := registry.outcome(report.report_id)) is not None:
                outcomes[report.report_id] = outcome
        return len(outcomes) == len(reports)

    wrong = 0 if _until(seen) else 1
    out.write("\nmutual recognition (检查检验结果互认): what the registry made of each report\n")
    width = max((len(row.sample) for row, _, _ in reports), default=10)
    recognised = []
    for row, exam, report in reports:
        outcome = outcomes.get(report.report_id)
        if outcome is None:
            line = "!! not seen by the registry"
        elif outcome.result is not None:
            result = outcome.result
            recognised.append(result)
            line = f"[{result.mark}] recognised, valid {result.valid_from} to {result.valid_until}"
        else:
            line = f"not recognised: {outcome.reason}"
        out.write(f"  {row.sample:<{width}}  {exam.service.display or exam.service.code}: {line}\n")
    if not recognised:
        return wrong
    result = min(recognised, key=lambda r: r.valid_until)  # the soonest to expire shows both lookups
    item, display = (result.item.system or "", result.item.code), result.item.display or result.item.code
    clinician = next((m for m in config.members if m.code != result.origin), config.members[0])
    who = f"demo: a clinician at {clinician.code}"
    patient = _masked(result.national_id)
    today = recognition_day()
    out.write(f"\na clinician at {clinician.name} orders {display} for patient {patient} on {today} (lookup):\n")
    found = registry.lookup(national_id=result.national_id, item=item, as_of=today, who=who, via="demo")
    print_lookup(found, display, out, indent="  ")
    out.write("  -> recognised: no re-test, the result is reused\n" if found.results else "  !! nothing found\n")
    later = result.valid_until + timedelta(days=1)
    out.write(f"\nthe same order on {later}, after the {display} validity window:\n")
    expired = registry.lookup(national_id=result.national_id, item=item, as_of=later, who=who, via="demo")
    print_lookup(expired, display, out, indent="  ")
    out.write("  -> the patient is re-tested\n" if expired.reason == "expired" else "  !! expected expired\n")
    return wrong + (not found.results) + (expired.reason != "expired")


def _show_alerts(out: TextIO, config: Config, reports: list[tuple[_Row, Exam, Report]], alerts: Alerts) -> int:
    """Each critical report's alert to its origin, acknowledged there, as the origin's duty doctor would."""
    critical = {exam.exam_id for _, exam, report in reports if report.critical}
    if not critical:
        return 0
    found: dict[str, AlertRecord] = {}

    def raised() -> bool:
        found.update({a.exam_id: a for a in alerts.alerts(open_only=True, limit=1000) if a.kind == "critical"})
        return critical <= set(found)

    wrong = 0 if _until(raised) else 1
    minutes = config.alerts.escalate_after_minutes
    out.write(
        f"\ncritical values (危急值): each origin is alerted at once on hub.alerts.<origin> and must acknowledge;"
        f" unacknowledged, an alert escalates after {minutes} min\n"
    )
    for exam_id in sorted(critical):
        alert = found.get(exam_id)
        if alert is None:
            out.write(f"  !! exam {exam_id}: no critical alert\n")
            continue
        origin = config.institution(alert.origin)
        name = origin.name if origin else alert.origin
        acked = alerts.acknowledge(alert.alert_id, by=f"demo: duty doctor at {alert.origin}")
        after = (acked.acknowledged_at - alert.raised_at).total_seconds() if acked and acked.acknowledged_at else None
        out.write(
            f"  {alert.alert_id} exam {exam_id} ({alert.critical_count} critical value(s)) to {name}: "
            + (f"acknowledged {after:.1f} s after it was raised\n" if after is not None else "!! not acknowledged\n")
        )
        wrong += after is None
    return wrong


def _masked(national_id: str) -> str:
    """The form staff see on screen: region and the last four, never the whole number."""
    return f"{national_id[:6]}{'*' * (len(national_id) - 10)}{national_id[-4:]}"

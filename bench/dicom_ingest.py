"""DICOM ingest: DCMTK storescu sends the same instances to the hub's SCP and to Orthanc, in one run.

    python bench/dicom_ingest.py [--instances 400] [--rounds 3] [--ablation] [--steps]

N copies of pydicom's CT_small.dcm, each with its own SOP Instance UID, go by one storescu association
to each target, with TCP_NODELAY set in the sender's environment (DCMTK's runtime switch for Nagle's
algorithm) and without it, as most modalities send. Targets:
- the hub: start_dicom and a StudyAssembler in this process, RabbitMQ in a scratch vhost, blobs fsync'd;
  again with fsync off, to show what fsync costs;
- Orthanc (Debian's package) on loopback with a temporary storage dir, accepting any calling AE, run
  with TCP_NODELAY=1 (its DCMTK's Nagle switch: its best setting) and SyncStorageArea on;
- two references answering 0x0000 at once, reading, storing and publishing nothing: the hub's SCP
  alone (its own Upper Layer on the broker's loop), and pynetdicom 3.0.4's own SCP (TCP_NODELAY on its
  sockets), the ceiling that pynetdicom's association handling would put on an SCP built on it.
Each run starts from empty storage. A rate is the median over interleaved rounds, a ratio the median of
per-round ratios. Goals: hub >= 1.0x Orthanc with TCP_NODELAY; without it, aim for 5x Orthanc.
--ablation adds the hub with TCP_NODELAY but without TCP_QUICKACK on its sockets; --steps ends with one
more hub run that times each step of its C-STORE handler (blob write, adapter, publish and confirm);
--large MiB sends one instance of that size to the hub and to Orthanc and prints how far each one's peak
resident memory rose above what it held before (Linux: VmHWM after clear_refs). --rounds 0 skips the rates.
Needs storescu, Orthanc, RabbitMQ at HUB_BENCH_AMQP_URL (default localhost, guest) and rabbitmqctl.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the imports)
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import multiprocessing
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]

from _timing import verdict
from broker import drop_vhost, scratch_vhost
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

import hub.gateways.dicom as gateway
import hub.gateways.dicom_ul as upper_layer
from hub.broker import connect
from hub.config import DicomGateway, load_config
from hub.gateways.dicom_ul import Status
from hub.gateways.studies import StudyAssembler
from hub.intake import Intake
from hub.store.blobs import BlobStore
from hub.topology import Topology

CONFIG = BENCH.parent / "examples" / "consortium.toml"
CALLING = "YQ_CT01"  # 於潜镇中心卫生院's CT in the sample config
SENDERS = {"TCP_NODELAY": True, "no TCP_NODELAY": False}
LISTENERS: dict[int, int] = {}  # port -> pid of the process listening there, for --large


def make_instances(folder: Path, count: int) -> list[Path]:
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    dataset.StudyInstanceUID = generate_uid()
    files = []
    for n in range(count):
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = n + 1
        path = folder / f"{n:05d}.dcm"
        dataset.save_as(path)
        files.append(path)
    return files


def dcmtk(tool: str) -> str | None:
    """DCMTK's ``tool`` on PATH; pynetdicom installs Python apps of the same names, which are skipped."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return next((str(c) for f in folders if f and _is_binary(c := Path(f) / tool)), None)


def _is_binary(path: Path) -> bool:
    """An executable that is not a script (DCMTK's tools are ELF files; pynetdicom's start with #!)."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    with path.open("rb") as file:
        return file.read(2) != b"#!"


def storescu(port: int, called: str, files: list[Path], *, nodelay: bool) -> float:
    """Images per second of one storescu association sending ``files``."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    tool = dcmtk("storescu") or "storescu"
    command = [tool, "-aet", CALLING, "-aec", called, "127.0.0.1", str(port), *map(str, files)]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"storescu to {called} failed ({result.returncode}): {result.stderr[-500:]}")
    return len(files) / elapsed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"Orthanc exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"Orthanc did not listen on {port} within {timeout:g} s")


@contextlib.contextmanager
def orthanc(scratch: Path) -> Iterator[int]:
    """Orthanc on loopback with empty storage; yields its DICOM port."""
    storage = Path(tempfile.mkdtemp(dir=scratch, prefix="orthanc-"))
    port = free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": free_port(),
        "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckModalityHost": False,
        "SyncStorageArea": True,
        "Plugins": [],
    }
    (storage / "orthanc.json").write_text(json.dumps(config))
    env = {**os.environ, "TCP_NODELAY": "1"}
    with open(storage / "orthanc.log", "wb") as log_file:
        process = subprocess.Popen(
            ["Orthanc", str(storage / "orthanc.json")], env=env, stdout=log_file, stderr=log_file
        )
    try:
        wait_port(port, process)
        LISTENERS[port] = process.pid
        yield port
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(storage, ignore_errors=True)


@contextlib.contextmanager
def hub(url: str, scratch: Path, *, fsync: bool) -> Iterator[int]:
    """The hub's SCP and study assembler on ``url`` with empty blob storage; yields the SCP's port."""
    config = load_config(CONFIG)
    with connect(url) as broker:
        broker.declare(Topology(institutions=[i.code for i in config.institutions], retry_delays=(1,)))
        blobs = BlobStore(tempfile.mkdtemp(dir=scratch, prefix="blobs-"), fsync=fsync)
        intake = Intake(broker, blobs)
        assembler = StudyAssembler(broker, intake, stable_seconds=1.0)
        assembler.start()
        listener = gateway.start_dicom(intake, config, DicomGateway(port=0, ae_title="HUB"))
        LISTENERS[listener.port] = os.getpid()
        try:
            yield listener.port
        finally:
            listener.close()
            assembler.stop()
            shutil.rmtree(blobs.root, ignore_errors=True)


@contextlib.contextmanager
def scp_alone(url: str, scratch: Path) -> Iterator[int]:
    """The hub's SCP (its Upper Layer, contexts and sockets) answering 0x0000 at once: the protocol's own cost."""
    store = gateway._Services.store

    async def at_once(_self: object, _request: object) -> Status:
        return Status(gateway.SUCCESS)

    gateway._Services.store = at_once  # type: ignore[method-assign,assignment]
    try:
        with hub(url, scratch, fsync=False) as port:
            yield port
    finally:
        gateway._Services.store = store  # type: ignore[method-assign]


@contextlib.contextmanager
def pynetdicom_alone() -> Iterator[int]:
    """pynetdicom 3's own SCP with the gateway's contexts, answering 0x0000 at once, TCP_NODELAY on its sockets:
    what the gateway cost per instance before it had an Upper Layer of its own."""

    class NoDelay(ThreadedAssociationServer):
        def get_request(self) -> tuple[socket.socket, Any]:
            connection, address = super().get_request()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return connection, address

    ae = AE(ae_title="HUB")
    server = ae.make_server(("127.0.0.1", 0), contexts=gateway._contexts(), server_class=NoDelay,
                            evt_handlers=[(evt.EVT_C_STORE, lambda _event: 0x0000)])  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    port = server.server_address[1]
    LISTENERS[port] = os.getpid()
    try:
        yield port
    finally:
        socketserver.BaseServer.shutdown(server)  # pynetdicom's own expects a server that AE.start_server made
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def without_quickack(target: contextlib.AbstractContextManager[int]) -> Iterator[int]:
    """The hub with TCP_NODELAY only: the gateway's QUICKACK switched off for this run."""
    quickack = upper_layer._TCP_QUICKACK
    upper_layer._TCP_QUICKACK = None
    try:
        with target as port:
            yield port
    finally:
        upper_layer._TCP_QUICKACK = quickack


@contextlib.contextmanager
def timed_steps() -> Iterator[dict[str, list[float]]]:
    """Seconds each step of the hub's C-STORE handler takes, per instance, while the block runs."""
    steps: dict[str, list[float]] = {}
    patched = [
        (gateway._Services, "store", "whole handler"),
        (BlobStore, "put", "blob write, fsync'd"),
        (gateway.dicom, "read", "adapters.dicom.read"),
        (gateway._Services, "_publish", "publish and confirm"),
    ]
    saved = {(owner, attribute): getattr(owner, attribute) for owner, attribute, _step in patched}

    def timer(step: str, fn: Callable[..., Any]) -> Callable[..., object]:
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                steps.setdefault(step, []).append(time.perf_counter() - start)

        async def timed_async(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                steps.setdefault(step, []).append(time.perf_counter() - start)

        return timed_async if inspect.iscoroutinefunction(fn) else timed

    for owner, attribute, step in patched:
        setattr(owner, attribute, timer(step, saved[owner, attribute]))
    try:
        yield steps
    finally:
        for (owner, attribute), fn in saved.items():
            setattr(owner, attribute, fn)


def make_large_instance(folder: Path, mib: int) -> Path:
    """One CT instance with ``mib`` MiB of pixel data, made in a child process so this one's memory stays as it was."""
    path = folder / f"large-{mib}MiB.dcm"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_write_large_instance, (path, mib))
    return path


def _write_large_instance(path: Path, mib: int) -> None:
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    side = int((mib * 2**20 / 2) ** 0.5)
    dataset.Rows = dataset.Columns = side
    dataset.PixelData = bytes(side * side * 2)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.save_as(path)


def peak_memory_growth(pid: int, send: Callable[[], object]) -> int:
    """Bytes by which process ``pid``'s peak resident set rose above its resident set while ``send`` ran (Linux)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = _status_kib(pid, "VmRSS")
    send()
    return (_status_kib(pid, "VmHWM") - before) * 1024


def _status_kib(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def large_instance_memory(scratch: Path, url: str, mib: int) -> None:
    """Each target's peak memory growth and time for one storescu of one ``mib`` MiB instance."""
    path = make_large_instance(scratch, mib)
    size = path.stat().st_size
    print(f"  one instance of {size / 2**20:.0f} MiB (TCP_NODELAY), peak resident memory above the listener's own:")
    targets = {"hub": lambda: hub(url, scratch, fsync=True), "Orthanc": lambda: orthanc(scratch)}
    for name, target in targets.items():
        with target() as port:
            start = time.perf_counter()
            send = partial(storescu, port, "ORTHANC" if name == "Orthanc" else "HUB", [path], nodelay=True)
            growth = peak_memory_growth(LISTENERS[port], send)
            seconds = time.perf_counter() - start
        print(f"    {name:<36} {growth / 2**20:7.0f} MiB  ({growth / size:.2f}x the instance)   {seconds:5.2f} s")


def print_rates(samples: dict[tuple[str, str], list[float]], targets: list[str]) -> None:
    """Each target's median rate per sender, its ratio to Orthanc's and the goals' verdicts, and what fsync costs."""
    for sender in SENDERS:
        print(f"  sender with {sender}:" if sender == "TCP_NODELAY" else f"  sender with {sender} (Nagle on):")
        base = samples[(sender, "Orthanc")]
        for name in targets:
            rates = samples[(sender, name)]
            ratio = median(a / b for a, b in zip(rates, base, strict=True))
            spread = f"{min(rates):.0f}-{max(rates):.0f}"
            line = f"    {name:<34} {median(rates):>7.1f} img/s  ({spread:>9})  {ratio:>6.2f}x Orthanc"
            if name == "hub":
                goal = 1.0 if sender == "TCP_NODELAY" else 5.0
                line += f"   goal >= {goal:.1f}x: {verdict(ratio >= goal)}"
            print(line)
    for sender in SENDERS:
        on, off = samples[(sender, "hub")], samples[(sender, "hub, fsync off")]
        cost = median(1 / a - 1 / b for a, b in zip(on, off, strict=True)) * 1000
        print(f"  fsync ({sender}): {median(a / b for a, b in zip(on, off, strict=True)):.2f}x the rate "
              f"without it, {cost:+.2f} ms per instance")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=400, help="CT_small instances per association")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--ablation", action="store_true", help="also the hub without TCP_QUICKACK")
    parser.add_argument("--steps", action="store_true", help="then time each step of the hub's handler")
    parser.add_argument("--large", type=int, metavar="MiB", help="then one instance of MiB: peak memory and time")
    args = parser.parse_args()
    for tool in ("storescu", "Orthanc", "rabbitmqctl"):
        if (dcmtk(tool) if tool == "storescu" else shutil.which(tool)) is None:
            raise SystemExit(f"{tool} is not on PATH (Debian: dcmtk, orthanc, rabbitmq-server)")
    logging.basicConfig(level=logging.WARNING)
    vhost, url = scratch_vhost()
    scratch = Path(tempfile.mkdtemp(prefix="hub-dicom-bench-"))
    try:
        files = make_instances(scratch, args.instances)
        targets: dict[str, Callable[[], contextlib.AbstractContextManager[int]]] = {
            "hub": lambda: hub(url, scratch, fsync=True),
            "hub, fsync off": lambda: hub(url, scratch, fsync=False),
            "Orthanc": lambda: orthanc(scratch),
            "the hub's SCP alone, answers at once": lambda: scp_alone(url, scratch),
            "pynetdicom alone, answers at once": pynetdicom_alone,
        }
        if args.ablation:
            targets["hub, no QUICKACK"] = lambda: without_quickack(hub(url, scratch, fsync=True))
        called = {"Orthanc": "ORTHANC"}
        samples: dict[tuple[str, str], list[float]] = {}
        size = files[0].stat().st_size
        print(f"bench/dicom_ingest.py: {args.instances} CT_small instances ({size:,} bytes each) per "
              f"storescu association, {args.rounds} interleaved rounds; hub on RabbitMQ (scratch vhost)")  # fmt: skip
        for _ in range(args.rounds):
            for sender, nodelay in SENDERS.items():
                for name, target in targets.items():
                    with target() as port:
                        rate = storescu(port, called.get(name, "HUB"), files, nodelay=nodelay)
                    samples.setdefault((sender, name), []).append(rate)
        if args.rounds:
            print_rates(samples, list(targets))
        if args.steps:
            with timed_steps() as steps, hub(url, scratch, fsync=True) as port:
                rate = storescu(port, "HUB", files, nodelay=True)
            print(f"  the hub's handler, step by step (one more TCP_NODELAY run, {rate:.1f} img/s, "
                  f"{1000 / rate:.2f} ms per instance):")  # fmt: skip
            for step, seconds in steps.items():
                mean = sum(seconds) / len(seconds)
                print(f"    {step:<24} p50 {median(seconds) * 1000:5.2f} ms   mean {mean * 1000:5.2f} ms")
        if args.large:
            large_instance_memory(scratch, url, args.large)
    finally:
        drop_vhost(vhost)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

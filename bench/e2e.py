"""End to end: HL7 ORU in over MLLP -> AA -> worker -> report -> egress -> AA at the member.

    python bench/e2e.py [--messages N] [--rounds R] [--members M] [--senders S] [--no-events]

Three processes, as deployed: ``hub serve`` (MLLP gateway and egress on the
broker's loop), ``hub worker lab``, and this script, which is both the members'
senders (S MLLP connections per member, each sending the 16-segment GB 18030
CBC ORU with a fresh placer order, waiting for AA, sending the next) and their
report receivers (one MLLP listener per member, answering AA). Latency is from
the send of a message to the arrival of its report at the member.

Baseline, same run, same broker: raw pika two-hop. The origin publishes the
same bytes with confirms (as many unconfirmed as we have senders), a responder
process consumes each request and publishes a reply with confirms, acking the
request once the reply is confirmed (as the worker does), and the origin
consumes the replies. Quorum queues on both sides. Goal: ours >= 0.5x.
Needs RabbitMQ (HUB_BENCH_AMQP_URL, default localhost) and rabbitmqctl.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the imports)
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]

import pika
from _timing import verdict
from broker import drop_vhost, p99, scratch_vhost

from adapters import hl7v2
from hub.ids import uscc_check_char
from hub.members import MllpReceiver
from hub.mllp import MllpClient

TEMPLATE = (REPO / "examples" / "messages" / "hl7v2" / "lab-cbc-gb18030.hl7").read_bytes()
TEMPLATE_ORIGIN = b"12330112472334561L"
LEAD = "12330112470101234B"
_PLACER = re.compile(rb"\rOBR\|[^|]*\|([^|^\r]+)")


def member_codes(count: int) -> list[str]:
    codes = []
    for n in range(count):
        base = f"1233011247{n:07d}"
        codes.append(base + uscc_check_char(base))
    return codes


def message(origin: str, n: int) -> tuple[bytes, bytes]:
    placer = f"E2E-{origin[-6:]}-{n:07d}".encode()
    raw = TEMPLATE.replace(b"YQ-LAB-20240301-0007", placer).replace(b"YQLIS202403010007", b"E2E%011d" % n)
    return raw.replace(TEMPLATE_ORIGIN, origin.encode(), 1), placer


def write_config(
    folder: Path, members: list[str], ports: dict[str, int], events: bool, egress_connections: int
) -> Path:
    lines = [
        "[consortium]",
        'name = "bench"',
        f'lead = "{LEAD}"',
        "[hub]",
        f'data_dir = "{folder / "data"}"',
        f"events = {str(events).lower()}",
        "[gateways.mllp]",
        "port = 0",
        "[[institutions]]",
        f'code = "{LEAD}"',
        'name = "lead"',
        'kind = "lead"',
    ]
    for code in members:
        lines += [
            "[[institutions]]",
            f'code = "{code}"',
            f'name = "member {code[-4:]}"',
            'charset = "GB18030"',
            f'egress = "mllp://127.0.0.1:{ports[code]}"',
            f"egress_connections = {egress_connections}",
        ]
    path = folder / "bench.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def start(command: list[str], log: Path) -> subprocess.Popen[str]:
    """A process whose output goes to ``log``: a pipe nobody drains would stall it once full."""
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)


def mllp_port_of(log: Path, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"mllp on (\d+)", log.read_text("utf-8", "replace"))
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"hub serve did not report its MLLP port; see {log}")


# -- ours


async def hub_round(
    port: int, members: list[str], receivers: dict[str, MllpReceiver], senders: int, count: int, offset: int
) -> tuple[float, list[float]]:
    """Messages per second and per-message latencies (seconds) through the hub."""
    for receiver in receivers.values():
        receiver.received.clear()
    sent: dict[bytes, float] = {}
    queues: list[list[tuple[bytes, bytes]]] = [[] for _ in range(len(members) * senders)]
    for n in range(count):
        origin = members[n % len(members)]
        queues[n % len(queues)].append(message(origin, offset + n))

    async def sender(batch: list[tuple[bytes, bytes]]) -> None:
        client = MllpClient("127.0.0.1", port, timeout=60)
        for raw, placer in batch:
            sent[placer] = time.monotonic()
            ack = hl7v2.read_ack(await client.send(raw))
            if not ack.accepted:
                raise RuntimeError(f"the hub answered {ack.code}: {ack.text}")
        await client.close()

    start = time.monotonic()
    await asyncio.gather(*(sender(batch) for batch in queues))
    deadline = time.monotonic() + 120
    while sum(len(r.received) for r in receivers.values()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    arrivals = [(m.at, _PLACER.search(m.body)) for r in receivers.values() for m in r.received]
    latencies = [at - sent[found.group(1)] for at, found in arrivals if found and found.group(1) in sent]
    if len(latencies) < count:
        raise RuntimeError(f"only {len(latencies)} of {count} reports reached the members")
    end = max(at for at, _ in arrivals)
    return count / (end - start), latencies


# -- raw pika two-hop


def raw_two_hop(url: str, raws: list[bytes], window: int) -> tuple[float, list[float]]:
    count = len(raws)
    state = {"sent": 0, "confirmed": 0, "replies": 0, "start": 0.0, "end": 0.0}
    sent_at: dict[int, float] = {}
    latencies: list[float] = []

    def on_open(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=on_publisher)
        connection.channel(on_open_callback=on_consumer)

    def on_consumer(channel: pika.channel.Channel) -> None:
        channel.basic_qos(prefetch_count=200)
        channel.basic_consume("e2e.replies", on_reply)

    def on_reply(channel: pika.channel.Channel, method: object, properties: pika.BasicProperties, _b: bytes) -> None:
        latencies.append(time.monotonic() - sent_at[int(properties.message_id)])
        channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
        state["replies"] += 1
        if state["replies"] == count:
            state["end"] = time.monotonic()
            channel.connection.close()

    def on_publisher(channel: pika.channel.Channel) -> None:
        channel.confirm_delivery(lambda frame: on_confirm(channel, frame))
        state["start"] = time.monotonic()
        fill(channel)

    def fill(channel: pika.channel.Channel) -> None:
        while state["sent"] < count and state["sent"] - state["confirmed"] < window:
            n = state["sent"]
            state["sent"] += 1
            sent_at[n] = time.monotonic()
            properties = pika.BasicProperties(delivery_mode=2, message_id=str(n))
            channel.basic_publish("", "e2e.requests", raws[n], properties, mandatory=True)

    def on_confirm(channel: pika.channel.Channel, frame: object) -> None:
        method = frame.method  # type: ignore[attr-defined]
        state["confirmed"] = method.delivery_tag if method.multiple else state["confirmed"] + 1
        fill(channel)

    connection = pika.SelectConnection(
        pika.URLParameters(url), on_open_callback=on_open, on_close_callback=lambda *_: connection.ioloop.stop()
    )
    connection.ioloop.start()
    return count / (state["end"] - state["start"]), latencies


def responder(url: str) -> None:
    """The baseline's middle hop: consume a request, publish its reply with a confirm, then ack the request."""
    pending: dict[int, int] = {}  # reply publish tag -> request delivery tag
    state = {"tag": 0}

    def on_open(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel: pika.channel.Channel) -> None:
        channel.confirm_delivery(lambda frame: on_confirm(channel, frame))
        channel.basic_qos(prefetch_count=200)
        channel.basic_consume("e2e.requests", on_request)

    def on_request(
        channel: pika.channel.Channel, method: object, properties: pika.BasicProperties, body: bytes
    ) -> None:
        state["tag"] += 1
        pending[state["tag"]] = method.delivery_tag  # type: ignore[attr-defined]
        reply = pika.BasicProperties(delivery_mode=2, message_id=properties.message_id)
        channel.basic_publish("", "e2e.replies", body, reply, mandatory=True)

    def on_confirm(channel: pika.channel.Channel, frame: object) -> None:
        method = frame.method  # type: ignore[attr-defined]
        tags = [t for t in pending if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            channel.basic_ack(pending.pop(tag))

    connection = pika.SelectConnection(pika.URLParameters(url), on_open_callback=on_open)
    connection.ioloop.start()


def declare_baseline(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for name in ("e2e.requests", "e2e.replies"):
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    connection.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU a process has used (Linux /proc), for the per-stage breakdown."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rabbitmq_pid() -> int | None:
    found = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True, check=False).stdout.split()
    return int(found[0]) if found else None


def summary(label: str, rates: list[float], latencies: list[float]) -> str:
    return (
        f"{median(rates):>8,.0f}/s   p50 {median(latencies) * 1000:>7.1f} ms   "
        f"p99 {p99(latencies) * 1000:>7.1f} ms   ({label})"
    )


def start_hub(config: Path, url: str) -> tuple[list[subprocess.Popen[str]], int]:
    """``hub serve`` (MLLP and egress) and ``hub worker lab``, as an operator starts them; and the MLLP port."""
    hub = [sys.executable, "-m", "hub"]
    common = ["--config", str(config), "--broker", url]
    serve = start([*hub, "serve", *common, "--only", "mllp,egress"], config.parent / "serve.log")
    handler = f"{BENCH / 'e2e_handler.py'}:answer"
    worker = [*hub, "worker", "lab", *common, "--handler", handler, "--concurrency", "4", "--prefetch", "200"]
    return [serve, start(worker, config.parent / "worker.log")], mllp_port_of(config.parent / "serve.log", serve)


def measure(
    args: argparse.Namespace,
    url: str,
    loop: asyncio.AbstractEventLoop,
    port: int,
    members: list[str],
    receivers: dict[str, MllpReceiver],
    stages: dict[str, int],
) -> None:
    senders = args.members * args.senders
    loop.run_until_complete(hub_round(port, members, receivers, args.senders, 200, 0))  # warm-up
    raws = [message(members[0], n)[0] for n in range(args.messages)]
    raw_two_hop(url, raws[:200], senders)
    ours, base = [], []
    cpu = dict.fromkeys(stages, 0.0)
    for r in range(args.rounds):
        base.append(raw_two_hop(url, raws, senders))
        before = {name: cpu_seconds(pid) for name, pid in stages.items()}
        rounds = hub_round(port, members, receivers, args.senders, args.messages, (r + 1) * 1_000_000)
        ours.append(loop.run_until_complete(rounds))
        for name, pid in stages.items():
            cpu[name] += cpu_seconds(pid) - before[name]
    ratio = median(o[0] / b[0] for o, b in zip(ours, base, strict=True))
    hub = summary("hub serve + hub worker", [o[0] for o in ours], [x for _, lat in ours for x in lat])
    raw = summary(
        f"{senders} unconfirmed, confirm before ack", [b[0] for b in base], [x for _, lat in base for x in lat]
    )
    print(f"  hub, MLLP in to AA at member {hub}")
    print(f"  raw pika two-hop             {raw}")
    print(f"  ratio (median of rounds)     {ratio:>8.2f}x  >=0.5x   {verdict(ratio >= 0.5)}")
    per_message = ", ".join(
        f"{name} {seconds / (args.rounds * args.messages) * 1e6:,.0f}" for name, seconds in cpu.items()
    )
    print(f"  CPU per message through the hub, microseconds: {per_message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--members", type=int, default=8, help="member institutions sending and receiving")
    parser.add_argument("--senders", type=int, default=4, help="MLLP connections per member")
    parser.add_argument("--egress-connections", type=int, default=2, help="MLLP connections per member for reports")
    parser.add_argument("--no-events", action="store_true", help="do not publish ledger events")
    parser.add_argument("--role", choices=["bench", "responder"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "responder":
        responder(args.url)
        return
    vhost, url = scratch_vhost()
    processes: list[subprocess.Popen[str]] = []
    receivers: dict[str, MllpReceiver] = {}
    loop = asyncio.new_event_loop()
    try:
        declare_baseline(url)
        folder = Path(tempfile.mkdtemp(prefix="hub-e2e-"))
        processes.append(start([sys.executable, __file__, "--role", "responder", "--url", url], folder / "raw.log"))
        members = member_codes(args.members)
        receivers = {code: loop.run_until_complete(MllpReceiver.start()) for code in members}
        ports = {c: r.port for c, r in receivers.items()}
        config = write_config(folder, members, ports, not args.no_events, args.egress_connections)
        hub, port = start_hub(config, url)
        processes += hub
        stages = {"hub serve": hub[0].pid, "hub worker": hub[1].pid, "this script (members)": os.getpid()}
        broker_pid = rabbitmq_pid()
        if broker_pid is not None:
            stages["RabbitMQ"] = broker_pid
        print(
            f"bench/e2e.py: RabbitMQ scratch vhost, {args.messages} ORU^R01 (16 segments, GB 18030, "
            f"{len(TEMPLATE)} B) per round, {args.rounds} interleaved rounds, {args.members} members x "
            f"{args.senders} MLLP senders, ledger events {'off' if args.no_events else 'on'}"
        )
        measure(args, url, loop, port, members, receivers, stages)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        for receiver in receivers.values():
            loop.run_until_complete(receiver.close())
        loop.close()
        drop_vhost(vhost)


if __name__ == "__main__":
    main()

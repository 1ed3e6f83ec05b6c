"""``hub replay``: send message files through the same path a real member's system uses.

    outcomes = replay(paths, config, targets, via="auto")

``mllp`` sends HL7 v2 over MLLP and reads the ACK; ``fhir`` POSTs the Bundle
with the member's bearer token; ``dicom`` does a C-STORE with the member's AE
title; ``direct`` runs the adapter in-process and submits to the broker, as an
integration engine embedding the adapters would. ``auto`` picks by format.
Each file gets an Outcome: accepted, or rejected with the reason the hub gave.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

import adapters
from adapters import hl7v2
from hub.broker import Broker
from hub.config import Config, Institution
from hub.errors import AdapterError, BrokerError
from hub.intake import Intake
from hub.mllp import MllpClient, MllpError
from hub.replay_dicom import store

__all__ = ["Outcome", "Targets", "Via", "progress_bar", "replay"]

Via = Literal["auto", "mllp", "fhir", "dicom", "direct"]


@dataclass(frozen=True)
class Targets:
    """Where the hub listens: from the config, or the ports a running hub reports."""

    host: str = "127.0.0.1"
    mllp_port: int | None = None
    fhir_port: int | None = None
    dicom_port: int | None = None
    dicom_ae_title: str = "CONSORTIUM_HUB"

    @classmethod
    def from_config(cls, config: Config, host: str | None = None) -> Targets:
        g = config.gateways
        return cls(
            host=host or "127.0.0.1",
            mllp_port=g.mllp.port if g.mllp else None,
            fhir_port=g.fhir.port if g.fhir else None,
            dicom_port=g.dicom.port if g.dicom else None,
            dicom_ae_title=g.dicom.ae_title if g.dicom else "CONSORTIUM_HUB",
        )


@dataclass(frozen=True)
class Outcome:
    path: Path
    via: str
    accepted: bool
    detail: str


def replay(
    paths: Sequence[Path],
    config: Config,
    targets: Targets,
    *,
    via: Via = "auto",
    origin: str | None = None,
    broker: Broker | None = None,
    on_progress: Callable[[int, int, Outcome], None] | None = None,
) -> list[Outcome]:
    """Send every file; one Outcome each, in order."""
    sender = config.institution(origin) if origin else None
    if origin and sender is None:
        raise ValueError(f"--origin {origin} is not an institution of {config.consortium.name}")
    outcomes: list[Outcome] = []
    mllp: MllpClient | None = None
    loop = asyncio.new_event_loop()
    try:
        for n, path in enumerate(paths, start=1):
            raw = path.read_bytes()
            kind = _path_for(path, raw, via)
            if kind == "mllp":
                mllp = mllp or MllpClient(targets.host, _port(targets.mllp_port, "MLLP"), timeout=30)
                outcome = loop.run_until_complete(_send_mllp(mllp, path, raw))
            elif kind == "fhir":
                outcome = _send_fhir(path, raw, _fhir_sender(raw, config, sender), targets)
            elif kind == "dicom":
                outcome = _send_dicom(path, raw, _dicom_sender(raw, config, sender), targets)
            else:
                outcome = _send_direct(path, raw, config, sender, broker)
            outcomes.append(outcome)
            if on_progress:
                on_progress(n, len(paths), outcome)
        if mllp is not None:
            loop.run_until_complete(mllp.close())
    finally:
        loop.close()
    return outcomes


_BY_SUFFIX = {".dcm": "dicom", ".json": "fhir", ".hl7": "mllp", ".er7": "mllp", ".txt": "mllp"}


def _path_for(path: Path, raw: bytes, via: Via) -> str:
    """The way a file goes: as given, else by its content, else by its name (a broken .dcm is still DICOM)."""
    if via != "auto":
        return via
    detected = {"hl7v2": "mllp", "fhir": "fhir", "dicom": "dicom"}.get(adapters.detect_format(raw) or "")
    return detected or _BY_SUFFIX.get(path.suffix.lower(), "mllp")


def _port(port: int | None, gateway: str) -> int:
    if port is None:
        raise ValueError(f"the config has no {gateway} gateway to replay to")
    return port


async def _send_mllp(client: MllpClient, path: Path, raw: bytes) -> Outcome:
    try:
        reply = await client.send(raw)
    except MllpError as exc:
        return Outcome(path, "mllp", False, f"no ACK: {exc}")
    try:
        ack = hl7v2.read_ack(reply)
    except AdapterError as exc:
        return Outcome(path, "mllp", False, f"unreadable ACK: {exc}")
    sent = hl7v2.control_id(raw)
    if ack.control_id != (sent or ""):
        return Outcome(path, "mllp", False, f"the ACK's MSA-2 {ack.control_id!r} does not answer MSH-10 {sent!r}")
    return Outcome(path, "mllp", ack.accepted, ack.code + (f": {ack.text}" if ack.text else ""))


def _fhir_sender(raw: bytes, config: Config, given: Institution | None) -> Institution | None:
    if given is not None:
        return given
    try:
        claimed = adapters.fhir.read(raw)[0].origin
    except AdapterError:
        claimed = None
    found = config.institution(claimed) if claimed else None
    return found or next((i for i in config.members if i.token()), None)


def _send_fhir(path: Path, raw: bytes, sender: Institution | None, targets: Targets) -> Outcome:
    token = sender.token() if sender else None
    if not token:
        return Outcome(path, "fhir", False, "no member with a FHIR token to send as (give --origin)")
    url = f"http://{targets.host}:{_port(targets.fhir_port, 'FHIR')}/fhir"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    try:
        response = httpx.post(url, content=raw, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        return Outcome(path, "fhir", False, f"no answer from {url}: {exc}")
    return Outcome(path, "fhir", response.status_code == 202, f"{response.status_code}: {_issues(response)}")


def _issues(response: httpx.Response) -> str:
    try:
        outcome = response.json()
    except json.JSONDecodeError:
        return response.text[:200]
    parts = []
    for issue in outcome.get("issue", []) if isinstance(outcome, dict) else []:
        where = ", ".join(issue.get("expression", []))
        parts.append(f"{issue.get('diagnostics', issue.get('code', ''))}" + (f" at {where}" if where else ""))
    return "; ".join(parts)


def _dicom_sender(raw: bytes, config: Config, given: Institution | None) -> Institution | None:
    if given is not None:
        return given
    try:
        # Only the Institution Code Sequence matters here, so any single-byte charset reads it.
        claimed = adapters.dicom.read(raw, charset="iso8859-1").origin
    except AdapterError:
        claimed = None
    found = config.institution(claimed) if claimed else None
    return found if found and found.ae_titles else next((i for i in config.members if i.ae_titles), None)


def _send_dicom(path: Path, raw: bytes, sender: Institution | None, targets: Targets) -> Outcome:
    if sender is None or not sender.ae_titles:
        return Outcome(path, "dicom", False, "no member with an AE title to send as (give --origin)")
    accepted, detail = store(
        path,
        calling=sender.ae_titles[0],
        host=targets.host,
        port=_port(targets.dicom_port, "DICOM"),
        called=targets.dicom_ae_title,
    )
    return Outcome(path, "dicom", accepted, detail)


def _send_direct(path: Path, raw: bytes, config: Config, sender: Institution | None, broker: Broker | None) -> Outcome:
    if broker is None:
        raise ValueError("--via direct needs a broker")
    fmt = adapters.detect_format(raw)
    member = sender
    if member is None and fmt == "hl7v2":
        facility = hl7v2.sender(raw)
        member = config.institution_by_facility(facility) if facility else None
    intake = Intake(broker)
    try:
        exams = adapters.read(
            raw,
            origin=member.code if member else None,
            charset=member.charset if member else None,
            centres=config.routing,
        )
    except AdapterError as exc:
        try:
            intake.park_blocking(raw, exc, format=fmt, origin=member.code if member else None, peer="replay")
        except BrokerError as park_error:
            return Outcome(path, "direct", False, f"{exc}; and not parked: {park_error}")
        return Outcome(path, "direct", False, f"{type(exc).__name__}: {exc}")
    try:
        intake.accept_blocking(exams, raw)
    except BrokerError as exc:
        return Outcome(path, "direct", False, f"not taken by the broker: {exc}")
    return Outcome(path, "direct", True, ", ".join(f"{e.centre}/{e.priority} {e.exam_id}" for e in exams))


def progress_bar(done: int, total: int, outcome: Outcome) -> None:
    """A one-line bar on stderr, redrawn in place."""
    width = 30
    filled = width * done // max(total, 1)
    mark = "ok" if outcome.accepted else "rejected"
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {outcome.path.name[:40]:<40} {mark:<8}"
    )
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()

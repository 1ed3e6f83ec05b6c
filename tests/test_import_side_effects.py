"""Importing the hub does no network, process or file-writing I/O (DESIGN.md: no I/O at import)."""

import os
import subprocess
import sys

PROBE = r"""
import sys

def hook(event, args):
    if event.startswith(("socket.", "subprocess.", "os.system", "os.exec", "os.fork")):
        raise SystemExit(f"I/O at import: {event}")
    if event == "open" and isinstance(args[1], str) and any(m in args[1] for m in "wax+"):
        raise SystemExit(f"file opened for writing at import: {args[0]}")

sys.addaudithook(hook)
import hub, hub.cli, hub.demo, hub.envelope, hub.errors, hub.ids, hub.resources, hub.schemas
import hub.broker, hub.loop, hub.topology, hub.publish, hub.worker, hub.brokers.memory, hub.brokers.rabbitmq
import hub.config, hub.events, hub.intake, hub.mllp, hub.members, hub.pull, hub.replay, hub.replay_dicom, hub.serve
import hub.store.blobs, hub.gateways.dicom, hub.gateways.egress, hub.gateways.http, hub.gateways.mllp
import hub.gateways.studies
import adapters
from adapters import dicom, fhir, hl7v2
print("clean")
"""


def test_importing_hub_and_adapters_has_no_side_effects() -> None:
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}  # writing .pyc files is Python's I/O, not ours
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "clean"

"""Importing the hub does no network, process or file-writing I/O (DESIGN.md: no I/O at import)."""

import os
import subprocess
import sys

from test_public_api import public_modules

PROBE = r"""
MODULES = {modules!r}
import sys

def hook(event, args):
    if event.startswith(("socket.", "subprocess.", "os.system", "os.exec", "os.fork")):
        raise SystemExit(f"I/O at import: {event}")
    if event == "open" and isinstance(args[1], str) and any(m in args[1] for m in "wax+"):
        raise SystemExit(f"file opened for writing at import: {args[0]}")

sys.addaudithook(hook)
import importlib
for name in MODULES:
    importlib.import_module(name)
import adapters
from adapters import dicom, fhir, hl7v2
print("clean")
"""


def test_importing_hub_and_adapters_has_no_side_effects() -> None:
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}  # writing .pyc files is Python's I/O, not ours
    probe = PROBE.replace("{modules!r}", repr(public_modules()))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "clean"

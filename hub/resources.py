"""Files shipped with the hub: the envelope JSON Schemas and the example set.

In a wheel they live under ``hub/_data``; in a source checkout they are the
repository's ``schemas/`` and ``examples/`` folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["data_dir", "load_schema"]

_PACKAGED = Path(__file__).resolve().parent / "_data"
_CHECKOUT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """The folder ``name`` ("schemas" or "examples"), packaged copy first."""
    for root in (_PACKAGED, _CHECKOUT):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{name}/ is neither packaged with the hub nor beside it")


def load_schema(envelope: str) -> dict[str, Any]:
    """The JSON Schema of ``envelope`` ("exam" or "report")."""
    schema: dict[str, Any] = json.loads((data_dir("schemas") / f"{envelope}.schema.json").read_text("utf-8"))
    return schema

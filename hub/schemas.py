"""Write or check the JSON Schemas in ``schemas/`` against the envelope models."""

from __future__ import annotations

from pathlib import Path

from hub.envelope import json_schemas

__all__ = ["stale_schemas", "write_schemas"]


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(folder: Path) -> list[str]:
    """Names of the schema files in ``folder`` that are missing or differ from the models."""
    stale = []
    for name, text in json_schemas().items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale

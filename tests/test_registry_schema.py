"""The person index's and registry's migrations build exactly their models, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from test_recognition import REGISTRY_TABLES

import hub.store.models  # noqa: F401  (every table on Base.metadata)
from hub.store.db import Base, Database


def _table_of(diff: Any) -> str:
    """The table an autogenerate difference is about (column changes come as a list of tuples)."""
    change = diff[0] if isinstance(diff, list) else diff
    kind, subject = change[0], change[1]
    if kind in ("add_column", "remove_column") or kind.startswith("modify_"):
        return str(change[2])
    return str(subject.name if kind.endswith("_table") else subject.table.name)


def test_the_migrated_schema_matches_the_models(database: Database) -> None:
    assert set(REGISTRY_TABLES) <= set(inspect(database.engine).get_table_names())
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    ours = [d for d in diffs if _table_of(d) in REGISTRY_TABLES]
    assert ours == []


@pytest.mark.parametrize(
    "name", ["hub.store.identity", "hub.store.recognition", "hub.registry_service", "hub.recognition_cli"]
)
def test_all_lists_only_real_names(name: str) -> None:
    module = importlib.import_module(name)
    assert len(module.__all__) == len(set(module.__all__))
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.{attr} missing"

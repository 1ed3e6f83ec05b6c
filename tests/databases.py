"""Databases for tests: a SQLite file, and PostgreSQL in a database of its own per test.

PostgreSQL is at HUB_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@localhost:5432/postgres,
trust auth). Each test gets a fresh database, dropped afterwards. Where PostgreSQL is missing the tests
skip, except with CI=true, where they fail: CI never skips the database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

POSTGRES_URL = os.environ.get("HUB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/postgres")


@contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database; dropped on exit."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"hub_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        problem = f"PostgreSQL is not reachable at {make_url(POSTGRES_URL).host}: {type(exc.orig).__name__}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}; CI needs PostgreSQL (see .ci/services)")
        pytest.skip(problem)
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database_url_for(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    with postgres_database() as url:
        yield url

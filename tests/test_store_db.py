"""The store's database: migrations run to every head, twice changes nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from hub.store.db import Database, database_url, open_database


def test_migrating_twice_changes_nothing(database: Database) -> None:
    tables = set(inspect(database.engine).get_table_names())
    assert "alembic_version" in tables
    database.migrate()
    assert set(inspect(database.engine).get_table_names()) == tables


def test_a_session_commits_on_success_and_rolls_back_on_error(database: Database) -> None:
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE probe (name VARCHAR(20))"))
    with database.session() as session:
        session.execute(text("INSERT INTO probe VALUES ('张伟')"))
    with pytest.raises(RuntimeError), database.session() as session:
        session.execute(text("INSERT INTO probe VALUES ('李娜')"))
        raise RuntimeError("the unit of work fails")
    with database.session() as session:
        assert session.execute(text("SELECT name FROM probe")).scalars().all() == ["张伟"]


def test_the_default_is_a_sqlite_file_in_the_data_directory(tmp_path: Path) -> None:
    url = database_url(tmp_path / "data")
    assert url == f"sqlite:///{tmp_path / 'data' / 'hub.db'}"
    db = open_database(url)
    db.migrate()
    assert (tmp_path / "data" / "hub.db").is_file()
    with db.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    db.close()
    assert database_url(tmp_path, "postgresql+psycopg://db.example/hub") == "postgresql+psycopg://db.example/hub"

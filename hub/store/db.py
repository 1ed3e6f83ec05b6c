"""The hub's database: SQLAlchemy 2 on SQLite by default, PostgreSQL by URL, migrated by Alembic.

    db = open_database("sqlite:////var/lib/hub/hub.db")   # or postgresql+psycopg://host/db
    db.migrate()                                          # Alembic, to every head; idempotent
    with db.session() as session: ...                     # commits on success, rolls back on error

Every table's model derives from ``Base``; each part of the store (ledger,
identity, recognition) keeps its models in its own module and its own Alembic
revision under ``hub/store/migrations/versions``. SQLite runs in WAL mode with
foreign keys on, so the ledger's writes do not block readers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

__all__ = ["MIGRATIONS", "Base", "Database", "UtcDateTime", "database_url", "open_database"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# Stable constraint names, so migrations read the same on SQLite and PostgreSQL.
_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on both databases (SQLite keeps naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the store keeps timezone-aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


def database_url(data_dir: Path, url: str | None = None) -> str:
    """``url`` when given, else a SQLite file ``hub.db`` in the hub's data directory."""
    return url or f"sqlite:///{data_dir / 'hub.db'}"


class Database:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Bring the schema to every head revision; a migrated database is left as it is."""
        with self.engine.begin() as connection:
            config = _alembic_config(connection)
            command.upgrade(config, "heads")

    def close(self) -> None:
        self.engine.dispose()


def open_database(url: str, **options: Any) -> Database:
    """The database at ``url``; a SQLite file's folder is made when missing."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return Database(engine)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at each checkpoint, no fsync per commit
    cursor.close()


def _alembic_config(connection: Any) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config

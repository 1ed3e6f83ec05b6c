from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import broker_urls, rabbitmq_vhost
from databases import database_url_for
from hypothesis import settings

from hub.broker import Broker, connect
from hub.store.db import Database, open_database

# Property tests check behaviour, not speed (timing lives in bench/): a loaded CI machine must not
# fail them on hypothesis's per-example deadline.
settings.register_profile("hub", deadline=None)
settings.load_profile("hub")


@pytest.fixture(params=["memory", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each contract test runs on both brokers; RabbitMQ gets a vhost of its own."""
    yield from broker_urls(request.param)


@pytest.fixture
def vhost_url() -> Iterator[str]:
    """A RabbitMQ vhost of the test's own, deleted afterwards."""
    with rabbitmq_vhost() as url:
        yield url


@pytest.fixture
def broker(broker_url: str) -> Iterator[Broker]:
    with connect(broker_url) as opened:
        yield opened


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on PostgreSQL; PostgreSQL gets a database of its own."""
    with database_url_for(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated database."""
    db = open_database(database_url)
    db.migrate()
    yield db
    db.close()

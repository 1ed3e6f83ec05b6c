from collections.abc import Iterator

import pytest
from brokers import rabbitmq_vhost
from hypothesis import settings

from hub.broker import Broker, connect

# Property tests check behaviour, not speed (timing lives in bench/): a loaded CI machine must not
# fail them on hypothesis's per-example deadline.
settings.register_profile("hub", deadline=None)
settings.load_profile("hub")


@pytest.fixture(params=["memory", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each contract test runs on both brokers; RabbitMQ gets a vhost of its own."""
    if request.param == "memory":
        yield "memory://guest@"
        return
    with rabbitmq_vhost() as url:
        yield url


@pytest.fixture
def broker(broker_url: str) -> Iterator[Broker]:
    with connect(broker_url) as opened:
        yield opened

"""Fixtures shared by the integration and e2e layers: a vhost per test and the fake Binance."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from tests.fakebinance import FakeBinance
from tests.harness import Vhost


@pytest.fixture(scope="session")
def management_url(amqp_url: str) -> str:
    url = os.environ.get("RABBITMQ_MANAGEMENT_URL")
    if not url:
        message = "RABBITMQ_MANAGEMENT_URL is not set: run scripts/testenv up, then eval \"$(scripts/testenv env)\""
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
async def vhost(amqp_url: str, management_url: str) -> AsyncIterator[Vhost]:
    """A fresh RabbitMQ vhost for one test; ``vhost.url`` is its AMQP URL."""
    fresh = Vhost(amqp_url, management_url)
    await fresh.create()
    yield fresh
    await fresh.delete()


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    """Binance's stand-in, with the real XRPETH trades on its tape; trades happen when told."""
    async with FakeBinance() as server:
        yield server

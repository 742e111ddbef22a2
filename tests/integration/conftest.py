"""Fixtures for the workers over the real broker: a vhost per test, the fake Binance, processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakebinance import FakeBinance
from tests.harness import MemoryOperator, Probe, Vhost, Workers
from trailingstop.bus import Bus


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


@pytest.fixture
async def bus(vhost: Vhost) -> AsyncIterator[Bus]:
    connected = await Bus(vhost.url, "test").connect()
    yield connected
    await connected.close()


@pytest.fixture
async def probe(vhost: Vhost) -> AsyncIterator[Probe]:
    watching = await Probe(vhost.url, tick_symbols=["XRPETH"]).start()
    yield watching
    await watching.close()


@pytest.fixture
async def operator(bus: Bus) -> AsyncIterator[MemoryOperator]:
    running = await MemoryOperator(bus).start()
    yield running
    await running.stop()


@pytest.fixture
async def workers(vhost: Vhost, fake: FakeBinance, tmp_path: Path) -> AsyncIterator[Workers]:
    started = Workers(vhost.url, fake, tmp_path)
    yield started
    await started.stop_all()

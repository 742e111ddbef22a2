"""Fixtures for the workers over the real broker: a vhost per test, the fake Binance, processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakebinance import FakeBinance
from tests.harness import MemoryOperator, Probe, Vhost, Workers
from trailingstop.bus import Bus


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

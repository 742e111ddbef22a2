"""The marketdata worker stops within seconds on SIGTERM whatever its socket is doing: streaming a
burst, silent, or refused and reconnecting (issue 11). Its socket is closed when it has gone.

The quiet-market case is in test_workers.py (test_marketdata_stops_at_once_on_sigterm_in_a_quiet_market).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fakebinance import FakeBinance
from tests.harness import Probe, Workers, eventually

SYMBOL = "XRPETH"
# Well under a second on a quiet machine; room for a busy one, still far from python-binance's 10 s.
STOPPED_WITHIN = 8.0


@pytest.mark.parametrize("socket_state", ["busy", "silent", "refused"])
async def test_marketdata_stops_promptly_on_sigterm(
    workers: Workers, fake: FakeBinance, probe: Probe, socket_state: str
) -> None:
    marketdata = workers.marketdata(SYMBOL)
    await marketdata.wait_healthy()
    await fake.wait_for_stream_connections(1, timeout=30)
    await fake.advance(SYMBOL, 5)
    await eventually(lambda: len(probe.ticks) >= 5, what="the first ticks")
    if socket_state == "busy":
        await fake.advance(SYMBOL, 5000)  # a burst, still being read and published at the signal
    elif socket_state == "silent":
        fake.silence_streams()
    else:
        fake.drop_streams(refuse_seconds=120)
        await fake.wait_for_stream_connections(0, timeout=5)
        await asyncio.sleep(1.5)  # the feed is reconnecting, refused each time

    started = time.monotonic()
    code = await marketdata.stop(timeout=30)
    took = time.monotonic() - started
    assert code == 0, marketdata.log_text()
    assert took < STOPPED_WITHIN, f"{took:.1f}s\n{marketdata.log_text()}"
    await fake.wait_for_stream_connections(0, timeout=5)
    # The refused socket logs its failed handshakes (the test's doing); the shutdown logs no error.
    log = marketdata.log_text()
    after_stopping = log[log.index("marketdata-XRPETH stopping"):]
    assert '"level": "error"' not in after_stopping, log

"""`trailingstop run --live`: Binance's live aggTrade stream (here the fake's) through python-binance."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.fakebinance import FakeBinance

MANIFEST = """\
apiVersion: trailingstop.dev/v1
kind: TrailingStop
metadata: {name: live-sell}
spec: {symbol: XRPETH, side: SELL, quantity: "100", trailingPercent: "0.5"}
"""


async def test_run_live_follows_the_stream_until_every_stop_is_final(fake: FakeBinance, tmp_path: Path) -> None:
    manifest = tmp_path / "live.yaml"
    manifest.write_text(MANIFEST)
    urls = {"TRAILINGSTOP_BINANCE_API_URL": fake.api_url, "TRAILINGSTOP_BINANCE_STREAM_URL": fake.stream_url}
    env = {**os.environ, **urls}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trailingstop", "run", str(manifest), "--live",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    await fake.wait_for_stream_connections(1, timeout=30)
    # Like a live market, trades keep coming until the stop is done: a slow start-up (a first
    # socket replaced, say) only moves the trade the stop activates on. Trades happen only while a
    # socket is open, so a reconnect on a loaded machine can't use up the tape unseen.
    tape = fake.tape("XRPETH")
    while process.returncode is None and tape.position < tape.total:
        if fake.hub.connections:
            await fake.advance("XRPETH", 20)
        await asyncio.sleep(0.01)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"run --live did not finish\n{out.decode()}\n{err.decode()}") from None
    text = out.decode()
    assert process.returncode == 0, err.decode()
    assert "Binance live aggTrade stream" in text
    for transition in ("Pending -> Armed", "Armed -> Tracking", "Tracking -> Triggered", "Triggered -> Filled"):
        assert transition in text, text
    assert "live-sell   XRPETH   SELL   0.5      Filled" in text

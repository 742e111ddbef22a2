"""``trailingstop record --symbol S --stream aggTrade|bookTicker --out FILE``: live data to a file
for later replay.

* ``aggTrade``: JSON lines of REST aggTrade payloads ``{a,p,q,f,l,T,m,M}`` (what trade files
  read, so ``run --trades FILE`` and ``backtest --trades FILE`` replay it). The feed is
  :class:`~trailingstop.exchange.binance.TradeFeed`'s: reconnects and REST backfill by trade id,
  so the file has no gap.
* ``bookTicker``: JSON lines of :mod:`trailingstop.bookfiles` (Binance's payload plus
  ``receivedAt`` and ``previousUpdateId``; ``run --book FILE`` replays it). The book has no
  backfill: a reconnect shows as ``"previousUpdateId": null``.

Every line is written and flushed as it arrives, so a crash loses at most the line being written.
Ctrl-C or SIGTERM stops it cleanly: the socket is closed, the file flushed and closed, and the
count printed. ``--count N`` stops after N lines. An existing file is never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import TextIO

from binance import AsyncClient

from trailingstop.bookfiles import quote_line
from trailingstop.exchange.binance import BinanceSettings, BookFeed, TradeFeed, connect_client

STREAMS = ("aggTrade", "bookTicker")


class Recorder:
    """Writes one stream's lines to ``out``; ``written`` counts them."""

    def __init__(self, symbol: str, stream: str, out: TextIO, count: int | None = None) -> None:
        self.symbol = symbol
        self.stream = stream
        self.out = out
        self.count = count
        self.written = 0

    async def record(self, settings: BinanceSettings) -> None:
        """Until ``count`` lines are written, or for ever (cancel it to stop: the socket closes)."""
        if self.count == 0:
            return
        client = await connect_client(settings)
        try:
            async with aclosing(self._lines(client, settings.stream_url)) as lines:
                async for line in lines:
                    self.out.write(line)
                    self.out.flush()
                    self.written += 1
                    if self.count is not None and self.written >= self.count:
                        return
        finally:
            await client.close_connection()

    async def _lines(self, client: AsyncClient, stream_url: str) -> AsyncGenerator[str, None]:
        if self.stream == "aggTrade":
            trades = TradeFeed(client, self.symbol, stream_url).trades()
            async with aclosing(trades) as feed:
                async for trade in feed:
                    yield json.dumps(trade.to_payload(), separators=(",", ":")) + "\n"
        else:
            quotes = BookFeed(client, self.symbol, stream_url).quotes()
            async with aclosing(quotes) as book:
                async for quote in book:
                    yield quote_line(self.symbol, quote)


def open_new(path: Path) -> TextIO:
    """The output file, created (never an existing one: a recording is not overwritten)."""
    return path.open("x", encoding="utf-8")

"""``trailingstop worker marketdata --symbol S [--source binance|replay:FILE]``: trades -> PriceTicks.

``binance`` streams the symbol's aggTrades through python-binance with no gap (see
:class:`~trailingstop.exchange.binance.TradeFeed`: reconnects, a silence watchdog, REST backfill).
``replay:FILE`` publishes a trade file instead, paced by ``--speed`` (demos and tests without
internet), then stays up idle. Ticks are transient and unconfirmed: the orchestrator refills any
trade that does not arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path

from trailingstop import telemetry
from trailingstop.aio import stop_if_cancelled
from trailingstop.bus import Bus, PublishFailed
from trailingstop.core.contracts import PriceTick, now_ms
from trailingstop.core.trade import Trade
from trailingstop.exchange.binance import BinanceSettings, TradeFeed, connect_client
from trailingstop.health import HealthServer
from trailingstop.settings import Settings
from trailingstop.tradefiles import read_trades
from trailingstop.workers.service import serve

log = logging.getLogger(__name__)


class MarketData:
    def __init__(self, bus: Bus, symbol: str, source: str) -> None:
        self.bus = bus
        self.symbol = symbol
        self.source = source
        self.feed: TradeFeed | None = None
        self.published = 0
        self.last_trade_id: int | None = None
        self.replay_done = False
        self.waiting_for_broker = False

    async def publish(self, trades: AsyncGenerator[Trade, None]) -> None:
        """Publish every trade of ``trades``; closes them when done or cancelled (SIGTERM), which
        closes the feed's socket at once."""
        received = telemetry.MARKETDATA_TRADES.labels(symbol=self.symbol, source=self.source)
        lag = telemetry.MARKETDATA_FEED_LAG.labels(symbol=self.symbol)
        last_trade = telemetry.MARKETDATA_LAST_TRADE.labels(symbol=self.symbol)
        last_price = telemetry.MARKETDATA_LAST_PRICE.labels(symbol=self.symbol)
        async with aclosing(trades) as stream:
            async for trade in stream:
                stop_if_cancelled()  # a SIGTERM lost in python-binance's wait_for (trailingstop.aio)
                now = now_ms()
                tick = PriceTick.from_trade(self.symbol, trade, now, self.source)
                received.inc()
                with telemetry.span("tick publish", symbol=self.symbol, tradeId=trade.trade_id):
                    await self._publish(tick)
                self.published += 1
                self.last_trade_id = trade.trade_id
                lag.set(max(0.0, (now - trade.time) / 1000))
                last_trade.set(trade.time / 1000)
                last_price.set(float(trade.price))

    async def _publish(self, tick: PriceTick) -> None:
        while True:
            try:
                await self.bus.publish_tick(tick)
                return
            except PublishFailed as exc:
                # Holding the trade (and the feed behind it) until the broker is back loses nothing.
                log.warning("%s; waiting for the broker", exc, extra={"symbol": self.symbol})
                self.waiting_for_broker = True
                try:
                    await asyncio.sleep(0.5)
                    await self.bus.wait_connected()
                finally:
                    self.waiting_for_broker = False

    def liveness(self, silence: float) -> tuple[bool, str]:
        """The feed's read loop keeps waking (at least every ``silence`` seconds, or a reconnect's
        backoff); while the broker is away it waits for the broker instead, which is no reason to
        restart the pod."""
        if self.feed is None:
            return True, "replay finished" if self.replay_done else "replaying"
        if self.waiting_for_broker:
            return True, "holding the trades until the broker is back"
        idle = time.monotonic() - self.feed.progress_at
        limit = 3 * silence + self.feed.max_backoff
        return idle < limit, f"the feed's read loop last woke {idle:.0f}s ago (at most {limit:.0f}s)"

    def health(self, silence: float) -> tuple[bool, str]:
        if self.feed is None:
            return True, "replay finished" if self.replay_done else "replaying"
        quiet = time.monotonic() - self.feed.last_message_at
        if self.feed.connected:
            return True, f"streaming; last message {quiet:.0f}s ago"
        return quiet < 2 * silence, f"reconnecting; last message {quiet:.0f}s ago"


async def replay(path: Path, speed: float) -> AsyncGenerator[Trade, None]:
    """A trade file as a stream; with ``speed`` > 0, paced at that multiple of the recorded pace."""
    previous: int | None = None
    for trade in read_trades(path):
        if speed > 0 and previous is not None and trade.time > previous:
            await asyncio.sleep((trade.time - previous) / 1000 / speed)
        previous = trade.time
        yield trade


async def main(args: argparse.Namespace, settings: Settings) -> int:
    symbol, source = args.symbol, args.source

    async def body(bus: Bus, health: HealthServer) -> None:
        worker = MarketData(bus, symbol, "binance" if source == "binance" else "replay")
        health.add_check("stream", lambda: worker.health(settings.silence_timeout))
        health.add_check("feed", lambda: worker.liveness(settings.silence_timeout), liveness=True)
        if source.startswith("replay:"):
            await worker.publish(replay(Path(source.removeprefix("replay:")), args.speed))
            worker.replay_done = True
            log.info("replay finished after %d trades", worker.published, extra={"symbol": symbol})
            await asyncio.Event().wait()  # stay up: a Deployment's container is not a Job
        binance = BinanceSettings.from_settings(settings)
        client = await connect_client(binance)
        try:
            worker.feed = TradeFeed(client, symbol, binance.stream_url, silence=settings.silence_timeout)
            await worker.publish(_counted(worker.feed, symbol))
        finally:
            await client.close_connection()

    if source != "binance" and not source.startswith("replay:"):
        log.error("--source must be binance or replay:FILE, got %r", source)
        return 2
    return await serve(f"marketdata-{symbol}", body, settings)


async def _counted(feed: TradeFeed, symbol: str) -> AsyncGenerator[Trade, None]:
    """The feed's trades, with reconnects and backfills counted as they happen."""
    reconnects = telemetry.MARKETDATA_RECONNECTS.labels(symbol=symbol)
    backfilled = telemetry.MARKETDATA_BACKFILLED.labels(symbol=symbol)
    reconnected, filled = 0, 0
    async with aclosing(feed.trades()) as trades:
        async for trade in trades:
            if feed.reconnects > reconnected:
                reconnects.inc(feed.reconnects - reconnected)
                reconnected = feed.reconnects
            if feed.backfilled > filled:
                backfilled.inc(feed.backfilled - filled)
                filled = feed.backfilled
            yield trade

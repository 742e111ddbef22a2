"""``trailingstop worker orchestrator --symbol S``: one symbol's stops, over RabbitMQ.

Start-up (DESIGN §6, the CR status is the durable state):

1. declare the symbol's tick and book queues (ticks and quotes wait there, bounded) and consume
   its command queue;
2. publish a ``sync`` request; the operator answers with an upsert per stop, carrying the state
   saved in its status, then ``synced``. With no answer in ``TRAILINGSTOP_SYNC_TIMEOUT`` seconds
   (the operator restarting too, or slow) ask again, and keep waiting: a stop restored after ticks
   were applied would never see those trades (its trigger among them), so no tick is consumed
   before the answer; they wait in their queue, and what overflows it is refilled by id;
3. consume ticks. Aggregate trade ids are consecutive per symbol, so a tick whose id jumps past
   the last one applied means trades were missed (a restart, a broker restart, a full queue):
   they are fetched over REST and applied first. Each restored stop resumes after its own saved
   ``lastTradeId``, so no trade is applied to a stop twice.

4. consume the book's quotes (BookTicks, for BestBidAsk stops) from ``orchestrator.<SYMBOL>.book``.
   The book has no backfill: a quote that does not follow the last one applied is applied as the
   price now, after a ``gap`` event (status.lastGap), and counted in the gap metrics.

A triggered stop's PlaceOrder is confirmed by the broker before the tick that triggered it is
acked, and a redelivered tick is a duplicate id, so the engine never fires twice. Reference and
price updates are coalesced and published every ``TRAILINGSTOP_FLUSH_INTERVAL`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

import aiohttp
from binance import AsyncClient
from binance.exceptions import BinanceAPIException, BinanceRequestException

from trailingstop import telemetry
from trailingstop.bus import Bus, book_queue, command_queue, tick_queue
from trailingstop.core.contracts import BookTick, PriceTick, StopCommand, now_ms
from trailingstop.core.stopbook import Outcome, StopBook
from trailingstop.exchange.binance import BinanceSettings, agg_trades, connect_client, symbol_filters
from trailingstop.health import HealthServer
from trailingstop.settings import Settings
from trailingstop.workers.service import serve

log = logging.getLogger(__name__)

FLUSH_CONCURRENCY = 200  # confirmed publishes in flight while flushing coalesced events
# spec.expiresAt is judged on the exchange's trade times; when no trade tells (a quiet market), this
# process's clock expires the stop this long after the deadline, so that trades made before it and
# still on their way (the stream's latency, a tick queue being drained) are applied first (DESIGN §4).
EXPIRY_GRACE_MS = 2000


class OrchestratorWorker:
    def __init__(
        self,
        bus: Bus,
        orchestrator: StopBook,
        settings: Settings,
        rest: AsyncClient | None = None,
    ) -> None:
        self.bus = bus
        self.orchestrator = orchestrator
        self.symbol = orchestrator.symbol
        self.settings = settings
        self.rest = rest
        self.synced = asyncio.Event()
        self._metrics_symbol = {"symbol": self.symbol}
        self._duplicates_reported = 0
        self._gaps_reported = (0, 0)  # book gaps and their milliseconds, as counted in the metrics
        self._ticks_processed = telemetry.ORCHESTRATOR_TICKS.labels(symbol=self.symbol)

    async def run(self) -> None:
        ticks = tick_queue(self.symbol, self.settings.tick_queue_max)
        book = book_queue(self.symbol, self.settings.tick_queue_max)
        await self.bus.declare(ticks)
        await self.bus.declare(book)  # quotes wait there too while the stops are restored
        await self.bus.consume(command_queue(self.symbol), StopCommand, self.on_command, prefetch=100)
        await self.wait_for_sync()
        self.orchestrator.resume_after_restore()
        log.info("%s: %d stops restored; consuming ticks", self.symbol, len(self.orchestrator.stops),
                 extra=self._metrics_symbol)
        await self.bus.consume(ticks, PriceTick, self.on_tick, prefetch=1000, ack_every=200)
        await self.bus.consume(book, BookTick, self.on_book, prefetch=1000, ack_every=200)
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            await self.expire_by_clock()
            await self.flush()

    async def wait_for_sync(self) -> None:
        """Ask the operator for every stop of the symbol until it answers (see step 2 above), once
        this is the only orchestrator of the symbol: while another still consumes the command
        queue (its pod terminating beside this one, after a deleted Deployment was put back), the
        broker would split the answer between the two, the upserts to one and ``synced`` to the
        other, and this one would start without its stops."""
        await self.wait_until_alone()
        while True:
            await self.bus.publish_stop_event(self.orchestrator.sync_request())
            try:
                await asyncio.wait_for(self.synced.wait(), self.settings.sync_timeout)
                return
            except TimeoutError:
                log.warning("no sync answer in %.0fs; asking the operator again (no tick is applied before it "
                            "answers)", self.settings.sync_timeout, extra=self._metrics_symbol)

    async def wait_until_alone(self, poll: float = 0.5) -> None:
        queue = command_queue(self.symbol).name
        waited = False
        while (state := await self.bus.queue_state(queue)) is not None and state[1] > 1:
            if not waited:
                log.warning("another orchestrator of %s still reads its commands; syncing once it is gone",
                            self.symbol, extra=self._metrics_symbol)
                waited = True
            await asyncio.sleep(poll)

    async def expire_by_clock(self) -> None:
        """Expire the stops whose deadline passed (plus the grace) with no trade to say so."""
        outcome = self.orchestrator.expire_by_clock()
        if outcome:
            await self._publish(outcome, {})
            self._count_active()

    async def on_command(self, command: StopCommand, headers: dict[str, Any]) -> None:
        if command.op == "synced":
            self.synced.set()
            return
        with telemetry.span("stop command", headers, op=command.op, symbol=self.symbol):
            await self._publish(self.orchestrator.apply(command), headers)
        self._count_active()

    async def on_tick(self, tick: PriceTick, headers: dict[str, Any]) -> None:
        last = self.orchestrator.last_trade_id
        if last is not None and tick.trade_id > last + 1:
            await self._fill_gap(last + 1, tick.trade_id - 1)
        outcome = self.orchestrator.on_tick(tick)
        self._ticks_processed.inc()
        if outcome:
            with telemetry.span("tick trigger", headers, symbol=self.symbol, tradeId=tick.trade_id):
                await self._publish(outcome, headers, tick)
            self._count_active()

    async def on_book(self, tick: BookTick, headers: dict[str, Any]) -> None:
        outcome = self.orchestrator.on_book(tick)
        self._count_gaps()
        if outcome:
            with telemetry.span("book trigger", headers, symbol=self.symbol, updateId=tick.update_id):
                await self._publish(outcome, headers, tick)
            self._count_active()

    def _count_gaps(self) -> None:
        gaps, gap_ms = self.orchestrator.book_gaps, self.orchestrator.book_gap_ms
        reported_gaps, reported_ms = self._gaps_reported
        if gaps > reported_gaps:
            telemetry.ORCHESTRATOR_BOOK_GAPS.labels(**self._metrics_symbol).inc(gaps - reported_gaps)
            telemetry.ORCHESTRATOR_BOOK_GAP_SECONDS.labels(**self._metrics_symbol).inc((gap_ms - reported_ms) / 1000)
            self._gaps_reported = (gaps, gap_ms)

    async def flush(self) -> None:
        events = self.orchestrator.flush()
        for start in range(0, len(events), FLUSH_CONCURRENCY):  # bounded: 10,000 at once would bloat memory
            await asyncio.gather(*(self.bus.publish_stop_event(e) for e in events[start:start + FLUSH_CONCURRENCY]))
        for event in events:
            telemetry.ORCHESTRATOR_EVENTS.labels(symbol=self.symbol, type=event.type).inc()
        new_duplicates = self.orchestrator.duplicates - self._duplicates_reported
        if new_duplicates:
            telemetry.ORCHESTRATOR_DUPLICATES.labels(**self._metrics_symbol).inc(new_duplicates)
            self._duplicates_reported += new_duplicates

    async def _publish(
        self, outcome: Outcome, headers: dict[str, Any], tick: PriceTick | BookTick | None = None
    ) -> None:
        for order in outcome.orders:
            await self.bus.publish_order(order)
            log.info("stop %s/%s triggered at %s; order %s sent", order.namespace, order.name, order.trigger_price,
                     order.client_order_id, extra=telemetry.stop_fields(
                         order.namespace, order.name, order.uid, order.symbol, clientOrderId=order.client_order_id))
            if tick is not None:
                latency = max(0.0, (now_ms() - tick.received_at) / 1000)
                telemetry.ORCHESTRATOR_TRIGGER_LATENCY.labels(**self._metrics_symbol).observe(latency)
        for event in outcome.events:
            await self.bus.publish_stop_event(event)
            telemetry.ORCHESTRATOR_EVENTS.labels(symbol=self.symbol, type=event.type).inc()

    async def _fill_gap(self, first: int, last: int) -> None:
        missing = last - first + 1
        if self.rest is None:
            log.warning("%d trades missing (%d..%d) and no REST access to refill them", missing, first, last,
                        extra=self._metrics_symbol)
            return
        if missing > self.settings.max_gap:
            log.error("%d trades missing, more than TRAILINGSTOP_MAX_GAP=%d; skipping them", missing,
                      self.settings.max_gap, extra=self._metrics_symbol)
            return
        started = time.monotonic()
        filled = 0
        try:
            async for trade in agg_trades(self.rest, self.symbol, first, last):
                tick = PriceTick.from_trade(self.symbol, trade, now_ms(), "rest-gap-fill")
                outcome = self.orchestrator.on_tick(tick)
                filled += 1
                if outcome:
                    await self._publish(outcome, {}, tick)
        except (TimeoutError, BinanceAPIException, BinanceRequestException, aiohttp.ClientError) as exc:
            log.warning("gap fill %d..%d stopped after %d trades: %r", first, last, filled, exc,
                        extra=self._metrics_symbol)
        telemetry.ORCHESTRATOR_GAP_TRADES.labels(**self._metrics_symbol).inc(filled)
        log.info("refilled %d of %d missing trades in %.2fs", filled, missing, time.monotonic() - started,
                 extra=self._metrics_symbol)

    def _count_active(self) -> None:
        telemetry.ORCHESTRATOR_ACTIVE_STOPS.labels(**self._metrics_symbol).set(self.orchestrator.active_count())

    def health(self) -> tuple[bool, str]:
        return True, "synced" if self.synced.is_set() else "waiting for sync"


async def _rest_client(symbol: str, settings: Settings) -> tuple[AsyncClient | None, Any]:
    """Public REST access (trade refills, symbol filters); the worker runs without it if unreachable."""
    try:
        client = await asyncio.wait_for(connect_client(BinanceSettings.from_settings(settings)), 15)
    except (TimeoutError, BinanceAPIException, BinanceRequestException, aiohttp.ClientError, OSError) as exc:
        log.warning("Binance REST unreachable (%r): no gap refill, no filter checks", exc, extra={"symbol": symbol})
        return None, None
    try:
        filters = await symbol_filters(client, symbol)
    except (BinanceAPIException, ValueError) as exc:
        log.warning("no exchange filters for %s (%s)", symbol, exc, extra={"symbol": symbol})
        filters = None
    return client, filters


async def main(args: argparse.Namespace, settings: Settings) -> int:
    symbol = args.symbol

    async def body(bus: Bus, health: HealthServer) -> None:
        rest, filters = await _rest_client(symbol, settings)
        worker = OrchestratorWorker(bus, StopBook(symbol, filters, expiry_grace_ms=EXPIRY_GRACE_MS), settings, rest)
        health.add_check("orchestrator", worker.health)
        try:
            await worker.run()
        finally:
            if rest is not None:
                await rest.close_connection()

    return await serve(f"orchestrator-{symbol}", body, settings)

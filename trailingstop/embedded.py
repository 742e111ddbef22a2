"""``trailingstop run``: the whole system in one process, no cluster and no broker.

Manifests become stops of per-symbol :class:`~trailingstop.core.stopbook.StopBook`s (the
orchestrator worker's own logic), orders go to the :class:`~trailingstop.exchange.simulated.SimulatedExchange`
(the executor's Simulate route), and statuses follow the same reducer the operator uses. Each
phase change is printed as it happens; the end is a table shaped like ``kubectl get trailingstops``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from decimal import Decimal
from typing import TextIO

from trailingstop.core.contracts import (
    BookTick,
    OrderResult,
    PriceTick,
    StopCommand,
    StopDefinition,
    StopEvent,
    TrailingStopStatus,
    ms_to_rfc3339,
    now_ms,
    to_wire,
)
from trailingstop.core.lifecycle import apply_order_result, apply_stop_event, is_final
from trailingstop.core.quote import Quote
from trailingstop.core.stopbook import Outcome, StopBook
from trailingstop.core.trade import Trade
from trailingstop.exchange.simulated import SimulatedExchange
from trailingstop.stopfiles import Manifest
from trailingstop.table import render_table, stop_row

# (symbol, trade or book quote) pairs, in time order per symbol; an async generator, so that it
# can be closed.
TradeStream = AsyncGenerator[tuple[str, Trade | Quote], None]


@dataclass
class LocalStop:
    manifest: Manifest
    status: TrailingStopStatus
    created_at: int | None = None  # ms on the data clock

    @property
    def final(self) -> bool:
        return is_final(self.status.phase)


class EmbeddedRun:
    """Stops from manifests, driven by trades; prints transitions to ``out``."""

    def __init__(self, manifests: list[Manifest], out: TextIO, verbose: bool = False) -> None:
        self.out = out
        self.verbose = verbose
        self.stops = {m.uid: LocalStop(m, TrailingStopStatus()) for m in manifests}
        self.exchange = SimulatedExchange()
        self._clock = 0  # the data clock: time of the last trade, ms
        self.orchestrators = {
            symbol: StopBook(symbol, clock=lambda: self._clock)
            for symbol in sorted({m.spec.symbol for m in manifests})
        }

    @property
    def symbols(self) -> list[str]:
        return list(self.orchestrators)

    def all_final(self) -> bool:
        return all(stop.final for stop in self.stops.values())

    def start(self, at: int) -> None:
        """Hand every stop to its orchestrator (what the operator does on create)."""
        self._clock = at
        for stop in self.stops.values():
            stop.created_at = at
            manifest = stop.manifest
            definition = StopDefinition.from_spec(
                manifest.spec, uid=manifest.uid, namespace=manifest.namespace, name=manifest.name,
                generation=manifest.generation,
            )
            self._handle(self.orchestrators[manifest.spec.symbol].apply(StopCommand.upsert(definition)))

    def on_trade(self, symbol: str, trade: Trade) -> None:
        self._clock = trade.time
        orchestrator = self.orchestrators[symbol]
        self._handle(orchestrator.on_tick(PriceTick.from_trade(symbol, trade, trade.time, "replay")))
        if self.verbose:
            self._apply_events([e for e in orchestrator.flush() if e.type == "reference"])

    def on_quote(self, symbol: str, quote: Quote) -> None:
        """A recorded top-of-book quote: for BestBidAsk stops (a gap in the recording is a gap)."""
        self._clock = quote.time
        orchestrator = self.orchestrators[symbol]
        self._handle(orchestrator.on_book(BookTick.from_quote(symbol, quote, "replay")))
        if self.verbose:
            self._apply_events([e for e in orchestrator.flush() if e.type in ("reference", "gap")])

    def finish(self) -> None:
        """Apply the last coalesced references and prices so the table shows where stops stand."""
        for orchestrator in self.orchestrators.values():
            self._apply_events(orchestrator.flush())

    async def run(self, trades: TradeStream, speed: float = 0) -> None:
        """Apply ``trades`` until every stop is final or they end; then close them (a live stream's
        sockets close at once) and bring the statuses up to date. Cancelled (Ctrl-C, SIGTERM), it
        does the same on the way out, so the table shows where the stops stood."""
        started = False
        previous_time: int | None = None
        try:
            async with aclosing(trades) as stream:
                async for symbol, item in stream:
                    if not started:
                        self.start(item.time)
                        started = True
                    if speed > 0 and previous_time is not None and item.time > previous_time:
                        await asyncio.sleep((item.time - previous_time) / 1000 / speed)
                    previous_time = item.time
                    if symbol not in self.orchestrators:
                        continue
                    if isinstance(item, Quote):
                        self.on_quote(symbol, item)
                    else:
                        self.on_trade(symbol, item)
                    if self.all_final():
                        break
        except asyncio.CancelledError:
            self._wrap_up(started)
            raise
        self._wrap_up(started)

    def _wrap_up(self, started: bool) -> None:
        if not started:
            self.start(now_ms())
        self.finish()

    def table(self) -> str:
        end = self._clock
        rows = [stop_row(s.manifest, s.status, end - (s.created_at or end)) for s in self.stops.values()]
        return render_table(rows, show_namespace=len({s.manifest.namespace for s in self.stops.values()}) > 1)

    # --- plumbing ------------------------------------------------------------------------------

    def _handle(self, outcome: Outcome) -> None:
        self._apply_events(outcome.events)
        for order in outcome.orders:
            self._apply_result(self.exchange.place(order))

    def _apply_events(self, events: list[StopEvent]) -> None:
        now = ms_to_rfc3339(self._clock)
        for event in events:
            targets = [self.stops[event.uid]] if event.uid in self.stops else []
            if event.uid is None:  # per-symbol price or gap: every stop of the symbol (of its series)
                targets = [s for s in self.stops.values() if s.manifest.spec.symbol == event.symbol]
            for stop in targets:
                before = stop.status
                stop.status = apply_stop_event(before, event, now)
                self._report(stop, before, event)

    def _apply_result(self, result: OrderResult) -> None:
        stop = self.stops[result.uid]
        before = stop.status
        stop.status = apply_order_result(before, result, ms_to_rfc3339(self._clock))
        if stop.status.phase != before.phase:
            self._print(stop, before.phase, stop.status.message or result.status)

    def _report(self, stop: LocalStop, before: TrailingStopStatus, event: StopEvent) -> None:
        status = stop.status
        if status.phase != before.phase:
            self._print(stop, before.phase, _describe(event, stop))
        elif event.type == "gap" and status.last_gap is not None and status.last_gap != before.last_gap:
            gap = status.last_gap
            self._print(stop, None, f"gap: no {status.price_source} quote from {gap.from_} to {gap.to} "
                                    f"({to_wire(gap.seconds)}s); going on from the first fresh quote")
        elif self.verbose and event.type == "reference" and status.reference_price != before.reference_price:
            self._print(stop, None, f"reference {_text(event.reference_price)}, stop {_text(event.stop_price)}")

    def _print(self, stop: LocalStop, before: str | None, what: str) -> None:
        change = f"{before} -> {stop.status.phase}" if before else stop.status.phase
        print(f"{ms_to_rfc3339(self._clock)}  {stop.manifest.key:<28} {change:<22} {what}", file=self.out, flush=True)


def _describe(event: StopEvent, stop: LocalStop) -> str:
    spec = stop.manifest.spec
    price, reference, level = (_text(v) for v in (event.price, event.reference_price, event.stop_price))
    if event.type == "armed":
        if spec.activation_price is None:
            return "activates on the next trade"
        comparison = ">=" if spec.side == "SELL" else "<="
        return f"waiting for price {comparison} {_text(spec.activation_price)}"
    where = f"{event.price_source} update {event.update_id}" if event.update_id is not None else (
        f"trade {event.trade_id}")
    if event.type == "activated":
        return f"activated at {price} ({where}); stop {level}"
    if event.type == "triggered":
        return f"price {price} reached stop {level} (reference {reference}, {where})"
    if event.type in ("invalid", "expired"):
        return event.message or event.type
    return event.type


def _text(value: Decimal | None) -> str:
    return "-" if value is None else to_wire(value)

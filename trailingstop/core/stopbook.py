"""The decisions of one symbol's orchestrator, without I/O.

:class:`StopBook` turns StopCommands, PriceTicks (trades) and BookTicks (the top of the book) into
StopEvents and PlaceOrders, using the engine. The orchestrator worker
(``trailingstop.workers.orchestrator``) wraps it with RabbitMQ; ``trailingstop run`` wraps it with
trade and book files. Both therefore decide identically.

A symbol has three price series, each with its own engine (an engine follows one series):
``LastTrade`` (the trades, ids: aggregate trade ids), ``BestBid`` (BestBidAsk SELL stops) and
``BestAsk`` (BestBidAsk BUY stops), both fed by each quote of the book (ids: the book's
updateIds). A stop lives in the engine of the series it follows, and its events carry the id of
that series (``tradeId`` or ``updateId``, never both).

The book has no history to fetch, so a lost quote is reported rather than refilled: a quote that
does not follow the last one applied (``previousUpdateId``) is applied as it is, after a ``gap``
event for each book series with stops. A BestBidAsk stop restored from its status rejoins at the
first quote after its saved ``lastUpdateId`` (never one it has seen), with a ``gap`` of its own if
that quote does not follow it directly.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from trailingstop.core.contracts import (
    BookTick,
    FollowedPrice,
    OrderType,
    PlaceOrder,
    PriceTick,
    StopCommand,
    StopDefinition,
    StopEvent,
    StopEventType,
    client_order_id,
    ms_to_rfc3339,
    now_ms,
)
from trailingstop.core.engine import Engine, EngineEvent, StopIsFinal, StopState
from trailingstop.core.filters import SymbolFilters, limit_price
from trailingstop.core.lifecycle import engine_state, resume_after

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What to publish after a command or a tick: events, then orders."""

    events: list[StopEvent] = field(default_factory=list)
    orders: list[PlaceOrder] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.orders)


# Returned for the (by far most common) tick that changes nothing: no allocation on the hot path.
# Callers only read an Outcome; the methods below build a fresh one whenever there is content.
NOTHING = Outcome()

BOOK_SERIES: tuple[FollowedPrice, ...] = ("BestBid", "BestAsk")


def _is_book(series: FollowedPrice) -> bool:
    return series != "LastTrade"


class StopBook:
    """All stops of one symbol: commands and ticks in, events and orders out.

    ``clock`` is what "now" means for expiries no trade tells of (the orchestrator's wall clock,
    ``run``'s data clock); a deadline counts as passed by the clock ``expiry_grace_ms`` after it,
    so trades made before it that are still on their way can arrive first (DESIGN §4).
    """

    def __init__(
        self,
        symbol: str,
        filters: SymbolFilters | None = None,
        clock: Callable[[], int] = now_ms,
        expiry_grace_ms: int = 0,
    ) -> None:
        self.symbol = symbol
        self.filters = filters
        self.engine = Engine(symbol)  # the LastTrade series
        self.engines: dict[FollowedPrice, Engine] = {
            "LastTrade": self.engine, "BestBid": Engine(symbol), "BestAsk": Engine(symbol),
        }
        self.stops: dict[str, StopDefinition] = {}
        self._clock = clock
        self.expiry_grace_ms = expiry_grace_ms
        self._flushed_trade_id: int | None = None
        self._last_tick: PriceTick | None = None
        # The book: the last quote applied, the position (its updateId, or before any quote where
        # restored stops resume), what was flushed, and what was dropped or missed.
        self._last_book: BookTick | None = None
        self.book_position: int | None = None
        self._flushed_update_id: int | None = None
        self.book_duplicates = 0
        self.book_gaps = 0
        self.book_gap_ms = 0
        # Restored stops waiting for their series to reach their saved position: (id, uid), one
        # heap per id space (trade ids; the book's updateIds).
        self._parked: dict[bool, list[tuple[int, str]]] = {False: [], True: []}
        self._parked_ids: set[str] = set()

    @property
    def last_trade_id(self) -> int | None:
        return self.engine.last_trade_id

    def active_count(self) -> int:
        return sum(engine.active_count() for engine in self.engines.values())

    # --- commands ----------------------------------------------------------------------------

    def apply(self, command: StopCommand) -> Outcome:
        if command.op == "synced" or command.stop is None:
            return Outcome()
        if command.op == "cancel":
            self._forget(command.stop.uid)
            return Outcome()
        outcome = self._upsert(command.stop)
        # A stop whose deadline the clock has passed expires now, before any trade (a gap refill
        # after a restart, say) can reach it: what an orchestrator decided by its clock holds.
        late = self.expire_by_clock()
        outcome.events.extend(late.events)
        return outcome

    def _upsert(self, stop: StopDefinition) -> Outcome:
        series = stop.followed_price
        engine = self.engines[series]
        problem = self._problem(stop, stop.activation_price or engine.last_price)
        if problem is not None:
            self._forget(stop.uid)
            return Outcome(events=[self._event("invalid", stop, message=problem)])
        self.stops[stop.uid] = stop
        if stop.uid in engine:
            return self._change(stop)
        if stop.uid in self._parked_ids:
            return Outcome()  # the new definition is used when it joins
        saved_position = resume_after(stop)
        position = self._position(series)
        if saved_position is not None and (position is None or position < saved_position):
            heapq.heappush(self._parked[_is_book(series)], (saved_position, stop.uid))
            self._parked_ids.add(stop.uid)
            return Outcome()
        return self._join(stop)

    def _position(self, series: FollowedPrice) -> int | None:
        """The id of the last trade, or book update, the series has applied."""
        return self.book_position if _is_book(series) else self.engine.last_trade_id

    def _change(self, stop: StopDefinition) -> Outcome:
        """A spec change of a stop the engine runs: its reference is kept."""
        series = stop.followed_price
        try:
            happened = self._engine_upsert(stop, series)
        except StopIsFinal as final:
            log.info("stop %s/%s: %s; its spec change is ignored", stop.namespace, stop.name, final)
            return Outcome()
        return self._outcome(happened, series)

    def _engine_upsert(self, stop: StopDefinition, series: FollowedPrice) -> list[EngineEvent]:
        return self.engines[series].upsert(
            stop.uid, stop.side, stop.trailing_percent, stop.activation_price,
            trailing_amount=stop.trailing_amount, expires_at=stop.expires_at,
        )

    def _join(self, stop: StopDefinition) -> Outcome:
        """Hand a stop to its engine: from its saved state if it has one, else armed afresh."""
        saved = stop.state
        series = stop.followed_price
        engine = self.engines[series]
        if saved is not None and (saved.activated or saved.triggered or saved.expired):
            engine.restore(engine_state(stop))
            state = engine.state(stop.uid)
            if state.phase in ("triggered", "expired"):
                return Outcome()
            return Outcome(events=[self._restored_event(stop, state)])
        return self._outcome(self._engine_upsert(stop, series), series)

    def _forget(self, uid: str) -> None:
        for engine in self.engines.values():
            engine.cancel(uid)
        self.stops.pop(uid, None)
        self._parked_ids.discard(uid)

    def resume_after_restore(self) -> None:
        """After a sync: trades up to the oldest saved lastTradeId were seen by every stop, and
        book updates up to the oldest saved lastUpdateId by every book stop."""
        if self.engine.last_trade_id is None and (oldest := self._oldest_parked(book=False)) is not None:
            self.engine.last_trade_id = oldest
        if self.book_position is None:
            self.book_position = self._oldest_parked(book=True)

    def _oldest_parked(self, book: bool) -> int | None:
        return min((position for position, uid in self._parked[book] if uid in self._parked_ids), default=None)

    def _problem(self, stop: StopDefinition, price: Decimal | None) -> str | None:
        """Why the exchange would refuse the stop's order, as far as can be told with ``price``
        (the activation price, the last price, or the activating trade's)."""
        if stop.symbol != self.symbol:
            return f"stop for {stop.symbol} was sent to the {self.symbol} orchestrator"
        if self.filters is None:
            return None
        slippage = stop.limit_slippage
        if slippage is not None:
            problem = self.filters.limit_problem(stop.side, stop.quantity, price, slippage)
        else:
            problem = self.filters.quantity_problem(stop.quantity)
            if problem is None and price is not None:
                problem = self.filters.notional_problem(stop.quantity, price)
        if problem is None:
            return None
        return f"{self.symbol} would refuse this order: {problem}"

    # --- ticks -------------------------------------------------------------------------------

    def on_tick(self, tick: PriceTick) -> Outcome:
        joined = self._unpark(False, tick.trade_id) if self._parked[False] else None
        dropped = self.engine.duplicates
        happened = self.engine.on_trade(tick.price, tick.trade_id, tick.trade_time)
        if self.engine.duplicates == dropped:  # a duplicate's price is not the last price (LAST column)
            self._last_tick = tick
        if not happened and not joined:
            return NOTHING
        outcome = self._outcome(happened, "LastTrade")
        if joined:
            outcome.events[:0] = joined.events
        return outcome

    def on_book(self, tick: BookTick) -> Outcome:
        """One quote of the book: the best bid to the BestBid series, the best ask to BestAsk.

        A quote at or below the position is a duplicate (dropped, counted). A quote that does not
        follow the last one applied means quotes were lost: it is applied all the same (the first
        fresh quote is the price now), after a ``gap`` event. A side of the book with nothing on
        it (price 0) is no price: that series skips the quote.
        """
        if self.book_position is not None and tick.update_id <= self.book_position:
            self.book_duplicates += 1
            return NOTHING
        previous = self._last_book
        self.book_position = tick.update_id
        self._last_book = tick
        outcome = Outcome()
        if previous is not None and tick.previous_update_id != previous.update_id:
            outcome.events.extend(self._book_gap(previous.received_at, previous.update_id, tick))
        if self._parked[True]:
            joined = self._unpark(True, tick.update_id, tick)
            if joined is not None:
                outcome.events.extend(joined.events)
        for series in BOOK_SERIES:
            price = tick.price(series)
            if price > 0:
                happened = self.engines[series].on_trade(price, tick.update_id, tick.received_at)
                if happened:
                    more = self._outcome(happened, series)
                    outcome.events.extend(more.events)
                    outcome.orders.extend(more.orders)
        return outcome if outcome else NOTHING

    def _book_gap(self, since: int, since_id: int | None, tick: BookTick,
                  stop: StopDefinition | None = None) -> list[StopEvent]:
        """``gap`` events for quotes missed from ``since`` to ``tick``: for one restored stop, or
        for each book series that has stops."""
        self.book_gaps += 1
        self.book_gap_ms += max(0, tick.received_at - since)
        fields = dict(update_id=tick.update_id, trade_time=tick.received_at, gap_from=since,
                      gap_from_update_id=since_id)
        if stop is not None:
            series = stop.followed_price
            return [self._event("gap", stop, price=tick.price(series), price_source=series, **fields)]
        return [
            StopEvent(type="gap", symbol=self.symbol, price=tick.price(series), price_source=series,
                      at=self._clock(), **fields)  # type: ignore[arg-type]
            for series in BOOK_SERIES if self.engines[series].active_count()
        ]

    def _unpark(self, book: bool, position: int, tick: BookTick | None = None) -> Outcome | None:
        """Stops whose saved state is as of a point before this one join their engine now. A book
        stop that the quote does not directly follow gets its own ``gap`` event."""
        joined = None
        parked = self._parked[book]
        while parked and parked[0][0] < position:
            saved_position, uid = heapq.heappop(parked)
            if uid not in self._parked_ids:
                continue  # cancelled while parked
            self._parked_ids.discard(uid)
            stop = self.stops[uid]
            saved = stop.state
            outcome = Outcome()
            if tick is not None and saved is not None and tick.previous_update_id != saved_position:
                since = saved.last_price_at if saved.last_price_at is not None else tick.received_at
                outcome.events.extend(self._book_gap(since, saved_position, tick, stop))
            rejoined = self._join(stop)
            outcome.events.extend(rejoined.events)
            outcome.orders.extend(rejoined.orders)
            joined = outcome if joined is None else Outcome(joined.events + outcome.events, joined.orders)
        return joined

    @property
    def duplicates(self) -> int:
        return self.engine.duplicates

    def expire_by_clock(self) -> Outcome:
        """:meth:`expire_due` at the clock's now, less the grace."""
        return self.expire_due(self._clock() - self.expiry_grace_ms)

    def expire_due(self, now: int) -> Outcome:
        """Stops whose spec.expiresAt is at or before ``now`` (this process's clock) expire: the
        orchestrator's answer to a quiet market, where no trade comes to tell (DESIGN §4)."""
        joined: list[StopEvent] = []
        for uid in [uid for uid in self._parked_ids if _due(self.stops[uid].expires_at, now)]:
            # Parked (restored, waiting for the trades to reach its saved lastTradeId): it joins
            # now and expires, so that no trade, however late, can trigger it any more.
            self._parked_ids.discard(uid)
            joined.extend(self._join(self.stops[uid]).events)
        expired = [(series, engine.expire_due(now)) for series, engine in self.engines.items()]
        if not joined and not any(happened for _, happened in expired):
            return NOTHING
        outcome = Outcome(events=joined)
        for series, happened in expired:
            more = self._outcome(happened, series)
            outcome.events.extend(more.events)
            outcome.orders.extend(more.orders)
        return outcome

    def flush(self) -> list[StopEvent]:
        """Coalesced updates since the last flush: references that moved, and the last prices."""
        events = []
        for series, engine in self.engines.items():
            for change in engine.drain_reference_changes():
                stop = self.stops.get(change.stop_id)
                if stop is not None:
                    events.append(self._from_engine("reference", stop, change, series))
        tick = self._last_tick
        if tick is not None and tick.trade_id != self._flushed_trade_id:
            self._flushed_trade_id = tick.trade_id
            events.append(
                StopEvent(
                    type="price",
                    symbol=self.symbol,
                    price=tick.price,
                    trade_id=tick.trade_id,
                    trade_time=tick.trade_time,
                    at=self._clock(),
                )
            )
        events.extend(self._flush_book())
        return events

    def _flush_book(self) -> list[StopEvent]:
        """The last quote, once per book series that has stops: LAST of BestBidAsk stops."""
        book = self._last_book
        if book is None or book.update_id == self._flushed_update_id:
            return []
        self._flushed_update_id = book.update_id
        return [
            StopEvent(type="price", symbol=self.symbol, price=book.price(series), update_id=book.update_id,
                      trade_time=book.received_at, at=self._clock(), price_source=series)
            for series in BOOK_SERIES if len(self.engines[series]) and book.price(series) > 0
        ]

    def sync_request(self) -> StopEvent:
        return StopEvent(type="sync", symbol=self.symbol, at=self._clock())

    # --- event building ------------------------------------------------------------------------

    def _outcome(self, happened: list[EngineEvent] | tuple[EngineEvent, ...], series: FollowedPrice) -> Outcome:
        outcome = Outcome()
        for change in happened:
            stop = self.stops.get(change.stop_id)
            if stop is None:
                continue
            if change.kind == "activated" and (problem := self._problem(stop, change.price)):
                # Only now is there a price to check the order value against.
                self.engines[series].cancel(stop.uid)
                self.stops.pop(stop.uid, None)
                outcome.events.append(self._event("invalid", stop, message=problem))
                continue
            if change.kind == "expired":
                outcome.events.append(self._expired(stop, change, series))
                continue
            outcome.events.append(self._from_engine(change.kind, stop, change, series))
            if change.kind == "triggered":
                outcome.orders.append(self._order(stop, change, series))
        return outcome

    def _expired(self, stop: StopDefinition, change: EngineEvent, series: FollowedPrice) -> StopEvent:
        assert stop.expires_at is not None
        by_price = change.trade_id is not None
        what = "quote" if _is_book(series) else "trade"
        how = f"{what} {change.trade_id} came at or after it" if by_price else f"no {what} reached the stop by then"
        message = f"expired at {ms_to_rfc3339(stop.expires_at)} ({how}); no order was placed"
        return self._event("expired", stop, reference_price=change.reference, stop_price=change.stop_price,
                           trade_time=change.time if by_price else None, message=message,
                           **_at_position(series, change.trade_id))

    def _order(self, stop: StopDefinition, change: EngineEvent, series: FollowedPrice) -> PlaceOrder:
        """The one order of a triggered stop: MARKET, or LIMIT IOC at the user's worst price."""
        assert change.price is not None
        slippage = stop.limit_slippage
        order_type: OrderType = "MARKET" if slippage is None else "LIMIT"
        quantity = stop.quantity
        if self.filters is not None:
            quantity = self.filters.floor_quantity(quantity, order_type)
        price = None
        if slippage is not None:
            price = limit_price(stop.side, change.price, slippage, self.filters.price if self.filters else None)
        book = _is_book(series)
        return PlaceOrder(
            client_order_id=client_order_id(stop.uid),
            uid=stop.uid,
            namespace=stop.namespace,
            name=stop.name,
            symbol=stop.symbol,
            side=stop.side,
            quantity=quantity,
            type=order_type,
            price=price,
            time_in_force="IOC" if price is not None else None,
            mode=stop.mode,
            route=stop.route,
            trigger_price=change.price,
            triggered_at=change.time if change.time is not None else self._clock(),
            trigger_trade_id=None if book else change.trade_id,
            reference_price=change.reference,
            stop_price=change.stop_price,
            trigger_update_id=change.trade_id if book else None,
            price_source=series if book else None,
        )

    def _from_engine(
        self, kind: StopEventType, stop: StopDefinition, change: EngineEvent, series: FollowedPrice
    ) -> StopEvent:
        return self._event(
            kind,
            stop,
            price=change.price,
            reference_price=change.reference,
            stop_price=change.stop_price,
            trade_time=change.time,
            **_at_position(series, change.trade_id),
        )

    def _restored_event(self, stop: StopDefinition, state: StopState) -> StopEvent:
        """The ``reference`` of a stop restored from its status: as of the engine's last price, or,
        when the engine has not yet reached the stop's saved place (it rejoins just before the
        next trade or quote), as of that place, with no price of its own."""
        series = stop.followed_price
        engine = self.engines[series]
        # Where the engine itself stands (resume_after_restore may have set a place with no price).
        position = engine.last_trade_id if engine.last_price is not None else None
        saved_at = resume_after(stop)
        if saved_at is not None and (position is None or position < saved_at):
            saved = stop.state
            assert saved is not None
            return self._event("reference", stop, reference_price=state.reference, stop_price=state.stop_price,
                               trade_time=saved.last_price_at, **_at_position(series, saved_at))
        return self._event(
            "reference",
            stop,
            price=engine.last_price,
            reference_price=state.reference,
            stop_price=state.stop_price,
            trade_time=engine.last_time,
            **_at_position(series, engine.last_trade_id),
        )

    def _event(self, kind: StopEventType, stop: StopDefinition, **fields: object) -> StopEvent:
        if _is_book(stop.followed_price):  # none: the last trade (the wire of LastTrade stops is unchanged)
            fields.setdefault("price_source", stop.followed_price)
        return StopEvent(
            type=kind,
            symbol=stop.symbol,
            uid=stop.uid,
            namespace=stop.namespace,
            name=stop.name,
            generation=stop.generation,
            at=self._clock(),
            **fields,  # type: ignore[arg-type]
        )



def _due(deadline: int | None, now: int) -> bool:
    return deadline is not None and deadline <= now


def _at_position(series: FollowedPrice, position: int | None) -> dict[str, object]:
    """An engine's id as the event field of its series: ``trade_id``, or a book's ``update_id``
    (plus the series, so the operator can tell which price it is)."""
    if _is_book(series):
        return {"update_id": position, "price_source": series}
    return {"trade_id": position}

"""The decisions of one symbol's orchestrator, without I/O.

:class:`StopBook` turns StopCommands and PriceTicks into StopEvents and PlaceOrders,
using the engine. The orchestrator worker (``trailingstop.workers.orchestrator``) wraps it with
RabbitMQ; ``trailingstop run`` wraps it with a trade file. Both therefore decide identically.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from trailingstop.core.contracts import (
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
from trailingstop.core.lifecycle import engine_state

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
        self.engine = Engine(symbol)
        self.stops: dict[str, StopDefinition] = {}
        self._clock = clock
        self.expiry_grace_ms = expiry_grace_ms
        self._flushed_trade_id: int | None = None
        self._last_tick: PriceTick | None = None
        # Restored stops waiting for the engine to reach their saved lastTradeId: (id, uid).
        self._parked: list[tuple[int, str]] = []
        self._parked_ids: set[str] = set()

    @property
    def last_trade_id(self) -> int | None:
        return self.engine.last_trade_id

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
        problem = self._problem(stop, stop.activation_price or self.engine.last_price)
        if problem is not None:
            self._forget(stop.uid)
            return Outcome(events=[self._event("invalid", stop, message=problem)])
        self.stops[stop.uid] = stop
        if stop.uid in self.engine:
            return self._change(stop)
        if stop.uid in self._parked_ids:
            return Outcome()  # the new definition is used when it joins
        saved = stop.state
        last = self.engine.last_trade_id
        if (
            saved is not None
            and not saved.triggered
            and saved.last_trade_id is not None
            and (last is None or last < saved.last_trade_id)
        ):
            heapq.heappush(self._parked, (saved.last_trade_id, stop.uid))
            self._parked_ids.add(stop.uid)
            return Outcome()
        return self._join(stop)

    def _change(self, stop: StopDefinition) -> Outcome:
        """A spec change of a stop the engine runs: its reference is kept."""
        try:
            happened = self._engine_upsert(stop)
        except StopIsFinal as final:
            log.info("stop %s/%s: %s; its spec change is ignored", stop.namespace, stop.name, final)
            return Outcome()
        return self._outcome(happened)

    def _engine_upsert(self, stop: StopDefinition) -> list[EngineEvent]:
        return self.engine.upsert(
            stop.uid, stop.side, stop.trailing_percent, stop.activation_price,
            trailing_amount=stop.trailing_amount, expires_at=stop.expires_at,
        )

    def _join(self, stop: StopDefinition) -> Outcome:
        """Hand a stop to the engine: from its saved state if it has one, else armed afresh."""
        saved = stop.state
        if saved is not None and (saved.activated or saved.triggered or saved.expired):
            self.engine.restore(engine_state(stop))
            state = self.engine.state(stop.uid)
            if state.phase in ("triggered", "expired"):
                return Outcome()
            return Outcome(events=[self._state_event("reference", stop, state)])
        return self._outcome(self._engine_upsert(stop))

    def _forget(self, uid: str) -> None:
        self.engine.cancel(uid)
        self.stops.pop(uid, None)
        self._parked_ids.discard(uid)

    def resume_after_restore(self) -> None:
        """After a sync: trades up to the oldest saved lastTradeId were seen by every stop."""
        if self.engine.last_trade_id is None and self._parked:
            self.engine.last_trade_id = min(trade_id for trade_id, uid in self._parked if uid in self._parked_ids)

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
        joined = self._unpark(tick.trade_id) if self._parked else None
        dropped = self.engine.duplicates
        happened = self.engine.on_trade(tick.price, tick.trade_id, tick.trade_time)
        if self.engine.duplicates == dropped:  # a duplicate's price is not the last price (LAST column)
            self._last_tick = tick
        if not happened and not joined:
            return NOTHING
        outcome = self._outcome(happened)
        if joined:
            outcome.events[:0] = joined.events
        return outcome

    def _unpark(self, trade_id: int) -> Outcome | None:
        """Stops whose saved state is as of a trade before this one join the engine now."""
        joined = None
        while self._parked and self._parked[0][0] < trade_id:
            _, uid = heapq.heappop(self._parked)
            if uid not in self._parked_ids:
                continue  # cancelled while parked
            self._parked_ids.discard(uid)
            outcome = self._join(self.stops[uid])
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
        happened = self.engine.expire_due(now)
        if not happened and not joined:
            return NOTHING
        outcome = self._outcome(happened)
        outcome.events[:0] = joined
        return outcome

    def flush(self) -> list[StopEvent]:
        """Coalesced updates since the last flush: references that moved, and the last price."""
        events = []
        for change in self.engine.drain_reference_changes():
            stop = self.stops.get(change.stop_id)
            if stop is not None:
                events.append(self._from_engine("reference", stop, change))
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
        return events

    def sync_request(self) -> StopEvent:
        return StopEvent(type="sync", symbol=self.symbol, at=self._clock())

    # --- event building ------------------------------------------------------------------------

    def _outcome(self, happened: list[EngineEvent] | tuple[EngineEvent, ...]) -> Outcome:
        outcome = Outcome()
        for change in happened:
            stop = self.stops.get(change.stop_id)
            if stop is None:
                continue
            if change.kind == "activated" and (problem := self._problem(stop, change.price)):
                # Only now is there a price to check the order value against.
                self.engine.cancel(stop.uid)
                self.stops.pop(stop.uid, None)
                outcome.events.append(self._event("invalid", stop, message=problem))
                continue
            if change.kind == "expired":
                outcome.events.append(self._expired(stop, change))
                continue
            outcome.events.append(self._from_engine(change.kind, stop, change))
            if change.kind == "triggered":
                outcome.orders.append(self._order(stop, change))
        return outcome

    def _expired(self, stop: StopDefinition, change: EngineEvent) -> StopEvent:
        assert stop.expires_at is not None
        by_trade = change.trade_id is not None
        how = f"trade {change.trade_id} came at or after it" if by_trade else "no trade reached the stop by then"
        message = f"expired at {ms_to_rfc3339(stop.expires_at)} ({how}); no order was placed"
        return self._event("expired", stop, reference_price=change.reference, stop_price=change.stop_price,
                           trade_id=change.trade_id, trade_time=change.time if by_trade else None,
                           message=message)

    def _order(self, stop: StopDefinition, change: EngineEvent) -> PlaceOrder:
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
            trigger_trade_id=change.trade_id,
            reference_price=change.reference,
            stop_price=change.stop_price,
        )

    def _from_engine(self, kind: StopEventType, stop: StopDefinition, change: EngineEvent) -> StopEvent:
        return self._event(
            kind,
            stop,
            price=change.price,
            reference_price=change.reference,
            stop_price=change.stop_price,
            trade_id=change.trade_id,
            trade_time=change.time,
        )

    def _state_event(self, kind: StopEventType, stop: StopDefinition, state: StopState) -> StopEvent:
        return self._event(
            kind,
            stop,
            price=self.engine.last_price,
            reference_price=state.reference,
            stop_price=state.stop_price,
            trade_id=self.engine.last_trade_id,
            trade_time=self.engine.last_time,
        )

    def _event(self, kind: StopEventType, stop: StopDefinition, **fields: object) -> StopEvent:
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

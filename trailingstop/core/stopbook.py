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
    PlaceOrder,
    PriceTick,
    StopCommand,
    StopDefinition,
    StopEvent,
    StopEventType,
    client_order_id,
    now_ms,
)
from trailingstop.core.engine import Engine, EngineEvent, StopAlreadyTriggered, StopState
from trailingstop.core.filters import SymbolFilters

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
    """All stops of one symbol: commands and ticks in, events and orders out."""

    def __init__(
        self,
        symbol: str,
        filters: SymbolFilters | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.symbol = symbol
        self.filters = filters
        self.engine = Engine(symbol)
        self.stops: dict[str, StopDefinition] = {}
        self._clock = clock
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
        return self._upsert(command.stop)

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
            happened = self.engine.upsert(stop.uid, stop.side, stop.trailing_percent, stop.activation_price)
        except StopAlreadyTriggered:
            log.info("stop %s/%s has triggered; its spec change is ignored", stop.namespace, stop.name)
            return Outcome()
        return self._outcome(happened)

    def _join(self, stop: StopDefinition) -> Outcome:
        """Hand a stop to the engine: from its saved state if it has one, else armed afresh."""
        saved = stop.state
        if saved is not None and (saved.activated or saved.triggered):
            self.engine.restore(_restored_state(stop))
            state = self.engine.state(stop.uid)
            if state.phase == "triggered":
                return Outcome()
            return Outcome(events=[self._state_event("reference", stop, state)])
        return self._outcome(self.engine.upsert(stop.uid, stop.side, stop.trailing_percent, stop.activation_price))

    def _forget(self, uid: str) -> None:
        self.engine.cancel(uid)
        self.stops.pop(uid, None)
        self._parked_ids.discard(uid)

    def resume_after_restore(self) -> None:
        """After a sync: trades up to the oldest saved lastTradeId were seen by every stop."""
        if self.engine.last_trade_id is None and self._parked:
            self.engine.last_trade_id = min(trade_id for trade_id, uid in self._parked if uid in self._parked_ids)

    def _problem(self, stop: StopDefinition, price: Decimal | None) -> str | None:
        if stop.symbol != self.symbol:
            return f"stop for {stop.symbol} was sent to the {self.symbol} orchestrator"
        if self.filters is None:
            return None
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
            outcome.events.append(self._from_engine(change.kind, stop, change))
            if change.kind == "triggered":
                outcome.orders.append(self._order(stop, change))
        return outcome

    def _order(self, stop: StopDefinition, change: EngineEvent) -> PlaceOrder:
        quantity = stop.quantity
        if self.filters is not None:
            quantity = self.filters.floor_quantity(quantity)
        assert change.price is not None
        return PlaceOrder(
            client_order_id=client_order_id(stop.uid),
            uid=stop.uid,
            namespace=stop.namespace,
            name=stop.name,
            symbol=stop.symbol,
            side=stop.side,
            quantity=quantity,
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


def _restored_state(stop: StopDefinition) -> StopState:
    saved = stop.state
    assert saved is not None
    return StopState(
        stop_id=stop.uid,
        side=stop.side,
        trailing_percent=stop.trailing_percent,
        activation_price=stop.activation_price,
        phase="triggered" if saved.triggered else "tracking",
        reference=saved.reference_price,
        activated_price=saved.activated_price,
        activated_trade_id=saved.activated_trade_id,
        activated_at=saved.activated_at,
        trigger_price=saved.trigger_price,
        trigger_trade_id=saved.trigger_trade_id,
        triggered_at=saved.triggered_at,
    )

"""The trailing-stop engine: many stops on one symbol, exact DESIGN §4 semantics, no I/O.

Feed it trades with :meth:`Engine.on_trade`; it returns what happened (expiries, activations and
triggers). Reference changes are coalesced: :meth:`Engine.drain_reference_changes` reports each
stop whose reference moved since the last drain, once.

A stop trails by a percent (stop level ``R * (1 - d)`` SELL, ``R * (1 + d)`` BUY) or by an amount
in quote units (``R - a`` SELL, ``R + a`` BUY). A stop with a deadline (``expires_at``, epoch ms)
expires at the first trade at or after it, before that trade is applied (or when the caller's
clock says so: :meth:`Engine.expire_due`); expired, like triggered, is final.

Why it is fast
--------------
A tick must not cost more because many stops sit idle, so nothing here loops over stops:

* Prices are *oriented* per side: ``x = p`` for SELL and ``x = -p`` for BUY. Then both sides read
  the same: the reference is the running maximum of ``x``; the stop level is ``R * f`` with
  ``f = 1 - d`` (SELL) or ``1 + d`` (BUY) for a percent trail, ``R - a`` for an amount (the
  oriented ``-(R' + a)`` of a BUY is ``R - a`` too); a stop triggers when ``x <= level``; a stop
  with activation price ``A`` activates when ``x >= a`` with ``a`` the oriented ``A``.
* Pending stops sit in a heap by ``a``; a tick pops only the ones it activates.
* Active stops with the same reference form a *group*. A new extreme ``x`` merges every group with
  ``R < x`` into one (smaller into larger, so each stop moves O(log n) times in all); a heap by
  ``R`` finds those groups.
* Inside a group, the percent stops with the smallest trail and the amount stops with the smallest
  amount have the highest levels of their kind: two heaps, and the higher of their two tops is the
  group's best level (which kind is higher depends on ``R``, so they cannot share one heap). A
  heap over groups keyed by their best stop level answers "does anything trigger at ``x``?" by
  looking at its top.
* Deadlines sit in one heap; a tick looks at its top.

Stale heap entries are skipped lazily (version numbers) rather than searched for and removed.
All arithmetic is :class:`~decimal.Decimal` under :data:`~trailingstop.core.decimals.EXACT`, which traps
inexact results, so a stop level is exact (``110 * 0.99 == 108.9``) and a rounding error raises
instead of deciding. Orienting a price (``-p``) uses ``copy_negate``: the ``-`` operator would round
to the default context's 28 digits, and accepted prices have up to 40.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from trailingstop.core.decimals import EXACT, oriented

Side = Literal["SELL", "BUY"]
EventKind = Literal["armed", "activated", "reference", "triggered", "expired"]
StopPhase = Literal["armed", "tracking", "triggered", "expired"]
FINAL_PHASES: frozenset[str] = frozenset({"triggered", "expired"})

_HUNDRED = Decimal(100)
_ONE = Decimal(1)
_ZERO = Decimal(0)
_NO_EVENTS: tuple[EngineEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """Something that happened to a stop. Prices are real (not oriented) decimals."""

    kind: EventKind
    stop_id: str
    price: Decimal | None = None  # the trade that activated / triggered it
    reference: Decimal | None = None
    stop_price: Decimal | None = None
    trade_id: int | None = None
    time: int | None = None


@dataclass(frozen=True, slots=True)
class StopState:
    """Where one stop stands; also what is saved to, and restored from, the resource status.
    Exactly one of ``trailing_percent`` and ``trailing_amount`` is set."""

    stop_id: str
    side: Side
    trailing_percent: Decimal | None
    activation_price: Decimal | None
    phase: StopPhase
    reference: Decimal | None = None
    stop_price: Decimal | None = None
    activated_price: Decimal | None = None
    activated_trade_id: int | None = None
    activated_at: int | None = None
    trigger_price: Decimal | None = None
    trigger_trade_id: int | None = None
    triggered_at: int | None = None
    trailing_amount: Decimal | None = None
    expires_at: int | None = None


def stop_level(
    side: Side, reference: Decimal, trailing_percent: Decimal | None, trailing_amount: Decimal | None = None
) -> Decimal:
    """``R * (1 - p/100)`` / ``R - a`` for SELL, ``R * (1 + p/100)`` / ``R + a`` for BUY, exactly."""
    if trailing_amount is not None:
        return EXACT.subtract(reference, trailing_amount) if side == "SELL" else EXACT.add(reference, trailing_amount)
    assert trailing_percent is not None, "a stop trails by a percent or by an amount"
    return EXACT.multiply(reference, _factor(side, trailing_percent))


def _factor(side: Side, trailing_percent: Decimal) -> Decimal:
    trail = EXACT.divide(trailing_percent, _HUNDRED)
    return EXACT.subtract(_ONE, trail) if side == "SELL" else EXACT.add(_ONE, trail)


class _Stop:
    __slots__ = (
        "activated_at",
        "activated_price",
        "activated_trade_id",
        "activation",
        "amount",
        "book",
        "expires_at",
        "factor",
        "final_reference",
        "final_stop_price",
        "group",
        "phase",
        "side",
        "stop_id",
        "trail",
        "trigger_price",
        "trigger_trade_id",
        "triggered_at",
        "version",
    )

    def __init__(self, stop_id: str, side: Side) -> None:
        self.stop_id = stop_id
        self.side: Side = side
        self.trail = Decimal(0)  # the percent of a percent stop (its heap key)
        self.factor = _ONE
        self.amount: Decimal | None = None  # the distance of an amount stop (its heap key); None: percent
        self.expires_at: int | None = None
        self.activation: Decimal | None = None
        self.phase: StopPhase = "armed"
        self.group: _Group | None = None
        self.version = 0  # bumped whenever the stop's heap entries become stale
        self.book: _SideBook | None = None
        self.activated_at: int | None = None
        self.activated_price: Decimal | None = None
        self.activated_trade_id: int | None = None
        self.triggered_at: int | None = None
        self.trigger_price: Decimal | None = None
        self.trigger_trade_id: int | None = None
        self.final_reference: Decimal | None = None  # reference and stop level at the trigger
        self.final_stop_price: Decimal | None = None

    def set_trail(self, side: Side, trailing_percent: Decimal | None, trailing_amount: Decimal | None) -> None:
        _check_trail(trailing_percent, trailing_amount)
        if trailing_amount is not None:
            self.amount, self.trail, self.factor = trailing_amount, Decimal(0), _ONE
        else:
            assert trailing_percent is not None
            self.amount, self.trail, self.factor = None, trailing_percent, _factor(side, trailing_percent)

    def level(self, reference: Decimal) -> Decimal:
        """The oriented stop level at oriented reference ``reference``."""
        amount = self.amount
        if amount is None:
            return EXACT.multiply(reference, self.factor)
        return EXACT.subtract(reference, amount)


class _Group:
    """Active stops of one side sharing the same (oriented) reference ``R``."""

    __slots__ = ("alive", "amounts", "dirty", "percents", "reference", "size", "version")

    def __init__(self, reference: Decimal) -> None:
        self.reference = reference
        # Heaps of (trail, seq, stop version, stop), one per kind of trail: the smallest percent
        # and the smallest amount have the highest stop level of their kind.
        self.percents: list[tuple[Decimal, int, int, _Stop]] = []
        self.amounts: list[tuple[Decimal, int, int, _Stop]] = []
        self.size = 0
        self.version = 0
        self.alive = True
        self.dirty = False

    def _top(self, entries: list[tuple[Decimal, int, int, _Stop]]) -> _Stop | None:
        while entries:
            _, _, version, stop = entries[0]
            if stop.version == version and stop.group is self:
                return stop
            heapq.heappop(entries)
        return None

    def best(self) -> tuple[_Stop, Decimal] | None:
        """The live stop with the highest stop level and that level, dropping stale entries."""
        percent = self._top(self.percents) if self.percents else None
        amount = self._top(self.amounts) if self.amounts else None
        if amount is None:
            return None if percent is None else (percent, EXACT.multiply(self.reference, percent.factor))
        amount_level = amount.level(self.reference)
        if percent is None:
            return amount, amount_level
        percent_level = EXACT.multiply(self.reference, percent.factor)
        return (percent, percent_level) if percent_level >= amount_level else (amount, amount_level)

    def add(self, stop: _Stop, seq: int) -> None:
        if stop.amount is None:
            heapq.heappush(self.percents, (stop.trail, seq, stop.version, stop))
        else:
            heapq.heappush(self.amounts, (stop.amount, seq, stop.version, stop))

    def live_stops(self) -> Iterator[_Stop]:
        for entries in (self.percents, self.amounts):
            for _, _, version, stop in entries:
                if stop.version == version and stop.group is self:
                    yield stop


class _SideBook:
    """All stops of one side, in oriented prices (see the module docstring)."""

    __slots__ = ("by_reference", "dirty", "groups", "immediate", "pending", "seq", "sign", "triggers")

    def __init__(self, sign: int, seq: Iterator[int]) -> None:
        self.sign = sign
        self.seq = seq
        self.pending: list[tuple[Decimal, int, int, _Stop]] = []  # (a, seq, version, stop)
        self.immediate: list[tuple[int, _Stop]] = []  # no activation price: next trade activates
        self.groups: dict[Decimal, _Group] = {}
        self.by_reference: list[tuple[Decimal, int, _Group]] = []  # min-heap of R
        # Min-heap of (-level, seq, group version, group): top = highest stop level.
        self.triggers: list[tuple[Decimal, int, int, _Group]] = []
        self.dirty: list[_Group] = []

    # --- placing stops ---------------------------------------------------------------------

    def arm(self, stop: _Stop) -> None:
        stop.phase = "armed"
        stop.book = self
        stop.group = None
        if stop.activation is None:
            self.immediate.append((stop.version, stop))
        else:
            a = oriented(stop.activation, self.sign)
            heapq.heappush(self.pending, (a, next(self.seq), stop.version, stop))

    def track(self, stop: _Stop, reference: Decimal) -> None:
        """Put an active stop into the group of oriented reference ``reference``."""
        stop.phase = "tracking"
        stop.book = self
        group = self.groups.get(reference)
        if group is None:
            group = self.groups[reference] = _Group(reference)
            heapq.heappush(self.by_reference, (reference, next(self.seq), group))
        self._join(group, stop)
        self._offer(group)

    def _join(self, group: _Group, stop: _Stop) -> None:
        stop.group = group
        group.size += 1
        group.add(stop, next(self.seq))

    def leave(self, stop: _Stop) -> None:
        """Forget a stop's place (its heap entries go stale); keeps group sizes right."""
        group = stop.group
        stop.version += 1
        stop.group = None
        if group is not None:
            group.size -= 1
            if group.size == 0:
                self._drop(group)

    def _drop(self, group: _Group) -> None:
        group.alive = False
        group.version += 1
        if self.groups.get(group.reference) is group:
            del self.groups[group.reference]

    def _offer(self, group: _Group) -> None:
        """(Re)publish a group's best stop level to the trigger heap."""
        best = group.best()
        group.version += 1
        if best is None:
            return
        level = best[1]
        heapq.heappush(self.triggers, (level.copy_negate(), next(self.seq), group.version, group))

    # --- the tick ----------------------------------------------------------------------------

    def on_price(
        self,
        x: Decimal,
        minus_x: Decimal,
        price: Decimal,
        trade_id: int | None,
        time: int | None,
        out: list[EngineEvent],
    ) -> None:
        by_reference = self.by_reference
        if by_reference and by_reference[0][0] < x:
            self._raise_reference(x)
        triggers = self.triggers
        if triggers and triggers[0][0] <= minus_x:
            self._trigger(x, minus_x, price, trade_id, time, out)
        pending = self.pending
        if (pending and pending[0][0] <= x) or self.immediate:
            self._activate(x, price, trade_id, time, out)

    def _raise_reference(self, x: Decimal) -> None:
        """Every group with R < x now has R = x: merge them, smaller into larger."""
        merging: list[_Group] = []
        by_reference = self.by_reference
        while by_reference and by_reference[0][0] < x:
            _, _, group = heapq.heappop(by_reference)
            if group.alive:
                merging.append(group)
        if not merging:
            return
        target = self.groups.get(x)
        if target is not None:
            merging.append(target)
        survivor = max(merging, key=lambda g: g.size)
        for group in merging:
            if group is survivor:
                continue
            for stop in list(group.live_stops()):
                group.size -= 1
                stop.version += 1
                self._join(survivor, stop)
            self._drop(group)
        if survivor.reference != x:
            del self.groups[survivor.reference]
            survivor.reference = x
            self.groups[x] = survivor
            heapq.heappush(by_reference, (x, next(self.seq), survivor))
        self._offer(survivor)
        if not survivor.dirty:
            survivor.dirty = True
            self.dirty.append(survivor)

    def _trigger(
        self,
        x: Decimal,
        minus_x: Decimal,
        price: Decimal,
        trade_id: int | None,
        time: int | None,
        out: list[EngineEvent],
    ) -> None:
        triggers = self.triggers
        touched: list[_Group] = []
        while triggers and triggers[0][0] <= minus_x:
            _, _, version, group = heapq.heappop(triggers)
            if not group.alive or version != group.version:
                continue
            while (best := group.best()) is not None:
                stop, level = best
                # A SELL whose level is at or below 0 (an amount at or above the reference) can
                # never be sold at: it does not trigger, whatever the price (DESIGN §4).
                if not x <= level or (self.sign > 0 and level <= _ZERO):
                    break
                self._fire(stop, group, level, price, trade_id, time, out)
            if group.alive:
                touched.append(group)
        for group in touched:
            self._offer(group)

    def _fire(
        self,
        stop: _Stop,
        group: _Group,
        level: Decimal,
        price: Decimal,
        trade_id: int | None,
        time: int | None,
        out: list[EngineEvent],
    ) -> None:
        reference = oriented(group.reference, self.sign)
        self.leave(stop)
        stop.phase = "triggered"
        stop.book = None
        stop.trigger_price = price
        stop.trigger_trade_id = trade_id
        stop.triggered_at = time
        stop.final_reference = reference
        stop.final_stop_price = oriented(level, self.sign)
        out.append(
            EngineEvent("triggered", stop.stop_id, price, reference, stop.final_stop_price, trade_id, time)
        )

    def _activate(
        self, x: Decimal, price: Decimal, trade_id: int | None, time: int | None, out: list[EngineEvent]
    ) -> None:
        activating: list[_Stop] = []
        pending = self.pending
        while pending and pending[0][0] <= x:
            _, _, version, stop = heapq.heappop(pending)
            if stop.version == version and stop.phase == "armed" and stop.book is self:
                activating.append(stop)
        for version, stop in self.immediate:
            if stop.version == version and stop.phase == "armed" and stop.book is self:
                activating.append(stop)
        self.immediate.clear()
        for stop in activating:
            stop.version += 1
            stop.activated_price = price
            stop.activated_trade_id = trade_id
            stop.activated_at = time
            self.track(stop, x)
            level = oriented(stop.level(x), self.sign)
            out.append(EngineEvent("activated", stop.stop_id, price, price, level, trade_id, time))


class Engine:
    """Trailing stops of one symbol. Not thread-safe; one engine per symbol and process."""

    def __init__(self, symbol: str = "") -> None:
        self.symbol = symbol
        seq = itertools.count()
        self._sell = _SideBook(1, seq)
        self._buy = _SideBook(-1, seq)
        self._stops: dict[str, _Stop] = {}
        self._seq = seq
        # Min-heap of (deadline, seq, stop); an entry is stale once its stop has another deadline,
        # is final or is gone (checked when it reaches the top).
        self._deadlines: list[tuple[int, int, _Stop]] = []
        self.last_trade_id: int | None = None
        self.last_price: Decimal | None = None
        self.last_time: int | None = None
        self.duplicates = 0  # trades dropped as duplicate or out of order

    # --- stops -----------------------------------------------------------------------------

    def upsert(
        self,
        stop_id: str,
        side: Side,
        trailing_percent: Decimal | None,
        activation_price: Decimal | None = None,
        *,
        trailing_amount: Decimal | None = None,
        expires_at: int | None = None,
    ) -> list[EngineEvent]:
        """Add a stop, or change a live one's trail (percent or amount, either way round),
        activation price or deadline, keeping its reference.

        A new stop is armed: it activates on the next trade that reaches its activation price
        (or on the next trade at all without one). Changing a triggered stop is refused with
        :class:`StopAlreadyTriggered`, an expired one with :class:`StopExpired`; changing the side
        with :class:`ValueError`.
        """
        _check_trail(trailing_percent, trailing_amount)
        stop = self._stops.get(stop_id)
        if stop is None:
            stop = self._stops[stop_id] = _Stop(stop_id, side)
        elif stop.side != side:
            raise ValueError(f"stop {stop_id}: side is immutable ({stop.side} -> {side})")
        elif stop.phase == "triggered":
            raise StopAlreadyTriggered(stop_id)
        elif stop.phase == "expired":
            raise StopExpired(stop_id)
        book = self._book(side)
        stop.set_trail(side, trailing_percent, trailing_amount)
        stop.activation = activation_price
        self._set_deadline(stop, expires_at)
        if stop.phase == "tracking" and stop.group is not None:
            reference = stop.group.reference
            book.leave(stop)
            book.track(stop, reference)
            return [self._reference_event(stop)]
        book.leave(stop)
        book.arm(stop)
        return [EngineEvent("armed", stop_id)]

    def restore(self, state: StopState) -> None:
        """Put back a stop from saved state (after a restart): armed, tracking, triggered or expired."""
        _check_trail(state.trailing_percent, state.trailing_amount)
        if state.stop_id in self._stops:
            self.cancel(state.stop_id)
        stop = self._stops[state.stop_id] = _Stop(state.stop_id, state.side)
        stop.set_trail(state.side, state.trailing_percent, state.trailing_amount)
        stop.activation = state.activation_price
        stop.activated_price = state.activated_price
        stop.activated_trade_id = state.activated_trade_id
        stop.activated_at = state.activated_at
        book = self._book(state.side)
        if state.phase == "expired":
            stop.phase = "expired"
            stop.expires_at = state.expires_at
            stop.final_reference, stop.final_stop_price = state.reference, state.stop_price
            return
        self._set_deadline(stop, state.expires_at)
        if state.phase == "triggered":
            stop.phase = "triggered"
            stop.final_reference = state.reference
            stop.final_stop_price = state.stop_price
            stop.trigger_price = state.trigger_price
            stop.trigger_trade_id = state.trigger_trade_id
            stop.triggered_at = state.triggered_at
        elif state.phase == "tracking":
            if state.reference is None:
                raise ValueError(f"stop {state.stop_id}: a tracking stop needs its reference price")
            book.track(stop, oriented(state.reference, book.sign))
        else:
            book.arm(stop)

    def cancel(self, stop_id: str) -> bool:
        """Remove a stop. Returns False if it was unknown."""
        stop = self._stops.pop(stop_id, None)
        if stop is None:
            return False
        if stop.book is not None:
            stop.book.leave(stop)
        stop.version += 1
        stop.book = None
        return True

    def __contains__(self, stop_id: object) -> bool:
        return stop_id in self._stops

    def __len__(self) -> int:
        return len(self._stops)

    def stop_ids(self) -> list[str]:
        return list(self._stops)

    def state(self, stop_id: str) -> StopState:
        """A stop's current state (KeyError if unknown)."""
        stop = self._stops[stop_id]
        reference, stop_price = stop.final_reference, stop.final_stop_price
        if stop.phase == "tracking" and stop.group is not None and stop.book is not None:
            sign = stop.book.sign
            reference = oriented(stop.group.reference, sign)
            stop_price = oriented(stop.level(stop.group.reference), sign)
        return StopState(
            stop_id=stop.stop_id,
            side=stop.side,
            trailing_percent=stop.trail if stop.amount is None else None,
            trailing_amount=stop.amount,
            expires_at=stop.expires_at,
            activation_price=stop.activation,
            phase=stop.phase,
            reference=reference,
            stop_price=stop_price,
            activated_price=stop.activated_price,
            activated_trade_id=stop.activated_trade_id,
            activated_at=stop.activated_at,
            trigger_price=stop.trigger_price,
            trigger_trade_id=stop.trigger_trade_id,
            triggered_at=stop.triggered_at,
        )

    def active_count(self) -> int:
        return sum(1 for stop in self._stops.values() if stop.phase not in FINAL_PHASES)

    # --- deadlines ---------------------------------------------------------------------------

    def _set_deadline(self, stop: _Stop, expires_at: int | None) -> None:
        if expires_at is not None and expires_at != stop.expires_at:
            heapq.heappush(self._deadlines, (expires_at, next(self._seq), stop))
        stop.expires_at = expires_at

    def expire_due(self, now: int, trade_id: int | None = None) -> list[EngineEvent]:
        """Expire every live stop whose deadline is at or before ``now`` (epoch ms).

        :meth:`on_trade` calls it with each trade's time (exchange time decides, DESIGN §4); an
        orchestrator calls it with its own clock when no trade comes. ``trade_id`` is the trade
        that told, if one did; the event's time is ``now``."""
        deadlines = self._deadlines
        out: list[EngineEvent] = []
        while deadlines and deadlines[0][0] <= now:
            deadline, _, stop = heapq.heappop(deadlines)
            if stop.expires_at != deadline or stop.phase in FINAL_PHASES or self._stops.get(stop.stop_id) is not stop:
                continue  # stale: another deadline now, final already, or cancelled
            out.append(self._expire(stop, now, trade_id))
        return out

    def _expire(self, stop: _Stop, now: int, trade_id: int | None) -> EngineEvent:
        state = self.state(stop.stop_id)
        if stop.book is not None:
            stop.book.leave(stop)
        stop.version += 1
        stop.book = None
        stop.phase = "expired"
        stop.final_reference, stop.final_stop_price = state.reference, state.stop_price
        return EngineEvent("expired", stop.stop_id, self.last_price, state.reference, state.stop_price, trade_id, now)

    # --- trades ------------------------------------------------------------------------------

    def on_trade(
        self, price: Decimal, trade_id: int | None = None, time: int | None = None
    ) -> list[EngineEvent] | tuple[EngineEvent, ...]:
        """Apply one trade (in trade order). Returns expiries (stops whose deadline is at or before
        the trade's time: the trade is not applied to them), then activations and triggers, in
        that order of occurrence per side. A trade id at or below the last one seen is dropped
        and counted."""
        if trade_id is not None:
            last = self.last_trade_id
            if last is not None and trade_id <= last:
                self.duplicates += 1
                return _NO_EVENTS
            self.last_trade_id = trade_id
        out: list[EngineEvent] = []
        deadlines = self._deadlines
        if deadlines and time is not None and deadlines[0][0] <= time:
            out.extend(self.expire_due(time, trade_id))
        self.last_price = price
        self.last_time = time
        sell, buy = self._sell, self._buy
        minus_price = price.copy_negate()  # the BUY side's oriented price, once per tick; exact (not "-")
        if sell.by_reference or sell.pending or sell.immediate:
            sell.on_price(price, minus_price, price, trade_id, time, out)
        if buy.by_reference or buy.pending or buy.immediate:
            buy.on_price(minus_price, price, price, trade_id, time, out)
        return out or _NO_EVENTS

    def drain_reference_changes(self) -> list[EngineEvent]:
        """One ``reference`` event per tracking stop whose reference moved since the last drain."""
        events: list[EngineEvent] = []
        for book in (self._sell, self._buy):
            for group in book.dirty:
                group.dirty = False
                if not group.alive:
                    continue
                for stop in group.live_stops():
                    events.append(self._reference_event(stop))
            book.dirty.clear()
        return events

    # --- internals ---------------------------------------------------------------------------

    def _book(self, side: Side) -> _SideBook:
        if side == "SELL":
            return self._sell
        if side == "BUY":
            return self._buy
        raise ValueError(f"side must be SELL or BUY, got {side!r}")

    def _reference_event(self, stop: _Stop) -> EngineEvent:
        state = self.state(stop.stop_id)
        return EngineEvent(
            "reference",
            stop.stop_id,
            self.last_price,
            state.reference,
            state.stop_price,
            self.last_trade_id,
            self.last_time,
        )


class StopIsFinal(Exception):
    """A triggered or expired stop is final: it cannot be changed and never fires again."""

    def __init__(self, stop_id: str, what: str) -> None:
        super().__init__(f"stop {stop_id} has {what}; it cannot be changed")
        self.stop_id = stop_id


class StopAlreadyTriggered(StopIsFinal):
    def __init__(self, stop_id: str) -> None:
        super().__init__(stop_id, "already triggered")


class StopExpired(StopIsFinal):
    def __init__(self, stop_id: str) -> None:
        super().__init__(stop_id, "expired")


def _check_trail(trailing_percent: Decimal | None, trailing_amount: Decimal | None) -> None:
    if (trailing_percent is None) == (trailing_amount is None):
        raise ValueError("exactly one of trailingPercent and trailingAmount must be set")
    if trailing_percent is not None and not (0 < trailing_percent < 100):
        raise ValueError(f'trailingPercent must be > 0 and < 100, got "{trailing_percent}"')
    if trailing_amount is not None and not trailing_amount > 0:
        raise ValueError(f'trailingAmount must be > 0, got "{trailing_amount}"')

"""The life of a TrailingStop in one place: its phases, the moves between them, and how its status
follows events. Pure: no I/O.

Everything that asks "which phase comes next?" or "is this stop done?" asks this module:

* :class:`Phase` and :data:`TRANSITIONS`, the table of moves (DESIGN §3). The CRD's rule that
  freezes the spec of a stop that fired or ended is generated from :data:`FROZEN`.
* The status reducer: :func:`apply_stop_event`, :func:`apply_order_result`,
  :func:`triggered_by_order`, and the operator's own steps (:func:`pending`,
  :func:`spec_accepted`, :func:`spec_refused`). Events arrive late or twice (two queues,
  redeliveries): an event whose phase the table cannot reach from where the stop is, is late, and
  changes nothing. Every new status is built by :func:`_evolve`, which validates it and raises
  :class:`IllegalTransition` for a move the table does not have, so a bug fails loudly instead of
  writing a status no one meant.
* The conversions between the three views of one stop: the CR status (what ``kubectl`` shows),
  the saved state (what a restarting orchestrator is handed, :func:`saved_state`) and the engine's
  state (:func:`engine_state`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from trailingstop.core.contracts import (
    Condition,
    OrderResult,
    OrderStatus,
    Phase,
    PriceGap,
    SavedState,
    StopDefinition,
    StopEvent,
    TrailingStopStatus,
    client_order_id,
    ms_to_rfc3339,
    rfc3339_to_ms,
    to_wire,
)
from trailingstop.core.decimals import EXACT
from trailingstop.core.engine import StopState

__all__ = [
    "FINAL",
    "FIRED",
    "FROZEN",
    "TRANSITIONS",
    "ConditionType",
    "IllegalTransition",
    "Phase",
    "apply_order_result",
    "apply_stop_event",
    "can_move",
    "engine_state",
    "is_final",
    "is_frozen",
    "order_outcome",
    "pending",
    "resume_after",
    "saved_state",
    "set_condition",
    "spec_accepted",
    "spec_refused",
    "trigger_of",
    "triggered_by_order",
]

# How an order ended. Failed is what earlier versions wrote for an order that ended with nothing
# filled; it is read (statuses written then), no longer written: Unfilled says it now.
ORDER_OUTCOMES: frozenset[Phase] = frozenset(
    {Phase.FILLED, Phase.PARTIALLY_FILLED, Phase.UNFILLED, Phase.REJECTED, Phase.FAILED}
)
FINAL: frozenset[Phase] = frozenset({*ORDER_OUTCOMES, Phase.EXPIRED})
# The stop has fired: its order exists (or is on its way).
FIRED: frozenset[Phase] = frozenset({Phase.TRIGGERED, *ORDER_OUTCOMES})
# The spec can no longer change: the stop fired (a new spec would be a new stop) or ended.
FROZEN: frozenset[Phase] = frozenset({*FIRED, *FINAL})

# Every move a status may make; staying in a phase is always allowed. Why each edge exists:
# * Pending -> anything but an order's outcome: events travel separately and may arrive out of
#   order (a stop with no activation price is armed and activated by one trade; an order's result
#   can overtake every event of its stop; a stop created after its expiresAt expires at once).
# * Tracking -> Invalid: a spec edit (say, a smaller quantity) the exchange would refuse; and
#   Invalid -> Armed/Tracking: the fixed spec puts the stop back where it was.
# * -> Triggered from every watched phase: an order exists, whatever the events said so far.
# * -> Expired from every watched phase: spec.expiresAt passed before a trigger (an Invalid stop's
#   deadline passes too). Never from Triggered: a stop that fired has its order.
# * Triggered -> an order's outcome. Final phases never move.
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = MappingProxyType({
    Phase.PENDING: frozenset({Phase.ARMED, Phase.TRACKING, Phase.INVALID, Phase.TRIGGERED, Phase.EXPIRED}),
    Phase.ARMED: frozenset({Phase.TRACKING, Phase.INVALID, Phase.TRIGGERED, Phase.EXPIRED}),
    Phase.TRACKING: frozenset({Phase.INVALID, Phase.TRIGGERED, Phase.EXPIRED}),
    Phase.INVALID: frozenset({Phase.ARMED, Phase.TRACKING, Phase.TRIGGERED, Phase.EXPIRED}),
    Phase.TRIGGERED: ORDER_OUTCOMES,
    Phase.FILLED: frozenset(),
    Phase.PARTIALLY_FILLED: frozenset(),
    Phase.UNFILLED: frozenset(),
    Phase.REJECTED: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.EXPIRED: frozenset(),
})


class ConditionType(StrEnum):
    READY = "Ready"
    ACTIVATED = "Activated"
    TRIGGERED = "Triggered"
    FILLED = "Filled"
    SPEC_ACCEPTED = "SpecAccepted"
    WORKERS_READY = "WorkersReady"


# Ready follows the phase (DESIGN §3): True while the stop does, or has done, what it was asked
# (watching, trailing, its order sent or filled); False while it cannot yet or can no more (waiting
# for its orchestrator, an order the exchange would refuse or refused, a failed order), and also
# while its workers are not ready. (phase -> Ready status, reason, message when the status has none)
READY: Mapping[Phase, tuple[bool, str, str]] = MappingProxyType({
    Phase.PENDING: (False, "Pending", "waiting for the symbol's orchestrator"),
    Phase.ARMED: (True, "Armed", "the orchestrator is watching this stop"),
    Phase.TRACKING: (True, "Tracking", "trailing the price"),
    Phase.INVALID: (False, "InvalidOrder", "the exchange would refuse this stop's order"),
    Phase.TRIGGERED: (True, "OrderSent", "the stop price was reached; the order is being placed"),
    Phase.FILLED: (True, "Filled", "the order filled"),
    Phase.REJECTED: (False, "Rejected", "the exchange rejected the order"),
    Phase.FAILED: (False, "Failed", "the order failed"),
    Phase.PARTIALLY_FILLED: (False, "PartiallyFilled", "the limit order filled in part; the rest expired"),
    Phase.UNFILLED: (False, "Unfilled", "the limit order found no price within the slippage bound"),
    Phase.EXPIRED: (False, "Expired", "expired before it triggered; no order was placed"),
})


class IllegalTransition(ValueError):
    """A move the table does not allow: a bug in the caller, never a status to write."""


def can_move(before: Phase | str, after: Phase | str) -> bool:
    return before == after or Phase(after) in TRANSITIONS[Phase(before)]


def is_final(phase: Phase | str) -> bool:
    return phase in FINAL


def has_fired(phase: Phase | str) -> bool:
    return phase in FIRED


def is_frozen(phase: Phase | str) -> bool:
    """The spec of a stop in this phase can no longer change (DESIGN §3)."""
    return phase in FROZEN


# --- conditions ---------------------------------------------------------------------------------


def set_condition(
    conditions: Sequence[Condition],
    type_: ConditionType,
    status: str,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """Set one condition; ``lastTransitionTime`` moves only when its status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    return [updated if c.type == type_ else c for c in conditions] if previous else [*conditions, updated]


# --- the operator's own steps -----------------------------------------------------------------------


def pending(status: TrailingStopStatus, generation: int, now: str) -> TrailingStopStatus:
    """A new stop, written before its orchestrator has seen it."""
    return _evolve(status, now=now, observed_generation=generation)


def workers_ready(status: TrailingStopStatus, ready: bool, reason: str, message: str, now: str) -> TrailingStopStatus:
    """What the stop's worker pods are doing (``WorkersReady``), and so Ready. A fired stop's are
    retired or about to be: they no longer say anything about it."""
    if has_fired(status.phase):
        return status
    conditions = set_condition(status.conditions, ConditionType.WORKERS_READY, "True" if ready else "False",
                               reason, message, now, status.observed_generation)
    return _evolve(status, now=now, conditions=conditions)


def spec_accepted(status: TrailingStopStatus, generation: int, now: str) -> TrailingStopStatus:
    conditions = set_condition(status.conditions, ConditionType.SPEC_ACCEPTED, "True", "Applied",
                               f"generation {generation}", now, generation)
    return _evolve(status, conditions=conditions)


def spec_refused(status: TrailingStopStatus, generation: int, now: str) -> TrailingStopStatus:
    """A fired stop's order exists, an ended stop is done: a new spec would be a new stop. Say so,
    change nothing else."""
    conditions = set_condition(status.conditions, ConditionType.SPEC_ACCEPTED, "False", "SpecChangeRefused",
                               f"the stop is {status.phase}; create a new TrailingStop instead", now, generation)
    return _evolve(status, conditions=conditions)


# --- events from the orchestrator ---------------------------------------------------------------------


def apply_stop_event(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    """The status after a per-stop or per-symbol StopEvent (``sync`` changes nothing)."""
    handler = _HANDLERS.get(event.type)
    return status if handler is None else handler(status, event, now)


def _armed(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if status.phase not in (Phase.ARMED,) and not can_move(status.phase, Phase.ARMED):
        return status
    return _evolve(status, now=now, **_moved(status, Phase.ARMED, event.generation), **_source(event))


def _activated(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if not can_move(status.phase, Phase.TRACKING):
        return status
    conditions = set_condition(status.conditions, ConditionType.ACTIVATED, "True", "PriceReached",
                               f"activated at {_plain(event.price)} by trade {event.trade_id}", now, event.generation)
    return _evolve(
        status,
        now=now,
        **_moved(status, Phase.TRACKING, event.generation),
        activated_at=_time(event.trade_time, now),
        activated_price=event.price,
        **_position(event, "activated"),
        reference_price=event.reference_price,
        stop_price=event.stop_price,
        conditions=conditions,
        **_last_price(status, event, now),
        **_source(event),
    )


def _reference(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if status.phase != Phase.TRACKING or _older(status, event):
        return status
    return _evolve(
        status,
        reference_price=event.reference_price,
        stop_price=event.stop_price,
        observed_generation=_generation(status, event),
        **_last_price(status, event, now),
        **_source(event),
    )


def _price(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if has_fired(status.phase) or _older(status, event) or event.price is None or _other_series(status, event):
        return status
    return _evolve(status, **_last_price(status, event, now))


def _gap(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    """Quotes were lost (a dropped stream, a restart): the stop went on from the first fresh quote;
    the gap is kept in the status, counted, and (by the operator) announced in an Event."""
    if has_fired(status.phase) or _other_series(status, event) or event.update_id is None:
        return status
    if event.gap_from is None or event.trade_time is None:
        return status
    last = status.last_gap
    if last is not None and event.update_id <= last.to_update_id:
        return status  # the same gap again (a redelivery), or an older one
    gap = PriceGap.model_validate({
        "from": ms_to_rfc3339(event.gap_from),
        "to": ms_to_rfc3339(event.trade_time),
        "seconds": EXACT.scaleb(Decimal(max(0, event.trade_time - event.gap_from)), -3),
        "fromUpdateId": event.gap_from_update_id,
        "toUpdateId": event.update_id,
    })
    # The first fresh quote is the stop's price now: LAST shows it with the gap.
    return _evolve(status, last_gap=gap, gap_count=(status.gap_count or 0) + 1, **_last_price(status, event, now),
                   **_source(event))


def _triggered(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if is_final(status.phase) and not has_fired(status.phase):
        return status  # expired: final, and no order of it may show (DESIGN §4, expiry)
    order_first = has_fired(status.phase)  # its result was applied already
    if order_first and status.triggered_at:
        return status  # a duplicate
    trigger: dict[str, Any] = {
        "triggered_at": _time(event.trade_time, now),
        "trigger_price": event.price,
        **_position(event, "trigger"),
        "reference_price": event.reference_price,
        "stop_price": event.stop_price,
        **_last_price(status, event, now),
        **_source(event),
        "conditions": _stop_price_reached(status.conditions, event, now),
    }
    if order_first:  # keep the outcome's phase and order; fill in the trigger
        return _evolve(status, **trigger)
    order = status.order or OrderStatus(
        client_order_id=client_order_id(event.uid or ""), status="PENDING", updated_at=now
    )
    return _evolve(status, now=now, **_moved(status, Phase.TRIGGERED, event.generation), **trigger, order=order)


def _invalid(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if not can_move(status.phase, Phase.INVALID):
        return status
    return _evolve(status, now=now, **_moved(status, Phase.INVALID, event.generation, event.message),
                   **_source(event))


def _expired(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if status.phase == Phase.EXPIRED or not can_move(status.phase, Phase.EXPIRED):
        return status  # a duplicate, or the stop fired first
    message = event.message or READY[Phase.EXPIRED][2]
    levels: dict[str, Any] = {}
    if event.reference_price is not None:
        levels = {"reference_price": event.reference_price, "stop_price": event.stop_price}
    return _evolve(status, now=now, **_moved(status, Phase.EXPIRED, event.generation, message), **levels)


def _stop_price_reached(conditions: Sequence[Condition], event: StopEvent, now: str) -> list[Condition]:
    return set_condition(
        conditions, ConditionType.TRIGGERED, "True", "StopPriceReached",
        f"price {_plain(event.price)} reached stop {_plain(event.stop_price)} "
        f"(reference {_plain(event.reference_price)})",
        now, event.generation,
    )


_HANDLERS = {
    "armed": _armed,
    "activated": _activated,
    "reference": _reference,
    "price": _price,
    "triggered": _triggered,
    "invalid": _invalid,
    "expired": _expired,
    "gap": _gap,
}


# --- results from the executor ---------------------------------------------------------------------


def apply_order_result(status: TrailingStopStatus, result: OrderResult, now: str) -> TrailingStopStatus:
    """The status after the executor's OrderResult for this stop: Triggered (an order exists,
    whatever came first), then the order's outcome."""
    phase, reason, message = order_outcome(result)
    order = OrderStatus(
        client_order_id=result.client_order_id,
        order_id=result.order_id,
        status=result.status,
        type=result.type,
        price=result.price,
        orig_qty=result.orig_qty,
        executed_qty=result.executed_qty,
        remaining_qty=_remaining(result) if phase != Phase.TRIGGERED else None,
        avg_price=result.avg_price,
        cummulative_quote_qty=result.cummulative_quote_qty,
        error=result.error,
        updated_at=ms_to_rfc3339(result.at),
    )
    if is_final(status.phase) and phase != status.phase:
        return status  # a late result that would move a final stop
    if status.order == order and (phase == Phase.TRIGGERED or status.phase == phase):
        return status  # a duplicate
    if not has_fired(status.phase):
        conditions = _order_placed(status.conditions, result, now, status.observed_generation)
        status = _evolve(status, now=now, phase=Phase.TRIGGERED, conditions=conditions)
    if phase == Phase.TRIGGERED or status.phase == phase:
        return _evolve(status, order=order)
    conditions = set_condition(status.conditions, ConditionType.FILLED, "True" if phase == Phase.FILLED else "False",
                               reason, message, now, status.observed_generation)
    return _evolve(status, now=now, phase=phase, message=message, order=order, conditions=conditions)


def triggered_by_order(status: TrailingStopStatus, result: OrderResult, now: str) -> TrailingStopStatus | None:
    """The Triggered status to write before an order result's outcome, when the result arrived
    before the stop's ``triggered`` event (they travel on different queues), so the history reads
    ... -> Triggered -> Filled either way. None when no such step is needed.

    A result carries its trigger (copied from the PlaceOrder), so the step is the very status the
    ``triggered`` event gives, and the event, should it still come, is a duplicate: the status is
    complete even if the orchestrator died between the order and the event. A result from an older
    executor has no trigger: the step then says so (reason ``OrderPlaced``), and the event fills in
    the details.

    Compute it, and then the outcome (:func:`apply_order_result`), each from the status current at
    that moment: events for the same stop may be applied in between."""
    if has_fired(status.phase) or is_final(status.phase) or order_outcome(result)[0] == Phase.TRIGGERED:
        return None
    trigger = trigger_of(result)
    if trigger is not None:
        return _triggered(status, trigger, now)
    order = apply_order_result(status, result, now).order
    conditions = _order_placed(status.conditions, result, now, status.observed_generation)
    return _evolve(status, now=now, phase=Phase.TRIGGERED, message=None, order=order, conditions=conditions)


def trigger_of(result: OrderResult) -> StopEvent | None:
    """The ``triggered`` event an order result stands for (None if it carries no trigger)."""
    if result.trigger_price is None or (result.trigger_trade_id is None and result.trigger_update_id is None):
        return None
    return StopEvent(
        type="triggered",
        symbol=result.symbol,
        uid=result.uid,
        namespace=result.namespace or None,
        name=result.name or None,
        price=result.trigger_price,
        reference_price=result.reference_price,
        stop_price=result.stop_price,
        trade_id=result.trigger_trade_id,
        trade_time=result.triggered_at,
        at=result.at,
        update_id=result.trigger_update_id,
        price_source=result.price_source,
    )


def order_outcome(result: OrderResult) -> tuple[Phase, str, str]:
    """(phase, condition reason, message) for an order result.

    An order that ended (EXPIRED: a LIMIT IOC's rest, a MARKET order the book could not fill;
    CANCELED) is PartiallyFilled or Unfilled, never Filled: the quantity not sold or bought is
    the user's to handle, and no second order is placed (DESIGN §4 "Execution")."""
    executed = "-" if result.executed_qty is None else to_wire(result.executed_qty)
    quantity = f"{result.side} {executed} {result.symbol}"
    if result.status in ("FILLED", "SIMULATED"):
        how = "simulated fill" if result.status == "SIMULATED" else "filled"
        price = "-" if result.avg_price is None else to_wire(result.avg_price)
        return Phase.FILLED, result.status.capitalize(), f"{how}: {quantity} at {price}"
    if result.status == "REJECTED" or result.error is not None:
        detail = f"Binance {result.error.code}: {result.error.message}" if result.error else "rejected"
        return Phase.REJECTED, "ExchangeRejected", detail
    if result.status in ("EXPIRED", "EXPIRED_IN_MATCH", "CANCELED"):
        ended = f"{result.type or 'MARKET'} order {result.status.lower()}"
        limit = f" (limit {to_wire(result.price)})" if result.price is not None else ""
        if result.executed_qty and result.executed_qty > 0:
            price = "-" if result.avg_price is None else to_wire(result.avg_price)
            rest = _remaining(result)
            remaining = "" if rest is None else f"; {to_wire(rest)} remaining"
            return (Phase.PARTIALLY_FILLED, "PartiallyFilled",
                    f"{ended}{limit} after filling {quantity} at {price}{remaining}; no further order")
        return (Phase.UNFILLED, "Unfilled" if result.status == "EXPIRED" else result.status.title().replace("_", ""),
                f"{ended}{limit} with nothing filled; no further order")
    return Phase.TRIGGERED, "OrderOpen", f"order {result.status.lower()}"


def _remaining(result: OrderResult) -> Decimal | None:
    """Ordered minus executed, exactly (None when the result does not say what was ordered)."""
    if result.orig_qty is None:
        return None
    executed = result.executed_qty if result.executed_qty is not None else Decimal(0)
    return EXACT.subtract(result.orig_qty, executed)


def _order_placed(conditions: Sequence[Condition], result: OrderResult, now: str,
                  generation: int | None) -> list[Condition]:
    """The Triggered condition when the order's result arrives before the ``triggered`` event;
    the event then fills in the price (the condition's status, hence its time, stays)."""
    return set_condition(
        conditions, ConditionType.TRIGGERED, "True", "OrderPlaced",
        f"order {result.client_order_id} is {result.status.lower()}; the trigger details follow", now, generation,
    )


# --- the three views of one stop ------------------------------------------------------------------


def saved_state(status: TrailingStopStatus) -> SavedState:
    """CR status -> what a restarting orchestrator needs to continue exactly where it was."""
    return SavedState(
        activated=status.reference_price is not None,
        activated_at=_ms(status.activated_at),
        activated_price=status.activated_price,
        activated_trade_id=status.activated_trade_id,
        reference_price=status.reference_price,
        triggered=status.triggered_at is not None or status.order is not None or has_fired(status.phase),
        expired=True if status.phase == Phase.EXPIRED else None,
        triggered_at=_ms(status.triggered_at),
        trigger_price=status.trigger_price,
        trigger_trade_id=status.trigger_trade_id,
        last_trade_id=status.last_trade_id,
        activated_update_id=status.activated_update_id,
        trigger_update_id=status.trigger_update_id,
        last_update_id=status.last_update_id,
        last_price_at=_ms(status.last_price_at),
    )


def engine_state(stop: StopDefinition) -> StopState:
    """A stop's saved state -> the engine's, to restore it where it was."""
    saved = stop.state
    if saved is None:
        raise ValueError(f"stop {stop.uid} has no saved state to restore")
    # The engine knows one id per series: trade ids, or for a book stop the book's updateIds.
    book = stop.followed_price != "LastTrade"
    return StopState(
        stop_id=stop.uid,
        side=stop.side,
        trailing_percent=stop.trailing_percent,
        trailing_amount=stop.trailing_amount,
        expires_at=stop.expires_at,
        activation_price=stop.activation_price,
        phase="triggered" if saved.triggered else "expired" if saved.expired else "tracking",
        reference=saved.reference_price,
        activated_price=saved.activated_price,
        activated_trade_id=saved.activated_update_id if book else saved.activated_trade_id,
        activated_at=saved.activated_at,
        trigger_price=saved.trigger_price,
        trigger_trade_id=saved.trigger_update_id if book else saved.trigger_trade_id,
        triggered_at=saved.triggered_at,
    )


def resume_after(stop: StopDefinition) -> int | None:
    """The id in its series after which a restored stop rejoins the engine (None: at once)."""
    saved = stop.state
    if saved is None or saved.triggered:
        return None
    return saved.last_trade_id if stop.followed_price == "LastTrade" else saved.last_update_id


# --- building statuses ---------------------------------------------------------------------------------

_FIELDS = frozenset(TrailingStopStatus.model_fields)


def _evolve(status: TrailingStopStatus, now: str | None = None, **changes: Any) -> TrailingStopStatus:
    """``status`` with ``changes``, validated like a status read from the API: a misspelled field,
    a value of the wrong type or a move :data:`TRANSITIONS` lacks raises instead of being written.
    With ``now``, Ready is brought in line with the (new) phase and the workers (:data:`READY`)."""
    unknown = changes.keys() - _FIELDS
    if unknown:
        raise TypeError(f"not fields of a TrailingStop status: {sorted(unknown)}")
    after = TrailingStopStatus.model_validate({**dict(status), **changes})
    if not can_move(status.phase, after.phase):
        raise IllegalTransition(f"{status.phase} -> {after.phase} is not a move of a TrailingStop")
    if now is None:
        return after
    return after.model_copy(update={"conditions": _ready(after, now)})  # the list was validated just now


def _ready(status: TrailingStopStatus, now: str) -> list[Condition]:
    ready, reason, message = READY[status.phase]
    workers = next((c for c in status.conditions if c.type == ConditionType.WORKERS_READY), None)
    if ready and workers is not None and workers.status == "False" and not has_fired(status.phase):
        ready, reason, message = False, "WorkersNotReady", workers.message
    elif not ready and status.message:
        message = status.message
    return set_condition(status.conditions, ConditionType.READY, "True" if ready else "False", reason, message,
                         now, status.observed_generation)


def _moved(status: TrailingStopStatus, phase: Phase, generation: int | None, message: str | None = None
           ) -> dict[str, Any]:
    return {"phase": phase, "message": message, "observed_generation": _generation_or(status, generation)}


def _generation_or(status: TrailingStopStatus, generation: int | None) -> int | None:
    return generation if generation is not None else status.observed_generation


def _older(status: TrailingStopStatus, event: StopEvent) -> bool:
    """Whether the event is as of a point before the status, in the event's own series."""
    if event.update_id is not None:
        return status.last_update_id is not None and event.update_id < status.last_update_id
    last = status.last_trade_id
    return last is not None and event.trade_id is not None and event.trade_id < last


def _other_series(status: TrailingStopStatus, event: StopEvent) -> bool:
    """A per-symbol event about another price than the one this stop follows (a status that does
    not say yet, before ``armed``, or from before book stops, follows the last trade)."""
    return (status.price_source or "LastTrade") != event.followed


def _position(event: StopEvent, kind: str) -> dict[str, Any]:
    """``<kind>_trade_id``, or for a book event ``<kind>_update_id``: where in its series it happened."""
    if event.update_id is not None:
        return {f"{kind}_update_id": event.update_id}
    return {f"{kind}_trade_id": event.trade_id}


def _source(event: StopEvent) -> dict[str, Any]:
    """The series a per-stop event's prices are of: the one the stop follows (none said: the last
    trade, which is all an orchestrator before book stops knew)."""
    return {"price_source": event.followed} if event.uid is not None else {}


def _generation(status: TrailingStopStatus, event: StopEvent) -> int | None:
    return _generation_or(status, event.generation)


def _last_price(status: TrailingStopStatus, event: StopEvent, now: str) -> dict[str, Any]:
    if event.price is None or _older(status, event):
        return {}
    return {"last_price": event.price, "last_price_at": _time(event.trade_time, now), **_position(event, "last")}


def _plain(number: Decimal | None) -> str:
    """A price in a message as it is on the wire: fixed-point, never ``1E-8``."""
    return "-" if number is None else to_wire(number)


def _time(ms: int | None, fallback: str) -> str:
    return ms_to_rfc3339(ms) if ms is not None else fallback


def _ms(text: str | None) -> int | None:
    return rfc3339_to_ms(text) if text else None

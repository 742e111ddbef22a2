"""The life of a TrailingStop in one place: its phases, the moves between them, and how its status
follows events. Pure: no I/O.

Everything that asks "which phase comes next?" or "is this stop done?" asks this module:

* :class:`Phase` and :data:`TRANSITIONS`, the table of moves (DESIGN §3). The CRD's rule that
  freezes a fired stop's spec is generated from :data:`FIRED`.
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
    SavedState,
    StopDefinition,
    StopEvent,
    TrailingStopStatus,
    client_order_id,
    ms_to_rfc3339,
    rfc3339_to_ms,
    to_wire,
)
from trailingstop.core.engine import StopState

__all__ = [
    "FINAL",
    "FIRED",
    "TRANSITIONS",
    "ConditionType",
    "IllegalTransition",
    "Phase",
    "apply_order_result",
    "apply_stop_event",
    "can_move",
    "engine_state",
    "is_final",
    "order_outcome",
    "pending",
    "saved_state",
    "set_condition",
    "spec_accepted",
    "spec_refused",
    "trigger_of",
    "triggered_by_order",
]

FINAL: frozenset[Phase] = frozenset({Phase.FILLED, Phase.REJECTED, Phase.FAILED})
# The stop has fired: its order exists (or is on its way), so its spec is frozen.
FIRED: frozenset[Phase] = frozenset({Phase.TRIGGERED, *FINAL})

# Every move a status may make; staying in a phase is always allowed. Why each edge exists:
# * Pending -> anything but final: events travel separately and may arrive out of order (a stop
#   with no activation price is armed and activated by one trade; an order's result can overtake
#   every event of its stop).
# * Tracking -> Invalid: a spec edit (say, a smaller quantity) the exchange would refuse; and
#   Invalid -> Armed/Tracking: the fixed spec puts the stop back where it was.
# * -> Triggered from every watched phase: an order exists, whatever the events said so far.
# * Triggered -> final: the order's outcome. Final phases never move.
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = MappingProxyType({
    Phase.PENDING: frozenset({Phase.ARMED, Phase.TRACKING, Phase.INVALID, Phase.TRIGGERED}),
    Phase.ARMED: frozenset({Phase.TRACKING, Phase.INVALID, Phase.TRIGGERED}),
    Phase.TRACKING: frozenset({Phase.INVALID, Phase.TRIGGERED}),
    Phase.INVALID: frozenset({Phase.ARMED, Phase.TRACKING, Phase.TRIGGERED}),
    Phase.TRIGGERED: frozenset(FINAL),
    Phase.FILLED: frozenset(),
    Phase.REJECTED: frozenset(),
    Phase.FAILED: frozenset(),
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
})


class IllegalTransition(ValueError):
    """A move the table does not allow: a bug in the caller, never a status to write."""


def can_move(before: Phase | str, after: Phase | str) -> bool:
    return before == after or Phase(after) in TRANSITIONS[Phase(before)]


def is_final(phase: Phase | str) -> bool:
    return phase in FINAL


def has_fired(phase: Phase | str) -> bool:
    return phase in FIRED


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
    """A fired stop's order exists: a new spec would be a new stop. Say so, change nothing else."""
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
    return _evolve(status, now=now, **_moved(status, Phase.ARMED, event.generation))


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
        activated_trade_id=event.trade_id,
        reference_price=event.reference_price,
        stop_price=event.stop_price,
        conditions=conditions,
        **_last_price(status, event, now),
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
    )


def _price(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if has_fired(status.phase) or _older(status, event) or event.price is None:
        return status
    return _evolve(status, **_last_price(status, event, now))


def _triggered(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    order_first = has_fired(status.phase)  # its result was applied already
    if order_first and status.triggered_at:
        return status  # a duplicate
    trigger: dict[str, Any] = {
        "triggered_at": _time(event.trade_time, now),
        "trigger_price": event.price,
        "trigger_trade_id": event.trade_id,
        "reference_price": event.reference_price,
        "stop_price": event.stop_price,
        **_last_price(status, event, now),
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
    return _evolve(status, now=now, **_moved(status, Phase.INVALID, event.generation, event.message))


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
        executed_qty=result.executed_qty,
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
    if has_fired(status.phase) or order_outcome(result)[0] == Phase.TRIGGERED:
        return None
    trigger = trigger_of(result)
    if trigger is not None:
        return _triggered(status, trigger, now)
    order = apply_order_result(status, result, now).order
    conditions = _order_placed(status.conditions, result, now, status.observed_generation)
    return _evolve(status, now=now, phase=Phase.TRIGGERED, message=None, order=order, conditions=conditions)


def trigger_of(result: OrderResult) -> StopEvent | None:
    """The ``triggered`` event an order result stands for (None if it carries no trigger)."""
    if result.trigger_trade_id is None or result.trigger_price is None:
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
    )


def order_outcome(result: OrderResult) -> tuple[Phase, str, str]:
    """(phase, condition reason, message) for an order result."""
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
        if result.executed_qty and result.executed_qty > 0:
            return Phase.FILLED, "PartiallyFilled", f"order {result.status.lower()} after filling {quantity}"
        nothing = f"order {result.status.lower()} with nothing filled"
        return Phase.FAILED, result.status.title().replace("_", ""), nothing
    return Phase.TRIGGERED, "OrderOpen", f"order {result.status.lower()}"


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
        triggered_at=_ms(status.triggered_at),
        trigger_price=status.trigger_price,
        trigger_trade_id=status.trigger_trade_id,
        last_trade_id=status.last_trade_id,
    )


def engine_state(stop: StopDefinition) -> StopState:
    """A stop's saved state -> the engine's, to restore it where it was."""
    saved = stop.state
    if saved is None:
        raise ValueError(f"stop {stop.uid} has no saved state to restore")
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
    last = status.last_trade_id
    return last is not None and event.trade_id is not None and event.trade_id < last


def _generation(status: TrailingStopStatus, event: StopEvent) -> int | None:
    return _generation_or(status, event.generation)


def _last_price(status: TrailingStopStatus, event: StopEvent, now: str) -> dict[str, Any]:
    if event.price is None or _older(status, event):
        return {}
    return {"last_price": event.price, "last_price_at": _time(event.trade_time, now), "last_trade_id": event.trade_id}


def _plain(number: Decimal | None) -> str:
    """A price in a message as it is on the wire: fixed-point, never ``1E-8``."""
    return "-" if number is None else to_wire(number)


def _time(ms: int | None, fallback: str) -> str:
    return ms_to_rfc3339(ms) if ms is not None else fallback


def _ms(text: str | None) -> int | None:
    return rfc3339_to_ms(text) if text else None

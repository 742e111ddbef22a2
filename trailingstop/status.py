"""How a TrailingStop's status follows its events: pure functions, no I/O.

The operator applies these to the status it read and patches the difference; ``trailingstop run``
applies them in memory. Events can arrive late or twice (two queues, redeliveries), so every
function here refuses to move a stop backwards: the phase only advances, and reference updates
older than the last trade already shown are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trailingstop.contracts import (
    Condition,
    OrderResult,
    OrderStatus,
    Phase,
    SavedState,
    StopEvent,
    TrailingStopStatus,
    client_order_id,
    ms_to_rfc3339,
    rfc3339_to_ms,
    to_wire,
)

_RANK: dict[str, int] = {
    "Pending": 0,
    "Invalid": 1,
    "Armed": 1,
    "Tracking": 2,
    "Triggered": 3,
    "Filled": 4,
    "Rejected": 4,
    "Failed": 4,
}
_LIVE_PHASES = frozenset({"Pending", "Armed", "Tracking", "Invalid"})


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
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


def apply_stop_event(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    """The status after a per-stop or per-symbol StopEvent (``sync`` changes nothing)."""
    handler = _HANDLERS.get(event.type)
    return status if handler is None else handler(status, event, now)


def _armed(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if _RANK[status.phase] > _RANK["Armed"]:
        return status
    return _advance(status, "Armed", event.generation, message=None).model_copy(
        update={"conditions": set_condition(
            status.conditions, "Ready", "True", "Armed", "the orchestrator is watching this stop", now,
            event.generation,
        )}
    )


def _activated(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if _RANK[status.phase] > _RANK["Tracking"]:
        return status
    updated = _advance(status, "Tracking", event.generation, message=None)
    conditions = set_condition(
        updated.conditions, "Activated", "True", "PriceReached",
        f"activated at {event.price} by trade {event.trade_id}", now, event.generation,
    )
    conditions = set_condition(conditions, "Ready", "True", "Tracking", "trailing the price", now, event.generation)
    return updated.model_copy(
        update={
            "activated_at": _time(event.trade_time, now),
            "activated_price": event.price,
            "activated_trade_id": event.trade_id,
            "reference_price": event.reference_price,
            "stop_price": event.stop_price,
            "conditions": conditions,
            **_last_price(status, event, now),
        }
    )


def _reference(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if status.phase != "Tracking" or _older(status, event):
        return status
    return status.model_copy(
        update={
            "reference_price": event.reference_price,
            "stop_price": event.stop_price,
            "observed_generation": _generation(status, event),
            **_last_price(status, event, now),
        }
    )


def _price(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if status.phase not in _LIVE_PHASES or _older(status, event) or event.price is None:
        return status
    return status.model_copy(update=_last_price(status, event, now))


def _triggered(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    order_first = _RANK[status.phase] >= _RANK["Triggered"]  # its result was applied already
    if order_first and status.triggered_at:
        return status  # a duplicate
    trigger = {
        "triggered_at": _time(event.trade_time, now),
        "trigger_price": event.price,
        "trigger_trade_id": event.trade_id,
        "reference_price": event.reference_price,
        "stop_price": event.stop_price,
        **_last_price(status, event, now),
        "conditions": _stop_price_reached(status.conditions, event, now),
    }
    if order_first:  # keep the outcome's phase and order; fill in the trigger
        return status.model_copy(update=trigger)
    order = status.order or OrderStatus(
        client_order_id=client_order_id(event.uid or ""), status="PENDING", updated_at=now
    )
    return _advance(status, "Triggered", event.generation, message=None).model_copy(update={**trigger, "order": order})


def _stop_price_reached(conditions: Sequence[Condition], event: StopEvent, now: str) -> list[Condition]:
    return set_condition(
        conditions, "Triggered", "True", "StopPriceReached",
        f"price {event.price} reached stop {event.stop_price} (reference {event.reference_price})",
        now, event.generation,
    )


def _order_placed(conditions: Sequence[Condition], result: OrderResult, now: str,
                  generation: int | None) -> list[Condition]:
    """The Triggered condition when the order's result arrives before the ``triggered`` event;
    the event then fills in the price (the condition's status, hence its time, stays)."""
    return set_condition(
        conditions, "Triggered", "True", "OrderPlaced",
        f"order {result.client_order_id} is {result.status.lower()}; the trigger details follow", now, generation,
    )


def _invalid(status: TrailingStopStatus, event: StopEvent, now: str) -> TrailingStopStatus:
    if _RANK[status.phase] > _RANK["Tracking"]:
        return status
    updated = _advance(status, "Invalid", event.generation, message=event.message)
    conditions = set_condition(
        updated.conditions, "Ready", "False", "InvalidOrder", event.message or "", now, event.generation
    )
    return updated.model_copy(update={"conditions": conditions})


_HANDLERS = {
    "armed": _armed,
    "activated": _activated,
    "reference": _reference,
    "price": _price,
    "triggered": _triggered,
    "invalid": _invalid,
}


def apply_order_result(status: TrailingStopStatus, result: OrderResult, now: str) -> TrailingStopStatus:
    """The status after the executor's OrderResult for this stop."""
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
    final = _RANK[status.phase] == _RANK["Filled"]
    if final and phase != status.phase:
        return status  # a late result that would move a final stop
    if status.order == order and (phase == "Triggered" or status.phase == phase):
        return status  # a duplicate
    update: dict[str, Any] = {"order": order}
    conditions = status.conditions
    if _RANK[status.phase] < _RANK["Triggered"]:
        update["phase"] = "Triggered"  # an order exists: the stop has triggered, whatever came first
        conditions = _order_placed(conditions, result, now, status.observed_generation)
        update["conditions"] = conditions
    if phase != "Triggered" and status.phase != phase:
        update["phase"] = phase
        update["message"] = message
        update["conditions"] = set_condition(
            conditions,
            "Filled",
            "True" if phase == "Filled" else "False",
            reason,
            message,
            now,
            status.observed_generation,
        )
    return status.model_copy(update=update)


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
    final = apply_order_result(status, result, now)
    if _RANK[status.phase] >= _RANK["Triggered"] or final.phase == "Triggered":
        return None
    trigger = trigger_of(result)
    if trigger is not None:
        return _triggered(status, trigger, now)
    conditions = _order_placed(status.conditions, result, now, status.observed_generation)
    return final.model_copy(update={"phase": "Triggered", "message": None, "conditions": conditions})


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
        return "Filled", result.status.capitalize(), f"{how}: {quantity} at {price}"
    if result.status == "REJECTED" or result.error is not None:
        detail = f"Binance {result.error.code}: {result.error.message}" if result.error else "rejected"
        return "Rejected", "ExchangeRejected", detail
    if result.status in ("EXPIRED", "EXPIRED_IN_MATCH", "CANCELED"):
        if result.executed_qty and result.executed_qty > 0:
            return "Filled", "PartiallyFilled", f"order {result.status.lower()} after filling {quantity}"
        return "Failed", result.status.title().replace("_", ""), f"order {result.status.lower()} with nothing filled"
    return "Triggered", "OrderOpen", f"order {result.status.lower()}"


def saved_state(status: TrailingStopStatus) -> SavedState:
    """What a restarting orchestrator needs from a status to continue exactly where it was."""
    triggered = (
        status.triggered_at is not None or status.order is not None or _RANK[status.phase] >= _RANK["Triggered"]
    )
    return SavedState(
        activated=status.reference_price is not None,
        activated_at=_ms(status.activated_at),
        activated_price=status.activated_price,
        activated_trade_id=status.activated_trade_id,
        reference_price=status.reference_price,
        triggered=triggered,
        triggered_at=_ms(status.triggered_at),
        trigger_price=status.trigger_price,
        trigger_trade_id=status.trigger_trade_id,
        last_trade_id=status.last_trade_id,
    )


# --- helpers -----------------------------------------------------------------------------------


def _advance(
    status: TrailingStopStatus, phase: Phase, generation: int | None, message: str | None
) -> TrailingStopStatus:
    return status.model_copy(
        update={
            "phase": phase,
            "message": message,
            "observed_generation": generation if generation is not None else status.observed_generation,
        }
    )


def _older(status: TrailingStopStatus, event: StopEvent) -> bool:
    last = status.last_trade_id
    return last is not None and event.trade_id is not None and event.trade_id < last


def _generation(status: TrailingStopStatus, event: StopEvent) -> int | None:
    return event.generation if event.generation is not None else status.observed_generation


def _last_price(status: TrailingStopStatus, event: StopEvent, now: str) -> dict[str, Any]:
    if event.price is None or _older(status, event):
        return {}
    return {
        "last_price": event.price,
        "last_price_at": _time(event.trade_time, now),
        "last_trade_id": event.trade_id,
    }


def _time(ms: int | None, fallback: str) -> str:
    return ms_to_rfc3339(ms) if ms is not None else fallback


def _ms(text: str | None) -> int | None:
    return rfc3339_to_ms(text) if text else None


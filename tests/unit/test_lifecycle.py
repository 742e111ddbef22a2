"""The lifecycle: the transition table, and a status reducer that never moves a stop backwards."""

from __future__ import annotations

import itertools
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from trailingstop.core import lifecycle
from trailingstop.core.contracts import (
    Condition,
    OrderError,
    OrderResult,
    StopEvent,
    TrailingStopStatus,
    client_order_id,
)
from trailingstop.core.lifecycle import (
    FINAL,
    FIRED,
    TRANSITIONS,
    IllegalTransition,
    Phase,
    apply_order_result,
    apply_stop_event,
    can_move,
    order_outcome,
    saved_state,
    set_condition,
    triggered_by_order,
    workers_ready,
)
from trailingstop.operator.crd import FROZEN_AFTER_TRIGGER

D = Decimal
UID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
COID = "ts-7c9e6679742540de944be07fc1f90ae7"
T0 = 1_700_000_000_000


def event(type_: str, trade: int | None = None, generation: int | None = 1, **fields: Any) -> StopEvent:
    extra: dict[str, Any] = {}
    if trade is not None:
        extra = {"trade_id": trade, "trade_time": T0 + trade * 1000}
    return StopEvent(type=type_, symbol="BTCUSDT", uid=UID, namespace="trading", name="s", generation=generation,
                     at=T0 + 999_999, **extra, **fields)


def result(status: str, at: int = T0 + 7_500, **fields: Any) -> OrderResult:
    return OrderResult(client_order_id=COID, uid=UID, symbol="BTCUSDT", side="SELL", status=status, at=at, **fields)


ARMED = event("armed")
ACTIVATED = event("activated", 3, price="105.5", reference_price="105.5", stop_price="103.39")
REFERENCE = event("reference", 4, price="110", reference_price="110", stop_price="107.8")
REFERENCE_6 = event("reference", 6, price="112", reference_price="112", stop_price="109.76")
PRICE_5 = event("price", 5, generation=None, price="108.5")
TRIGGERED = event("triggered", 7, price="109.76", reference_price="112", stop_price="109.76")
SIMULATED = result("SIMULATED", order_id=99, executed_qty="0.5", avg_price="109.76", cummulative_quote_qty="54.88")


def run(*steps: StopEvent | OrderResult, status: TrailingStopStatus | None = None) -> TrailingStopStatus:
    status = status or TrailingStopStatus()
    for number, step in enumerate(steps, start=1):
        now = f"2026-11-21T10:00:{number:02d}Z"
        if isinstance(step, OrderResult):
            status = apply_order_result(status, step, now)
        else:
            status = apply_stop_event(status, step, now)
    return status


def conditions(status: TrailingStopStatus) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.last_transition_time) for c in status.conditions}


def test_a_new_status_is_pending() -> None:
    assert TrailingStopStatus().phase == "Pending"
    assert TrailingStopStatus().wire() == {"phase": "Pending", "conditions": []}


def test_the_whole_life_of_a_stop() -> None:
    armed = run(ARMED)
    assert armed.phase == "Armed" and armed.observed_generation == 1
    assert conditions(armed) == {"Ready": ("True", "Armed", "2026-11-21T10:00:01Z")}

    tracking = run(ARMED, ACTIVATED)
    assert tracking.phase == "Tracking"
    assert (tracking.activated_at, tracking.activated_price, tracking.activated_trade_id) == (
        "2023-11-14T22:13:23.000Z", D("105.5"), 3)
    assert (tracking.reference_price, tracking.stop_price, tracking.last_price, tracking.last_trade_id) == (
        D("105.5"), D("103.39"), D("105.5"), 3)
    # Ready stays True, so its lastTransitionTime stays at the first transition.
    assert conditions(tracking) == {
        "Ready": ("True", "Tracking", "2026-11-21T10:00:01Z"),
        "Activated": ("True", "PriceReached", "2026-11-21T10:00:02Z"),
    }

    moving = run(ARMED, ACTIVATED, REFERENCE, PRICE_5)
    assert (moving.reference_price, moving.stop_price) == (D("110"), D("107.8"))
    assert (moving.last_price, moving.last_trade_id, moving.last_price_at) == (D("108.5"), 5,
                                                                               "2023-11-14T22:13:25.000Z")

    triggered = run(ARMED, ACTIVATED, REFERENCE, PRICE_5, REFERENCE_6, TRIGGERED)
    assert triggered.phase == "Triggered"
    assert (triggered.triggered_at, triggered.trigger_price, triggered.trigger_trade_id) == (
        "2023-11-14T22:13:27.000Z", D("109.76"), 7)
    assert (triggered.reference_price, triggered.stop_price) == (D("112"), D("109.76"))
    assert triggered.order is not None
    assert (triggered.order.client_order_id, triggered.order.status) == (client_order_id(UID), "PENDING")
    assert conditions(triggered)["Triggered"][:2] == ("True", "StopPriceReached")

    filled = run(ARMED, ACTIVATED, REFERENCE, PRICE_5, REFERENCE_6, TRIGGERED, SIMULATED)
    assert filled.phase == "Filled"
    assert filled.message == "simulated fill: SELL 0.5 BTCUSDT at 109.76"
    assert filled.order is not None
    assert filled.order.wire() == {
        "clientOrderId": COID, "orderId": 99, "status": "SIMULATED", "executedQty": "0.5", "avgPrice": "109.76",
        "cummulativeQuoteQty": "54.88", "updatedAt": "2023-11-14T22:13:27.500Z",
    }
    assert conditions(filled)["Filled"] == ("True", "Simulated", "2026-11-21T10:00:07Z")
    # Decimals in the status are strings.
    wire = filled.wire()
    assert wire["referencePrice"] == "112" and wire["triggerPrice"] == "109.76"


def test_set_condition_keeps_the_transition_time_while_status_is_unchanged() -> None:
    first = set_condition([], "Ready", "True", "Armed", "watching", "T1", 1)
    assert first == [Condition(type="Ready", status="True", reason="Armed", message="watching",
                               last_transition_time="T1", observed_generation=1)]
    same = set_condition(first, "Ready", "True", "Tracking", "trailing", "T2", 2)
    assert same == [Condition(type="Ready", status="True", reason="Tracking", message="trailing",
                              last_transition_time="T1", observed_generation=2)]
    flipped = set_condition(same, "Ready", "False", "InvalidOrder", "bad", "T3", 3)
    assert (flipped[0].status, flipped[0].last_transition_time, flipped[0].observed_generation) == ("False", "T3", 3)
    other = set_condition(flipped, "Filled", "True", "Filled", "", "T4", None)
    assert [c.type for c in other] == ["Ready", "Filled"]
    assert other[0] == flipped[0]
    assert other[1].observed_generation is None


def test_observed_generation_follows_the_events() -> None:
    status = run(event("armed", generation=1), event("armed", generation=2))
    assert status.observed_generation == 2
    assert status.conditions[0].observed_generation == 2
    status = run(REFERENCE.model_copy(update={"generation": 5}), status=run(ARMED, ACTIVATED))
    assert status.observed_generation == 5


# --- late and duplicate events --------------------------------------------------------------------


@pytest.mark.parametrize("late", [ARMED, ACTIVATED, REFERENCE, REFERENCE_6, PRICE_5, TRIGGERED],
                         ids=["armed", "activated", "reference", "reference6", "price", "triggered"])
def test_late_or_repeated_events_do_not_change_a_filled_stop(late: StopEvent) -> None:
    filled = run(ARMED, ACTIVATED, REFERENCE, TRIGGERED, SIMULATED)
    assert run(late, status=filled) == filled


def test_late_events_do_not_move_a_triggered_stop_back() -> None:
    triggered = run(ARMED, ACTIVATED, REFERENCE, TRIGGERED)
    for late in (ARMED, ACTIVATED, REFERENCE, PRICE_5, event("invalid", message="late")):
        assert run(late, status=triggered) == triggered


def test_an_older_reference_is_dropped() -> None:
    status = run(ARMED, ACTIVATED, REFERENCE_6)
    assert run(REFERENCE, status=status) == status
    assert run(PRICE_5, status=status) == status
    assert (status.reference_price, status.last_trade_id) == (D("112"), 6)


def test_a_late_armed_event_does_not_undo_tracking() -> None:
    tracking = run(ARMED, ACTIVATED)
    assert run(ARMED, status=tracking) == tracking


def test_price_events_update_last_price_of_live_stops_only() -> None:
    armed = run(ARMED, PRICE_5)
    assert (armed.phase, armed.last_price, armed.last_trade_id) == ("Armed", D("108.5"), 5)
    assert armed.reference_price is None


def test_sync_and_unknown_events_change_nothing() -> None:
    tracking = run(ARMED, ACTIVATED)
    assert run(StopEvent(type="sync", symbol="BTCUSDT", at=1), status=tracking) == tracking


def test_invalid_and_back_to_armed_when_the_spec_is_fixed() -> None:
    invalid = run(ARMED, event("invalid", message="BTCUSDT would refuse this order: quantity 0.000001 is below"))
    assert invalid.phase == "Invalid"
    assert invalid.message == "BTCUSDT would refuse this order: quantity 0.000001 is below"
    assert conditions(invalid)["Ready"] == ("False", "InvalidOrder", "2026-11-21T10:00:02Z")
    fixed = run(event("armed", generation=2), status=invalid)
    assert (fixed.phase, fixed.message, fixed.observed_generation) == ("Armed", None, 2)
    assert conditions(fixed)["Ready"] == ("True", "Armed", "2026-11-21T10:00:01Z")


# --- order results ------------------------------------------------------------------------------


def test_order_result_before_the_triggered_event() -> None:
    early = run(ARMED, ACTIVATED, REFERENCE, SIMULATED)
    assert early.phase == "Filled"
    assert early.triggered_at is None
    late = run(TRIGGERED, status=early)
    assert late.phase == "Filled"
    assert (late.triggered_at, late.trigger_price, late.trigger_trade_id) == ("2023-11-14T22:13:27.000Z",
                                                                              D("109.76"), 7)
    assert (late.reference_price, late.stop_price) == (D("112"), D("109.76"))
    assert late.order == early.order  # the fill is kept, not replaced by PENDING
    assert run(TRIGGERED, status=late) == late


def test_conditions_read_the_same_whichever_of_result_and_event_came_first() -> None:
    early = run(ARMED, ACTIVATED, REFERENCE, SIMULATED)
    assert conditions(early)["Triggered"][:2] == ("True", "OrderPlaced"), "Triggered at once, details to follow"
    order_first = run(TRIGGERED, status=early)
    event_first = run(ARMED, ACTIVATED, REFERENCE, TRIGGERED, SIMULATED)

    def readable(status: TrailingStopStatus) -> dict[str, tuple[str, str, str]]:
        return {c.type: (c.status, c.reason, c.message) for c in status.conditions}

    assert readable(order_first) == readable(event_first)
    assert set(readable(order_first)) == {"Ready", "Activated", "Triggered", "Filled"}
    # and so does the rest: the trigger's trade is the last price either way
    fields = {"conditions", "order"}  # the order's updatedAt and the conditions' times differ by design
    assert order_first.model_dump(exclude=fields) == event_first.model_dump(exclude=fields)
    assert (order_first.last_price, order_first.last_trade_id) == (D("109.76"), 7)
    # the condition was already True: the details do not move its transition time
    assert conditions(order_first)["Triggered"][2] == conditions(early)["Triggered"][2]


def test_duplicate_order_results_change_nothing() -> None:
    filled = run(ARMED, ACTIVATED, TRIGGERED, SIMULATED)
    assert run(SIMULATED, status=filled) is filled


def test_an_open_order_keeps_the_stop_triggered_and_a_late_open_result_is_ignored() -> None:
    triggered = run(ARMED, ACTIVATED, TRIGGERED)
    new = run(result("NEW", order_id=7), status=triggered)
    assert (new.phase, new.order.status, new.order.order_id) == ("Triggered", "NEW", 7)  # type: ignore[union-attr]
    filled = run(result("FILLED", at=T0 + 8000, order_id=7, executed_qty="0.5", avg_price="109.7",
                        cummulative_quote_qty="54.85"), status=new)
    assert filled.phase == "Filled"
    assert filled.message == "filled: SELL 0.5 BTCUSDT at 109.7"
    for late in (result("NEW", order_id=7), result("PARTIALLY_FILLED", order_id=7, executed_qty="0.1")):
        assert run(late, status=filled) is filled


def test_rejected_order() -> None:
    rejected = run(ARMED, ACTIVATED, TRIGGERED, result(
        "REJECTED", error=OrderError(code=-2010, message="Account has insufficient balance for requested action.")))
    assert rejected.phase == "Rejected"
    assert rejected.message == "Binance -2010: Account has insufficient balance for requested action."
    assert conditions(rejected)["Filled"][:2] == ("False", "ExchangeRejected")
    assert rejected.order is not None and rejected.order.error is not None
    assert rejected.order.error.code == -2010


@pytest.mark.parametrize(
    ("status", "fields", "expected"),
    [
        ("FILLED", {"executed_qty": "0.5", "avg_price": "100"},
         ("Filled", "Filled", "filled: SELL 0.5 BTCUSDT at 100")),
        ("SIMULATED", {"executed_qty": "2", "avg_price": "1.5"},
         ("Filled", "Simulated", "simulated fill: SELL 2 BTCUSDT at 1.5")),
        ("REJECTED", {"error": OrderError(code=-1013, message="Filter failure: LOT_SIZE")},
         ("Rejected", "ExchangeRejected", "Binance -1013: Filter failure: LOT_SIZE")),
        ("REJECTED", {}, ("Rejected", "ExchangeRejected", "rejected")),
        ("EXPIRED", {"executed_qty": "0"}, ("Failed", "Expired", "order expired with nothing filled")),
        ("EXPIRED", {"executed_qty": "0.2"},
         ("Filled", "PartiallyFilled", "order expired after filling SELL 0.2 BTCUSDT")),
        ("EXPIRED_IN_MATCH", {}, ("Failed", "ExpiredInMatch", "order expired_in_match with nothing filled")),
        ("CANCELED", {"executed_qty": "0"}, ("Failed", "Canceled", "order canceled with nothing filled")),
        ("NEW", {}, ("Triggered", "OrderOpen", "order new")),
        ("PARTIALLY_FILLED", {"executed_qty": "0.1"}, ("Triggered", "OrderOpen", "order partially_filled")),
        ("PENDING_CANCEL", {}, ("Triggered", "OrderOpen", "order pending_cancel")),
    ],
)
def test_order_outcome(status: str, fields: dict[str, Any], expected: tuple[str, str, str]) -> None:
    assert order_outcome(result(status, **fields)) == expected


# --- saved state (what a restarting orchestrator continues from) ----------------------------------


def test_saved_state_of_a_pending_stop() -> None:
    state = saved_state(run(ARMED))
    assert not state.activated and not state.triggered and state.reference_price is None


def test_saved_state_of_a_tracking_stop() -> None:
    state = saved_state(run(ARMED, ACTIVATED, REFERENCE, PRICE_5))
    assert state.wire() == {
        "activated": True,
        "activatedAt": T0 + 3000,
        "activatedPrice": "105.5",
        "activatedTradeId": 3,
        "referencePrice": "110",
        "triggered": False,
        "lastTradeId": 5,
    }


def test_saved_state_of_a_triggered_stop() -> None:
    state = saved_state(run(ARMED, ACTIVATED, REFERENCE, TRIGGERED, SIMULATED))
    assert state.activated and state.triggered
    assert (state.triggered_at, state.trigger_price, state.trigger_trade_id, state.reference_price) == (
        T0 + 7000, D("109.76"), 7, D("112"))



def test_an_open_order_reported_before_the_trigger_is_kept() -> None:
    # Tracking, then OrderResult NEW (orderId 42) arrives first and moves the stop to Triggered;
    # the triggered event must keep that order, not replace it with a fresh {status: PENDING}.
    early = run(ARMED, ACTIVATED, result("NEW", order_id=42))
    late = run(TRIGGERED, status=early)
    assert late.phase == "Triggered"
    assert late.order is not None
    assert (late.order.status, late.order.order_id) == ("NEW", 42)



@pytest.mark.parametrize(
    "late",
    [result("REJECTED", error=OrderError(code=-2010, message="Duplicate order sent.")),
     result("EXPIRED", executed_qty="0")],
    ids=["rejected", "expired"],
)
def test_a_filled_stop_stays_filled(late: OrderResult) -> None:
    filled = run(ARMED, ACTIVATED, TRIGGERED, SIMULATED)
    assert run(late, status=filled).phase == "Filled"



def test_saved_state_when_the_activated_event_was_late() -> None:
    # Armed, then the triggered event (the activated one is still in flight): the status has
    # triggeredAt and referencePrice but no activatedPrice, and saved_state() raises
    # "a triggered stop must have been activated" instead of telling the orchestrator it triggered.
    status = run(ARMED, TRIGGERED)
    assert status.phase == "Triggered"
    state = saved_state(status)
    assert state.triggered


def test_a_result_carrying_its_trigger_completes_the_status_without_the_triggered_event() -> None:
    """The orchestrator may die after its PlaceOrder and before its ``triggered`` event; a restarted
    one sees the stop as triggered (its order exists) and never sends the event. The result carries
    the trigger from the PlaceOrder, so the status is whole anyway, and a late event changes nothing."""
    carrying = SIMULATED.model_copy(update={
        "trigger_price": D("109.76"), "triggered_at": T0 + 7_000, "trigger_trade_id": 7,
        "reference_price": D("112"), "stop_price": D("109.76")})
    tracking = run(ARMED, ACTIVATED, REFERENCE_6)
    step = triggered_by_order(tracking, carrying, "2026-11-21T10:00:04Z")
    assert step is not None
    alone = apply_order_result(step, carrying, "2026-11-21T10:00:05Z")
    in_order = run(ARMED, ACTIVATED, REFERENCE_6, TRIGGERED, carrying)
    assert (alone.phase, alone.trigger_trade_id, alone.trigger_price, alone.triggered_at) == (
        "Filled", 7, D("109.76"), in_order.triggered_at)
    assert (alone.reference_price, alone.stop_price) == (D("112"), D("109.76"))
    assert conditions(alone)["Triggered"][:2] == ("True", "StopPriceReached")
    assert apply_stop_event(alone, TRIGGERED, "2026-11-21T10:00:09Z") == alone  # the late event: a duplicate
    different = {"conditions", "last_price_at"}
    assert alone.model_dump(exclude=different) == in_order.model_dump(exclude=different)


# --- the transition table ---------------------------------------------------------------------------


def test_the_table_has_every_phase_and_final_phases_go_nowhere() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert all(TRANSITIONS[phase] == frozenset() for phase in FINAL)
    assert {Phase.TRIGGERED, *FINAL} == FIRED
    # Every phase is reachable from Pending, and every live phase can still end.
    reachable, frontier = {Phase.PENDING}, [Phase.PENDING]
    while frontier:
        for after in TRANSITIONS[frontier.pop()] - reachable:
            reachable.add(after)
            frontier.append(after)
    assert reachable == set(Phase)
    assert all(TRANSITIONS[phase] for phase in set(Phase) - FINAL)


def test_the_crd_freezes_the_spec_of_exactly_the_fired_phases() -> None:
    rule = FROZEN_AFTER_TRIGGER["rule"]
    listed = set(re.findall(r"'(\w+)'", rule))
    assert listed == {str(phase) for phase in FIRED}


@pytest.mark.parametrize("before,after", [
    (Phase.TRACKING, Phase.ARMED), (Phase.TRIGGERED, Phase.TRACKING), (Phase.FILLED, Phase.TRIGGERED),
    (Phase.FILLED, Phase.REJECTED), (Phase.PENDING, Phase.FILLED), (Phase.TRIGGERED, Phase.INVALID),
])
def test_an_illegal_move_raises_instead_of_being_written(before: Phase, after: Phase) -> None:
    assert not can_move(before, after)
    with pytest.raises(IllegalTransition):
        lifecycle._evolve(TrailingStopStatus(phase=before), phase=after)


def test_a_misspelled_field_or_a_bad_value_raises() -> None:
    with pytest.raises(TypeError, match="reference_prise"):
        lifecycle._evolve(TrailingStopStatus(), reference_prise=D(1))
    with pytest.raises(ValidationError):
        lifecycle._evolve(TrailingStopStatus(), phase="Fileld")
    with pytest.raises(ValidationError):
        lifecycle._evolve(TrailingStopStatus(), last_price=1.5)  # a float, never


STEPS = [ARMED, ACTIVATED, REFERENCE, PRICE_5, REFERENCE_6, TRIGGERED, SIMULATED,
         event("invalid", message="quantity below minQty"),
         result("REJECTED", error=OrderError(code=-2010, message="Account has insufficient balance")),
         result("NEW", order_id=99), result("EXPIRED", order_id=99, executed_qty="0")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(STEPS), max_size=12))
def test_any_order_of_events_and_results_moves_only_along_the_table(steps: list[Any]) -> None:
    """As the operator writes them: an order result's early Triggered step, then its outcome."""
    written = [TrailingStopStatus()]
    for number, step in enumerate(steps):
        now = f"2026-11-21T10:00:{number:02d}Z"
        if isinstance(step, OrderResult):
            early = triggered_by_order(written[-1], step, now)
            if early is not None:
                written.append(early)
            written.append(apply_order_result(written[-1], step, now))
        else:
            written.append(apply_stop_event(written[-1], step, now))
    for before, after in itertools.pairwise(written):
        assert can_move(before.phase, after.phase), (before.phase, after.phase)
        assert TrailingStopStatus.model_validate(after.wire()) == after  # one the API would accept as is


# --- Ready follows the phase, and the workers ----------------------------------------------------------


def test_ready_follows_the_phase_so_kubectl_wait_means_something() -> None:
    def ready(status: TrailingStopStatus) -> tuple[str, str]:
        condition = next(c for c in status.conditions if c.type == "Ready")
        return condition.status, condition.reason

    assert ready(run(ARMED)) == ("True", "Armed")
    assert ready(run(ARMED, ACTIVATED)) == ("True", "Tracking")
    assert ready(run(ARMED, ACTIVATED, TRIGGERED)) == ("True", "OrderSent")
    assert ready(run(ARMED, ACTIVATED, TRIGGERED, SIMULATED)) == ("True", "Filled")
    rejected = run(ARMED, ACTIVATED, TRIGGERED, result("REJECTED", error=OrderError(code=-2010, message="no money")))
    assert ready(rejected) == ("False", "Rejected")
    assert "Binance -2010: no money" in next(c for c in rejected.conditions if c.type == "Ready").message
    failed = run(ARMED, ACTIVATED, TRIGGERED, result("EXPIRED", order_id=99, executed_qty="0"))
    assert ready(failed) == ("False", "Failed")
    assert ready(run(ARMED, event("invalid", message="quantity below minQty"))) == ("False", "InvalidOrder")


def test_workers_that_cannot_start_make_a_watched_stop_not_ready() -> None:
    armed = run(ARMED)
    stuck = workers_ready(armed, False, "ImagePullBackOff", "ts-orchestrator-btcusdt: Back-off pulling image", "t1")
    ready = next(c for c in stuck.conditions if c.type == "Ready")
    assert (ready.status, ready.reason, ready.message) == (
        "False", "WorkersNotReady", "ts-orchestrator-btcusdt: Back-off pulling image")
    assert stuck.phase == "Armed"
    recovered = workers_ready(stuck, True, "Running", "every worker pod is ready", "t2")
    assert [(c.status, c.reason) for c in recovered.conditions if c.type == "Ready"] == [("True", "Armed")]
    filled = run(ARMED, ACTIVATED, TRIGGERED, SIMULATED)
    assert workers_ready(filled, False, "ImagePullBackOff", "retired", "t3") == filled  # fired: no longer its business

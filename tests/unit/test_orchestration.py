"""One symbol's orchestrator: commands and ticks in, StopEvents and PlaceOrders out (DESIGN §4-§6)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from trailingstop.core.contracts import (
    PriceTick,
    SavedState,
    StopCommand,
    StopDefinition,
    StopEvent,
    client_order_id,
)
from trailingstop.core.filters import SymbolFilters
from trailingstop.core.stopbook import Outcome, StopBook
from trailingstop.settings import Settings
from trailingstop.workers.orchestrator import OrchestratorWorker

D = Decimal
UID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
UID2 = "0b8c4f2e-53a1-4c7e-9d0a-3f1e2d4c5b6a"
CLOCK = 1_800_000_000_000

XRPETH_INFO = {
    "symbol": "XRPETH",
    "status": "TRADING",
    "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "100000.00000000",
         "tickSize": "0.00000001"},
        {"filterType": "LOT_SIZE", "minQty": "1.00000000", "maxQty": "90000000.00000000", "stepSize": "1.00000000"},
        {"filterType": "MIN_NOTIONAL", "minNotional": "0.01000000", "applyToMarket": True, "avgPriceMins": 5},
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "5066373.79097222",
         "stepSize": "0.00000000"},
    ],
}


def stop(symbol: str = "XRPETH", **fields: Any) -> StopDefinition:
    base: dict[str, Any] = dict(uid=UID, namespace="trading", name="s1", generation=2, symbol=symbol, side="SELL",
                                quantity="100", trailing_percent="2", activation_price="105")
    base.update(fields)
    return StopDefinition(**base)


def tick(trade_id: int, price: str, symbol: str = "XRPETH") -> PriceTick:
    return PriceTick(symbol=symbol, price=price, qty="1", trade_id=trade_id, trade_time=1_700_000_000_000 + trade_id,
                     received_at=1_700_000_000_500 + trade_id, source="test")


def orchestrator(filters: SymbolFilters | None = None) -> StopBook:
    return StopBook("XRPETH", filters=filters, clock=lambda: CLOCK)


def feed(orch: StopBook, prices: list[str], first_id: int = 1) -> list[tuple[int, Outcome]]:
    return [(i, orch.on_tick(tick(i, p))) for i, p in enumerate(prices, start=first_id)]


def kinds(results: list[tuple[int, Outcome]]) -> list[tuple[int, str]]:
    return [(i, e.type) for i, out in results for e in out.events]


def test_upsert_arms_the_stop_with_its_identity() -> None:
    orch = orchestrator()
    out = orch.apply(StopCommand.upsert(stop()))
    assert out.orders == []
    assert [e.wire() for e in out.events] == [
        {"v": 1, "type": "armed", "symbol": "XRPETH", "uid": UID, "namespace": "trading", "name": "s1",
         "generation": 2, "at": CLOCK}
    ]


def test_sell_worked_example_one_order_with_the_uid_client_order_id() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop()))
    results = feed(orch, ["100", "104", "105.5", "110", "108.5", "112", "109.76"])
    assert kinds(results) == [(3, "activated"), (7, "triggered")]
    activated = results[2][1].events[0]
    assert (activated.price, activated.reference_price, activated.stop_price, activated.trade_id) == (
        D("105.5"), D("105.5"), D("103.39"), 3)
    triggered = results[6][1].events[0]
    assert (triggered.price, triggered.reference_price, triggered.stop_price, triggered.trade_id) == (
        D("109.76"), D("112"), D("109.76"), 7)
    assert triggered.trade_time == 1_700_000_000_007
    orders = [o for _, out in results for o in out.orders]
    assert len(orders) == 1
    assert orders[0].wire() == {
        "v": 1,
        "clientOrderId": "ts-7c9e6679742540de944be07fc1f90ae7",
        "uid": UID,
        "namespace": "trading",
        "name": "s1",
        "symbol": "XRPETH",
        "side": "SELL",
        "quantity": "100",
        "type": "MARKET",
        "mode": "Simulate",
        "route": "simulate",
        "triggerPrice": "109.76",
        "triggeredAt": 1_700_000_000_007,
        "triggerTradeId": 7,
        "referencePrice": "112",
        "stopPrice": "109.76",
    }
    assert orders[0].client_order_id == client_order_id(UID)


def test_buy_worked_example() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(side="BUY", trailing_percent="1.5", activation_price="95")))
    results = feed(orch, ["100", "96", "94.8", "92", "93", "90", "91.35"])
    assert kinds(results) == [(3, "activated"), (7, "triggered")]
    triggered = results[6][1].events[0]
    assert (triggered.reference_price, triggered.stop_price) == (D("90"), D("91.35"))
    (order,) = results[6][1].orders
    assert order.side == "BUY" and order.trigger_price == D("91.35")


def test_exact_decimal_trigger_without_activation_price() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(trailing_percent="1", activation_price=None)))
    results = feed(orch, ["100", "110", "108.9"])
    assert kinds(results) == [(1, "activated"), (3, "triggered")]  # 110 * 0.99 == 108.9 exactly


def test_a_triggered_stop_never_fires_again() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(trailing_percent="1", activation_price=None)))
    first = feed(orch, ["100", "110", "108.9"])
    assert sum(len(out.orders) for _, out in first) == 1
    later = feed(orch, ["50", "200", "10"], first_id=4)
    assert all(not out for _, out in later)
    # A resent upsert (e.g. the operator's answer to a sync) changes nothing.
    assert not orch.apply(StopCommand.upsert(stop(trailing_percent="1", activation_price=None)))
    assert not orch.apply(StopCommand.upsert(stop(trailing_percent="5", activation_price=None)))
    assert [e.type for e in orch.flush()] == ["price"]


def test_two_stops_two_orders_two_client_order_ids() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(trailing_percent="1", activation_price=None)))
    orch.apply(StopCommand.upsert(stop(uid=UID2, name="s2", trailing_percent="1.5", activation_price=None)))
    results = feed(orch, ["100", "110", "108.9", "108.35"])
    orders = [(i, o.uid, o.client_order_id) for i, out in results for o in out.orders]
    assert orders == [(3, UID, "ts-7c9e6679742540de944be07fc1f90ae7"),
                      (4, UID2, "ts-0b8c4f2e53a14c7e9d0a3f1e2d4c5b6a")]


def test_cancel_removes_the_stop() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(activation_price=None)))
    feed(orch, ["100"])
    assert not orch.apply(StopCommand.cancel(stop(activation_price=None)))
    assert all(not out for _, out in feed(orch, ["120", "1"], first_id=2))
    assert [e.type for e in orch.flush()] == ["price"]


def test_synced_and_unknown_cancel_do_nothing() -> None:
    orch = orchestrator()
    assert not orch.apply(StopCommand(op="synced", symbol="XRPETH"))
    assert not orch.apply(StopCommand.cancel(stop()))


def test_spec_change_while_tracking_keeps_the_reference() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(trailing_percent="1", activation_price=None)))
    feed(orch, ["100", "110"])
    out = orch.apply(StopCommand.upsert(stop(trailing_percent="2", activation_price=None, generation=3)))
    (event,) = out.events
    assert (event.type, event.reference_price, event.stop_price, event.generation) == ("reference", D("110"),
                                                                                       D("107.8"), 3)
    # 108.9 would have triggered the old 1 % stop; the new 2 % stop waits for 107.8.
    assert kinds(feed(orch, ["108.9", "107.8"], first_id=3)) == [(4, "triggered")]


def test_flush_coalesces_reference_changes_and_reports_the_last_price() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(trailing_percent="1", activation_price=None)))
    feed(orch, ["100", "101", "102", "103", "102.5"])
    events = orch.flush()
    assert [(e.type, e.uid) for e in events] == [("reference", UID), ("price", None)]
    reference, price = events
    assert (reference.reference_price, reference.stop_price, reference.trade_id) == (D("103"), D("101.97"), 5)
    assert price.wire() == {"v": 1, "type": "price", "symbol": "XRPETH", "price": "102.5", "tradeId": 5,
                            "tradeTime": 1_700_000_000_005, "at": CLOCK}
    assert orch.flush() == []  # nothing new
    feed(orch, ["102"], first_id=6)  # price moved, reference did not
    assert [e.type for e in orch.flush()] == ["price"]


def test_duplicate_and_old_trade_ids_are_dropped() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(trailing_percent="1", activation_price=None)))
    feed(orch, ["100", "110"])
    assert not orch.on_tick(tick(2, "50"))
    assert not orch.on_tick(tick(1, "50"))
    assert orch.duplicates == 2
    flushed = orch.flush()
    assert [e.type for e in flushed] == ["reference", "price"]
    # LAST is the last trade applied, never a dropped one's price (the metric counts those).
    assert (flushed[1].price, flushed[1].trade_id) == (Decimal("110"), 2)


def test_sync_request() -> None:
    assert orchestrator().sync_request().wire() == {"v": 1, "type": "sync", "symbol": "XRPETH", "at": CLOCK}
    assert orchestrator().sync_request().routing_key == "XRPETH.sync"


# --- invalid stops: reported when placed, not at the trigger ------------------------------------


def test_quantity_off_the_lot_size_is_invalid_at_upsert() -> None:
    orch = orchestrator(SymbolFilters.from_exchange_info(XRPETH_INFO))
    out = orch.apply(StopCommand.upsert(stop(quantity="100.5")))
    (event,) = out.events
    assert event.type == "invalid" and event.uid == UID and out.orders == []
    assert event.message == (
        "XRPETH would refuse this order: quantity 100.5 is not a multiple of LOT_SIZE stepSize 1 (nearest below: 100)"
    )
    assert all(not out for _, out in feed(orch, ["100", "106", "1"]))


def test_order_value_checked_at_upsert_with_the_activation_price() -> None:
    orch = orchestrator(SymbolFilters.from_exchange_info(XRPETH_INFO))
    out = orch.apply(StopCommand.upsert(stop(quantity="1", activation_price="0.00145")))
    assert [e.message for e in out.events] == [
        "XRPETH would refuse this order: order value 0.00145 (quantity 1 x price 0.00145) is below minNotional 0.01"
    ]


def test_order_value_checked_at_activation_without_an_activation_price() -> None:
    orch = orchestrator(SymbolFilters.from_exchange_info(XRPETH_INFO))
    assert [e.type for e in orch.apply(StopCommand.upsert(stop(quantity="1", activation_price=None))).events] == [
        "armed"
    ]
    (_, out), *rest = feed(orch, ["0.00141342", "0.0013", "0.0001"])
    assert [(e.type, e.message) for e in out.events] == [
        ("invalid", "XRPETH would refuse this order: order value 0.00141342 (quantity 1 x price 0.00141342) "
                    "is below minNotional 0.01")
    ]
    assert out.orders == [] and all(not o for _, o in rest)


def test_order_value_checked_against_the_last_price_once_there_is_one() -> None:
    orch = orchestrator(SymbolFilters.from_exchange_info(XRPETH_INFO))
    feed(orch, ["0.00141342"])
    out = orch.apply(StopCommand.upsert(stop(quantity="5", activation_price=None)))
    assert [e.type for e in out.events] == ["invalid"]
    ok = orch.apply(StopCommand.upsert(stop(quantity="100", activation_price=None)))  # fixed spec: armed again
    assert [e.type for e in ok.events] == ["armed"]


def test_a_stop_of_another_symbol_is_invalid() -> None:
    orch = orchestrator()
    out = orch.apply(StopCommand.upsert(stop(symbol="BTCUSDT")))
    assert [(e.type, e.symbol, e.message) for e in out.events] == [
        ("invalid", "BTCUSDT", "stop for BTCUSDT was sent to the XRPETH orchestrator")
    ]


# --- restore from saved state (the CR status is the durable state) ------------------------------

TRACKING = SavedState(activated=True, activated_at=1_700_000_000_003, activated_price="105.5", activated_trade_id=3,
                      reference_price="110", last_trade_id=4)
TRIGGERED = SavedState(activated=True, activated_at=1_700_000_000_003, activated_price="105.5", activated_trade_id=3,
                       reference_price="112", triggered=True, triggered_at=1_700_000_000_007,
                       trigger_price="109.76", trigger_trade_id=7, last_trade_id=7)


def all_events(first: Outcome, results: list[tuple[int, Outcome]]) -> list[tuple[int, StopEvent]]:
    return [(0, e) for e in first.events] + [(i, e) for i, out in results for e in out.events]


def test_restored_tracking_stop_continues_from_its_reference() -> None:
    orch = orchestrator()
    first = orch.apply(StopCommand.upsert(stop(state=TRACKING)))
    results = feed(orch, ["108.5", "112", "109.76"], first_id=5)
    happened = all_events(first, results)
    # The restored reference is reported (at once or with the first newer trade), then the trigger.
    assert [e.type for _, e in happened] == ["reference", "triggered"]
    reference = happened[0][1]
    assert (reference.reference_price, reference.stop_price, reference.uid) == (D("110"), D("107.8"), UID)
    assert happened[1][0] == 7
    (order,) = results[2][1].orders
    assert order.trigger_price == D("109.76") and order.client_order_id == client_order_id(UID)
    state = orch.engine.state(UID)
    assert (state.activated_price, state.activated_trade_id, state.activated_at) == (D("105.5"), 3,
                                                                                     1_700_000_000_003)
    assert (state.reference, state.trigger_price) == (D("112"), D("109.76"))


def test_restore_without_a_last_trade_id_joins_at_once() -> None:
    orch = orchestrator()
    saved = TRACKING.model_copy(update={"last_trade_id": None})
    out = orch.apply(StopCommand.upsert(stop(state=saved)))
    assert [(e.type, e.reference_price, e.stop_price) for e in out.events] == [("reference", D("110"), D("107.8"))]


def test_restored_stop_ignores_trades_it_has_already_seen() -> None:
    # DESIGN §6: orchestrators drop duplicate trade ids (two marketdata replicas are safe). After a
    # restart the saved state says trade 4 was applied; a lagging replica's trade 1 (price 100, from
    # before the reference rose to 110) must not trigger the restored SELL 2 % stop.
    orch = orchestrator()
    first = orch.apply(StopCommand.upsert(stop(state=TRACKING)))
    old = feed(orch, ["100", "100", "100", "100"], first_id=1)
    assert all(not out.orders for _, out in old)
    assert [e.type for _, e in all_events(first, old)] in ([], ["reference"])
    newer = feed(orch, ["108", "107.8"], first_id=5)
    assert [(i, e.type) for i, e in all_events(Outcome(), newer) if e.type != "reference"] == [(6, "triggered")]


def test_after_the_sync_old_trades_count_as_duplicates() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(state=TRACKING)))
    orch.apply(StopCommand.upsert(stop(uid=UID2, name="s2", state=TRACKING.model_copy(update={"last_trade_id": 9}))))
    orch.apply(StopCommand(op="synced", symbol="XRPETH"))
    orch.resume_after_restore()
    assert not orch.on_tick(tick(4, "1"))
    assert orch.duplicates == 1
    out = orch.on_tick(tick(5, "108"))
    assert [(e.type, e.uid) for e in out.events] == [("reference", UID)]  # s2 waits for trade 10
    out = orch.on_tick(tick(10, "108"))
    assert [(e.type, e.uid) for e in out.events] == [("reference", UID2)]


def test_a_stop_cancelled_before_it_rejoins_stays_gone() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(state=TRACKING)))
    orch.apply(StopCommand.cancel(stop()))
    assert all(not out for _, out in feed(orch, ["108", "1"], first_id=5))


def test_a_spec_change_before_it_rejoins_is_used() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(state=TRACKING)))
    orch.apply(StopCommand.upsert(stop(state=TRACKING, trailing_percent="1", generation=3)))
    happened = all_events(Outcome(), feed(orch, ["109", "108.9"], first_id=5))
    assert [(e.type, e.stop_price, e.generation) for _, e in happened] == [
        ("reference", D("108.9"), 3), ("triggered", D("108.9"), 3)]


def test_restored_triggered_stop_never_fires_again() -> None:
    orch = orchestrator()
    assert not orch.apply(StopCommand.upsert(stop(state=TRIGGERED)))
    assert all(not out for _, out in feed(orch, ["1", "1000", "0.5"], first_id=8))
    assert not orch.apply(StopCommand.upsert(stop(state=TRIGGERED)))
    assert not orch.apply(StopCommand.upsert(stop()))
    assert not orch.apply(StopCommand.upsert(stop(activation_price=None, trailing_percent="0.1")))
    assert all(not out for _, out in feed(orch, ["2000", "1"], first_id=11))
    assert orch.engine.state(UID).phase == "triggered"


def test_restore_of_an_unactivated_stop_arms_it() -> None:
    orch = orchestrator()
    out = orch.apply(StopCommand.upsert(stop(state=SavedState())))
    assert [e.type for e in out.events] == ["armed"]


def test_events_are_stop_events_with_routing_keys() -> None:
    orch = orchestrator()
    (armed,) = orch.apply(StopCommand.upsert(stop())).events
    assert isinstance(armed, StopEvent) and armed.routing_key == "XRPETH.armed"


# --- issue 14: trailing amounts, Limit execution, expiry ------------------------------------------

BTCUSDT_INFO = {
    "symbol": "BTCUSDT",
    "status": "TRADING",
    "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000", "tickSize": "0.01"},
        {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"},
        {"filterType": "NOTIONAL", "minNotional": "5", "applyMinToMarket": True, "maxNotional": "9000000",
         "applyMaxToMarket": False, "avgPriceMins": 5},
        {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
         "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
    ],
}


def btc_book(clock: int = CLOCK, grace: int = 0) -> StopBook:
    return StopBook("BTCUSDT", filters=SymbolFilters.from_exchange_info(BTCUSDT_INFO), clock=lambda: clock,
                    expiry_grace_ms=grace)


def btc_stop(**fields: Any) -> StopDefinition:
    return stop(**{"symbol": "BTCUSDT", "quantity": "0.5", **fields})


def btc_feed(orch: StopBook, prices: list[str], first_id: int = 1) -> list[tuple[int, Outcome]]:
    return [(i, orch.on_tick(tick(i, p, "BTCUSDT"))) for i, p in enumerate(prices, start=first_id)]


def test_an_amount_stop_triggers_at_reference_minus_amount_and_places_one_market_order() -> None:
    orch = orchestrator()
    orch.apply(StopCommand.upsert(stop(trailing_percent=None, trailing_amount="2.24")))
    results = feed(orch, ["100", "104", "105.5", "110", "108.5", "112", "109.76"])
    assert kinds(results) == [(3, "activated"), (7, "triggered")]
    assert results[2][1].events[0].stop_price == D("103.26")  # 105.5 - 2.24
    (order,) = results[6][1].orders
    assert (order.type, order.trigger_price, order.stop_price, order.wire()["v"]) == ("MARKET", D("109.76"),
                                                                                     D("109.76"), 1)


def test_a_limit_stop_places_one_ioc_limit_at_the_bound_rounded_up_for_a_sell() -> None:
    orch = btc_book()
    execution = {"type": "Limit", "maxSlippagePercent": "0.333"}
    orch.apply(StopCommand.upsert(btc_stop(trailing_percent="1", activation_price=None, execution=execution)))
    results = btc_feed(orch, ["65000", "64350"])
    (order,) = results[1][1].orders
    # 64350 x (1 - 0.00333) = 64135.7145: up to the tick, 64135.72 (never below the user's bound).
    assert (order.type, order.time_in_force, order.price, order.quantity) == ("LIMIT", "IOC", D("64135.72"),
                                                                             D("0.5"))
    assert order.wire()["v"] == 2


def test_a_buy_limit_rounds_its_bound_down() -> None:
    orch = btc_book()
    execution = {"type": "Limit", "maxSlippagePercent": "0.333"}
    orch.apply(StopCommand.upsert(btc_stop(side="BUY", trailing_percent="1", activation_price=None,
                                           execution=execution)))
    results = btc_feed(orch, ["65000", "65650"])
    (order,) = results[1][1].orders
    # 65650 x 1.00333 = 65868.6145: down to 65868.61 (never above the user's bound).
    assert (order.side, order.price) == ("BUY", D("65868.61"))


def test_a_slippage_percent_price_by_side_always_refuses_is_invalid_at_creation() -> None:
    orch = btc_book()
    out = orch.apply(StopCommand.upsert(btc_stop(execution={"type": "Limit", "maxSlippagePercent": "85"})))
    (event,) = out.events
    assert event.type == "invalid"
    assert event.message is not None and "PERCENT_PRICE_BY_SIDE" in event.message


def test_a_limit_notional_too_small_at_the_activation_price_is_invalid_at_creation() -> None:
    orch = btc_book()
    out = orch.apply(StopCommand.upsert(btc_stop(quantity="0.0001", activation_price="40000",
                                                 execution={"type": "Limit", "maxSlippagePercent": "1"})))
    (event,) = out.events
    assert event.type == "invalid"
    assert event.message == ("BTCUSDT would refuse this order: order value 3.96 (quantity 0.0001 x price 39600) "
                             "is below minNotional 5")


def early_book() -> StopBook:
    """A book whose clock is at the trades' times (trade i is at 1_700_000_000_000 + i)."""
    return StopBook("XRPETH", clock=lambda: 1_700_000_000_000)


def test_a_stop_expires_on_the_first_trade_at_its_deadline_with_no_order() -> None:
    orch = early_book()
    deadline = 1_700_000_000_005  # trade i is at 1_700_000_000_000 + i
    orch.apply(StopCommand.upsert(stop(activation_price=None, expires_at=deadline)))
    results = feed(orch, ["100", "110", "108", "109", "100", "90"])
    assert kinds(results) == [(1, "activated"), (5, "expired")]
    assert [o for _, out in results for o in out.orders] == []
    expired = results[4][1].events[0]
    assert (expired.trade_id, expired.reference_price, expired.stop_price, expired.wire()["v"]) == (
        5, D("110"), D("107.8"), 2)
    assert expired.message == ("expired at 2023-11-14T22:13:20.005Z (trade 5 came at or after it); "
                               "no order was placed")


def test_a_trade_before_the_deadline_still_triggers_however_late_it_is_processed() -> None:
    # Exchange time decides: trade 5 (at deadline - 1 ms) reaches the stop, whatever the wall clock.
    orch = StopBook("XRPETH", clock=lambda: 1_700_000_000_006 + 1000, expiry_grace_ms=2000)
    orch.apply(StopCommand.upsert(stop(activation_price=None, expires_at=1_700_000_000_006)))
    results = feed(orch, ["100", "110", "108", "109", "100"])
    assert kinds(results) == [(1, "activated"), (5, "triggered")]


def test_a_quiet_market_expires_by_the_clock_after_the_grace() -> None:
    now = [CLOCK]
    orch = StopBook("XRPETH", clock=lambda: now[0], expiry_grace_ms=2000)
    orch.apply(StopCommand.upsert(stop(activation_price=None, expires_at=CLOCK + 1000)))
    feed(orch, ["100"])
    now[0] = CLOCK + 2999
    assert not orch.expire_by_clock()
    now[0] = CLOCK + 3000
    (event,) = orch.expire_by_clock().events
    assert (event.type, event.trade_id, event.uid) == ("expired", None, UID)
    assert event.message == ("expired at 2027-01-15T08:00:01.000Z (no trade reached the stop by then); "
                             "no order was placed")
    assert not orch.expire_by_clock()  # once
    assert not any(out.orders for _, out in feed(orch, ["50"], first_id=2))


def test_a_stop_created_after_its_deadline_expires_at_once() -> None:
    orch = orchestrator()
    out = orch.apply(StopCommand.upsert(stop(expires_at=CLOCK - 1)))
    assert [e.type for e in out.events] == ["armed", "expired"]


def test_moving_the_deadline_later_before_it_passes_keeps_the_stop() -> None:
    orch = early_book()
    orch.apply(StopCommand.upsert(stop(activation_price=None, expires_at=1_700_000_000_003)))
    feed(orch, ["100", "110"])
    orch.apply(StopCommand.upsert(stop(activation_price=None, expires_at=1_700_000_000_100)))
    results = feed(orch, ["109", "108", "107"], first_id=3)
    assert kinds(results) == [(5, "triggered")]


def test_a_restored_expired_stop_never_fires() -> None:
    orch = orchestrator()
    saved = TRACKING.model_copy(update={"expired": True})
    first = orch.apply(StopCommand.upsert(stop(state=saved, expires_at=1_700_000_000_004)))
    results = feed(orch, ["100", "50"], first_id=5)
    assert all_events(first, results) == []
    assert not any(out.orders for _, out in results)


# --- the worker's start-up: no tick before the operator's answer ---------------------------------------


async def test_the_worker_asks_for_its_stops_until_the_operator_answers() -> None:
    """A stop restored after ticks were applied would miss them (its trigger among them): the
    worker asks again after each timeout and returns only on ``synced`` (found by test_faults in
    the cold CI run: an orchestrator that went on after 3 s missed a Tracking stop's trigger)."""
    class Requests:
        def __init__(self, consumers: list[int] | None = None) -> None:
            self.sent: list[StopEvent] = []
            self.consumers = consumers or [1]  # of the command queue, as each look finds them

        async def publish_stop_event(self, event: StopEvent) -> None:
            self.sent.append(event)

        async def queue_state(self, name: str) -> tuple[int, int]:
            assert name == "orchestrator.XRPETH.commands"
            return 0, self.consumers.pop(0) if len(self.consumers) > 1 else self.consumers[0]

    bus = Requests()
    worker = OrchestratorWorker(bus, StopBook("XRPETH", clock=lambda: CLOCK), Settings(sync_timeout=0.05))  # type: ignore[arg-type]
    waiting = asyncio.create_task(worker.wait_for_sync())
    while len(bus.sent) < 3:
        await asyncio.sleep(0.01)
    assert not waiting.done(), "no answer: still waiting, however long"
    assert {(event.type, event.symbol) for event in bus.sent} == {("sync", "XRPETH")}
    await worker.on_command(StopCommand(op="synced", symbol="XRPETH"), {})
    await asyncio.wait_for(waiting, 1)
    asked = len(bus.sent)
    await asyncio.sleep(0.15)
    assert len(bus.sent) == asked, "answered: no more requests"


async def test_the_worker_syncs_only_once_no_other_orchestrator_reads_its_commands() -> None:
    """Two orchestrators on one command queue would split the operator's answer between them (found
    by test_production in the cold CI run: a deleted Deployment put back, its old pod terminating
    beside the new one, which started with 0 of its 1 stop)."""

    class Requests:
        def __init__(self) -> None:
            self.sent: list[StopEvent] = []
            self.looks = 0

        async def publish_stop_event(self, event: StopEvent) -> None:
            self.sent.append(event)

        async def queue_state(self, name: str) -> tuple[int, int]:
            self.looks += 1
            return 0, 2 if self.looks <= 3 else 1  # the old one goes after three looks

    bus = Requests()
    worker = OrchestratorWorker(bus, StopBook("XRPETH", clock=lambda: CLOCK), Settings(sync_timeout=5))  # type: ignore[arg-type]
    waiting = asyncio.create_task(worker.wait_until_alone(poll=0.01))
    await asyncio.wait_for(waiting, 1)
    assert (bus.looks, bus.sent) == (4, []), "no sync request while the other one reads the queue"

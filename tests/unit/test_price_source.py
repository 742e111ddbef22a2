"""spec.priceSource: BestBidAsk stops follow the top of the book (issue 14, item 2), in the core.

A BestBidAsk SELL tracks and triggers on the best bid, a BUY on the best ask, with the exact
semantics of DESIGN §4; quotes are ordered by the book's updateId; a quote that does not follow
the previous one is a gap (applied anyway, and reported); a restored stop resumes after its saved
lastUpdateId, never applying a quote twice.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from trailingstop.core.contracts import (
    BookTick,
    OrderResult,
    PlaceOrder,
    PriceTick,
    SavedState,
    StopCommand,
    StopDefinition,
    StopEvent,
    TrailingStopStatus,
    followed_price,
)
from trailingstop.core.lifecycle import (
    apply_order_result,
    apply_stop_event,
    engine_state,
    resume_after,
    saved_state,
    trigger_of,
    triggered_by_order,
)
from trailingstop.core.quote import Quote
from trailingstop.core.stopbook import Outcome, StopBook

D = Decimal
UID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
UID2 = "0b8c4f2e-53a1-4c7e-9d0a-3f1e2d4c5b6a"
CLOCK = 1_800_000_000_000
T0 = 1_700_000_000_000
U0 = 400_900_000  # book updateIds: far from any trade id, and not consecutive


def stop(uid: str = UID, side: str = "SELL", trail: str = "2", activation: str | None = "105",
         source: str = "BestBidAsk", **fields: Any) -> StopDefinition:
    return StopDefinition(uid=uid, namespace="trading", name=uid[:4], generation=1, symbol="XRPETH", side=side,
                          quantity="100", trailing_percent=trail, activation_price=activation, price_source=source,
                          **fields)


def quote(n: int, bid: str, ask: str, previous: int | str | None = "auto") -> BookTick:
    """The n-th quote (updateId U0 + 7n), following quote n-1 unless ``previous`` says otherwise."""
    update_id = U0 + 7 * n
    prev = (update_id - 7 if n > 1 else None) if previous == "auto" else previous
    return BookTick(symbol="XRPETH", update_id=update_id, bid_price=bid, bid_qty="5", ask_price=ask, ask_qty="6",
                    received_at=T0 + 1000 * n, source="test", previous_update_id=prev)


def trade(trade_id: int, price: str) -> PriceTick:
    return PriceTick(symbol="XRPETH", price=price, qty="1", trade_id=trade_id, trade_time=T0 + trade_id,
                     received_at=T0 + trade_id, source="test")


def book(*stops: StopDefinition) -> StopBook:
    orch = StopBook("XRPETH", clock=lambda: CLOCK)
    for definition in stops:
        orch.apply(StopCommand.upsert(definition))
    return orch


def feed(orch: StopBook, bids: list[str], asks: list[str]) -> list[tuple[int, Outcome]]:
    return [(n, orch.on_book(quote(n, b, a))) for n, (b, a) in enumerate(zip(bids, asks, strict=True), start=1)]


def kinds(results: list[tuple[int, Outcome]]) -> list[tuple[int, str]]:
    return [(n, e.type) for n, out in results for e in out.events]


# The DESIGN §4 worked examples, on one side of the book; the other side wanders elsewhere.
SELL_BIDS = ["100", "104", "105.5", "110", "108.5", "112", "109.76"]
BUY_ASKS = ["100", "96", "94.8", "92", "93", "90", "91.35"]
FAR = ["500", "1", "700", "2", "800", "3", "900"]


def test_followed_price_is_the_side_of_the_book_the_order_meets() -> None:
    assert followed_price("LastTrade", "SELL") == followed_price("LastTrade", "BUY") == "LastTrade"
    assert (followed_price("BestBidAsk", "SELL"), followed_price("BestBidAsk", "BUY")) == ("BestBid", "BestAsk")
    # A stop from an operator that predates priceSource follows the last trade.
    old = StopDefinition.model_validate({"uid": UID, "symbol": "XRPETH", "side": "SELL", "quantity": "1",
                                         "trailingPercent": "1"})
    assert old.price_source is None and old.followed_price == "LastTrade"


def test_a_sell_tracks_and_triggers_on_the_best_bid_alone() -> None:
    orch = book(stop())
    results = feed(orch, SELL_BIDS, FAR)
    assert kinds(results) == [(3, "activated"), (7, "triggered")]
    activated = results[2][1].events[0]
    assert (activated.price, activated.reference_price, activated.stop_price) == (D("105.5"), D("105.5"), D("103.39"))
    assert (activated.update_id, activated.trade_id, activated.price_source) == (U0 + 21, None, "BestBid")
    assert activated.trade_time == T0 + 3000  # a quote's time is when it was received
    triggered = results[6][1].events[0]
    assert (triggered.price, triggered.reference_price, triggered.stop_price) == (D("109.76"), D("112"), D("109.76"))
    [order] = results[6][1].orders
    assert (order.trigger_price, order.trigger_update_id, order.trigger_trade_id, order.price_source) == (
        D("109.76"), U0 + 49, None, "BestBid")
    assert order.wire()["triggerUpdateId"] == U0 + 49 and "triggerTradeId" not in order.wire()


def test_a_buy_tracks_and_triggers_on_the_best_ask_alone() -> None:
    orch = book(stop(side="BUY", trail="1.5", activation="95"))
    results = feed(orch, FAR, BUY_ASKS)
    assert kinds(results) == [(3, "activated"), (7, "triggered")]
    triggered = results[6][1].events[0]
    assert (triggered.price, triggered.reference_price, triggered.stop_price, triggered.price_source) == (
        D("91.35"), D("90"), D("91.35"), "BestAsk")


def test_exact_decimal_trigger_on_the_bid() -> None:
    orch = book(stop(trail="1", activation=None))
    assert kinds(feed(orch, ["100", "110", "108.9"], ["101", "111", "109"])) == [(1, "activated"), (3, "triggered")]


def test_trades_and_quotes_drive_only_their_own_stops() -> None:
    """One symbol, three series: a LastTrade stop never sees a quote, a book stop never a trade."""
    orch = book(stop(UID, source="LastTrade", trail="1", activation=None), stop(UID2, trail="1", activation=None))
    assert [e.uid for e in orch.on_tick(trade(1, "100")).events] == [UID]  # activated by the trade
    assert [e.uid for e in orch.on_book(quote(1, "200", "201")).events] == [UID2]  # activated by the quote
    assert not orch.on_tick(trade(2, "150"))  # would trigger the book stop (at 198) if it were the bid
    [fired] = orch.on_book(quote(2, "98", "99")).events  # and this would trigger the LastTrade stop (at 99)
    assert (fired.uid, fired.type, fired.update_id) == (UID2, "triggered", U0 + 14)
    [fired] = orch.on_tick(trade(3, "99")).events
    assert (fired.uid, fired.type, fired.trade_id, fired.price_source) == (UID, "triggered", 3, None)
    assert orch.active_count() == 0


def test_an_empty_side_of_the_book_is_no_price() -> None:
    orch = book(stop(trail="1", activation=None), stop(UID2, side="BUY", trail="1", activation=None))
    orch.on_book(quote(1, "100", "101"))
    out = orch.on_book(quote(2, "0", "101.5"))  # no bids at all: not a fall to zero
    assert not out.orders
    [price] = [e for e in orch.flush() if e.type == "price"]
    assert (price.price_source, price.price) == ("BestAsk", D("101.5"))  # no BestBid price of 0 either


def test_duplicate_and_older_quotes_are_dropped_and_counted() -> None:
    orch = book(stop(trail="1", activation=None))
    orch.on_book(quote(1, "100", "101"))
    orch.on_book(quote(2, "110", "111"))
    assert not orch.on_book(quote(2, "50", "51"))  # redelivered: would trigger
    assert not orch.on_book(quote(1, "50", "51"))  # older: would trigger
    assert orch.book_duplicates == 2
    assert orch.engines["BestBid"].state(UID).reference == D("110")


def test_a_quote_that_does_not_follow_the_last_is_a_gap_and_is_applied() -> None:
    """After a lost stream the first fresh quote is the price now: it is applied (here it
    triggers), after a gap event per book series with stops that says from when to when."""
    orch = book(stop(trail="1", activation=None), stop(UID2, side="BUY", trail="1", activation=None))
    orch.on_book(quote(1, "100", "101"))
    orch.on_book(quote(2, "110", "100.5"))
    out = orch.on_book(quote(9, "108", "101", previous=None))  # reconnected: quotes 3..8 never came
    gaps = [e for e in out.events if e.type == "gap"]
    assert [(e.price_source, e.uid) for e in gaps] == [("BestBid", None), ("BestAsk", None)]
    assert {(e.gap_from, e.gap_from_update_id, e.trade_time, e.update_id) for e in gaps} == {
        (T0 + 2000, U0 + 14, T0 + 9000, U0 + 63)}
    assert [e.price for e in gaps] == [D("108"), D("101")]
    assert out.events.index(gaps[-1]) < out.events.index(next(e for e in out.events if e.type == "triggered"))
    [order] = out.orders
    assert (order.uid, order.trigger_price) == (UID, D("108"))  # the first fresh bid, below 108.9
    assert (orch.book_gaps, orch.book_gap_ms) == (1, 7000)
    # A quote lost on the way (its successor names it as previous) is a gap as well.
    lost = orch.on_book(quote(11, "108", "101", previous=U0 + 70))
    assert [e.type for e in lost.events] == ["gap"]  # only BUY stops are left to tell
    assert orch.book_gaps == 2


def test_no_gap_on_an_unbroken_stream_nor_for_a_series_without_stops() -> None:
    orch = book(stop(trail="5", activation=None))
    results = feed(orch, ["100", "101", "102"], ["101", "102", "103"])
    assert all(e.type != "gap" for _, out in results for e in out.events)
    out = orch.on_book(quote(5, "103", "104", previous=None))
    assert [(e.type, e.price_source) for e in out.events] == [("gap", "BestBid")]  # no BUY stop: no BestAsk gap


def test_flush_gives_each_book_series_its_last_price_and_references_with_update_ids() -> None:
    orch = book(stop(trail="1", activation=None), stop(UID2, side="BUY", trail="1", activation=None),
                stop("33333333-7425-40de-944b-e07fc1f90ae7", source="LastTrade", trail="1", activation=None))
    orch.on_tick(trade(7, "50"))
    orch.on_book(quote(1, "100", "101"))
    orch.on_book(quote(2, "102", "100.5"))
    events = orch.flush()
    references = {e.uid: (e.reference_price, e.update_id, e.trade_id, e.price_source)
                  for e in events if e.type == "reference"}
    assert references == {UID: (D("102"), U0 + 14, None, "BestBid"), UID2: (D("100.5"), U0 + 14, None, "BestAsk")}
    prices = {(e.price_source, e.price, e.update_id, e.trade_id) for e in events if e.type == "price"}
    assert prices == {(None, D("50"), None, 7), ("BestBid", D("102"), U0 + 14, None),
                      ("BestAsk", D("100.5"), U0 + 14, None)}
    assert [e.type for e in orch.flush()] == []  # nothing new


# --- restores (DESIGN §6): no quote applied twice, exactly where it was -------------------------


def restored(saved_update: int, reference: str = "110", last_price_at: int | None = T0 + 2000,
             **fields: Any) -> StopDefinition:
    state = SavedState(activated=True, activated_at=T0 + 1000, activated_price="100", activated_update_id=U0 + 7,
                       reference_price=reference, last_update_id=saved_update, last_price_at=last_price_at)
    return stop(trail="1", activation=None, state=state, **fields)


def test_a_restored_book_stop_resumes_after_its_saved_update_and_never_sees_one_twice() -> None:
    orch = book(restored(U0 + 14))
    orch.apply(StopCommand(op="synced", symbol="XRPETH"))
    orch.resume_after_restore()
    assert orch.book_position == U0 + 14
    # Redelivered quotes from the queue, already applied before the restart: one would trigger.
    assert not orch.on_book(quote(1, "50", "51"))
    assert not orch.on_book(quote(2, "108", "109"))
    out = orch.on_book(quote(3, "109.5", "110"))
    # Rejoined as of its saved quote (the status already has that), then the quote applies.
    assert [(e.type, e.reference_price, e.update_id, e.price) for e in out.events] == [
        ("reference", D("110"), U0 + 14, None)]
    state = orch.engines["BestBid"].state(UID)
    assert (state.reference, state.activated_trade_id) == (D("110"), U0 + 7)
    [fired] = orch.on_book(quote(4, "108.9", "109")).events  # 110 * 0.99, exactly
    assert (fired.type, fired.update_id) == ("triggered", U0 + 28)
    assert orch.book_gaps == 0


def test_a_restored_book_stop_that_missed_quotes_says_so() -> None:
    orch = book(restored(U0 + 14))
    orch.resume_after_restore()
    out = orch.on_book(quote(6, "109", "110", previous=U0 + 35))  # quotes 3..5 went with the old process
    gap, reference = out.events  # the gap first: it came before the fresh quote
    assert (gap.type, gap.uid, gap.price_source) == ("gap", UID, "BestBid")
    assert (gap.gap_from, gap.gap_from_update_id, gap.trade_time, gap.update_id) == (
        T0 + 2000, U0 + 14, T0 + 6000, U0 + 42)
    assert reference.type == "reference"
    assert orch.book_gaps == 1


def test_a_restored_book_stop_alongside_trades_keeps_the_id_spaces_apart() -> None:
    """Book updateIds are far above trade ids: a trade must not unpark a book stop, nor a quote a
    trade stop."""
    trade_state = SavedState(activated=True, activated_price="100", activated_trade_id=2, reference_price="120",
                             last_trade_id=5)
    orch = book(restored(U0 + 14), stop(UID2, source="LastTrade", trail="1", activation=None, state=trade_state))
    orch.resume_after_restore()
    assert (orch.engine.last_trade_id, orch.book_position) == (5, U0 + 14)
    assert not orch.on_tick(trade(U0 + 100, "200")).orders  # a huge trade id: the book stop stays parked
    assert UID not in orch.engines["BestBid"]
    assert UID2 in orch.engine
    assert UID2 not in orch.engines["BestBid"] and UID not in orch.engine


def test_a_restored_triggered_book_stop_never_fires_again() -> None:
    state = SavedState(activated=True, reference_price="110", triggered=True, trigger_price="108.9",
                       trigger_update_id=U0 + 28, last_update_id=U0 + 28)
    orch = book(stop(trail="1", activation=None, state=state))
    orch.resume_after_restore()
    results = feed(orch, ["1", "500", "1"], ["2", "501", "2"])
    assert all(not out.orders for _, out in results)
    assert orch.engines["BestBid"].state(UID).phase == "triggered"


# --- the status (lifecycle) ---------------------------------------------------------------------


def book_event(type_: str, n: int, **fields: Any) -> StopEvent:
    return StopEvent(type=type_, symbol="XRPETH", uid=UID, namespace="trading", name="s", generation=1,
                     update_id=U0 + 7 * n, trade_time=T0 + 1000 * n, at=CLOCK, price_source="BestBid", **fields)


def run(*steps: StopEvent | OrderResult, status: TrailingStopStatus | None = None) -> TrailingStopStatus:
    status = status or TrailingStopStatus()
    for step in steps:
        if isinstance(step, OrderResult):
            status = apply_order_result(status, step, "2026-11-21T10:00:00Z")
        else:
            status = apply_stop_event(status, step, "2026-11-21T10:00:00Z")
    return status


ARMED = StopEvent(type="armed", symbol="XRPETH", uid=UID, generation=1, at=CLOCK, price_source="BestBid")
ACTIVATED = book_event("activated", 3, price="105.5", reference_price="105.5", stop_price="103.39")
REFERENCE = book_event("reference", 6, price="112", reference_price="112", stop_price="109.76")
TRIGGERED = book_event("triggered", 7, price="109.76", reference_price="112", stop_price="109.76")


def symbol_event(type_: str, n: int, source: str | None, **fields: Any) -> StopEvent:
    ids: dict[str, Any] = {"update_id": U0 + 7 * n} if source else {"trade_id": n}
    return StopEvent(type=type_, symbol="XRPETH", at=CLOCK, trade_time=T0 + 1000 * n, price_source=source,
                     **ids, **fields)


def test_a_book_stop_status_says_what_it_follows_with_update_ids_only() -> None:
    assert run(ARMED).price_source == "BestBid"
    tracking = run(ARMED, ACTIVATED, REFERENCE)
    assert (tracking.price_source, tracking.activated_update_id, tracking.last_update_id) == ("BestBid", U0 + 21,
                                                                                             U0 + 42)
    assert (tracking.activated_trade_id, tracking.last_trade_id) == (None, None)
    assert (tracking.last_price, tracking.reference_price) == (D("112"), D("112"))
    triggered = run(ARMED, ACTIVATED, REFERENCE, TRIGGERED)
    assert (triggered.phase, triggered.trigger_update_id, triggered.trigger_trade_id) == ("Triggered", U0 + 49, None)
    # An event from an orchestrator that predates book stops is about the last trade.
    old = StopEvent(type="armed", symbol="XRPETH", uid=UID, generation=1, at=CLOCK)
    assert run(old).price_source == "LastTrade"


def test_per_symbol_prices_reach_only_stops_of_their_series_and_never_go_back() -> None:
    tracking = run(ARMED, ACTIVATED, REFERENCE)
    bid = run(symbol_event("price", 8, "BestBid", price="111"), status=tracking)
    assert (bid.last_price, bid.last_update_id) == (D("111"), U0 + 56)
    assert run(symbol_event("price", 9, None, price="5"), status=bid) == bid  # a trade: not this stop's price
    assert run(symbol_event("price", 9, "BestAsk", price="5"), status=bid) == bid  # the other side
    assert run(symbol_event("price", 4, "BestBid", price="1"), status=bid) == bid  # older than the status


def test_a_gap_is_kept_in_the_status_once() -> None:
    tracking = run(ARMED, ACTIVATED, REFERENCE)
    gap = symbol_event("gap", 12, "BestBid", price="111", gap_from=T0 + 6000, gap_from_update_id=U0 + 42)
    after = run(gap, status=tracking)
    assert after.last_gap is not None and after.gap_count == 1
    assert after.last_gap.wire() == {"from": "2023-11-14T22:13:26.000Z", "to": "2023-11-14T22:13:32.000Z",
                                     "seconds": "6", "fromUpdateId": U0 + 42, "toUpdateId": U0 + 84}
    assert run(gap, status=after) == after  # redelivered
    later = symbol_event("gap", 20, "BestBid", gap_from=T0 + 19_750, gap_from_update_id=U0 + 133)
    again = run(later, status=after)
    assert again.gap_count == 2 and again.last_gap is not None and again.last_gap.seconds == D("0.25")
    assert run(later, status=run(TRIGGERED, status=tracking)).last_gap is None  # a fired stop is done


def test_saved_state_and_engine_state_of_a_book_stop_keep_update_ids() -> None:
    status = run(ARMED, ACTIVATED, REFERENCE)
    saved = saved_state(status)
    assert (saved.activated_update_id, saved.last_update_id, saved.last_price_at) == (U0 + 21, U0 + 42, T0 + 6000)
    definition = stop(trail="2", activation="105", state=saved)
    assert resume_after(definition) == U0 + 42
    state = engine_state(definition)
    assert (state.phase, state.reference, state.activated_trade_id) == ("tracking", D("112"), U0 + 21)
    assert resume_after(stop(source="LastTrade", state=saved)) is None  # no trade position saved


def test_an_order_result_before_the_triggered_event_writes_the_book_trigger() -> None:
    order = PlaceOrder(client_order_id="ts-7c9e6679742540de944be07fc1f90ae7", uid=UID, symbol="XRPETH", side="SELL",
                       quantity="100", mode="Simulate", route="simulate", trigger_price="109.76",
                       triggered_at=T0 + 7000, trigger_update_id=U0 + 49, reference_price="112", stop_price="109.76",
                       price_source="BestBid")
    result = OrderResult.for_order(order, status="SIMULATED", executed_qty="100", avg_price="109.76", at=T0 + 7000)
    assert (result.trigger_update_id, result.price_source) == (U0 + 49, "BestBid")
    trigger = trigger_of(result)
    assert trigger is not None and (trigger.update_id, trigger.trade_id) == (U0 + 49, None)
    tracking = run(ARMED, ACTIVATED, REFERENCE)
    step = triggered_by_order(tracking, result, "2026-11-21T10:00:00Z")
    assert step is not None and (step.phase, step.trigger_update_id, step.trigger_price) == (
        "Triggered", U0 + 49, D("109.76"))
    filled = apply_order_result(step, result, "2026-11-21T10:00:01Z")
    assert filled.phase == "Filled"
    assert run(TRIGGERED, status=filled) == filled  # the late event is a duplicate


@pytest.mark.parametrize("bad", [{"update_id": "x"}, {"bid_price": 1.5}, {"ask_price": "-1"}, {"symbol": "x y"}])
def test_book_tick_refuses_what_is_not_a_quote(bad: dict[str, Any]) -> None:
    fields: dict[str, Any] = dict(symbol="XRPETH", update_id=1, bid_price="1", bid_qty="1", ask_price="2",
                                  ask_qty="1", received_at=T0, source="t")
    with pytest.raises(ValueError):
        BookTick(**{**fields, **bad})


def test_book_tick_round_trips_from_a_quote() -> None:
    tick = BookTick.from_quote("XRPETH", Quote(U0, D("0.00145"), D("10"), D("0.0014501"), D("3.5"), T0, U0 - 3),
                               "binance")
    wire = tick.wire()
    assert wire == {"v": 1, "symbol": "XRPETH", "updateId": U0, "bidPrice": "0.00145", "bidQty": "10",
                    "askPrice": "0.0014501", "askQty": "3.5", "receivedAt": T0, "source": "binance",
                    "previousUpdateId": U0 - 3}
    assert BookTick.from_json(tick.to_json()) == tick
    assert tick.routing_key == "XRPETH.book"

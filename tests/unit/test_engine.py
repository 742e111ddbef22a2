"""The engine against DESIGN §4: worked examples, and equality with a naive model on random streams."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trailingstop.core.engine import Engine, StopAlreadyTriggered, StopState, stop_level

D = Decimal
# More examples for a deeper search: ENGINE_EXAMPLES=20000 pytest tests/unit/test_engine.py
EXAMPLES = int(os.environ.get("ENGINE_EXAMPLES", "400"))


def feed(engine: Engine, prices: list[str]) -> list[tuple[str, str, int]]:
    """Trades with ids following the engine's last one; returns (kind, stop, trade id) of events."""
    happened = []
    for trade_id, price in enumerate(prices, start=(engine.last_trade_id or 0) + 1):
        for event in engine.on_trade(D(price), trade_id, 1000 + trade_id):
            happened.append((event.kind, event.stop_id, trade_id))
    return happened


# --- DESIGN §4 worked examples -----------------------------------------------------------------


def test_worked_example_sell_with_activation() -> None:
    engine = Engine("X")
    assert [e.kind for e in engine.upsert("s", "SELL", D("2"), D("105"))] == ["armed"]
    prices = ["100", "104", "105.5", "110", "108.5", "112", "109.76"]
    assert feed(engine, prices) == [("activated", "s", 3), ("triggered", "s", 7)]
    state = engine.state("s")
    assert (state.reference, state.stop_price, state.trigger_price) == (D("112"), D("109.76"), D("109.76"))
    assert state.activated_price == D("105.5")


def test_worked_example_sell_reference_and_stop_while_tracking() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("2"), D("105"))
    feed(engine, ["100", "104"])
    assert engine.state("s").phase == "armed"
    feed(engine, ["105.5", "110"])
    assert engine.state("s").stop_price == D("107.8")
    engine.on_trade(D("108.5"), 10)
    assert engine.state("s").phase == "tracking"
    engine.on_trade(D("112"), 11)
    assert engine.state("s").stop_price == D("109.76")


def test_worked_example_buy_with_activation() -> None:
    engine = Engine("X")
    engine.upsert("b", "BUY", D("1.5"), D("95"))
    prices = ["100", "96", "94.8", "92", "93", "90", "91.35"]
    assert feed(engine, prices) == [("activated", "b", 3), ("triggered", "b", 7)]
    state = engine.state("b")
    assert (state.reference, state.stop_price) == (D("90"), D("91.35"))


def test_worked_example_exact_decimal_where_float_fails() -> None:
    # The seed's float version, drop = (R - p) / R * 100 >= 1, misses this trigger.
    assert (110 - 108.9) / 110 * 100 < 1
    engine = Engine("X")
    engine.upsert("s", "SELL", D("1"))
    assert feed(engine, ["100", "110", "108.9"]) == [("activated", "s", 1), ("triggered", "s", 3)]


# --- behaviour ---------------------------------------------------------------------------------


def test_activating_trade_never_triggers_and_trigger_is_inclusive() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("50"))
    assert feed(engine, ["10"]) == [("activated", "s", 1)]
    assert engine.on_trade(D("5.000001"), 2) == ()
    assert [e.kind for e in engine.on_trade(D("5"), 3)] == ["triggered"]


def test_triggers_at_most_once_and_refuses_changes_after() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("1"))
    feed(engine, ["100", "99", "98", "97"])
    assert engine.state("s").phase == "triggered"
    assert engine.on_trade(D("200"), 10) == ()
    assert engine.on_trade(D("1"), 11) == ()
    with pytest.raises(StopAlreadyTriggered):
        engine.upsert("s", "SELL", D("2"))


def test_upsert_of_tracking_stop_keeps_reference_and_reports_new_level() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("10"))
    feed(engine, ["100", "120", "115"])
    events = engine.upsert("s", "SELL", D("5"), D("1000"))
    assert [(e.kind, e.reference, e.stop_price) for e in events] == [("reference", D("120"), D("114"))]
    state = engine.state("s")
    assert (state.phase, state.reference, state.activation_price) == ("tracking", D("120"), D("1000"))
    assert [e.kind for e in engine.on_trade(D("114"), 10)] == ["triggered"]


def test_upsert_of_armed_stop_moves_its_activation() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("1"), D("200"))
    feed(engine, ["150"])
    engine.upsert("s", "SELL", D("1"), D("140"))
    assert engine.on_trade(D("141"), 5)[0].kind == "activated"


def test_side_is_immutable() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("1"))
    with pytest.raises(ValueError, match="immutable"):
        engine.upsert("s", "BUY", D("1"))


@pytest.mark.parametrize("trail", ["0", "100", "-1", "150"])
def test_trail_out_of_range_is_refused(trail: str) -> None:
    with pytest.raises(ValueError, match="trailingPercent must be > 0 and < 100"):
        Engine("X").upsert("s", "SELL", D(trail))


def test_cancel_removes_a_stop_before_it_triggers() -> None:
    engine = Engine("X")
    engine.upsert("a", "SELL", D("1"))
    engine.upsert("b", "SELL", D("1"))
    feed(engine, ["100"])
    assert engine.cancel("a") is True
    assert engine.cancel("a") is False
    assert [e.stop_id for e in engine.on_trade(D("90"), 5)] == ["b"]
    assert "a" not in engine


def test_duplicate_and_out_of_order_trades_are_dropped_and_counted() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("1"))
    engine.on_trade(D("100"), 10)
    assert engine.on_trade(D("50"), 10) == ()
    assert engine.on_trade(D("50"), 9) == ()
    assert engine.duplicates == 2
    assert engine.state("s").phase == "tracking"


def test_restore_tracking_stop_resumes_from_saved_reference() -> None:
    engine = Engine("X")
    engine.restore(
        StopState("s", "SELL", D("2"), None, "tracking", reference=D("200"), activated_price=D("150"))
    )
    assert engine.state("s").stop_price == D("196")
    assert engine.on_trade(D("197"), 1) == ()
    assert engine.on_trade(D("196"), 2)[0].stop_price == D("196")


def test_restore_triggered_stop_never_fires_again() -> None:
    engine = Engine("X")
    engine.restore(
        StopState("s", "BUY", D("2"), None, "triggered", reference=D("10"), stop_price=D("10.2"),
                  trigger_price=D("10.3"), trigger_trade_id=7)
    )
    assert engine.on_trade(D("50"), 8) == ()
    assert engine.state("s").trigger_trade_id == 7


def test_reference_changes_are_coalesced_until_drained() -> None:
    engine = Engine("X")
    engine.upsert("a", "SELL", D("5"))
    engine.upsert("b", "BUY", D("5"))
    feed(engine, ["100", "101", "102", "103"])
    changes = {(e.stop_id, e.reference) for e in engine.drain_reference_changes()}
    assert changes == {("a", D("103"))}
    assert engine.drain_reference_changes() == []
    engine.on_trade(D("99"), 20)
    assert {(e.stop_id, e.reference) for e in engine.drain_reference_changes()} == {("b", D("99"))}


def test_many_stops_one_trade_triggers_each_exactly_once() -> None:
    engine = Engine("X")
    for i in range(1, 51):
        engine.upsert(f"s{i}", "SELL", D(i))
    engine.on_trade(D("100"), 1)
    fired = [e.stop_id for e in engine.on_trade(D("70"), 2)]
    assert sorted(fired, key=lambda s: int(s[1:])) == [f"s{i}" for i in range(1, 31)]
    assert len(set(fired)) == 30


def test_stop_level_is_exact() -> None:
    assert stop_level("SELL", D("110"), D("1")) == D("108.9")
    assert stop_level("BUY", D("90"), D("1.5")) == D("91.35")
    assert stop_level("SELL", D("0.00141342"), D("0.05")) == D("0.00141271329")


# --- equivalence with a naive model -------------------------------------------------------------


@dataclass
class NaiveStop:
    """DESIGN §4 read literally, one stop at a time, in exact rationals."""

    side: str
    trail: Fraction
    activation: Fraction | None
    active: bool = False
    reference: Fraction | None = None
    triggered: bool = False

    def on_trade(self, p: Fraction) -> str | None:
        if self.triggered:
            return None
        if not self.active:
            a = self.activation
            if a is None or (self.side == "SELL" and p >= a) or (self.side == "BUY" and p <= a):
                self.active, self.reference = True, p
                return "activated"
            return None
        assert self.reference is not None
        d = self.trail / 100
        if self.side == "SELL":
            self.reference = max(self.reference, p)
            fire = p <= self.reference * (1 - d)
        else:
            self.reference = min(self.reference, p)
            fire = p >= self.reference * (1 + d)
        if fire:
            self.triggered = True
            return "triggered"
        return None

    def level(self) -> Fraction | None:
        if not self.active or self.reference is None:
            return None
        d = self.trail / 100
        return self.reference * (1 - d) if self.side == "SELL" else self.reference * (1 + d)


PRICES = st.sampled_from(["90", "95", "97.5", "98", "99", "99.5", "100", "100.5", "101", "102", "105", "110"])
TRAILS = st.sampled_from(["0.5", "1", "1.5", "2", "2.5", "5", "9.5", "10"])
ACTIVATIONS = st.one_of(st.none(), PRICES)
STOP_IDS = st.sampled_from([f"s{i}" for i in range(8)])
SIDES = st.sampled_from(["SELL", "BUY"])

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("trade"), PRICES),
        st.tuples(st.just("trade"), PRICES),
        st.tuples(st.just("trade"), PRICES),
        st.tuples(st.just("upsert"), STOP_IDS, SIDES, TRAILS, ACTIVATIONS),
        st.tuples(st.just("cancel"), STOP_IDS),
    ),
    max_size=80,
)


def _fraction(text: str | None) -> Fraction | None:
    return None if text is None else Fraction(text)


@settings(max_examples=EXAMPLES, deadline=None)
@given(OPERATIONS)
def test_engine_equals_naive_model(operations: list[tuple]) -> None:
    engine = Engine("X")
    naive: dict[str, NaiveStop] = {}
    trade_id = 0
    for op in operations:
        if op[0] == "trade":
            trade_id += 1
            price = op[1]
            got = sorted((e.kind, e.stop_id) for e in engine.on_trade(D(price), trade_id, trade_id))
            want = sorted(
                (kind, stop_id)
                for stop_id, stop in naive.items()
                if (kind := stop.on_trade(Fraction(price))) is not None
            )
            assert got == want, f"trade {trade_id} at {price}"
        elif op[0] == "upsert":
            _, stop_id, side, trail, activation = op
            existing = naive.get(stop_id)
            if existing is not None and existing.side != side:
                with pytest.raises(ValueError):
                    engine.upsert(stop_id, side, D(trail), _decimal(activation))
                continue
            if existing is not None and existing.triggered:
                with pytest.raises(StopAlreadyTriggered):
                    engine.upsert(stop_id, side, D(trail), _decimal(activation))
                continue
            engine.upsert(stop_id, side, D(trail), _decimal(activation))
            if existing is None:
                naive[stop_id] = NaiveStop(side, Fraction(trail), _fraction(activation))
            else:
                existing.trail, existing.activation = Fraction(trail), _fraction(activation)
        else:
            assert engine.cancel(op[1]) is (naive.pop(op[1], None) is not None)
        for stop_id, stop in naive.items():
            state = engine.state(stop_id)
            want_phase = "triggered" if stop.triggered else "tracking" if stop.active else "armed"
            assert state.phase == want_phase
            if want_phase == "tracking":
                assert Fraction(state.reference) == stop.reference
                assert Fraction(state.stop_price) == stop.level()


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else D(text)


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(
    st.lists(st.tuples(SIDES, TRAILS, ACTIVATIONS), min_size=1, max_size=30),
    st.lists(PRICES, max_size=120),
)
def test_many_stops_equal_many_naive_stops(stops: list[tuple], prices: list[str]) -> None:
    """All stops placed up front, then a long stream: the shape of a backtest."""
    engine = Engine("X")
    naive = {}
    for index, (side, trail, activation) in enumerate(stops):
        engine.upsert(f"s{index}", side, D(trail), _decimal(activation))
        naive[f"s{index}"] = NaiveStop(side, Fraction(trail), _fraction(activation))
    for trade_id, price in enumerate(prices, start=1):
        got = sorted((e.kind, e.stop_id, e.reference, e.stop_price) for e in engine.on_trade(D(price), trade_id))
        want = []
        for stop_id, stop in naive.items():
            kind = stop.on_trade(Fraction(price))
            if kind is not None:
                want.append((kind, stop_id, stop.reference, stop.level()))
        assert [(k, s, Fraction(r), Fraction(lv)) for k, s, r, lv in got] == sorted(want)

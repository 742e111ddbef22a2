"""The engine against DESIGN §4: worked examples, and equality with a naive model on random streams."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trailingstop.core.engine import Engine, StopAlreadyTriggered, StopExpired, StopIsFinal, StopState, stop_level

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


# --- trailing amounts ---------------------------------------------------------------------------


def test_sell_amount_worked_example() -> None:
    # SELL 5 below the high, activation 105: 105.5 activates (stop 100.5), 110 -> 105, 112 -> 107.
    engine = Engine("X")
    engine.upsert("s", "SELL", None, D("105"), trailing_amount=D("5"))
    assert feed(engine, ["100", "104", "105.5"]) == [("activated", "s", 3)]
    assert engine.state("s").stop_price == D("100.5")
    assert feed(engine, ["110", "105.01", "112", "107.000001"]) == []
    assert (engine.state("s").reference, engine.state("s").stop_price) == (D("112"), D("107"))
    assert [e.kind for e in engine.on_trade(D("107"), 50)] == ["triggered"]  # inclusive
    state = engine.state("s")
    assert (state.trailing_percent, state.trailing_amount, state.trigger_price) == (None, D("5"), D("107"))


def test_buy_amount_worked_example() -> None:
    engine = Engine("X")
    engine.upsert("b", "BUY", None, D("95"), trailing_amount=D("1.25"))
    assert feed(engine, ["100", "96", "94.8", "92", "93.24", "90"]) == [("activated", "b", 3)]
    assert engine.state("b").stop_price == D("91.25")
    assert [e.kind for e in engine.on_trade(D("91.25"), 20)] == ["triggered"]


def test_a_sell_whose_level_is_at_or_below_zero_never_triggers_until_the_reference_passes_the_amount() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", None, trailing_amount=D("100"))
    assert feed(engine, ["50"]) == [("activated", "s", 1)]
    assert engine.state("s").stop_price == D("-50")  # shown as it is; nothing can reach it
    assert engine.on_trade(D("0.00000001"), 2) == ()
    assert engine.on_trade(D("0"), 3) == ()  # not even a trade at 0 sells at a stop of 0 or less
    engine.on_trade(D("100"), 4)
    assert engine.state("s").stop_price == D("0")
    assert engine.on_trade(D("0"), 5) == ()
    engine.on_trade(D("150"), 6)
    assert [e.kind for e in engine.on_trade(D("50"), 7)] == ["triggered"]


def test_a_tracking_stop_can_change_its_kind_of_trail_and_keeps_its_reference() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("10"))
    feed(engine, ["100", "120"])
    events = engine.upsert("s", "SELL", None, trailing_amount=D("3"))
    assert [(e.kind, e.reference, e.stop_price) for e in events] == [("reference", D("120"), D("117"))]
    assert engine.on_trade(D("117.5"), 10) == ()
    events = engine.upsert("s", "SELL", D("1"))
    assert [(e.reference, e.stop_price) for e in events] == [(D("120"), D("118.8"))]
    assert [e.kind for e in engine.on_trade(D("118.8"), 11)] == ["triggered"]


def test_in_one_group_the_kind_with_the_higher_level_fires_first_whatever_the_reference() -> None:
    # At R = 100, 1 % (99) is above 2 (98); at R = 1000, 2 (998) is above 1 % (990).
    for top, first, second in (("100", "pct", "amt"), ("1000", "amt", "pct")):
        engine = Engine("X")
        engine.upsert("pct", "SELL", D("1"))
        engine.upsert("amt", "SELL", None, trailing_amount=D("2"))
        engine.on_trade(D(top), 1)
        level_first = engine.state(first).stop_price
        assert level_first is not None
        assert [e.stop_id for e in engine.on_trade(level_first, 2)] == [first]
        assert engine.state(second).phase == "tracking"


@pytest.mark.parametrize(("percent", "amount"), [(None, None), (D("1"), D("1"))])
def test_exactly_one_kind_of_trail(percent: Decimal | None, amount: Decimal | None) -> None:
    with pytest.raises(ValueError, match="exactly one of trailingPercent and trailingAmount"):
        Engine("X").upsert("s", "SELL", percent, trailing_amount=amount)


@pytest.mark.parametrize("amount", ["0", "-1"])
def test_amount_must_be_positive(amount: str) -> None:
    with pytest.raises(ValueError, match="trailingAmount must be > 0"):
        Engine("X").upsert("s", "BUY", None, trailing_amount=D(amount))


def test_restore_of_an_amount_stop() -> None:
    engine = Engine("X")
    engine.restore(StopState("s", "BUY", None, None, "tracking", reference=D("10"), trailing_amount=D("0.5")))
    assert engine.state("s").stop_price == D("10.5")
    assert [e.kind for e in engine.on_trade(D("10.5"), 1)] == ["triggered"]


def test_stop_level_of_an_amount_is_exact() -> None:
    assert stop_level("SELL", D("0.00000003"), None, D("0.00000001")) == D("0.00000002")
    assert stop_level("BUY", D("12345678901234567890.12345678901234567890"), None,
                      D("0.00000000000000000001")) == D("12345678901234567890.12345678901234567891")


# --- deadlines ------------------------------------------------------------------------------------


def test_a_stop_expires_at_the_first_trade_at_or_after_its_deadline_before_that_trade_applies() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("1"), expires_at=1003)
    engine.on_trade(D("100"), 1, 1001)
    engine.on_trade(D("99.5"), 2, 1002)
    # This trade would trigger (99 <= 99), but it happened at the deadline: the stop expired first.
    events = engine.on_trade(D("99"), 3, 1003)
    assert [(e.kind, e.stop_id, e.trade_id, e.time, e.reference, e.stop_price) for e in events] == [
        ("expired", "s", 3, 1003, D("100"), D("99"))]
    assert engine.state("s").phase == "expired"
    assert engine.on_trade(D("1"), 4, 1004) == ()
    with pytest.raises(StopExpired):
        engine.upsert("s", "SELL", D("1"), expires_at=9999)
    assert engine.active_count() == 0


def test_a_trade_just_before_the_deadline_still_triggers() -> None:
    engine = Engine("X")
    engine.upsert("s", "SELL", D("1"), expires_at=1003)
    engine.on_trade(D("100"), 1, 1001)
    assert [e.kind for e in engine.on_trade(D("99"), 2, 1002)] == ["triggered"]
    assert engine.on_trade(D("99"), 3, 1003) == ()
    assert engine.state("s").phase == "triggered"


def test_expire_due_by_the_clock_and_a_moved_deadline() -> None:
    engine = Engine("X")
    engine.upsert("a", "BUY", D("1"), D("90"), expires_at=5000)
    engine.upsert("b", "BUY", D("1"), expires_at=5000)
    engine.upsert("b", "BUY", D("1"), expires_at=8000)  # extended before it passed
    engine.upsert("c", "BUY", D("1"))
    assert engine.expire_due(4999) == []
    assert [(e.kind, e.stop_id, e.trade_id, e.time) for e in engine.expire_due(5000)] == [("expired", "a", None, 5000)]
    assert engine.expire_due(7000) == []
    assert [e.stop_id for e in engine.expire_due(10_000)] == ["b"]
    assert engine.state("c").phase == "armed"
    engine.cancel("c")
    assert engine.expire_due(10**15) == []


def test_restore_of_an_expired_stop_keeps_it_final() -> None:
    engine = Engine("X")
    engine.restore(StopState("s", "SELL", D("1"), None, "expired", reference=D("10"), expires_at=5))
    assert engine.on_trade(D("1"), 1, 1) == ()
    with pytest.raises(StopIsFinal):
        engine.upsert("s", "SELL", D("2"))


# --- equivalence with a naive model -------------------------------------------------------------


@dataclass
class NaiveStop:
    """DESIGN §4 read literally, one stop at a time, in exact rationals: a percent (``trail``) or an
    amount (``amount``) trail; SELL stop = R - amount, BUY stop = R + amount; a deadline ends it
    at the first trade at or after it, before that trade applies."""

    side: str
    trail: Fraction | None
    activation: Fraction | None
    amount: Fraction | None = None
    expires_at: int | None = None
    active: bool = False
    reference: Fraction | None = None
    triggered: bool = False
    expired: bool = False

    def on_trade(self, p: Fraction, time: int | None = None) -> str | None:
        if self.triggered or self.expired:
            return None
        if self.expires_at is not None and time is not None and time >= self.expires_at:
            self.expired = True
            return "expired"
        if not self.active:
            a = self.activation
            if a is None or (self.side == "SELL" and p >= a) or (self.side == "BUY" and p <= a):
                self.active, self.reference = True, p
                return "activated"
            return None
        assert self.reference is not None
        if self.side == "SELL":
            self.reference = max(self.reference, p)
        else:
            self.reference = min(self.reference, p)
        level = self.level()
        assert level is not None
        fire = (p <= level and level > 0) if self.side == "SELL" else p >= level
        if fire:
            self.triggered = True
            return "triggered"
        return None

    def level(self) -> Fraction | None:
        if not self.active or self.reference is None:
            return None
        if self.amount is not None:
            return self.reference - self.amount if self.side == "SELL" else self.reference + self.amount
        assert self.trail is not None
        d = self.trail / 100
        return self.reference * (1 - d) if self.side == "SELL" else self.reference * (1 + d)

    @property
    def phase(self) -> str:
        if self.expired:
            return "expired"
        return "triggered" if self.triggered else "tracking" if self.active else "armed"


PRICES = st.sampled_from(["90", "95", "97.5", "98", "99", "99.5", "100", "100.5", "101", "102", "105", "110"])
TRAILS = st.sampled_from(["0.5", "1", "1.5", "2", "2.5", "5", "9.5", "10"])
AMOUNTS = st.sampled_from(["0.5", "1", "2", "2.5", "5", "10", "97.5", "100", "120"])
# ("percent", x) or ("amount", x): a mix of both kinds in one engine.
KIND_TRAILS = st.one_of(st.tuples(st.just("percent"), TRAILS), st.tuples(st.just("amount"), AMOUNTS))
ACTIVATIONS = st.one_of(st.none(), PRICES)
DEADLINES = st.one_of(st.none(), st.integers(min_value=1, max_value=80))
STOP_IDS = st.sampled_from([f"s{i}" for i in range(8)])
SIDES = st.sampled_from(["SELL", "BUY"])

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("trade"), PRICES),
        st.tuples(st.just("trade"), PRICES),
        st.tuples(st.just("trade"), PRICES),
        st.tuples(st.just("upsert"), STOP_IDS, SIDES, KIND_TRAILS, ACTIVATIONS, DEADLINES),
        st.tuples(st.just("cancel"), STOP_IDS),
        st.tuples(st.just("clock"), st.integers(min_value=0, max_value=3)),
    ),
    max_size=80,
)


def _fraction(text: str | None) -> Fraction | None:
    return None if text is None else Fraction(text)


def _trail_args(kind_trail: tuple[str, str]) -> tuple[Decimal | None, Decimal | None]:
    kind, value = kind_trail
    return (D(value), None) if kind == "percent" else (None, D(value))


def _naive(side: str, kind_trail: tuple[str, str], activation: str | None, deadline: int | None) -> NaiveStop:
    kind, value = kind_trail
    percent, amount = (Fraction(value), None) if kind == "percent" else (None, Fraction(value))
    return NaiveStop(side, percent, _fraction(activation), amount, deadline)


@settings(max_examples=EXAMPLES, deadline=None)
@given(OPERATIONS)
def test_engine_equals_naive_model(operations: list[tuple]) -> None:
    """Percent and amount stops mixed, with deadlines: trades carry time = id; ``clock`` moves
    the orchestrator's clock forward (expire_due) without a trade."""
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
                if (kind := stop.on_trade(Fraction(price), trade_id)) is not None
            )
            assert got == want, f"trade {trade_id} at {price}"
        elif op[0] == "clock":
            now = trade_id + op[1]
            got = sorted(e.stop_id for e in engine.expire_due(now))
            want = []
            for stop_id, stop in naive.items():
                if stop.phase in ("armed", "tracking") and stop.expires_at is not None and stop.expires_at <= now:
                    stop.expired = True
                    want.append(stop_id)
            assert got == sorted(want)
        elif op[0] == "upsert":
            _, stop_id, side, kind_trail, activation, deadline = op
            percent, amount = _trail_args(kind_trail)
            existing = naive.get(stop_id)
            if existing is not None and existing.side != side:
                with pytest.raises(ValueError):
                    engine.upsert(stop_id, side, percent, _decimal(activation), trailing_amount=amount)
                continue
            if existing is not None and (existing.triggered or existing.expired):
                with pytest.raises(StopAlreadyTriggered if existing.triggered else StopExpired):
                    engine.upsert(stop_id, side, percent, _decimal(activation), trailing_amount=amount)
                continue
            engine.upsert(stop_id, side, percent, _decimal(activation), trailing_amount=amount, expires_at=deadline)
            fresh = _naive(side, kind_trail, activation, deadline)
            if existing is None:
                naive[stop_id] = fresh
            else:
                existing.trail, existing.amount = fresh.trail, fresh.amount
                existing.activation, existing.expires_at = fresh.activation, fresh.expires_at
        else:
            assert engine.cancel(op[1]) is (naive.pop(op[1], None) is not None)
        for stop_id, stop in naive.items():
            state = engine.state(stop_id)
            assert state.phase == stop.phase
            if stop.phase == "tracking":
                assert Fraction(state.reference) == stop.reference
                assert Fraction(state.stop_price) == stop.level()


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else D(text)


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(
    st.lists(st.tuples(SIDES, KIND_TRAILS, ACTIVATIONS), min_size=1, max_size=30),
    st.lists(PRICES, max_size=120),
)
def test_many_stops_equal_many_naive_stops(stops: list[tuple], prices: list[str]) -> None:
    """All stops placed up front, then a long stream: the shape of a backtest (percents and
    amounts mixed)."""
    engine = Engine("X")
    naive = {}
    for index, (side, kind_trail, activation) in enumerate(stops):
        percent, amount = _trail_args(kind_trail)
        engine.upsert(f"s{index}", side, percent, _decimal(activation), trailing_amount=amount)
        naive[f"s{index}"] = _naive(side, kind_trail, activation, None)
    for trade_id, price in enumerate(prices, start=1):
        got = sorted((e.kind, e.stop_id, e.reference, e.stop_price) for e in engine.on_trade(D(price), trade_id))
        want = []
        for stop_id, stop in naive.items():
            kind = stop.on_trade(Fraction(price))
            if kind is not None:
                want.append((kind, stop_id, stop.reference, stop.level()))
        assert [(k, s, Fraction(r), Fraction(lv)) for k, s, r, lv in got] == sorted(want)

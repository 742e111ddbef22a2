"""Exact at every length the system accepts (DESIGN §3, "Digits").

Values of the maximum length (20 integer digits and 20 decimals for prices and quantities, 2 + 8
for trailingPercent) travel manifest -> engine -> wire -> status and back, and come out unchanged.
The expected numbers are computed with :class:`fractions.Fraction`, which has no context and no
precision to run out of, so they do not share a rounding bug with the code under test.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trailingstop.core.contracts import (
    OrderResult,
    PlaceOrder,
    PriceTick,
    StopCommand,
    StopDefinition,
    StopEvent,
    TrailingStopStatus,
    ms_to_rfc3339,
)
from trailingstop.core.decimals import digits, negate, oriented, to_wire
from trailingstop.core.engine import Engine, stop_level
from trailingstop.core.filters import LotSize
from trailingstop.core.lifecycle import apply_order_result, apply_stop_event, saved_state
from trailingstop.core.stopbook import StopBook
from trailingstop.exchange.simulated import SimulatedExchange
from trailingstop.stopfiles import load_manifests
from trailingstop.tradefiles import read_trades

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BIGGEST = Decimal("99999999999999999999.99999999999999999999")
T0 = 1_700_000_000_000


def fixed(integer: int, fraction: int, places: int = 20) -> str:
    return f"{integer}.{fraction:0{places}d}" if fraction else str(integer)


# Maximum-length decimals: 20 integer digits (no leading zero) and 20 decimals ending in a non-zero
# digit, so not one digit of the 40 can be dropped as insignificant.
FRACTION = st.integers(0, 10**19 - 1).map(lambda f: f * 10 + 7)
MAX_LENGTH = st.builds(fixed, st.integers(10**19, 10**20 - 1), FRACTION)
TRAIL = st.builds(lambda i, f: fixed(i, f, 8), st.integers(1, 99), st.integers(1, 10**8 - 1))


def floor20(value: Fraction) -> Fraction:
    return Fraction(math.floor(value * 10**20), 10**20)


def ceil20(value: Fraction) -> Fraction:
    return Fraction(math.ceil(value * 10**20), 10**20)


def text(value: Fraction) -> str:
    """A Fraction with a terminating expansion, as a plain decimal string."""
    integer, rest = divmod(value.numerator, value.denominator)
    if rest == 0:
        return str(integer)
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    return fixed(integer, int((value - integer) * 10**places), places)


def wire_round_trip(message: object) -> object:
    cls = type(message)
    return cls.from_json(message.to_json())  # type: ignore[attr-defined]


def status_round_trip(status: TrailingStopStatus) -> TrailingStopStatus:
    """What the API server stores and gives back: the status as JSON."""
    return TrailingStopStatus.model_validate(json.loads(json.dumps(status.wire())))


@EXAMPLES
@given(side=st.sampled_from(["SELL", "BUY"]), quantity=MAX_LENGTH, trail=TRAIL, first=MAX_LENGTH, second=MAX_LENGTH)
def test_max_length_values_go_through_unchanged(tmp_path_factory: pytest.TempPathFactory, side: str, quantity: str,
                                                trail: str, first: str, second: str) -> None:
    folder = tmp_path_factory.mktemp("exact")
    d = Fraction(trail) / 100
    # Trades: the first activates (R = first); the second moves R; the third reaches the stop level.
    low, high = sorted((Fraction(first), Fraction(second)))
    if side == "SELL":
        activation, reference = low, high
        stop = reference * (1 - d)
        trigger = floor20(stop)
    else:
        activation, reference = high / 2, low / 2  # room above: R * (1 + d) must stay a valid price
        activation, reference = ceil20(activation), ceil20(reference)
        if reference == activation:
            activation += Fraction(1, 10**20)
        stop = reference * (1 + d)
        trigger = ceil20(stop)
    prices = [activation, reference, trigger]
    assert all(0 < p <= Fraction(BIGGEST) and digits(Decimal(text(p)))[1] <= 20 for p in prices)

    manifest = folder / "stop.yaml"
    manifest.write_text(
        "apiVersion: trailingstop.dev/v1\nkind: TrailingStop\nmetadata: {name: exact}\n"
        f'spec: {{symbol: BTCUSDT, side: {side}, quantity: "{quantity}", trailingPercent: "{trail}"}}\n'
    )
    trades = folder / "BTCUSDT-aggTrades-exact.csv"
    trades.write_text("".join(f"{100 + i},{text(p)},{quantity},{i},{i},{T0 + i * 1000},true,true\n"
                              for i, p in enumerate(prices)))

    (loaded,), _ = load_manifests(manifest)
    assert to_wire(loaded.spec.quantity) == to_wire(Decimal(quantity))
    definition = StopDefinition.from_spec(loaded.spec, uid=loaded.uid, namespace=loaded.namespace, name=loaded.name)
    orchestrator = StopBook("BTCUSDT", clock=lambda: T0)
    status = TrailingStopStatus()
    events = list(orchestrator.apply(wire_round_trip(StopCommand.upsert(definition))).events)
    orders: list[PlaceOrder] = []
    for trade in read_trades(trades):
        tick = wire_round_trip(PriceTick.from_trade("BTCUSDT", trade, trade.time, "exact"))
        outcome = orchestrator.on_tick(tick)  # type: ignore[arg-type]
        events += outcome.events + orchestrator.flush()
        orders += outcome.orders
    for event in events:
        status = status_round_trip(apply_stop_event(status, wire_round_trip(event), ms_to_rfc3339(T0)))

    assert (status.phase, len(orders)) == ("Triggered", 1)
    assert Fraction(status.activated_price) == activation
    assert Fraction(status.reference_price) == reference
    assert Fraction(status.stop_price) == stop  # up to 51 digits, none lost
    assert Fraction(status.trigger_price) == trigger

    (order,) = orders
    order = wire_round_trip(order)  # type: ignore[assignment]
    assert order.quantity == Decimal(quantity) and Fraction(order.trigger_price) == trigger
    result = wire_round_trip(SimulatedExchange().place(order))
    assert isinstance(result, OrderResult)
    status = status_round_trip(apply_order_result(status, result, ms_to_rfc3339(T0)))
    assert status.phase == "Filled" and status.order is not None
    assert status.order.executed_qty == Decimal(quantity)
    assert Fraction(status.order.cummulative_quote_qty) == Fraction(quantity) * trigger  # up to 80 digits
    assert status.message == f"simulated fill: {side} {to_wire(Decimal(quantity))} BTCUSDT at {text(trigger)}"


@EXAMPLES
@given(side=st.sampled_from(["SELL", "BUY"]), trail=TRAIL, first=MAX_LENGTH, second=MAX_LENGTH)
def test_a_saved_max_length_state_restores_exactly(side: str, trail: str, first: str, second: str) -> None:
    """Status -> saved state -> StopCommand on the wire -> a new orchestrator: the same reference."""
    definition = StopDefinition(uid="u1", symbol="BTCUSDT", side=side, quantity="1", trailing_percent=trail)
    engine_before = StopBook("BTCUSDT", clock=lambda: T0)
    status = TrailingStopStatus()
    events = list(engine_before.apply(StopCommand.upsert(definition)).events)
    ordered = sorted((first, second), key=Decimal, reverse=side == "BUY")  # the second moves the reference
    if ordered[0] == ordered[1]:
        return
    for trade_id, price in enumerate(ordered, start=1):
        tick = PriceTick(symbol="BTCUSDT", price=price, qty="1", trade_id=trade_id, trade_time=T0 + trade_id,
                         received_at=T0, source="exact")
        events += engine_before.on_tick(tick).events + engine_before.flush()
    for event in events:
        status = status_round_trip(apply_stop_event(status, wire_round_trip(event), ms_to_rfc3339(T0)))
    if status.phase != "Tracking":
        return  # the second price triggered it (a wide trail can't, a narrow one can): nothing to restore
    restored = StopDefinition(**{**definition.model_dump(), "state": saved_state(status)})
    after = StopBook("BTCUSDT", clock=lambda: T0)
    after.apply(wire_round_trip(StopCommand.upsert(restored)))
    after.resume_after_restore()
    after.on_tick(PriceTick(symbol="BTCUSDT", price=ordered[1], qty="1", trade_id=3, trade_time=T0 + 3,
                            received_at=T0, source="exact"))
    state = after.engine.state("u1")
    assert state.reference == Decimal(ordered[1])
    d = Fraction(trail) / 100
    assert Fraction(state.stop_price) == Fraction(ordered[1]) * (1 - d if side == "SELL" else 1 + d)


@pytest.mark.parametrize(
    ("number", "wire"),
    [
        ("12345678901234567890.12345678901234567890", "12345678901234567890.1234567890123456789"),
        ("99999999999999999999.99999999999999999999", "99999999999999999999.99999999999999999999"),
        ("1E+3", "1000"),
        ("0.00000001", "0.00000001"),
        ("1.500", "1.5"),
        ("-0.000", "0"),
        ("0E-50", "0"),
        ("12222222112222222211.22222222222222222221111111111", "12222222112222222211.22222222222222222221111111111"),
    ],
)
def test_to_wire_keeps_every_digit(number: str, wire: str) -> None:
    assert to_wire(Decimal(number)) == wire


def test_to_wire_refuses_what_has_no_decimal_string() -> None:
    for bad in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError, match="not a finite decimal"):
            to_wire(Decimal(bad))


def test_signs_flip_exactly_where_the_minus_operator_rounds() -> None:
    value = Decimal("12345678901234567890.12345678901234567890")
    assert -value != negate(negate(value)) == value  # the operator rounds to 28 digits; negate does not
    assert oriented(value, -1) == negate(value) and oriented(value, 1) is value


def test_the_engine_is_exact_for_a_40_digit_buy() -> None:
    """A BUY stop orients prices as -p: with the '-' operator a 40-digit price lost 12 digits."""
    engine = Engine("BTCUSDT")
    engine.upsert("b", "BUY", Decimal("1"))
    low = Decimal("12345678901234567890.12345678901234567890")
    engine.on_trade(low, 1, T0)
    state = engine.state("b")
    assert state.reference == low
    assert Fraction(state.stop_price) == Fraction(low) * Fraction(101, 100)
    assert state.stop_price == stop_level("BUY", low, Decimal("1"))
    stop = state.stop_price
    below = floor20(Fraction(stop))  # the highest valid price below the stop level: no trigger
    assert below < Fraction(stop) and engine.on_trade(Decimal(text(below)), 2, T0) == ()
    (fired,) = engine.on_trade(Decimal(text(ceil20(Fraction(stop)))), 3, T0)
    assert fired.kind == "triggered" and fired.stop_price == stop


def test_lot_size_floor_never_rounds_a_40_digit_quantity_up() -> None:
    lot = LotSize("LOT_SIZE", Decimal("0.00000001"), Decimal("0"), Decimal("0.00000001"))
    quantity = Decimal("12345678901234567890.12345678901234567890")
    assert lot.floor(quantity) == Decimal("12345678901234567890.12345678")
    assert lot.problem(quantity) is not None
    assert lot.problem(Decimal("12345678901234567890.12345678")) is None
    assert lot.floor(Decimal("0.000000005")) == Decimal("0")  # below minQty: one step lower, exactly


def test_a_wire_decimal_beyond_the_limits_is_refused() -> None:
    fine = PriceTick(symbol="BTCUSDT", price="1" * 40 + "." + "1" * 40, qty="1", trade_id=1, trade_time=1,
                     received_at=1, source="x")
    assert to_wire(fine.price) == "1" * 40 + "." + "1" * 40
    for bad, problem in [
        ("1" * 41, "at most 40 digits before the point"),
        ("0." + "0" * 40 + "1", "at most 40 digits before the point and 40 after it"),
        ("1e999999999", "at most 40 digits before the point"),
        ("1" * 10_000, "at most 82 characters"),
    ]:
        with pytest.raises(ValueError, match=problem):
            PriceTick(symbol="BTCUSDT", price=bad, qty="1", trade_id=1, trade_time=1, received_at=1, source="x")
    event = StopEvent(type="price", symbol="BTCUSDT", price=Decimal("1E+2"), at=1)
    assert json.loads(event.to_json())["price"] == "100"


def test_run_and_backtest_print_40_digit_values_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trailingstop.cli import main

    quantity = "12345678901234567890.12345678901234567891"
    manifest = tmp_path / "big.yaml"
    manifest.write_text("apiVersion: trailingstop.dev/v1\nkind: TrailingStop\nmetadata: {name: big}\n"
                        f'spec: {{symbol: BTCUSDT, side: SELL, quantity: "{quantity}", trailingPercent: "1"}}\n')
    trades = tmp_path / "BTCUSDT-aggTrades-big.csv"
    activation = Fraction("10000000000000000000.00000000000000000001")
    high = Fraction("11111111111111111111.11111111111111111111")
    stop = high * Fraction(99, 100)  # 43 significant digits
    prices = [activation, high, floor20(stop)]
    trades.write_text("".join(f"{i},{text(p)},1,{i},{i},{T0 + i},true,true\n" for i, p in enumerate(prices, 1)))
    assert main(["run", str(manifest), "--trades", str(trades)]) == 0
    out = capsys.readouterr().out
    assert len(text(stop).replace(".", "")) == 42
    assert f"reached stop {text(stop)} (reference {text(high)}, trade 3)" in out
    assert f"simulated fill: SELL {quantity} BTCUSDT at {text(floor20(stop))}" in out
    assert main(["backtest", "--trades", str(trades), "--side", "SELL", "--trailing-percent", "1", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert (record["activatedPrice"], record["referencePrice"], record["stopPrice"], record["triggerPrice"]) == (
        text(activation), text(high), text(stop), text(floor20(stop)))

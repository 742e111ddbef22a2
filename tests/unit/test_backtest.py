"""Backtests: every (trail, activation) combination in one pass, exactly as DESIGN §4 says, and charts."""

from __future__ import annotations

import decimal
import json
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from trailingstop.backtest import (
    RESULT_KEYS,
    Combination,
    combinations,
    render_results,
    result_record,
    run_backtest,
)
from trailingstop.core.contracts import deadline_ms
from trailingstop.core.trade import Trade
from trailingstop.plot import PlotError, write_chart
from trailingstop.tradefiles import demo_trades_path, load_trades

D = Decimal
DATA = Path(__file__).parent / "data"
T = 1_700_000_000_000


def naive(trades: list[Trade], side: str, trail: Decimal, activation: Decimal | None,
          amount: Decimal | None = None) -> dict[str, Any]:
    """DESIGN §4 written out as plainly as possible, exact decimals; the record backtest should give.
    With ``amount`` the trail is that many quote units (``trail`` is ignored): SELL stop = R - amount,
    BUY stop = R + amount."""
    with decimal.localcontext() as ctx:
        ctx.prec = 200
        ctx.traps[decimal.Inexact] = True
        d = trail / 100

        def level(r: Decimal) -> Decimal:
            if amount is not None:
                return r - amount if side == "SELL" else r + amount
            return r * (1 - d) if side == "SELL" else r * (1 + d)

        active = False
        reference = stop = None
        record: dict[str, Any] = {
            "side": side, "trailingPercent": _s(trail), "activationPrice": _s(activation), "activated": False,
            "activatedAt": None, "activatedPrice": None, "activatedTradeId": None, "triggered": False,
            "triggeredAt": None, "triggerPrice": None, "triggerTradeId": None, "referencePrice": None,
            "stopPrice": None,
        }
        for trade in trades:
            p = trade.price
            if not active:
                if activation is None or (side == "SELL" and p >= activation) or (side == "BUY" and p <= activation):
                    active, reference = True, p
                    stop = level(reference)
                    record.update(activated=True, activatedAt=trade.time, activatedPrice=_s(p),
                                  activatedTradeId=trade.trade_id)
                continue
            if side == "SELL":
                reference = max(reference, p)
                stop = level(reference)
                hit = p <= stop
            else:
                reference = min(reference, p)
                stop = level(reference)
                hit = p >= stop
            if hit:
                record.update(triggered=True, triggeredAt=trade.time, triggerPrice=_s(p),
                              triggerTradeId=trade.trade_id)
                break
        if active:
            record.update(referencePrice=_s(reference), stopPrice=_s(stop))
        if amount is None:
            return record
        return {"side": side, "trailingPercent": None, "trailingAmount": _s(amount),
                **{k: v for k, v in record.items() if k not in ("side", "trailingPercent")}}


def _s(value: Decimal | None) -> str | None:
    if value is None:
        return None
    return "0" if value == 0 else format(value.normalize(), "f")


def records(trades: list[Trade], side: str, trails: list[str], activations: list[str | None]) -> list[dict[str, Any]]:
    combos = combinations(side, [D(t) for t in trails], [None if a is None else D(a) for a in activations])  # type: ignore[arg-type]
    return run_backtest(trades, combos).records()


@pytest.fixture(scope="module")
def sell_trades() -> list[Trade]:
    return load_trades(DATA / "worked_sell.csv")


@pytest.fixture(scope="module")
def demo() -> list[Trade]:
    return load_trades(demo_trades_path())


def test_design_sell_worked_example(sell_trades: list[Trade]) -> None:
    assert records(sell_trades, "SELL", ["2"], ["105"]) == [{
        "side": "SELL", "trailingPercent": "2", "activationPrice": "105",
        "activated": True, "activatedAt": T + 3000, "activatedPrice": "105.5", "activatedTradeId": 103,
        "triggered": True, "triggeredAt": T + 7000, "triggerPrice": "109.76", "triggerTradeId": 107,
        "referencePrice": "112", "stopPrice": "109.76",
    }]


def test_design_buy_worked_example() -> None:
    trades = load_trades(DATA / "worked_buy.jsonl")
    assert records(trades, "BUY", ["1.5"], ["95"]) == [{
        "side": "BUY", "trailingPercent": "1.5", "activationPrice": "95",
        "activated": True, "activatedAt": T + 3000, "activatedPrice": "94.8", "activatedTradeId": 203,
        "triggered": True, "triggeredAt": T + 7000, "triggerPrice": "91.35", "triggerTradeId": 207,
        "referencePrice": "90", "stopPrice": "91.35",
    }]


def test_design_exact_decimal_example() -> None:
    (record,) = records(load_trades(DATA / "exact_sell.json"), "SELL", ["1"], [None])
    assert (record["activatedPrice"], record["triggerPrice"], record["referencePrice"], record["stopPrice"]) == (
        "100", "108.9", "110", "108.9")  # 110 * 0.99 == 108.9: a float gets this wrong


def test_several_combinations_in_one_pass(sell_trades: list[Trade]) -> None:
    """Computed by hand from DESIGN §4 on 100, 104, 105.5, 110, 108.5, 112, 109.76 (ids 101-107)."""
    got = records(sell_trades, "SELL", ["1", "2", "5"], [None, "105", "120"])
    never = {"activated": False, "activatedAt": None, "activatedPrice": None, "activatedTradeId": None,
             "triggered": False, "triggeredAt": None, "triggerPrice": None, "triggerTradeId": None,
             "referencePrice": None, "stopPrice": None}
    from_first = {"activated": True, "activatedAt": T + 1000, "activatedPrice": "100", "activatedTradeId": 101}
    from_105 = {"activated": True, "activatedAt": T + 3000, "activatedPrice": "105.5", "activatedTradeId": 103}
    at_108_5 = {"triggered": True, "triggeredAt": T + 5000, "triggerPrice": "108.5", "triggerTradeId": 105,
                "referencePrice": "110", "stopPrice": "108.9"}
    at_109_76 = {"triggered": True, "triggeredAt": T + 7000, "triggerPrice": "109.76", "triggerTradeId": 107,
                 "referencePrice": "112", "stopPrice": "109.76"}
    open_5 = {"triggered": False, "triggeredAt": None, "triggerPrice": None, "triggerTradeId": None,
              "referencePrice": "112", "stopPrice": "106.4"}
    expected = [
        {"trailingPercent": "1", "activationPrice": None, **from_first, **at_108_5},
        {"trailingPercent": "1", "activationPrice": "105", **from_105, **at_108_5},
        {"trailingPercent": "1", "activationPrice": "120", **never},
        {"trailingPercent": "2", "activationPrice": None, **from_first, **at_109_76},
        {"trailingPercent": "2", "activationPrice": "105", **from_105, **at_109_76},
        {"trailingPercent": "2", "activationPrice": "120", **never},
        {"trailingPercent": "5", "activationPrice": None, **from_first, **open_5},
        {"trailingPercent": "5", "activationPrice": "105", **from_105, **open_5},
        {"trailingPercent": "5", "activationPrice": "120", **never},
    ]
    assert got == [{"side": "SELL", **e} for e in expected]
    for record in got:
        assert tuple(record) == RESULT_KEYS


@pytest.mark.parametrize(
    ("side", "trails", "activations"),
    [("SELL", ["0.1", "0.5", "1", "2.5", "7"], [None, "0.00145", "0.0015", "0.0016"]),
     ("BUY", ["0.1", "0.75", "1.5", "3"], [None, "0.0014", "0.00141", "0.0013"])],
)
def test_real_day_matches_the_plain_model(demo: list[Trade], side: str, trails: list[str],
                                          activations: list[str | None]) -> None:
    got = records(demo, side, trails, activations)
    want = [naive(demo, side, D(t), None if a is None else D(a)) for t in trails for a in activations]
    assert got == want
    assert any(r["triggered"] for r in got) and any(not r["triggered"] for r in got)


@pytest.mark.parametrize(
    ("side", "amounts", "activations"),
    [("SELL", ["0.00000001", "0.000005", "0.00001", "0.0000123", "0.0001", "0.00145"],
      [None, "0.00145", "0.0015", "0.0016"]),
     ("BUY", ["0.00000001", "0.000007", "0.00002", "0.00005", "1"], [None, "0.0014", "0.00141", "0.0013"])],
)
def test_amounts_on_a_real_day_match_the_plain_model(demo: list[Trade], side: str, amounts: list[str],
                                                     activations: list[str | None]) -> None:
    combos = combinations(side, [D(a) for a in amounts], [None if a is None else D(a) for a in activations],  # type: ignore[arg-type]
                          kind="amount")
    got = run_backtest(demo, combos).records()
    want = [naive(demo, side, D(0), None if a is None else D(a), amount=D(x)) for x in amounts for a in activations]
    assert got == want
    assert any(r["triggered"] for r in got) and any(not r["triggered"] for r in got)
    assert all(tuple(r)[:3] == ("side", "trailingPercent", "trailingAmount") for r in got)


def test_amount_worked_example_by_hand(sell_trades: list[Trade]) -> None:
    # worked_sell: activated at 105.5 (trade 103); the high is 112; 112 - 2.24 = 109.76 is reached by
    # trade 107 exactly (inclusive), like the 2 % stop of DESIGN §4's example. An amount of 12 would
    # put the stop at 100: never reached.
    combos = combinations("SELL", [D("2.24"), D("12")], [D("105")], kind="amount")
    got = run_backtest(sell_trades, combos).records()
    assert [(r["trailingAmount"], r["triggered"], r["triggerTradeId"], r["referencePrice"], r["stopPrice"])
            for r in got] == [("2.24", True, 107, "112", "109.76"), ("12", False, None, "112", "100")]


def test_a_percent_and_an_amount_of_the_same_digits_are_two_combinations() -> None:
    percent = Combination("SELL", D("1"), None)
    amount = Combination("SELL", None, None, trailing_amount=D("1"))
    assert percent.key != amount.key
    assert (percent.trail_label, amount.trail_label) == ("1%", "1")


def test_a_sell_amount_at_or_above_the_price_never_triggers(sell_trades: list[Trade]) -> None:
    # The stop would be at or below 0: no price reaches it, and the record says where it stands.
    (record,) = run_backtest(sell_trades, combinations("SELL", [D("112")], [None], kind="amount")).records()
    assert (record["activated"], record["triggered"], record["referencePrice"], record["stopPrice"]) == (
        True, False, "112", "0")


def test_result_count_and_span(demo: list[Trade]) -> None:
    result = run_backtest(iter(demo), combinations("SELL", [D("1")], [None]))
    assert result.trades == 12_477
    assert (result.first_time, result.last_time) == (1570752011620, 1570965568844)
    assert result.prices == [] and result.tracks == {}  # recorded only for charts


def test_combinations_are_deduplicated_by_value() -> None:
    combos = combinations("SELL", [D("1"), D("1.0"), D("2")], [None, D("105"), D("105.00")])
    assert [c.key for c in combos] == ["SELL/1/none", "SELL/1/105", "SELL/2/none", "SELL/2/105"]
    assert Combination("BUY", D("1.50"), D("95.0")).key == "BUY/1.5/95"


def test_values_are_decimal_strings_never_floats(sell_trades: list[Trade]) -> None:
    for record in records(sell_trades, "SELL", ["1", "5"], [None, "120"]):
        parsed = json.loads(json.dumps(record))
        for key in ("trailingPercent", "activationPrice", "activatedPrice", "triggerPrice", "referencePrice",
                    "stopPrice"):
            assert parsed[key] is None or isinstance(parsed[key], str)
        for key in ("activatedAt", "activatedTradeId", "triggeredAt", "triggerTradeId"):
            assert parsed[key] is None or type(parsed[key]) is int
        assert type(parsed["activated"]) is bool and type(parsed["triggered"]) is bool


def test_result_record_from_a_state(sell_trades: list[Trade]) -> None:
    combo = Combination("SELL", D("2"), D("105"))
    result = run_backtest(sell_trades, [combo])
    assert result_record(combo, result.states[combo.key]) == result.records()[0]


def test_render_results(sell_trades: list[Trade]) -> None:
    result = run_backtest(sell_trades, combinations("SELL", [D("1"), D("5")], [None, D("120")]))
    lines = render_results(result).splitlines()
    assert lines[0].split() == ["SIDE", "TRAIL%", "ACTIVATION", "ACTIVATED", "AT", "ACTIVATED", "PRICE",
                                "TRIGGERED", "AT", "TRIGGER", "PRICE", "REFERENCE", "STOP", "EXIT", "PRICE", "KEPT%"]
    assert lines[1].split() == ["SELL", "1", "none", "2023-11-14T22:13:21.000Z", "100", "2023-11-14T22:13:25.000Z",
                                "108.5", "110", "108.9", "108.5", "+8.5000"]
    assert lines[2].split() == ["SELL", "1", "120", "-", "-", "not", "triggered", "-", "-", "-", "-", "-"]
    assert lines[3].split() == ["SELL", "5", "none", "2023-11-14T22:13:21.000Z", "100", "not", "triggered", "-",
                                "112", "106.4", "109.76", "(open)", "+9.7600", "<-", "best"]
    assert lines[-2] == "best: SELL trail 5%, activation none: kept +9.7600%"
    assert lines[-1] == ("7 trades from 2023-11-14T22:13:21.000Z to 2023-11-14T22:13:27.000Z; 4 combinations; "
                         "reference/stop are at the trigger, else at the end of the data")


def test_no_trades() -> None:
    result = run_backtest([], combinations("BUY", [D("1")], [None]), record=True)
    assert result.trades == 0 and result.first_time is None
    assert result.records()[0]["activated"] is False
    assert render_results(result).splitlines()[-1] == (
        "0 trades; 1 combinations; reference/stop are at the trigger, else at the end of the data")
    with pytest.raises(PlotError, match="no trades to plot"):
        write_chart(result, "x.html")


def test_recorded_series_for_the_chart(sell_trades: list[Trade]) -> None:
    combo = Combination("SELL", D("2"), D("105"))
    result = run_backtest(sell_trades, [combo], record=True)
    assert result.prices == [(t.time, t.price) for t in sell_trades]
    track = result.tracks[combo.key]
    # Step series: activation at 105.5, then each new high; the trigger freezes it at 112.
    assert track.times == [T + 3000, T + 4000, T + 6000, T + 7000]
    assert track.references == [D("105.5"), D("110"), D("112"), D("112")]
    assert track.stops == [D("103.39"), D("107.8"), D("109.76"), D("109.76")]


# --- charts ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def charted(sell_trades: list[Trade]) -> Any:
    return run_backtest(sell_trades, combinations("SELL", [D("1"), D("2")], [None, D("105")]), record=True)


def test_png_chart(tmp_path: Path, charted: Any) -> None:
    path = write_chart(charted, tmp_path / "chart.png")
    assert path == tmp_path / "chart.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_html_and_svg_charts(tmp_path: Path, charted: Any) -> None:
    page = write_chart(charted, tmp_path / "chart.html").read_text()
    assert page.startswith("<!doctype html>")
    assert "trailingstop backtest: 7 trades; 4 SELL combinations" in page
    svg = write_chart(charted, tmp_path / "chart.svg").read_text()
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    for label in ("SELL 1% act none", "SELL 1% act 105", "SELL 2% act none", "SELL 2% act 105"):
        assert label in svg
    # one activation marker per activating trade (100 and 105.5), shared by the trails it activated
    assert svg.count("<title>triggered at") == 4 and svg.count("<title>activated at") == 2
    assert "<svg" in page and svg.split("\n", 1)[1] in page


def test_chart_format_is_chosen_by_extension(tmp_path: Path, charted: Any) -> None:
    with pytest.raises(PlotError) as caught:
        write_chart(charted, tmp_path / "chart.txt")
    assert str(caught.value) == "--plot writes .png, .html or .svg, not .txt"
    with pytest.raises(PlotError, match="not a file without extension"):
        write_chart(charted, tmp_path / "chart")


def test_chart_of_a_long_day_is_thinned_but_complete(tmp_path: Path, demo: list[Trade]) -> None:
    result = run_backtest(demo, combinations("SELL", [D("1")], [None, D("0.00145")]), record=True)
    svg = write_chart(result, tmp_path / "day.svg").read_text()
    ET.fromstring(svg)
    price_line = next(line for line in svg.splitlines() if 'stroke="#555"' in line and "polyline" in line)
    points = price_line.split('points="', 1)[1].split('"', 1)[0].split()
    assert 1000 < len(points) <= 4000 < len(demo)


# --- --expires-at: one deadline for the sweep, judged as spec.expiresAt is ----------------------------


def _timed(*points: tuple[int, str]) -> list[Trade]:
    """Trades at ``T + ms`` with ids 1, 2, ..."""
    return [Trade(trade_id, D(price), D("1"), trade_id, trade_id, T + ms, False)
            for trade_id, (ms, price) in enumerate(points, start=1)]


def _one(trades: list[Trade], trail: str, deadline_offset: int | None, activation: str | None = None) -> Any:
    combo = Combination("SELL", D(trail), None if activation is None else D(activation),
                        expires_at=None if deadline_offset is None else T + deadline_offset)
    result = run_backtest(trades, [combo])
    return result, {**result.report()[0]}


def test_a_trade_at_the_deadline_expires_the_stop_and_is_not_applied() -> None:
    # SELL 1 %: high 105 -> stop 103.95. The trade at the deadline (110, or 100 below the stop) is
    # not applied: the stop expires first, keeping the reference 105, and never triggers.
    for price in ("110", "100"):
        _, record = _one(_timed((0, "100"), (1000, "105"), (2000, "104.5"), (3000, price), (4000, "90")), "1", 3000)
        assert (record["expired"], record["expiredAt"], record["expiredTradeId"]) == (True, T + 3000, 4)
        assert (record["triggered"], record["referencePrice"], record["stopPrice"]) == (False, "105", "103.95")
        assert (record["exit"], record["exitPrice"], record["exitAt"], record["exitTradeId"]) == (
            "expired", price, T + 3000, 4)


def test_a_trade_just_before_the_deadline_still_counts() -> None:
    _, record = _one(_timed((0, "100"), (1000, "105"), (2999, "103.95"), (3000, "90")), "1", 3000)
    assert (record["triggered"], record["triggerTradeId"], record["expired"], record["exit"]) == (
        True, 3, False, "trigger")
    assert (record["expiredAt"], record["expiredTradeId"]) == (None, None)


def test_a_sub_millisecond_deadline_is_rounded_up_as_the_spec_is() -> None:
    # 00:00:02.0005 rounds up to ...002.001: the trade at 2.000 s is before it and triggers.
    combos = combinations("SELL", [D("1")], [None], expires_at=deadline_ms("2023-11-14T22:13:22.0005Z"))
    assert combos[0].expires_at == T + 2001
    result = run_backtest(_timed((0, "100"), (1000, "105"), (2000, "103"), (2001, "90")), combos)
    assert result.report()[0]["triggerTradeId"] == 3


def test_a_deadline_after_the_data_leaves_the_stop_open() -> None:
    _, record = _one(_timed((0, "100"), (1000, "105")), "1", 60_000)
    assert (record["expired"], record["exit"], record["exitPrice"]) == (False, "end", "105")
    assert record["expiresAt"] == "2023-11-14T22:14:20.000Z"


def test_a_stop_that_expires_before_activating_has_no_outcome() -> None:
    result, record = _one(_timed((0, "100"), (1000, "101"), (2000, "120")), "1", 1500, activation="110")
    assert (record["activated"], record["expired"], record["expiredTradeId"]) == (False, True, 3)
    assert record["exit"] is None and result.outcomes() == [None]


def test_expiry_keys_only_with_a_deadline_in_their_order(sell_trades: list[Trade]) -> None:
    plain = run_backtest(sell_trades, combinations("SELL", [D("1")], [None])).records()[0]
    assert tuple(plain) == RESULT_KEYS
    timed = run_backtest(sell_trades, combinations("SELL", [D("1")], [None], expires_at=T)).records()[0]
    keys = list(RESULT_KEYS)
    keys.insert(keys.index("activationPrice") + 1, "expiresAt")
    keys[keys.index("triggerTradeId") + 1:keys.index("triggerTradeId") + 1] = ["expired", "expiredAt",
                                                                               "expiredTradeId"]
    assert list(timed) == keys
    amount = run_backtest(sell_trades, combinations("SELL", [D("2")], [None], kind="amount", expires_at=T)).records()[0]
    assert list(amount)[:5] == ["side", "trailingPercent", "trailingAmount", "activationPrice", "expiresAt"]


def test_the_table_says_which_stops_expired_and_the_deadline() -> None:
    trades = _timed((0, "100"), (1000, "105"), (2000, "103"), (3000, "104"))
    result = run_backtest(trades, combinations("SELL", [D("1"), D("5")], [None], expires_at=T + 2500))
    table = render_results(result)
    rows = table.splitlines()[1:3]
    assert "not triggered" not in table
    assert "103.95" in rows[0] and "expired" not in rows[0]  # 1 %: triggered at 103 (stop 103.95)
    assert "expired 2023-11-14T22:13:23.000Z" in rows[1] and "104 (expired)" in rows[1]
    assert "every stop expires at 2023-11-14T22:13:22.500Z" in table

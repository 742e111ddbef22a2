"""The backtest's answer: exit and kept/saved share per combination, ranking, and the charts that show it."""

from __future__ import annotations

import json
import re
import struct
import xml.etree.ElementTree as ET
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_backtest import naive
from trailingstop.backtest import OUTCOME_KEYS, RESULT_KEYS, BacktestResult, combinations, render_results, run_backtest
from trailingstop.cli import main
from trailingstop.core.trade import Trade
from trailingstop.outcome import best, percent, ranking
from trailingstop.plot import write_chart
from trailingstop.series import PriceSeries
from trailingstop.sweep import distinct_colours, grid, heat_colour, lines, references
from trailingstop.tradefiles import demo_trades_path, load_trades

D = Decimal
DATA = Path(__file__).parent / "data"
SVG = "{http://www.w3.org/2000/svg}"


def backtest(trades: list[Trade], side: str, trails: list[str], activations: list[str | None],
             record: bool = False) -> BacktestResult:
    combos = combinations(side, [D(t) for t in trails], [None if a is None else D(a) for a in activations])  # type: ignore[arg-type]
    return run_backtest(trades, combos, record=record)


@pytest.fixture(scope="module")
def demo() -> list[Trade]:
    return load_trades(demo_trades_path())


def expected_outcome(trades: list[Trade], record: dict[str, Any]) -> dict[str, Any]:
    """The outcome keys from a plain model's record, by the definition in DESIGN §8 (Fractions)."""
    if not record["activated"]:
        return {"exit": None, "exitPrice": None, "exitAt": None, "exitTradeId": None, "changePercent": None,
                "outcomePercent": None}
    last = trades[-1]
    if record["triggered"]:
        exit_ = ("trigger", record["triggerPrice"], record["triggeredAt"], record["triggerTradeId"])
    else:
        exit_ = ("end", format(last.price.normalize(), "f"), last.time, last.trade_id)
    start, price = Fraction(record["activatedPrice"]), Fraction(exit_[1])
    change = (price - start) / start * 100
    kept = change if record["side"] == "SELL" else -change

    def text(value: Fraction) -> str:  # half to even at 8 places, no trailing zeros
        rounded = Decimal(round(value * 10**8)).scaleb(-8)
        return "0" if rounded == 0 else format(rounded.normalize(), "f")

    return {"exit": exit_[0], "exitPrice": exit_[1], "exitAt": exit_[2], "exitTradeId": exit_[3],
            "changePercent": text(change), "outcomePercent": text(kept)}


# --- definitions, worked by hand -------------------------------------------------------------------


def test_sell_keeps_the_move_from_activation_to_the_trigger() -> None:
    result = backtest(load_trades(DATA / "worked_sell.csv"), "SELL", ["2"], ["105"])
    (record,) = result.report()
    # activated at 105.5, sold at 109.76: (109.76 - 105.5) / 105.5 = 4.037914691943...%
    assert {k: record[k] for k in OUTCOME_KEYS} == {
        "exit": "trigger", "exitPrice": "109.76", "exitAt": 1700000007000, "exitTradeId": 107,
        "changePercent": "4.03791469", "outcomePercent": "4.03791469", "best": True}


def test_buy_saves_the_drop_from_activation_to_the_entry() -> None:
    result = backtest(load_trades(DATA / "worked_buy.jsonl"), "BUY", ["1.5"], ["95"])
    (record,) = result.report()
    # activated at 94.8, bought at 91.35: saved (94.8 - 91.35) / 94.8 = 3.639240506329...%
    assert {k: record[k] for k in OUTCOME_KEYS} == {
        "exit": "trigger", "exitPrice": "91.35", "exitAt": 1700000007000, "exitTradeId": 207,
        "changePercent": "-3.63924051", "outcomePercent": "3.63924051", "best": True}


def test_an_open_stop_is_valued_at_the_last_trade_and_an_idle_one_has_no_outcome() -> None:
    trades = load_trades(DATA / "worked_sell.csv")  # 100 ... 112, 109.76 (ids 101-107)
    result = backtest(trades, "SELL", ["5"], [None, "120"])
    open_, idle = result.report()
    assert {k: open_[k] for k in OUTCOME_KEYS} == {
        "exit": "end", "exitPrice": "109.76", "exitAt": 1700000007000, "exitTradeId": 107,
        "changePercent": "9.76", "outcomePercent": "9.76", "best": True}
    assert {k: idle[k] for k in OUTCOME_KEYS} == dict.fromkeys(OUTCOME_KEYS) | {"best": False}
    assert tuple(open_) == RESULT_KEYS + OUTCOME_KEYS


def test_exact_values_are_not_rounded() -> None:
    (record,) = backtest(load_trades(DATA / "exact_sell.json"), "SELL", ["1"], [None]).report()
    assert (record["exitPrice"], record["changePercent"]) == ("108.9", "8.9")  # (108.9 - 100) / 100, exactly


@pytest.mark.parametrize(("value", "text"), [
    (Fraction(5, 10**11), "0E-8"),  # 0.000000005 % is half of the last place: to even, 0
    (Fraction(15, 10**11), "2E-8"),  # 0.000000015 %: to even, 0.00000002
    (Fraction(25, 10**11), "2E-8"),
    (Fraction(-15, 10**11), "-2E-8"),
    (Fraction(1, 3), "33.33333333"),
])
def test_percent_rounds_half_to_even(value: Fraction, text: str) -> None:
    assert str(percent(value, 8)) == text


@pytest.mark.parametrize(("side", "trails", "activations"), [
    ("SELL", ["0.1", "0.5", "1", "2.5", "7"], [None, "0.00145", "0.0015", "0.0016"]),
    ("BUY", ["0.1", "0.75", "1.5", "3"], [None, "0.0014", "0.00141", "0.0013"]),
])
def test_a_real_day_matches_an_independent_model(demo: list[Trade], side: str, trails: list[str],
                                                 activations: list[str | None]) -> None:
    got = backtest(demo, side, trails, activations).report()
    plain = [naive(demo, side, D(t), None if a is None else D(a)) for t in trails for a in activations]
    for record, model in zip(got, plain, strict=True):
        assert {k: record[k] for k in RESULT_KEYS} == model
        assert {k: record[k] for k in OUTCOME_KEYS if k != "best"} == expected_outcome(demo, model)
    kept = [Fraction(r["outcomePercent"]) for r in got if r["outcomePercent"] is not None]
    assert [r["best"] for r in got].count(True) >= 1
    assert all(Fraction(r["outcomePercent"]) == max(kept) for r in got if r["best"])


# --- ranking ---------------------------------------------------------------------------------------


def test_sort_by_outcome_best_first_ties_in_order_idle_last(demo: list[Trade]) -> None:
    result = backtest(demo, "SELL", ["0.5", "1", "2"], [None, "0.0016", "0.00145", "0.0014"])
    ranked = result.report("outcome")
    values = [r["outcomePercent"] for r in ranked]
    present = [Fraction(v) for v in values if v is not None]
    assert present == sorted(present, reverse=True)
    assert values[len(present):] == [None] * (len(values) - len(present))  # never activated: last
    assert [r["best"] for r in ranked][:2] == [True, True]  # 2% none and 2% 0.0014 tie exactly
    assert [(r["trailingPercent"], r["activationPrice"]) for r in ranked[:2]] == [("2", None), ("2", "0.0014")]
    assert sorted(map(json.dumps, ranked)) == sorted(map(json.dumps, result.report()))
    assert ranking([None, None]) == [0, 1] and best([None]) == set()


def test_the_table_marks_the_best(demo: list[Trade]) -> None:
    result = backtest(demo, "SELL", ["0.5", "1"], [None, "0.00145"])
    lines_ = render_results(result, "outcome").splitlines()
    assert lines_[0].split()[-1] == "KEPT%"
    assert lines_[1].split()[:3] == ["SELL", "1", "0.00145"] and lines_[1].endswith("+1.8759  <- best")
    assert sum("<- best" in line for line in lines_) == 1
    assert lines_[-2] == "best: SELL trail 1%, activation 0.00145: kept +1.8759%"
    buy = render_results(backtest(demo, "BUY", ["1"], [None]))
    assert buy.splitlines()[0].split()[-1] == "SAVED%"


def test_cli_sort_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["backtest", "--side", "SELL", "--trailing-percent", "0.5,1,2", "--activation-price", "none,0.00145"]
    assert main([*args, "--sort", "outcome", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["best"] for r in records] == [True, False, False, False, False, False]
    assert (records[0]["trailingPercent"], records[0]["activationPrice"], records[0]["exit"]) == ("2", None, "end")
    assert main([*args, "--sort", "outcome"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["SELL", "2", "none"] and table[1].endswith("<- best")
    with pytest.raises(SystemExit):
        main([*args, "--sort", "profit"])
    assert "invalid choice: 'profit'" in capsys.readouterr().err


# --- charts ----------------------------------------------------------------------------------------


def test_identical_results_are_one_line_and_colours_never_repeat(demo: list[Trade]) -> None:
    # activation 0.0014 is met by the first trade (0.00141342): same stop line as "none"
    result = backtest(demo, "SELL", ["0.5", "1", "2"], [None, "0.00145", "0.0014"], record=True)
    drawn = lines(result)
    assert [line.label for line in drawn] == [
        "SELL 0.5% act none = 0.0014", "SELL 0.5% act 0.00145", "SELL 1% act none = 0.0014", "SELL 1% act 0.00145",
        "SELL 2% act none = 0.0014", "SELL 2% act 0.00145"]
    assert len({line.colour for line in drawn}) == len(drawn)
    # lines of one trail can meet: the first drawn is the widest, so the later one shows inside it
    assert [line.width for line in drawn] == [2.8, 1.3] * 3
    assert len(references(result)) == 2  # one per activating trade, not one per combination
    for count in (1, 9, 18, 19, 60):
        colours = distinct_colours(count)
        assert len(colours) == count == len(set(colours))
        assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)


def test_the_grid_of_a_two_axis_sweep(demo: list[Trade]) -> None:
    one_axis = backtest(demo, "SELL", ["0.5", "1", "2"], [None])
    assert grid(one_axis) is None
    two_axes = backtest(demo, "SELL", ["0.5", "1", "2"], [None, "0.00145"])
    cells = grid(two_axes)
    assert cells is not None
    assert (cells.rows, cells.columns, cells.name) == (["0.5%", "1%", "2%"], ["none", "0.00145"], "kept")
    assert cells.best_cells == [(2, 0)]
    assert cells.cells[("2%", "none")].text == "+8.10% open"
    assert cells.cells[("1%", "0.00145")].text == "+1.88%"
    assert heat_colour(None, 1) == "#d9d9d9" and heat_colour(0.0, 1) == "#ffffbf"
    assert heat_colour(1.0, 1) == "#1a9850" and heat_colour(-5.0, 1) == "#d73027"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_png_and_svg_charts(demo: list[Trade], tmp_path: Path) -> None:
    sweep = backtest(demo, "SELL", ["0.5", "1", "2"], [None, "0.00145", "0.0014"], record=True)
    sweep.symbol, sweep.source = "XRPETH", "2019-10-11..2019-10-13"
    single = backtest(demo, "SELL", ["0.5", "1", "2"], [None], record=True)
    write_chart(sweep, tmp_path / "sweep.png")
    write_chart(single, tmp_path / "single.png")
    (sweep_width, sweep_height), (single_width, single_height) = png_size(tmp_path / "sweep.png"), png_size(
        tmp_path / "single.png")
    assert sweep_width == single_width and sweep_height > single_height + 150  # the heatmap below
    svg = ET.parse(write_chart(sweep, tmp_path / "sweep.svg")).getroot()
    texts = [t.text or "" for t in svg.iter(f"{SVG}text")]
    assert texts[0] == "XRPETH, 2019-10-11..2019-10-13: 12,477 trades; 9 SELL combinations"
    best_cells = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "best"]
    assert len(best_cells) == 2  # 2% none and 2% 0.0014 tie
    assert "+8.10% open" in texts and "SELL 1% act none = 0.0014" in texts
    legend_colours = [line.get("stroke") for line in svg.iter(f"{SVG}line") if line.get("x1") == str(1200 - 300 + 16)]
    assert len(legend_colours) == len(set(legend_colours)) == 8  # 6 lines, the reference, the price


def test_titles_name_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    page = tmp_path / "chart.html"
    assert main(["backtest", "--side", "SELL", "--trailing-percent", "1,2", "--activation-price", "none,0.00145",
                 "--plot", str(page)]) == 0
    capsys.readouterr()
    assert ("<title>trailingstop backtest: XRPETH, XRPETH-aggTrades-2019-10-11.csv: 12,477 trades; "
            "4 SELL combinations</title>") in page.read_text()


# --- the price line in bounded memory ----------------------------------------------------------------


def test_price_series_is_bounded_and_keeps_the_extremes() -> None:
    series = PriceSeries(max_buckets=100)
    prices = [D(1000 + (i * 7919) % 1013) for i in range(100_000)]
    for index, price in enumerate(prices):
        series.add(index, price)
    points = series.points()
    assert len(points) <= 2 * 100 + 2
    assert [t for t, _ in points] == sorted(t for t, _ in points)
    assert min(p for _, p in points) == min(prices) and max(p for _, p in points) == max(prices)
    small = PriceSeries()
    for index in range(5):
        small.add(index, D(index))
    assert small.points() == [(i, D(i)) for i in range(5)]  # short series are kept whole

"""The ``trailingstop`` command: ``run`` and ``backtest`` in-process, and the console script once."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_backtest import naive
from trailingstop.backtest import OUTCOME_KEYS, RESULT_KEYS
from trailingstop.cli import main
from trailingstop.core.contracts import ms_to_rfc3339, to_wire
from trailingstop.operator.crd import crd_yaml
from trailingstop.table import human_duration
from trailingstop.tradefiles import demo_trades_path, load_trades

ROOT = Path(__file__).parents[2]
DATA = Path(__file__).parent / "data"
EXAMPLE = ROOT / "examples" / "trailingstop.yaml"
TABLE_HEADER = ["NAME", "SYMBOL", "SIDE", "TRAIL%", "TRAILAMOUNT", "PHASE", "REFERENCE", "STOP", "LAST", "AGE"]
TRANSITION = re.compile(r"^(\S+Z)  (\S+)\s+(\w+ -> \w+)\s+(.*)$")


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def canonical(text: str) -> str:
    """Decimals in a message written canonically: "stop 103.390" reads "stop 103.39" (same number)."""
    return re.sub(r"\d+\.\d+", lambda m: to_wire(Decimal(m.group())), text)


def transitions(out: str) -> list[tuple[str, str, str, str]]:
    """(time, namespace/name, "A -> B", what) of each printed phase change, decimals canonical."""
    found = []
    for line in out.splitlines():
        if (match := TRANSITION.match(line)) is not None:
            when, key, change, what = match.groups()
            found.append((when, key, change, canonical(what)))
    return found


def final_table(out: str) -> list[list[str]]:
    """The last table of ``out``, cut at the header's column starts (a cell may be empty: a percent
    stop has no TRAILAMOUNT)."""
    lines = out.rstrip("\n").split("\n\n")[-1].splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    ends = [*starts[1:], None]
    return [[line[a:b].strip() for a, b in zip(starts, ends, strict=True)] for line in lines]


def write_manifest(tmp_path: Path, name: str = "m.yaml", **spec: Any) -> Path:
    document = {
        "apiVersion": "trailingstop.dev/v1",
        "kind": "TrailingStop",
        "metadata": {"name": "s1"},
        "spec": {"symbol": "BTCUSDT", "side": "SELL", "quantity": "1", "trailingPercent": "1", **spec},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# --- run ----------------------------------------------------------------------------------------


def test_run_the_bundled_example_on_the_bundled_trades(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", EXAMPLE)
    assert code == 0, err
    assert err == ""
    assert out.splitlines()[0] == "1 stop(s) on XRPETH-aggTrades-2019-10-11.csv (XRPETH); orders are simulated"
    trades = load_trades(demo_trades_path())
    want = naive(trades, "SELL", Decimal("1"), Decimal("0.00145"))
    steps = transitions(out)
    assert [s[2] for s in steps] == ["Pending -> Armed", "Armed -> Tracking", "Tracking -> Triggered",
                                     "Triggered -> Filled"]
    assert {s[1] for s in steps} == {"default/xrp-take-profit"}
    assert steps[0][0] == ms_to_rfc3339(trades[0].time) and steps[0][3] == "waiting for price >= 0.00145"
    assert steps[1][0] == ms_to_rfc3339(want["activatedAt"])
    assert f"(trade {want['activatedTradeId']})" in steps[1][3]
    assert steps[2][0] == ms_to_rfc3339(want["triggeredAt"])
    assert steps[2][3].endswith(f"reached stop {want['stopPrice']} (reference {want['referencePrice']}, "
                                f"trade {want['triggerTradeId']})")
    assert steps[3][3] == f"simulated fill: SELL 100 XRPETH at {want['triggerPrice']}"
    header, row = final_table(out)
    assert header == TABLE_HEADER
    age = human_duration(want["triggeredAt"] - trades[0].time)
    assert row == ["xrp-take-profit", "XRPETH", "SELL", "1", "", "Filled", want["referencePrice"], want["stopPrice"],
                   want["triggerPrice"], age]
    # By hand: activation on the first trade at 0.00145, high 0.00149267, stop = high * 0.99.
    assert row[5:] == ["Filled", "0.00149267", "0.0014777433", "0.0014772", "16h"]


def test_run_the_sell_worked_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", DATA / "worked_sell.yaml", "--trades", DATA / "worked_sell.csv")
    assert code == 0, err
    assert out.splitlines()[0] == "1 stop(s) on worked_sell.csv (BTCUSDT); orders are simulated"
    assert transitions(out) == [
        ("2023-11-14T22:13:21.000Z", "trading/worked-sell", "Pending -> Armed", "waiting for price >= 105"),
        ("2023-11-14T22:13:23.000Z", "trading/worked-sell", "Armed -> Tracking",
         "activated at 105.5 (trade 103); stop 103.39"),
        ("2023-11-14T22:13:27.000Z", "trading/worked-sell", "Tracking -> Triggered",
         "price 109.76 reached stop 109.76 (reference 112, trade 107)"),
        ("2023-11-14T22:13:27.000Z", "trading/worked-sell", "Triggered -> Filled",
         "simulated fill: SELL 0.5 BTCUSDT at 109.76"),
    ]
    assert final_table(out) == [TABLE_HEADER,
                                ["worked-sell", "BTCUSDT", "SELL", "2", "", "Filled", "112", "109.76", "109.76", "6s"]]
    assert "reference 110" not in out


def test_run_verbose_prints_reference_changes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "run", DATA / "worked_sell.yaml", "--trades", DATA / "worked_sell.csv", "-v")
    assert code == 0
    references = [canonical(line.split("  ")[-1].strip()) for line in out.splitlines() if "reference " in line
                  and "->" not in line]
    assert references == ["reference 110, stop 107.8", "reference 112, stop 109.76"]


def test_run_the_buy_worked_example_from_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", DATA / "worked_buy.yaml", "--trades", DATA / "worked_buy.jsonl")
    assert code == 0, err
    assert [s[2:] for s in transitions(out)] == [
        ("Pending -> Armed", "waiting for price <= 95"),
        ("Armed -> Tracking", "activated at 94.8 (trade 203); stop 96.222"),
        ("Tracking -> Triggered", "price 91.35 reached stop 91.35 (reference 90, trade 207)"),
        ("Triggered -> Filled", "simulated fill: BUY 0.25 BTCUSDT at 91.35"),
    ]
    assert final_table(out)[1] == ["worked-buy", "BTCUSDT", "BUY", "1.5", "", "Filled", "90", "91.35", "91.35", "6s"]


def test_run_a_list_in_two_namespaces(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", DATA / "list.yaml", "--trades", DATA / "exact_sell.json")
    assert code == 0
    assert f"note: {DATA / 'list.yaml'} (document 2): skipped a ConfigMap" in err.splitlines()
    assert "note: desk-b/tight: mode" in err
    table = final_table(out)
    assert table[0] == ["NAMESPACE", *TABLE_HEADER]
    # SELL 1 %: 100, 110, 108.9 triggers exactly; BUY 1.5 % from 100: 110 >= 101.5 triggers.
    # AGE is the age at the end of the run (the last trade), like kubectl's, for both.
    assert table[1] == ["desk-a", "tight", "BTCUSDT", "SELL", "1", "", "Filled", "110", "108.9", "108.9", "2s"]
    assert table[2] == ["desk-b", "tight", "BTCUSDT", "BUY", "1.5", "", "Filled", "100", "101.5", "110", "2s"]



def test_run_notes_the_mode_of_each_non_simulated_stop(capsys: pytest.CaptureFixture[str]) -> None:
    # list.yaml: desk-a/tight is Simulate, desk-b/tight is Testnet; the note reads
    # "note: desk-b/tight: mode Simulate is simulated here; ..." (cli._announce uses manifests[0]).
    code, _, err = cli(capsys, "run", DATA / "list.yaml", "--trades", DATA / "exact_sell.json")
    assert code == 0
    assert "note: desk-b/tight: mode Testnet is simulated here" in err


def test_run_stops_that_never_trigger_end_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "run", DATA / "paced.yaml", "--trades", DATA / "paced.csv")
    assert code == 0
    assert final_table(out)[1] == ["paced", "BTCUSDT", "SELL", "50", "", "Tracking", "102", "51", "102", "0s"]


@pytest.mark.parametrize("content", ["", "\n\n", "agg_trade_id,price,quantity,first_trade_id,last_trade_id,"
                                                 "transact_time,is_buyer_maker,is_best_match\n"],
                         ids=["empty", "blank lines", "header only"])
def test_a_trade_file_without_trades_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 content: str) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text(content)
    code, out, err = cli(capsys, "run", DATA / "paced.yaml", "--trades", empty)
    assert (code, out, err) == (2, "", f"error: {empty}: no trades in this file\n")
    code, out, err = cli(capsys, "backtest", "--trades", empty, "--side", "SELL", "--trailing-percent", "1")
    assert (code, out, err) == (2, "", f"error: {empty}: no trades in this file\n")


def test_run_refuses_a_manifest_for_another_symbol(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)  # BTCUSDT
    code, out, err = cli(capsys, "run", manifest)  # the bundled XRPETH trades
    assert code == 2
    assert out == ""
    assert err == ("error: XRPETH-aggTrades-2019-10-11.csv holds XRPETH trades, but the manifests also have stops "
                   "on BTCUSDT; run those with their own trade file or --live\n")
    named = tmp_path / "ETHBTC-aggTrades-2024-01-01.csv"
    shutil.copy(DATA / "worked_sell.csv", named)
    code, _, err = cli(capsys, "run", manifest, "--trades", named)
    assert code == 2 and err.startswith("error: ETHBTC-aggTrades-2024-01-01.csv holds ETHBTC trades, but")
    code, _, err = cli(capsys, "run", manifest, "--trades", DATA / "worked_sell.csv", "--symbol", "ETHBTC")
    assert code == 2 and "holds ETHBTC trades" in err
    code, _, _ = cli(capsys, "run", manifest, "--trades", DATA / "worked_sell.csv", "--symbol", "btcusdt")
    assert code == 0


def test_run_needs_a_symbol_for_an_anonymous_file_with_two_symbols(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    one = yaml.safe_load(write_manifest(tmp_path).read_text())
    two = {**one, "metadata": {"name": "s2"}, "spec": {**one["spec"], "symbol": "ETHBTC"}}
    path.write_text(yaml.safe_dump_all([one, two]))
    trades = DATA / "worked_sell.csv"
    code, _, err = cli(capsys, "run", path, "--trades", trades)
    assert (code, err) == (2, f"error: cannot tell the symbol of {trades}; pass --symbol\n")
    code, _, err = cli(capsys, "run", path, "--trades", trades, "--symbol", "BTCUSDT")
    assert code == 2 and "the manifests also have stops on ETHBTC" in err


def test_run_speed_paces_the_replay(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any) -> Any:
        asked.append(delay)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    started = time.monotonic()
    code, out, _ = cli(capsys, "run", DATA / "paced.yaml", "--trades", DATA / "paced.csv", "--speed", "4")
    elapsed = time.monotonic() - started
    assert code == 0
    assert asked == pytest.approx([0.05, 0.05])  # 200 ms apart at 4x
    assert elapsed >= 0.1
    assert final_table(out)[1][5] == "Tracking"
    asked.clear()
    code, _, _ = cli(capsys, "run", DATA / "paced.yaml", "--trades", DATA / "paced.csv")
    assert code == 0 and asked == []  # default: as fast as possible


@pytest.mark.parametrize("speed", ["-1", "0", "0.0009", "1e-300", "nan", "inf", "-inf", "fast", ""])
def test_run_refuses_a_speed_that_is_no_pace(capsys: pytest.CaptureFixture[str], speed: str) -> None:
    started = time.monotonic()
    code, out, err = cli(capsys, "run", DATA / "paced.yaml", "--trades", DATA / "paced.csv", f"--speed={speed}")
    assert time.monotonic() - started < 5
    assert (code, out) == (2, "")
    if speed in ("fast", ""):
        assert err == f"error: --speed must be a number, got {speed!r}\n"
    else:
        assert err == f"error: --speed must be a number >= 0.001 (times the recorded pace), got {speed!r}\n"


def test_run_accepts_the_slowest_and_a_huge_speed(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []

    async def sleep(delay: float, *args: Any) -> None:
        asked.append(delay)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    code, _, err = cli(capsys, "run", DATA / "paced.yaml", "--trades", DATA / "paced.csv", "--speed", "0.001")
    assert (code, err) == (0, "")
    assert asked == pytest.approx([200.0, 200.0])  # 200 ms apart, a thousand times slower (not slept here)
    asked.clear()
    code, _, _ = cli(capsys, "run", DATA / "paced.yaml", "--trades", DATA / "paced.csv", "--speed", "1e12")
    assert code == 0 and all(delay < 1e-9 for delay in asked)


def test_duplicate_and_backward_trades_are_skipped_with_a_word(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rows = (DATA / "worked_sell.csv").read_text().splitlines()  # ids 101..107: 100 104 105.5 110 108.5 112 109.76
    # Line 5 repeats trade 102 at a price that would trigger the stop; line 8 is trade 103 again, late.
    bad = [*rows[:4], rows[2].replace(",104,", ",90,"), rows[4], rows[5], rows[3].replace(",105.5,", ",50,"),
           *rows[6:]]
    path = tmp_path / "dup.csv"
    path.write_text("\n".join(bad) + "\n")
    warning = (f"warning: skipped 2 trade(s) whose id was not above the previous trade's (duplicates or out of "
               f"order); the first at {path}:5: trade 102 after trade 103\n")
    code, out, err = cli(capsys, "run", DATA / "worked_sell.yaml", "--trades", path)
    assert (code, err) == (0, warning)
    _, clean_out, _ = cli(capsys, "run", DATA / "worked_sell.yaml", "--trades", DATA / "worked_sell.csv")
    assert out.replace(path.name, "worked_sell.csv") == clean_out  # the same run: LAST is no skipped price
    code, out, err = cli(capsys, "backtest", "--trades", path, "--side", "SELL", "--trailing-percent", "2",
                         "--activation-price", "105")
    assert (code, err) == (0, warning)
    assert out.splitlines()[-1].startswith("7 trades from")  # what was applied, not the 9 rows
    code, out, _ = cli(capsys, "backtest", "--trades", path, "--side", "SELL", "--trailing-percent", "2", "--json")
    assert code == 0 and json.loads(out)[0]["triggerPrice"] == "109.76"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["backtest", "--side", "HOLD", "--trailing-percent", "1"],
         "argument --side: invalid choice: 'HOLD' (choose from 'SELL', 'BUY') (see trailingstop backtest --help)"),
        (["run"], "the following arguments are required: manifest (see trailingstop run --help)"),
        (["bogus"], "argument COMMAND: invalid choice: 'bogus' (choose from 'run', 'record', 'backtest', 'crd', "
                    "'config', 'worker', 'operator') (see trailingstop --help)"),
        (["run", "x.yaml", "--trades", "a.csv", "--live"],
         "argument --live: not allowed with argument --trades (see trailingstop run --help)"),
    ],
)
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_live_takes_no_file_options(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--speed", "2"], ["--symbol", "BTCUSDT"]):
        code, out, err = cli(capsys, "run", DATA / "paced.yaml", "--live", *extra)
        assert (code, out) == (2, "")
        assert err == ("error: --speed and --symbol apply to a trade file, not to --live (the stops' symbols are "
                       "streamed)\n")


def test_run_refuses_a_bad_symbol(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", DATA / "paced.yaml", "--trades", DATA / "paced.csv", "--symbol", "BTC/USDT")
    assert (code, out, err) == (2, "", "error: --symbol must be 2-20 letters or digits, like BTCUSDT, got 'BTC/USDT'\n")


BAD_MANIFESTS = [
    ({"symbol": "btcusdt"}, 'spec.symbol must be 2-20 upper-case letters or digits, like BTCUSDT, got "btcusdt"'),
    ({"side": "SHORT"}, "spec.side must be one of 'SELL' or 'BUY', got 'SHORT'"),
    ({"quantity": 0.5},
     'spec.quantity must be a decimal string > 0, like "0.001", got the float 0.5: write it as a quoted string'),
    ({"quantity": "0"}, 'spec.quantity must be a decimal string > 0, like "0.001", got "0"'),
    ({"trailingPercent": "0"}, 'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0"'),
    ({"trailingPercent": "100"}, 'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "100"'),
    ({"trailingPercent": "100.5"},
     'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "100.5"'),
    ({"trailingPercent": "-1"}, 'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "-1"'),
    ({"trailingPercent": "0.000000001"},
     'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0.000000001"'),
    ({"trailingPercent": 2.5}, 'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, '
                               'got the float 2.5: write it as a quoted string'),
    ({"activationPrice": "0"}, 'spec.activationPrice must be a decimal string > 0, like "65000", got "0"'),
    ({"mode": "Paper"}, "spec.mode must be one of 'Simulate', 'Testnet' or 'Live', got 'Paper'"),
    ({"mode": "Live"}, "spec: credentialsSecretRef is required unless mode is Simulate (mode is Live)"),
    ({"stopLoss": "1"}, "spec.stopLoss is not a field of this object (check its spelling)"),
]


@pytest.mark.parametrize(("spec", "problem"), BAD_MANIFESTS, ids=[str(b[0]) for b in BAD_MANIFESTS])
def test_run_refuses_every_bad_manifest_field(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              spec: dict[str, Any], problem: str) -> None:
    path = write_manifest(tmp_path, **spec)
    code, out, err = cli(capsys, "run", path, "--trades", DATA / "worked_sell.csv")
    assert code == 2
    assert out == ""
    assert err == f"error: {path} (document 1) default/s1: {problem}\n"


def test_run_lists_several_problems_one_per_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_manifest(tmp_path, symbol="x", trailingPercent="0")
    code, _, err = cli(capsys, "run", path)
    assert code == 2
    assert err.splitlines() == [
        f"error: {path} (document 1) default/s1:",
        '  spec.symbol must be 2-20 upper-case letters or digits, like BTCUSDT, got "x"',
        '  spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0"',
    ]


def test_run_without_a_manifest_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "run", tmp_path / "none.yaml")
    assert (code, err) == (2, f"error: {tmp_path / 'none.yaml'}: no such file\n")



def test_run_refuses_a_bad_generation_with_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_manifest(tmp_path)
    document = yaml.safe_load(path.read_text())
    document["metadata"]["generation"] = "abc"
    path.write_text(yaml.safe_dump(document))
    code, _, err = cli(capsys, "run", path, "--trades", DATA / "worked_sell.csv")  # raises ValueError today
    assert code == 2 and err.startswith("error: ")


# --- malformed trade files: run and backtest both refuse them -----------------------------------

GOOD_CSV = "1,100,1,1,1,1700000001000,true,true"
ARABIC_100 = "\u0661\u0660\u0660"  # 100 in Arabic-Indic digits: Decimal() reads it, the CRD would not
PLAIN = "like 0.00145: ASCII digits, at most 20 before and 20 after the point, no sign or exponent"
GOOD_JSON = '{"a": 1, "p": "100", "q": "1", "f": 1, "l": 1, "T": 1700000001000, "m": true, "M": true}'
BAD_TRADES = [
    ("too few columns", "t.csv", "2,100,1", "expected 7 or 8 columns (agg_trade_id,price,quantity,first_trade_id,"
                                            "last_trade_id,transact_time,is_buyer_maker,is_best_match), got 3"),
    ("bad price", "t.csv", "2,1O0,1,2,2,1700000002000,true,true", "price must be a decimal number, got '1O0'"),
    ("negative qty", "t.csv", "2,100,-1,2,2,1700000002000,true,true", "quantity must be >= 0, got '-1'"),
    ("bad bool", "t.csv", "2,100,1,2,2,1700000002000,maybe,true", "is_buyer_maker must be true or false, got 'maybe'"),
    ("bad id", "t.csv", "two,100,1,2,2,1700000002000,true,true", "agg_trade_id must be an integer, got 'two'"),
    ("bad JSON line", "t.jsonl", '{"a": 2,', "invalid JSON: Expecting property name enclosed in double quotes"),
    ("JSON item not an object", "t.jsonl", '["a", 2]', "expected an object, got list"),
    ("missing field", "t.jsonl", '{"a": 2, "p": "100", "q": "1", "f": 2, "l": 2, "m": true}', "missing field 'T'"),
    ("float price in JSON", "t.jsonl", GOOD_JSON.replace('"a": 1', '"a": 2').replace('"100"', "100.5"),
     "p (price) must be a decimal string, got 100.5"),
    ("exponent price", "t.csv", "2,1e2,1,2,2,1700000002000,true,true", f"price must be a plain decimal {PLAIN}, "
                                                                      "got '1e2'"),
    ("other digits", "t.csv", f"2,{ARABIC_100},1,2,2,1700000002000,true,true",
     f"price must be a plain decimal {PLAIN}, got '{ARABIC_100}'"),
    ("signed price", "t.csv", "2,+100,1,2,2,1700000002000,true,true", f"price must be a plain decimal {PLAIN}, "
                                                                     "got '+100'"),
    ("21 integer digits", "t.csv", "2,100000000000000000000,1,2,2,1700000002000,true,true",
     f"price must be a plain decimal {PLAIN}, got '100000000000000000000'"),
    ("time past 9999", "t.csv", "2,100,1,2,2,253402300800000000,true,true",  # microseconds
     "transact_time must be epoch milliseconds or microseconds before the year 10000, got '253402300800000000'"),
    ("negative time", "t.csv", "2,100,1,2,2,-1,true,true", "transact_time must be from 0 to 9223372036854775807, "
                                                           "got '-1'"),
    ("20-digit id", "t.csv", "12345678901234567890,100,1,2,2,1700000002000,true,true",
     "agg_trade_id must have at most 19 digits, got '12345678901234567890'"),
    ("huge JSON integer", "t.jsonl", GOOD_JSON.replace('"a": 1', '"a": 1' + "0" * 1000),
     "an integer of 1,001 digits; trade ids and times have at most 19"),
    ("deep JSON", "t.jsonl", '{"a": ' + "[" * 500 + "]" * 500 + "}", "JSON nested deeper than 8 levels"),
    ("not UTF-8", "t.csv", "2,100,1,2,2,1700000002000,tru\udce9,true", "not UTF-8 text: byte 0xe9 cannot be decoded"),
]


def _bad_trade_file(tmp_path: Path, name: str, row: str) -> Path:
    good = GOOD_JSON if name.endswith(".jsonl") else GOOD_CSV
    path = tmp_path / name
    path.write_bytes(f"{good}\n{row}\n{good}\n".encode("utf-8", "surrogateescape"))
    return path


@pytest.mark.parametrize(("kind", "name", "row", "problem"), BAD_TRADES, ids=[b[0] for b in BAD_TRADES])
def test_run_refuses_a_malformed_trade_row(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str,
                                           name: str, row: str, problem: str) -> None:
    path = _bad_trade_file(tmp_path, name, row)
    code, _, err = cli(capsys, "run", DATA / "paced.yaml", "--trades", path)
    assert code == 2
    assert err == f"error: {path}:2: {problem}\n"


@pytest.mark.parametrize(("kind", "name", "row", "problem"), BAD_TRADES, ids=[b[0] for b in BAD_TRADES])
def test_backtest_refuses_a_malformed_trade_row(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str,
                                                name: str, row: str, problem: str) -> None:
    path = _bad_trade_file(tmp_path, name, row)
    code, out, err = cli(capsys, "backtest", "--trades", path, "--side", "SELL", "--trailing-percent", "1")
    assert code == 2
    assert out == ""
    assert err == f"error: {path}:2: {problem}\n"


def test_missing_trade_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "backtest", "--trades", tmp_path / "x.csv", "--side", "BUY", "--trailing-percent", "1")
    assert (code, err) == (2, f"error: {tmp_path / 'x.csv'}: no such file\n")
    code, _, err = cli(capsys, "run", DATA / "paced.yaml", "--trades", tmp_path / "x.csv")
    assert (code, err) == (2, f"error: {tmp_path / 'x.csv'}: no such file\n")


# --- backtest -----------------------------------------------------------------------------------


def backtest_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> list[dict[str, Any]]:
    code, out, err = cli(capsys, "backtest", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_backtest_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "backtest", "--trades", DATA / "worked_sell.csv", "--side", "sell",
                         "--trailing-percent", "2", "--activation-price", "105")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["SIDE", "TRAIL%", "ACTIVATION", "ACTIVATED", "AT", "ACTIVATED", "PRICE", "TRIGGERED",
                                "AT", "TRIGGER", "PRICE", "REFERENCE", "STOP", "EXIT", "PRICE", "KEPT%"]
    assert lines[1].split() == ["SELL", "2", "105", "2023-11-14T22:13:23.000Z", "105.5", "2023-11-14T22:13:27.000Z",
                                "109.76", "112", "109.76", "109.76", "+4.0379", "<-", "best"]
    assert lines[-1].startswith("7 trades from 2023-11-14T22:13:21.000Z to 2023-11-14T22:13:27.000Z; 1 combinations")


def test_backtest_json_exact_keys_and_decimal_strings(capsys: pytest.CaptureFixture[str]) -> None:
    records = backtest_json(capsys, "--trades", DATA / "worked_sell.csv", "--side", "SELL",
                            "--trailing-percent", "2", "--activation-price", "105")
    assert records == [{
        "side": "SELL", "trailingPercent": "2", "activationPrice": "105",
        "activated": True, "activatedAt": 1700000003000, "activatedPrice": "105.5", "activatedTradeId": 103,
        "triggered": True, "triggeredAt": 1700000007000, "triggerPrice": "109.76", "triggerTradeId": 107,
        "referencePrice": "112", "stopPrice": "109.76",
        # (109.76 - 105.5) / 105.5 = 4.0379146919...%, rounded half to even to 8 decimals
        "exit": "trigger", "exitPrice": "109.76", "exitAt": 1700000007000, "exitTradeId": 107,
        "changePercent": "4.03791469", "outcomePercent": "4.03791469", "best": True,
    }]
    assert tuple(records[0]) == RESULT_KEYS + OUTCOME_KEYS


def test_backtest_none_activation_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    default = backtest_json(capsys, "--trades", DATA / "exact_sell.json", "--side", "SELL", "--trailing-percent", "1")
    explicit = backtest_json(capsys, "--trades", DATA / "exact_sell.json", "--side", "SELL", "--trailing-percent", "1",
                             "--activation-price", "NONE")
    assert default == explicit
    (record,) = default
    assert record["activationPrice"] is None
    assert (record["activatedPrice"], record["triggerPrice"], record["referencePrice"], record["stopPrice"]) == (
        "100", "108.9", "110", "108.9")


def test_backtest_several_combinations_in_one_pass(capsys: pytest.CaptureFixture[str]) -> None:
    records = backtest_json(capsys, "--trades", DATA / "worked_sell.csv", "--side", "SELL",
                            "--trailing-percent", "1, 2,5,1.0", "--activation-price", "none,105, 120")
    summary = [(r["trailingPercent"], r["activationPrice"], r["activatedTradeId"], r["triggerTradeId"],
                r["triggerPrice"], r["referencePrice"], r["stopPrice"]) for r in records]
    assert summary == [
        ("1", None, 101, 105, "108.5", "110", "108.9"),
        ("1", "105", 103, 105, "108.5", "110", "108.9"),
        ("1", "120", None, None, None, None, None),
        ("2", None, 101, 107, "109.76", "112", "109.76"),
        ("2", "105", 103, 107, "109.76", "112", "109.76"),
        ("2", "120", None, None, None, None, None),
        ("5", None, 101, None, None, "112", "106.4"),
        ("5", "105", 103, None, None, "112", "106.4"),
        ("5", "120", None, None, None, None, None),
    ]


def test_backtest_buy(capsys: pytest.CaptureFixture[str]) -> None:
    (record,) = backtest_json(capsys, "--trades", DATA / "worked_buy.jsonl", "--side", "BUY",
                              "--trailing-percent", "1.5", "--activation-price", "95")
    assert (record["side"], record["activatedPrice"], record["triggerPrice"], record["referencePrice"],
            record["stopPrice"]) == ("BUY", "94.8", "91.35", "90", "91.35")


def test_backtest_on_the_bundled_day(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "backtest", "--side", "SELL", "--trailing-percent", "1")
    assert code == 0
    assert out.splitlines()[-1] == ("12,477 trades from 2019-10-11T00:00:11.620Z to 2019-10-13T11:19:28.844Z; "
                                    "1 combinations; reference/stop are at the trigger, else at the end of the data")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--trailing-percent", "0", 'trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0"'),
        ("--trailing-percent", "100", 'trailingPercent must be > 0 and < 100, with at most 8 decimals, got "100"'),
        ("--trailing-percent", "1,abc",
         'trailingPercent must be > 0 and < 100, with at most 8 decimals, got "abc"'),
        ("--trailing-percent", "1.123456789",
         'trailingPercent must be > 0 and < 100, with at most 8 decimals, got "1.123456789"'),
        ("--trailing-percent", "none", 'trailingPercent must be > 0 and < 100, with at most 8 decimals, got "none"'),
        ("--trailing-percent", "", 'trailingPercent must be > 0 and < 100, with at most 8 decimals, got ""'),
        ("--activation-price", "0", 'activationPrice must be a decimal string > 0, like "65000", got "0"'),
        ("--activation-price", "none,-5", 'activationPrice must be a decimal string > 0, like "65000", got "-5"'),
        ("--activation-price", "1e5", 'activationPrice must be a decimal string > 0, like "65000", got "1e5"'),
    ],
)
def test_backtest_refuses_invalid_list_values(capsys: pytest.CaptureFixture[str], flag: str, value: str,
                                              message: str) -> None:
    args = {"--trailing-percent": "1", "--activation-price": "none", flag: value}
    code, out, err = cli(capsys, "backtest", "--trades", DATA / "worked_sell.csv", "--side", "SELL",
                         *[x for pair in args.items() for x in pair])
    assert code == 2
    assert out == ""
    assert err == f"error: {flag}: {message}\n"


def test_backtest_trailing_amount_json(capsys: pytest.CaptureFixture[str]) -> None:
    # High 112: 112 - 2.24 = 109.76 is trade 107's price (inclusive); 112 - 3 = 109 is never reached.
    records = backtest_json(capsys, "--trades", DATA / "worked_sell.csv", "--side", "SELL",
                            "--trailing-amount", "2.24, 3", "--activation-price", "105")
    assert [tuple(r)[:3] for r in records] == [("side", "trailingPercent", "trailingAmount")] * 2
    assert [(r["trailingPercent"], r["trailingAmount"], r["triggerTradeId"], r["triggerPrice"], r["stopPrice"])
            for r in records] == [(None, "2.24", 107, "109.76", "109.76"), (None, "3", None, None, "109")]


def test_backtest_trailing_amount_table_labels(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "backtest", "--trades", DATA / "worked_sell.csv", "--side", "SELL",
                       "--trailing-amount", "2.24")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SIDE", "TRAIL", "AMOUNT"]
    assert lines[1].split()[:2] == ["SELL", "2.24"]
    assert "best: SELL trail 2.24, activation none: kept" in out


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", 'trailingAmount must be a decimal string > 0 in the quote asset, like "250", got "0"'),
     ("5,-1", 'trailingAmount must be a decimal string > 0 in the quote asset, like "250", got "-1"'),
     ("1e3", 'trailingAmount must be a decimal string > 0 in the quote asset, like "250", got "1e3"')],
)
def test_backtest_refuses_invalid_amounts(capsys: pytest.CaptureFixture[str], value: str, message: str) -> None:
    code, out, err = cli(capsys, "backtest", "--trades", DATA / "worked_sell.csv", "--side", "SELL",
                         "--trailing-amount", value)
    assert (code, out) == (2, "")
    assert err == f"error: --trailing-amount: {message}\n"


@pytest.mark.parametrize("order", [("--trailing-percent", "1", "--trailing-amount", "5"),
                                   ("--trailing-amount", "5", "--trailing-percent", "1")])
def test_backtest_refuses_both_trails(capsys: pytest.CaptureFixture[str], order: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["backtest", "--side", "SELL", *order])
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "not allowed with argument" in captured.err


def test_backtest_needs_a_trail(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["backtest", "--side", "SELL"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one of the arguments --trailing-percent --trailing-amount is required" in err


def test_backtest_refuses_an_unknown_side(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["backtest", "--side", "HOLD", "--trailing-percent", "1"])
    assert caught.value.code == 2
    assert "invalid choice: 'HOLD'" in capsys.readouterr().err


def test_backtest_plot_png_and_html(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for name in ("chart.png", "chart.html"):
        target = tmp_path / name
        code, out, err = cli(capsys, "backtest", "--trades", DATA / "worked_sell.csv", "--side", "SELL",
                             "--trailing-percent", "1,2", "--activation-price", "none,105", "--plot", target)
        assert code == 0
        assert err == f"chart written to {target}\n"
        assert out.splitlines()[0].startswith("SIDE")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "chart.html").read_text()
    assert "<svg" in page and "SELL 2% act 105" in page


def test_backtest_plot_refuses_an_unknown_format(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = cli(capsys, "backtest", "--trades", DATA / "worked_sell.csv", "--side", "SELL",
                         "--trailing-percent", "1", "--plot", tmp_path / "chart.pdf")
    assert (code, err) == (2, "error: --plot writes .png, .html or .svg, not .pdf\n")
    assert out == ""
    assert not (tmp_path / "chart.pdf").exists()


def test_backtest_plot_paths_that_cannot_be_written(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def plot(target: Path) -> tuple[int, str, str]:
        return cli(capsys, "backtest", "--trades", DATA / "worked_sell.csv", "--side", "SELL",
                   "--trailing-percent", "1", "--plot", target)

    missing_folder = tmp_path / "no" / "such" / "chart.html"
    assert plot(missing_folder) == (2, "", f"error: --plot {missing_folder}: the folder {missing_folder.parent} "
                                           "does not exist\n")
    folder = tmp_path / "chart.svg"
    folder.mkdir()
    assert plot(folder) == (2, "", f"error: --plot {folder}: is a directory\n")
    assert plot(Path("/sys/chart.svg"))[2] in ("error: --plot /sys/chart.svg: permission denied\n",  # not root
                                               "error: --plot /sys/chart.svg: cannot write: Permission denied\n")

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    target = tmp_path / "chart.html"
    assert plot(target) == (2, "", f"error: --plot {target}: cannot write: No space left on device\n")


# --- other commands and the console script ------------------------------------------------------


def test_crd_command_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "crd")
    assert code == 0 and out == crd_yaml()


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys)
    assert code == 2 and "usage: trailingstop" in out


def _console_script() -> Path:
    script = Path(sys.executable).parent / "trailingstop"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    return script


def test_installed_console_script(tmp_path: Path) -> None:
    script = _console_script()
    done = subprocess.run(
        [script, "backtest", "--trades", DATA / "worked_sell.csv", "--side", "SELL", "--trailing-percent", "2",
         "--activation-price", "105", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["triggerPrice"] == "109.76"
    bad = write_manifest(tmp_path, trailingPercent="100")
    done = subprocess.run([script, "run", bad], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (f"error: {bad} (document 1) default/s1: spec.trailingPercent must be > 0 and < 100, "
                           'with at most 8 decimals, got "100"\n')


# --- issue 14 in `run`: trailingAmount, expiresAt, Limit ------------------------------------------


def test_run_an_amount_stop(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_manifest(tmp_path, trailingPercent=None, trailingAmount="2.24", activationPrice="105")
    code, out, err = cli(capsys, "run", path, "--trades", DATA / "worked_sell.csv")
    assert (code, err) == (0, "")
    # Activated at 105.5: stop 103.26; the high 112 puts it at 109.76, which trade 107 reaches.
    assert "activated at 105.5 (trade 103); stop 103.26" in out
    assert "price 109.76 reached stop 109.76 (reference 112, trade 107)" in out
    assert final_table(out)[1] == ["s1", "BTCUSDT", "SELL", "", "2.24", "Filled", "112", "109.76", "109.76", "6s"]


def steps_line(out: str, change: str) -> int:
    return next(i for i, line in enumerate(out.splitlines()) if change in line)


def test_run_expires_a_stop_at_the_first_trade_at_its_deadline(capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    path = write_manifest(tmp_path, trailingPercent="5", expiresAt="2023-11-14T23:13:25+01:00")
    code, out, err = cli(capsys, "run", path, "--trades", DATA / "worked_sell.csv")
    assert (code, err) == (0, "")
    steps = transitions(out)
    assert steps[-1][2] == "Tracking -> Expired"
    assert out.splitlines()[steps_line(out, "Tracking -> Expired")].endswith(
        "expired at 2023-11-14T22:13:25.000Z (trade 105 came at or after it); no order was placed")
    assert "Triggered" not in out
    assert final_table(out)[1][5] == "Expired"


def test_run_a_limit_stop_is_filled_in_simulation(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_manifest(tmp_path, trailingPercent="2", execution={"type": "Limit", "maxSlippagePercent": "0.5"})
    code, out, _ = cli(capsys, "run", path, "--trades", DATA / "worked_sell.csv")
    assert code == 0
    assert transitions(out)[-1][2:] == ("Triggered -> Filled", "simulated fill: SELL 1 BTCUSDT at 109.76")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"trailingAmount": "5"},
         "spec: exactly one of trailingPercent and trailingAmount must be set (got both)"),
        ({"trailingPercent": None},
         "spec: exactly one of trailingPercent and trailingAmount must be set (got neither)"),
        ({"trailingPercent": None, "trailingAmount": "105", "activationPrice": "105"},
         "spec: a SELL's activationPrice must be above its trailingAmount: at the activation price its stop "
         "(activationPrice - trailingAmount) would be at or below 0, where no order can ever be placed "
         "(activationPrice 105, trailingAmount 105)"),
        ({"execution": {"type": "Limit"}},
         "spec.execution: maxSlippagePercent is required with type Limit, and only with Limit"),
        ({"expiresAt": "tomorrow"},
         'spec.expiresAt must be an RFC 3339 time like "2026-12-31T23:59:59Z", got "tomorrow"'),
    ],
)
def test_run_refuses_bad_new_fields_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                spec: dict[str, Any], message: str) -> None:
    path = write_manifest(tmp_path, **spec)
    code, out, err = cli(capsys, "run", path, "--trades", DATA / "worked_sell.csv")
    assert (code, out) == (2, "")
    assert err == f"error: {path} (document 1) default/s1: {message}\n"


def test_backtest_expires_at_json(capsys: pytest.CaptureFixture[str]) -> None:
    # One deadline for both: the narrow trail triggers before it, the wide one expires at the
    # first trade at or after it (the bundled day, 12:00 UTC: the trade at 12:01:04.103).
    records = backtest_json(capsys, "--side", "SELL", "--trailing-percent", "0.5,2",
                            "--expires-at", "2019-10-11T14:00:00+02:00")
    assert [(r["expiresAt"], r["triggered"], r["expired"], r["exit"]) for r in records] == [
        ("2019-10-11T12:00:00.000Z", True, False, "trigger"),
        ("2019-10-11T12:00:00.000Z", False, True, "expired")]
    assert records[1]["expiredAt"] == records[1]["exitAt"] == 1570795264103
    assert records[1]["exitPrice"] == "0.00144908"


@pytest.mark.parametrize("value", ["tomorrow", "2019-10-11", "2019-10-11T12:00:00", "2019-13-11T12:00:00Z",
                                   "2019-10-11T25:00:00Z", "2019-10-11T12:00:00+24:00"])
def test_backtest_refuses_a_bad_deadline(capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, out, err = cli(capsys, "backtest", "--side", "SELL", "--trailing-percent", "1", "--expires-at", value)
    assert (code, out) == (2, "")
    assert err.startswith("error: --expires-at: expiresAt must be an RFC 3339 time") and err.count("\n") == 1
    assert err.endswith(f", got \"{value}\"\n")

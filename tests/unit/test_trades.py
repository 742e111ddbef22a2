"""Trade files: every layout Binance produces reads to the same exact trades; every malformed row
is refused naming the file and the line."""

from __future__ import annotations

import gzip
import json
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest

from trailingstop.core.trade import Trade
from trailingstop.tradefiles import (
    DEMO_SYMBOL,
    SkippedTrades,
    TradeFileError,
    demo_trades_path,
    load_trades,
    read_trades,
    trade_from_payload,
    trades_to_jsonl,
)

D = Decimal
DATA = Path(__file__).parent / "data"
HEADER = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match"
ROW = "13519807,0.00141342,23.00000000,15373518,15373518,1570752011620,True,True"
GOOD = Trade(13519807, D("0.00141342"), D("23.00000000"), 15373518, 15373518, 1570752011620, True, True)
PAYLOAD = {"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1498793709153,
           "m": True, "M": True}
PAYLOAD_TRADE = Trade(26129, D("0.01633102"), D("4.70443515"), 27781, 27781, 1498793709153, True, True)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the bundled real data ------------------------------------------------------------------------


def test_demo_data_is_the_real_xrpeth_day() -> None:
    trades = load_trades(demo_trades_path())
    assert DEMO_SYMBOL == "XRPETH"
    assert demo_trades_path().name == "XRPETH-aggTrades-2019-10-11.csv"
    assert len(trades) == 12_477
    assert trades[0] == GOOD
    assert trades[-1] == Trade(13532283, D("0.00152787"), D("130.00000000"), 15388189, 15388189, 1570965568844,
                               True, True)
    ids = [t.trade_id for t in trades]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    times = [t.time for t in trades]
    assert times == sorted(times)
    assert all(isinstance(t.price, Decimal) and t.price > 0 for t in trades)


# --- CSV layouts ----------------------------------------------------------------------------------


def test_csv_with_and_without_header_and_7_or_8_columns(tmp_path: Path) -> None:
    seven = ROW.rsplit(",", 1)[0]
    assert load_trades(write(tmp_path, "a.csv", ROW + "\n")) == [GOOD]
    assert load_trades(write(tmp_path, "b.csv", f"{HEADER}\n{ROW}\n")) == [GOOD]
    assert load_trades(write(tmp_path, "c.csv", seven + "\n")) == [GOOD]  # best_match defaults to True
    header7 = HEADER.rsplit(",", 1)[0]
    assert load_trades(write(tmp_path, "d.csv", f"{header7}\n{seven}")) == [GOOD]


def test_csv_blank_lines_are_skipped_and_lowercase_bools_read(tmp_path: Path) -> None:
    text = f"\n{ROW}\n\n{ROW.replace('13519807', '13519808').replace('True,True', 'false,false')}\n"
    trades = load_trades(write(tmp_path, "a.csv", text))
    assert [(t.trade_id, t.buyer_maker, t.best_match) for t in trades] == [(13519807, True, True),
                                                                            (13519808, False, False)]


def test_csv_microsecond_timestamps_become_milliseconds(tmp_path: Path) -> None:
    # data.binance.vision files from 2025 on carry microseconds.
    row = "3302201437,104233.45000000,0.00010000,4615413010,4615413010,1735689600000123,true,true"
    (trade,) = load_trades(write(tmp_path, "BTCUSDT-aggTrades-2025-01-01.csv", row))
    assert trade.time == 1735689600000
    assert trade.price == D("104233.45") and trade.qty == D("0.0001")


def test_zip_and_gz_archives(tmp_path: Path) -> None:
    text = f"{HEADER}\n{ROW}\n"
    archive = tmp_path / "XRPETH-aggTrades-2019-10-11.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("XRPETH-aggTrades-2019-10-11.csv", text)
    assert load_trades(archive) == [GOOD]
    gz = tmp_path / "trades.csv.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    assert load_trades(gz) == [GOOD]
    jgz = tmp_path / "trades.jsonl.gz"
    jgz.write_bytes(gzip.compress((json.dumps(PAYLOAD) + "\n").encode()))
    assert load_trades(jgz) == [PAYLOAD_TRADE]


def test_a_zip_member_s_name_says_its_layout(tmp_path: Path) -> None:
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("trades.jsonl", json.dumps(PAYLOAD) + "\n")
    assert load_trades(archive) == [PAYLOAD_TRADE]
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("XRPETH-aggTrades-2019-10-11.csv", f"{HEADER}\n{ROW}\n")
    assert load_trades(archive) == [GOOD]


def test_zip_with_more_than_one_file_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.csv", ROW)
        zf.writestr("b.csv", ROW)
    with pytest.raises(TradeFileError) as caught:
        load_trades(archive)
    assert str(caught.value) == f"{archive}: expected one file in the zip, found 2"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(TradeFileError) as caught:
        load_trades(tmp_path / "nope.csv")
    assert str(caught.value) == f"{tmp_path / 'nope.csv'}: no such file"
    assert caught.value.line is None
    bad_zip = write(tmp_path, "broken.zip", "not a zip")
    with pytest.raises(TradeFileError, match=r"broken\.zip: cannot read"):
        load_trades(bad_zip)


# --- JSON layouts ---------------------------------------------------------------------------------


def test_json_array_and_json_lines_of_rest_payloads(tmp_path: Path) -> None:
    assert load_trades(write(tmp_path, "a.json", json.dumps([PAYLOAD, PAYLOAD]))) == [PAYLOAD_TRADE] * 2
    assert load_trades(write(tmp_path, "b.jsonl", json.dumps(PAYLOAD) + "\n\n" + json.dumps(PAYLOAD))) == [
        PAYLOAD_TRADE
    ] * 2


def test_websocket_events_and_combined_stream_envelopes(tmp_path: Path) -> None:
    event = {"e": "aggTrade", "E": 1498793709200, "s": "ETHBTC", **PAYLOAD}
    envelope = {"stream": "ethbtc@aggTrade", "data": event}
    text = json.dumps(event) + "\n" + json.dumps(envelope) + "\n"
    assert load_trades(write(tmp_path, "ws.ndjson", text)) == [PAYLOAD_TRADE, PAYLOAD_TRADE]
    assert trade_from_payload(envelope) == PAYLOAD_TRADE


def test_json_is_detected_without_extension(tmp_path: Path) -> None:
    assert load_trades(write(tmp_path, "dump", json.dumps([PAYLOAD]))) == [PAYLOAD_TRADE]
    assert load_trades(write(tmp_path, "dump2", ROW)) == [GOOD]


def test_payload_and_event_writers_invert_the_reader(tmp_path: Path) -> None:
    assert trade_from_payload(GOOD.to_payload()) == GOOD
    event = GOOD.to_ws_event("XRPETH")
    assert event["e"] == "aggTrade" and event["s"] == "XRPETH" and event["E"] == GOOD.time
    assert event["p"] == "0.00141342" and isinstance(event["q"], str)
    assert trade_from_payload(event) == GOOD
    trades = load_trades(demo_trades_path())[:50]
    assert load_trades(write(tmp_path, "x.jsonl", trades_to_jsonl(trades))) == trades


def test_bundled_test_files_read_as_the_worked_examples() -> None:
    sell = load_trades(DATA / "worked_sell.csv")
    assert [str(t.price) for t in sell] == ["100", "104", "105.5", "110", "108.5", "112", "109.76"]
    assert [t.buyer_maker for t in sell][:4] == [True, False, True, False]
    buy = load_trades(DATA / "worked_buy.jsonl")
    assert [str(t.price) for t in buy] == ["100", "96", "94.8", "92", "93", "90", "91.35"]
    exact = load_trades(DATA / "exact_sell.json")
    assert [t.price for t in exact] == [D("100"), D("110"), D("108.9")]
    assert [t.time for t in exact] == [1700000001000, 1700000002000, 1700000003000]


def test_reading_is_lazy_and_in_file_order() -> None:
    iterator = read_trades(demo_trades_path())
    first, second = next(iterator), next(iterator)
    assert (first.trade_id, second.trade_id) == (13519807, 13519808)


# --- malformed rows: file and line in every message -----------------------------------------------

GOOD_ROW = "1,0.5,2,10,11,1570752011620,True,True"
CSV_BAD_ROWS = [
    ("too few columns", "2,0.5,2,10", "expected 7 or 8 columns (" + HEADER + "), got 4"),
    ("too many columns", GOOD_ROW + ",x", "expected 7 or 8 columns (" + HEADER + "), got 9"),
    ("bad price", "2,abc,2,10,11,1570752011620,True,True", "price must be a decimal number, got 'abc'"),
    ("zero price", "2,0,2,10,11,1570752011620,True,True", "price must be > 0, got '0'"),
    ("negative price", "2,-0.5,2,10,11,1570752011620,True,True", "price must be > 0, got '-0.5'"),
    ("NaN price", "2,NaN,2,10,11,1570752011620,True,True", "price must be a finite number, got 'NaN'"),
    ("negative qty", "2,0.5,-2,10,11,1570752011620,True,True", "quantity must be >= 0, got '-2'"),
    ("bad bool", "2,0.5,2,10,11,1570752011620,yes,True", "is_buyer_maker must be true or false, got 'yes'"),
    ("bad best match", "2,0.5,2,10,11,1570752011620,True,1", "is_best_match must be true or false, got '1'"),
    ("bad id", "x2,0.5,2,10,11,1570752011620,True,True", "agg_trade_id must be an integer, got 'x2'"),
    ("fractional id", "2,0.5,2,10.5,11,1570752011620,True,True", "first_trade_id must be an integer, got '10.5'"),
    ("bad time", "2,0.5,2,10,11,yesterday,True,True", "transact_time must be an integer, got 'yesterday'"),
    ("header later", HEADER, "agg_trade_id must be an integer, got 'agg_trade_id'"),
]


@pytest.mark.parametrize(("kind", "row", "problem"), CSV_BAD_ROWS, ids=[c[0] for c in CSV_BAD_ROWS])
def test_malformed_csv_row_names_file_and_line(tmp_path: Path, kind: str, row: str, problem: str) -> None:
    path = write(tmp_path, "t.csv", f"{HEADER}\n{GOOD_ROW}\n\n{row}\n{GOOD_ROW}\n")
    with pytest.raises(TradeFileError) as caught:
        load_trades(path)
    assert str(caught.value) == f"{path}:4: {problem}"
    assert (caught.value.path, caught.value.line, caught.value.problem) == (str(path), 4, problem)


PAYLOAD_LINE = json.dumps({"a": 1, "p": "0.5", "q": "2", "f": 10, "l": 11, "T": 1570752011620, "m": True, "M": True})
JSON_BAD_LINES = [
    ("bad JSON line", '{"a": 2, "p": "0.5"', "invalid JSON: Expecting ',' delimiter"),
    ("item not an object", "[1, 2]", "expected an object, got list"),
    ("item a string", '"trade"', "expected an object, got str"),
    ("missing field", json.dumps({"a": 2, "q": "2", "f": 1, "l": 1, "T": 1, "m": True}), "missing field 'p'"),
    ("float price", PAYLOAD_LINE.replace('"0.5"', "0.5"), "p (price) must be a decimal string, got 0.5"),
    ("float qty", PAYLOAD_LINE.replace('"q": "2"', '"q": 2.0'), "q (quantity) must be a decimal string, got 2.0"),
    ("negative qty", PAYLOAD_LINE.replace('"q": "2"', '"q": "-2"'), "q (quantity) must be >= 0, got '-2'"),
    ("bad price", PAYLOAD_LINE.replace('"0.5"', '"half"'), "p (price) must be a decimal number, got 'half'"),
    ("bad bool", PAYLOAD_LINE.replace('"m": true', '"m": 1'), "m (is buyer maker) must be true or false, got 1"),
    ("bad id", PAYLOAD_LINE.replace('"a": 1', '"a": 1.5'), "a (aggregate trade id) must be an integer, got 1.5"),
    ("bool id", PAYLOAD_LINE.replace('"a": 1', '"a": true'), "a (aggregate trade id) must be an integer, got True"),
    ("other event", json.dumps({"e": "trade", "t": 5}), 'expected an aggTrade, got event type "trade"'),
]


@pytest.mark.parametrize(("kind", "line", "problem"), JSON_BAD_LINES, ids=[c[0] for c in JSON_BAD_LINES])
def test_malformed_json_line_names_file_and_line(tmp_path: Path, kind: str, line: str, problem: str) -> None:
    path = write(tmp_path, "t.jsonl", f"{PAYLOAD_LINE}\n{PAYLOAD_LINE}\n{line}\n{PAYLOAD_LINE}\n")
    with pytest.raises(TradeFileError) as caught:
        load_trades(path)
    assert str(caught.value) == f"{path}:3: {problem}"
    assert caught.value.line == 3


def test_malformed_json_array_names_file_and_item(tmp_path: Path) -> None:
    path = write(tmp_path, "t.json", json.dumps([PAYLOAD, {**PAYLOAD, "p": 0.5}]))
    with pytest.raises(TradeFileError) as caught:
        load_trades(path)
    assert str(caught.value) == f"{path}: item 1: p (price) must be a decimal string, got 0.5"
    path = write(tmp_path, "u.json", json.dumps([PAYLOAD, PAYLOAD, 7]))
    with pytest.raises(TradeFileError) as caught:
        load_trades(path)
    assert str(caught.value) == f"{path}: item 2: expected an object, got int"


def test_broken_json_array_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "t.json", "[\n" + json.dumps(PAYLOAD) + ",\n{oops}\n]\n")
    with pytest.raises(TradeFileError) as caught:
        load_trades(path)
    assert str(caught.value) == f"{path}:3: invalid JSON: Expecting property name enclosed in double quotes"


def test_good_rows_before_a_bad_one_are_yielded_first(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", f"{ROW}\n2,bad\n")
    iterator = read_trades(path)
    assert next(iterator) == GOOD
    with pytest.raises(TradeFileError, match=r"t\.csv:2: expected 7 or 8 columns"):
        next(iterator)


def test_trade_file_error_is_a_value_error() -> None:
    error = TradeFileError("f.csv", 7, "bad")
    assert isinstance(error, ValueError)
    assert str(error) == "f.csv:7: bad"


# --- bounded reading, every failure one TradeFileError (issue 11) ---------------------------------


def refused(path: Path) -> TradeFileError:
    with pytest.raises(TradeFileError) as caught:
        load_trades(path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 600
    return caught.value


def test_paths_that_are_not_trade_files(tmp_path: Path) -> None:
    assert str(refused(tmp_path)) == f"{tmp_path}: is a directory, not a file"
    assert str(refused(tmp_path / "a" / "b.csv")) == f"{tmp_path / 'a' / 'b.csv'}: no such file"
    archive = tmp_path / "folder.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x/", "")
    assert str(refused(archive)) == f"{archive}: expected one file in the zip, found 0"


def test_truncated_and_corrupt_archives(tmp_path: Path) -> None:
    text = (demo_trades_path().read_text() * 2).encode()
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(text)[:30_000])
    error = refused(gz)
    assert error.problem == "the compressed file is truncated" and error.line is not None and error.line > 100
    packed = tmp_path / "t.zip"
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("t.csv", text)
    half = tmp_path / "half.zip"
    half.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    assert str(refused(half)) == f"{half}: cannot read: not a zip archive (File is not a zip file)"
    not_gz = tmp_path / "plain.csv.gz"
    not_gz.write_text(ROW)
    assert str(refused(not_gz)) == f"{not_gz}:1: cannot read: Not a gzipped file (b'13')"


def test_encodings_and_line_lengths(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(f"{ROW}\n{ROW}\n".encode() + b"13519809,0.5,1,1,1,1570752011620,tr\xe9,true\n")
    error = refused(path)
    assert (error.line, error.problem) == (3, "not UTF-8 text: byte 0xe9 cannot be decoded")
    path.write_bytes(b"\xef\xbb\xbf" + f"{HEADER}\r\n{ROW}\r\n".encode())  # Excel's UTF-8 with BOM and CRLF
    assert load_trades(path) == [GOOD]
    path.write_text(ROW + "\n" + "1," * 5000 + "\n")
    error = refused(path)
    assert (error.line, error.problem) == (2, "line longer than 4,096 bytes; not a trade file?")


def test_json_limits(tmp_path: Path) -> None:
    deep = write(tmp_path, "deep.json", "[" * 100_000 + "]" * 100_000)
    assert refused(deep).problem == "JSON nested deeper than 8 levels"
    nested = write(tmp_path, "n.jsonl", json.dumps({**PAYLOAD, "p": [[[[[[[["1"]]]]]]]]}))
    assert refused(nested).problem == "JSON nested deeper than 8 levels"
    digits = write(tmp_path, "d.json", '[{"a": 1' + "0" * 10_000 + "}]")
    assert refused(digits).problem == "an integer of 10,001 digits; trade ids and times have at most 19"
    scalar = write(tmp_path, "s.json", '["not a trade"]')
    assert refused(scalar).problem == "item 0: expected an object, got str"
    one_line = write(tmp_path, "big.json", json.dumps([PAYLOAD] * 5000))  # a REST answer, minified: one line
    assert len(one_line.read_text()) > 4096 and len(load_trades(one_line)) == 5000


@pytest.mark.parametrize(
    ("time", "millis"),
    [("0", 0), ("1570752011620", 1570752011620), ("99999999999999", 99999999999999),
     ("100000000000000", 100000000000), ("253402300799999999", 253402300799999)],
)
def test_timestamps_in_range(tmp_path: Path, time: str, millis: int) -> None:
    (trade,) = load_trades(write(tmp_path, "t.csv", ROW.replace("1570752011620", time)))
    assert trade.time == millis


def test_read_trades_can_skip_what_is_not_in_id_order(tmp_path: Path) -> None:
    rows = [ROW.replace("13519807", str(i)) for i in (5, 6, 6, 4, 7, 7, 8)]
    path = write(tmp_path, "t.csv", HEADER + "\n" + "\n".join(rows) + "\n")
    assert [t.trade_id for t in load_trades(path)] == [5, 6, 6, 4, 7, 7, 8]  # as the file has them
    skipped = SkippedTrades()
    assert [t.trade_id for t in read_trades(path, skipped=skipped)] == [5, 6, 7, 8]
    assert (skipped.count, skipped.first) == (3, f"{path}:4: trade 6 after trade 6")
    jsonl = write(tmp_path, "t.json", json.dumps([PAYLOAD, PAYLOAD]))
    skipped = SkippedTrades()
    assert len(list(read_trades(jsonl, skipped=skipped))) == 1
    assert skipped.first == f"{jsonl}: item 1: trade 26129 after trade 26129"
    assert skipped.note() == (f"skipped 1 trade(s) whose id was not above the previous trade's (duplicates or out "
                              f"of order); the first at {jsonl}: item 1: trade 26129 after trade 26129")

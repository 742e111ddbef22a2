"""BestBidAsk stops outside the core: book files (what ``record`` writes and ``run`` replays), the
operator's choice of streaming the book, and the Warning a gap gets (issue 14, item 2)."""

from __future__ import annotations

import gzip
from decimal import Decimal
from pathlib import Path

import pytest

from trailingstop.bookfiles import quote_line, read_quotes
from trailingstop.core.contracts import StopEvent, TrailingStopSpec, TrailingStopStatus
from trailingstop.core.lifecycle import apply_stop_event
from trailingstop.core.quote import Quote
from trailingstop.operator import builders
from trailingstop.operator.builders import Owner
from trailingstop.operator.config import OperatorConfig
from trailingstop.operator.events import StatusWriter
from trailingstop.operator.reconcile import _needs_book
from trailingstop.operator.stops import StopRecord, StopStore
from trailingstop.tradefiles import TradeFileError

D = Decimal
T0 = 1_700_000_000_000
CONFIG = OperatorConfig(namespaces=("trading",), amqp_url="amqp://u:p@rabbit:5672/", worker_image="img:1")


# --- book files -----------------------------------------------------------------------------------


def test_a_recorded_line_reads_back_as_the_same_quote(tmp_path: Path) -> None:
    quotes = [Quote(400_900_003, D("0.00145"), D("12.5"), D("0.00146"), D("3"), T0, None),
              Quote(400_900_010, D("0.00144"), D("1"), D("0.00145"), D("2"), T0 + 250, 400_900_003),
              Quote(400_900_020, D("0"), D("0"), D("0.00147"), D("2"), T0 + 900, None)]  # after a reconnect
    path = tmp_path / "book.jsonl"
    path.write_text("".join(quote_line("XRPETH", q) for q in quotes))
    assert list(read_quotes(path, "XRPETH")) == quotes
    first = path.read_text().splitlines()[0]
    assert first == ('{"u":400900003,"s":"XRPETH","b":"0.00145","B":"12.5","a":"0.00146","A":"3",'
                     '"receivedAt":1700000000000,"previousUpdateId":null}')


def test_lines_without_previous_follow_the_line_before_and_gz_is_read(tmp_path: Path) -> None:
    path = tmp_path / "book.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write('{"u":5,"s":"XRPETH","b":"1","B":"1","a":"2","A":"1","receivedAt":1}\n\n')
        out.write('{"stream":"xrpeth@bookTicker","data":{"u":9,"s":"XRPETH","b":"1","B":"1","a":"2","A":"1"},'
                  '"receivedAt":2}\n')
    assert [(q.update_id, q.previous_update_id) for q in read_quotes(path)] == [(5, None), (9, 5)]


@pytest.mark.parametrize(("line", "problem"), [
    ('{"u":5,"s":"XRPETH","b":1.5,"B":"1","a":"2","A":"1","receivedAt":1}', "b (best bid price) must be a decimal"),
    ('{"u":5,"s":"XRPETH","b":"1","B":"1","a":"2","A":"1"}', "missing field 'receivedAt'"),
    ('{"u":5,"s":"XRPETH","B":"1","a":"2","A":"1","receivedAt":1}', "missing field 'b'"),
    ('{"u":5,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1","receivedAt":1}', "expected XRPETH"),
    ('{"u":"x","s":"XRPETH","b":"1","B":"1","a":"2","A":"1","receivedAt":1}', "u (order book updateId) must be"),
    ('[1]', "expected an object"),
    ('{"u":5,', "invalid JSON"),
])
def test_a_bad_line_is_one_error_naming_file_line_and_field(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "book.jsonl"
    path.write_text('{"u":1,"s":"XRPETH","b":"1","B":"1","a":"2","A":"1","receivedAt":1}\n' + line + "\n")
    with pytest.raises(TradeFileError) as caught:
        list(read_quotes(path, "XRPETH"))
    assert str(caught.value).startswith(f"{path}:2: ") and problem in str(caught.value)


def test_quotes_out_of_order_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "book.jsonl"
    path.write_text('{"u":7,"s":"X","b":"1","B":"1","a":"2","A":"1","receivedAt":1}\n'
                    '{"u":7,"s":"X","b":"1","B":"1","a":"2","A":"1","receivedAt":2}\n')
    with pytest.raises(TradeFileError, match=r":2: u \(order book updateId\) 7 is not after"):
        list(read_quotes(path))


# --- the operator ----------------------------------------------------------------------------------


def record(source: str = "BestBidAsk", phase: str = "Tracking") -> StopRecord:
    spec = TrailingStopSpec.model_validate(
        {"symbol": "BTCUSDT", "side": "SELL", "quantity": "1", "trailingPercent": "1", "priceSource": source})
    return StopRecord("uid-1", "trading", "s", 1, spec, TrailingStopStatus(phase=phase))


def test_marketdata_streams_the_book_only_when_told() -> None:
    owners = [Owner("s", "uid-1")]
    args = builders.marketdata_deployment(CONFIG, "trading", "BTCUSDT", owners)["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert args == ["worker", "marketdata", "--symbol", "BTCUSDT"]
    args = builders.marketdata_deployment(CONFIG, "trading", "BTCUSDT", owners, book=True)["spec"]["template"][
        "spec"]["containers"][0]["args"]
    assert args == ["worker", "marketdata", "--symbol", "BTCUSDT", "--book"]


@pytest.mark.parametrize(("source", "phase", "needs"), [
    ("BestBidAsk", "Pending", True), ("BestBidAsk", "Tracking", True), ("BestBidAsk", "Triggered", False),
    ("BestBidAsk", "Filled", False), ("BestBidAsk", "Invalid", True), ("LastTrade", "Tracking", False),
])
def test_a_stop_needs_the_book_while_it_can_still_trigger_on_it(source: str, phase: str, needs: bool) -> None:
    assert _needs_book(record(source, phase)) is needs


class Store(StopStore):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[TrailingStopStatus] = []

    async def write(self, record: StopRecord, status: TrailingStopStatus) -> None:
        self.written.append(status)


async def test_a_gap_is_written_at_once_and_announced_once() -> None:
    store = Store()
    writer = StatusWriter(store, interval=3600)
    announced: list[TrailingStopStatus] = []

    async def on_gap(stop: StopRecord, status: TrailingStopStatus) -> None:
        announced.append(status)

    writer.on_gap = on_gap
    stop = store.put(record())
    stop.status = TrailingStopStatus(phase="Tracking", price_source="BestBid", last_update_id=100)
    gap = StopEvent(type="gap", symbol="BTCUSDT", price=D("99"), price_source="BestBid", update_id=130,
                    trade_time=T0 + 4500, gap_from=T0, gap_from_update_id=100, at=0)
    await writer.submit(stop, apply_stop_event(stop.status, gap, "now"))
    await writer.submit(stop, apply_stop_event(stop.status, gap, "now"))  # redelivered: nothing new
    assert len(store.written) == 1 and len(announced) == 1
    assert announced[0].last_gap is not None and announced[0].last_gap.seconds == D("4.5")


# --- trailingstop run --book -------------------------------------------------------------------------

BOOK_STOPS = """\
apiVersion: trailingstop.dev/v1
kind: TrailingStop
metadata: {name: bid-sell}
spec: {symbol: XRPETH, side: SELL, quantity: "100", trailingPercent: "1", priceSource: BestBidAsk}
---
apiVersion: trailingstop.dev/v1
kind: TrailingStop
metadata: {name: ask-buy}
spec: {symbol: XRPETH, side: BUY, quantity: "100", trailingPercent: "1", priceSource: BestBidAsk}
---
apiVersion: trailingstop.dev/v1
kind: TrailingStop
metadata: {name: last-sell}
spec: {symbol: XRPETH, side: SELL, quantity: "100", trailingPercent: "1"}
"""


def _book_line(u: int, bid: str, ask: str, at: int, previous: int | str | None = "follows") -> str:
    line = {"u": u, "s": "XRPETH", "b": bid, "B": "10", "a": ask, "A": "5", "receivedAt": at}
    if previous != "follows":
        line["previousUpdateId"] = previous
    import json

    return json.dumps(line) + "\n"


def test_run_replays_a_book_file_bid_for_sell_ask_for_buy_with_its_gap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trailingstop.cli import main

    (tmp_path / "stops.yaml").write_text(BOOK_STOPS)
    book = tmp_path / "book.jsonl"
    book.write_text(
        _book_line(10, "100", "101", T0 + 1000)
        + _book_line(13, "110", "100.5", T0 + 2000)  # the bid rises to 110; the ask falls to 100.5
        + _book_line(40, "108.9", "101.4", T0 + 9000, previous=None)  # reconnected: quotes 14..39 lost
    )
    assert main(["run", str(tmp_path / "stops.yaml"), "--book", str(book)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    # The SELL follows the bid: 110 * 0.99 = 108.9 reached exactly, by the first quote after the gap.
    assert any("default/bid-sell" in x and "Tracking -> Triggered" in x and "price 108.9 reached stop 108.9" in x
               and "BestBid update 40" in x for x in lines), captured.out
    assert any("default/bid-sell" in x and "gap: no BestBid quote from 2023-11-14T22:13:22.000Z to "
               "2023-11-14T22:13:29.000Z (7s)" in x for x in lines), captured.out
    # The BUY follows the ask: 100.5 * 1.01 = 101.505, not reached by 101.4.
    table = {row.split()[0]: row.split() for row in lines[-3:]}
    assert table["ask-buy"][4:7] == ["Tracking", "100.5", "101.505"] and table["ask-buy"][7] == "101.4"
    assert table["bid-sell"][4] == "Filled"
    assert table["last-sell"][4] == "Armed"  # no trades in this run: the LastTrade stop never activates
    assert "note: default/last-sell follows the last trade; with only --book it never moves" in captured.err


@pytest.mark.parametrize(("extra", "problem"), [
    (["--live"], "error: --book replays a recorded book; it does not go with --live"),
    ([], 'book.jsonl:1: s (symbol) is "BTCUSDT", expected XRPETH'),
])
def test_run_with_a_bad_book_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], problem: str
) -> None:
    from trailingstop.cli import main

    (tmp_path / "stops.yaml").write_text(BOOK_STOPS)
    book = tmp_path / "book.jsonl"
    book.write_text('{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1","receivedAt":1}\n')
    assert main(["run", str(tmp_path / "stops.yaml"), "--book", str(book), *extra]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1, err


def test_a_book_stop_without_a_book_is_named_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trailingstop.cli import main

    (tmp_path / "stops.yaml").write_text(BOOK_STOPS)
    assert main(["run", str(tmp_path / "stops.yaml")]) == 0  # the bundled trades only
    captured = capsys.readouterr()
    assert ("note: default/bid-sell follows the book (BestBidAsk); this run has no book (a recorded one is "
            "replayed with --book FILE), so it never moves") in captured.err
    table = {row.split()[0]: row.split() for row in captured.out.splitlines()[-3:]}
    assert table["bid-sell"][4] == "Armed" and table["last-sell"][4] == "Filled"


def test_messages_from_before_book_stops_still_parse_and_mean_the_last_trade() -> None:
    from trailingstop.core.contracts import OrderResult, PlaceOrder, SavedState, StopDefinition

    definition = StopDefinition.model_validate_json(
        '{"v":1,"uid":"7c9e6679-7425-40de-944b-e07fc1f90ae7","namespace":"n","name":"s","generation":1,'
        '"symbol":"XRPETH","side":"SELL","quantity":"1","trailingPercent":"1","mode":"Simulate","route":"simulate",'
        '"state":{"activated":true,"referencePrice":"2","lastTradeId":9}}')
    assert definition.price_source is None and definition.followed_price == "LastTrade"
    assert definition.state == SavedState(activated=True, reference_price="2", last_trade_id=9)
    order = PlaceOrder.model_validate_json(
        '{"v":1,"clientOrderId":"ts-1","uid":"u","symbol":"XRPETH","side":"SELL","quantity":"1","mode":"Simulate",'
        '"route":"simulate","triggerPrice":"1","triggeredAt":5,"triggerTradeId":3}')
    assert (order.trigger_update_id, order.price_source) == (None, None)
    result = OrderResult.for_order(order, status="SIMULATED", executed_qty="1", avg_price="1", at=6)
    assert "triggerUpdateId" not in result.wire() and "priceSource" not in order.wire()  # the old wire, unchanged
    old_event = StopEvent.model_validate_json('{"v":1,"type":"price","symbol":"XRPETH","price":"5","tradeId":4,"at":1}')
    assert old_event.followed == "LastTrade"

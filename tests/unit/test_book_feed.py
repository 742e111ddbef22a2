"""The top of the book from (the fake) Binance: the fake serves bookTicker like Binance (WebSocket
payload and REST answer, read through python-binance's own calls), BookFeed states gaps, and
``trailingstop record`` writes what a replay reads, stopping cleanly (issue 14, item 2).

Child processes' output is kept and shown on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from contextlib import aclosing
from decimal import Decimal
from pathlib import Path

import pytest
from binance import AsyncClient, BinanceSocketManager

from tests.fakebinance import FakeBinance
from trailingstop.bookfiles import read_quotes
from trailingstop.cli import main
from trailingstop.core.quote import Quote
from trailingstop.exchange.binance import BinanceSettings, BookFeed, connect_client
from trailingstop.tradefiles import read_trades

SYMBOL = "XRPETH"
D = Decimal
START_TIMEOUT = 60


def settings(fake: FakeBinance) -> BinanceSettings:
    return BinanceSettings(api_url=fake.api_url, stream_url=fake.stream_url)


async def client_of(fake: FakeBinance) -> AsyncClient:
    return await connect_client(settings(fake))


# --- the fake serves bookTicker as Binance does ----------------------------------------------------


async def test_the_book_ticker_stream_payload_is_binances(fake: FakeBinance) -> None:
    client = await client_of(fake)
    try:
        manager = BinanceSocketManager(client)
        manager.STREAM_URL = fake.stream_url
        async with manager.symbol_book_ticker_socket(SYMBOL) as stream:
            await fake.wait_for_stream_connections(1, timeout=START_TIMEOUT)
            fake.set_quotes(SYMBOL, [{"bid": "0.00145", "ask": "0.0014501", "bidQty": "12.5", "askQty": "3"}])
            message = await asyncio.wait_for(stream.recv(), START_TIMEOUT)
            assert set(message) == {"u", "s", "b", "B", "a", "A"}  # no event type, no time: like Binance
            assert (message["s"], message["b"], message["B"], message["a"], message["A"]) == (
                SYMBOL, "0.00145000", "12.50000000", "0.00145010", "3.00000000")
            assert isinstance(message["u"], int)
            trades = await fake.advance(SYMBOL, 1)  # the book is pinned: a trade does not move it
            fake.set_quotes(SYMBOL, [{"bid": "0.00144", "ask": "0.00146"}], follow_trades=True)
            second = await asyncio.wait_for(stream.recv(), START_TIMEOUT)
            assert second["u"] > message["u"] and (second["b"], second["a"]) == ("0.00144000", "0.00146000")
            [trade] = await fake.advance(SYMBOL, 1)  # following the trades again: the book moves with them
            third = await asyncio.wait_for(stream.recv(), START_TIMEOUT)
            assert third["u"] > second["u"]
            assert D(third["b"]) <= trade.price <= D(third["a"]) and D(third["a"]) > D(third["b"])
            assert trades and trades[0].trade_id + 1 == trade.trade_id
        top = await client.get_orderbook_tickers(symbol=SYMBOL)
        assert top == {"symbol": SYMBOL, "bidPrice": third["b"], "bidQty": third["B"], "askPrice": third["a"],
                       "askQty": third["A"]}
        every = await client.get_orderbook_tickers()
        assert isinstance(every, list) and top in every
    finally:
        await client.close_connection()


async def test_rest_book_ticker_refuses_an_unknown_symbol_like_binance(fake: FakeBinance) -> None:
    client = await client_of(fake)
    try:
        from binance.exceptions import BinanceAPIException

        with pytest.raises(BinanceAPIException) as caught:
            await client.get_orderbook_tickers(symbol="NOPENOPE")
        assert caught.value.code == -1121
    finally:
        await client.close_connection()


# --- BookFeed: quotes in order, a reconnect is a stated gap ----------------------------------------


async def test_book_feed_chains_quotes_and_marks_the_first_after_a_reconnect(fake: FakeBinance) -> None:
    client = await client_of(fake)
    feed = BookFeed(client, SYMBOL, fake.stream_url, silence=30)
    got: list[Quote] = []
    try:
        async with aclosing(feed.quotes()) as quotes:
            reader = asyncio.ensure_future(anext(quotes))
            await fake.wait_for_stream_connections(1, timeout=START_TIMEOUT)
            fake.set_quotes(SYMBOL, [{"bid": "1", "ask": "2"}, {"bid": "1.1", "ask": "2"}])
            got.append(await asyncio.wait_for(reader, START_TIMEOUT))
            got.append(await asyncio.wait_for(anext(quotes), START_TIMEOUT))
            fake.drop_streams()
            await fake.wait_for_stream_connections(0, timeout=START_TIMEOUT)
            fake.set_quotes(SYMBOL, [{"bid": "0.9", "ask": "2"}])  # lost: nobody is connected
            reader = asyncio.ensure_future(anext(quotes))
            await fake.wait_for_stream_connections(1, timeout=START_TIMEOUT)
            fake.set_quotes(SYMBOL, [{"bid": "0.8", "ask": "2"}])
            got.append(await asyncio.wait_for(reader, START_TIMEOUT))
    finally:
        await client.close_connection()
    assert [q.bid for q in got] == [D(1), D("1.1"), D("0.8")]
    assert got[0].previous_update_id is None and got[1].previous_update_id == got[0].update_id
    assert got[2].previous_update_id is None, "the first quote after a reconnect follows nothing: a gap"
    assert feed.reconnects >= 1  # python-binance may report its own reconnect more than once
    await fake.wait_for_stream_connections(0, timeout=START_TIMEOUT)


# --- trailingstop record ------------------------------------------------------------------------------


class Recording:
    """``python -m trailingstop record`` against the fake, its output kept."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, fake: FakeBinance, *args: str) -> Recording:
        env = {**os.environ, "TRAILINGSTOP_BINANCE_API_URL": fake.api_url,
               "TRAILINGSTOP_BINANCE_STREAM_URL": fake.stream_url}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "trailingstop", "record", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        return cls(process)

    async def finish(self, timeout: float = START_TIMEOUT) -> tuple[int, str]:
        try:
            out, err = await asyncio.wait_for(self.process.communicate(), timeout)
        except TimeoutError:
            self.process.kill()
            out, err = await self.process.communicate()
            raise AssertionError(f"did not exit within {timeout}s\n{out.decode()}\n{err.decode()}") from None
        return int(self.process.returncode or 0), f"--- stdout ---\n{out.decode()}\n--- stderr ---\n{err.decode()}"


async def test_record_book_ticker_writes_what_run_replays(fake: FakeBinance, tmp_path: Path) -> None:
    out = tmp_path / "book.jsonl"
    child = await Recording.start(fake, "--symbol", "xrpeth", "--stream", "bookTicker", "--out", str(out),
                                  "--count", "3")
    try:
        await fake.wait_for_stream_connections(1, timeout=START_TIMEOUT)
        sent = fake.set_quotes(SYMBOL, [{"bid": "0.00145", "ask": "0.00146", "bidQty": "7"},
                                        {"bid": "0.00147", "ask": "0.00148"}, {"bid": "0.00146", "ask": "0.00147"}])
        code, said = await child.finish()
    finally:
        if child.process.returncode is None:
            child.process.kill()
    assert code == 0, said
    assert "recorded 3 bookTicker line(s)" in said, said
    quotes = list(read_quotes(out, SYMBOL))
    assert [(q.update_id, q.bid, q.bid_qty, q.ask) for q in quotes] == [
        (s["u"], D(s["b"]), D(s["B"]), D(s["a"])) for s in sent]
    assert [q.previous_update_id for q in quotes] == [None, sent[0]["u"], sent[1]["u"]]
    assert all(abs(q.time - time.time() * 1000) < 600_000 for q in quotes)  # stamped when received


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
async def test_record_agg_trades_stops_cleanly_on_a_signal_with_every_line_flushed(
    fake: FakeBinance, tmp_path: Path, signum: int
) -> None:
    out = tmp_path / "trades.jsonl"
    child = await Recording.start(fake, "--symbol", SYMBOL, "--stream", "aggTrade", "--out", str(out))
    try:
        await fake.wait_for_stream_connections(1, timeout=START_TIMEOUT)
        happened = await fake.advance(SYMBOL, 25)
        deadline = time.monotonic() + START_TIMEOUT
        while (not out.exists() or len(out.read_text().splitlines()) < 25) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # flushed line by line: readable while it records
        child.process.send_signal(signum)
        code, said = await child.finish()
    finally:
        if child.process.returncode is None:
            child.process.kill()
    assert code == 0, said
    assert f"recorded 25 aggTrade line(s) to {out} (stopped by {signal.Signals(signum).name})" in said, said
    assert [t.trade_id for t in read_trades(out)] == [t.trade_id for t in happened]
    assert [(t.price, t.qty, t.time) for t in read_trades(out)] == [(t.price, t.qty, t.time) for t in happened]
    await fake.wait_for_stream_connections(0, timeout=START_TIMEOUT)


def test_record_never_overwrites_and_checks_its_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "old.jsonl"
    existing.write_text("keep me\n")
    assert main(["record", "--symbol", SYMBOL, "--stream", "bookTicker", "--out", str(existing)]) == 2
    assert capsys.readouterr().err == (f"error: {existing} exists; a recording is never overwritten "
                                       "(choose another --out)\n")
    assert existing.read_text() == "keep me\n"
    assert main(["record", "--symbol", "BTC USDT", "--stream", "aggTrade", "--out", str(tmp_path / "x")]) == 2
    assert "--symbol must be 2-20 letters or digits" in capsys.readouterr().err
    assert main(["record", "--symbol", SYMBOL, "--stream", "aggTrade", "--out", str(tmp_path / "y"),
                 "--count", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --count must be a whole number >= 0")
    with pytest.raises(SystemExit) as exited:
        main(["record", "--symbol", SYMBOL, "--stream", "depth", "--out", str(tmp_path / "z")])
    assert exited.value.code == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_json_of_a_recorded_quote_is_compact_one_line(tmp_path: Path) -> None:
    from trailingstop.bookfiles import quote_line

    line = quote_line(SYMBOL, Quote(7, D("1"), D("2"), D("3"), D("4"), 5, None))
    assert line.endswith("\n") and line.count("\n") == 1 and json.loads(line)["previousUpdateId"] is None


LIVE_BOOK_STOP = """\
apiVersion: trailingstop.dev/v1
kind: TrailingStop
metadata: {name: live-bid}
spec: {symbol: XRPETH, side: SELL, quantity: "100", trailingPercent: "1", priceSource: BestBidAsk}
"""


async def test_run_live_streams_the_book_for_a_book_stop(fake: FakeBinance, tmp_path: Path) -> None:
    manifest = tmp_path / "live.yaml"
    manifest.write_text(LIVE_BOOK_STOP)
    env = {**os.environ, "TRAILINGSTOP_BINANCE_API_URL": fake.api_url,
           "TRAILINGSTOP_BINANCE_STREAM_URL": fake.stream_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trailingstop", "run", str(manifest), "--live",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        await fake.wait_for_stream_connections(2, timeout=START_TIMEOUT)  # trades and the book
        sent: list[dict[str, object]] = []
        deadline = time.monotonic() + START_TIMEOUT
        while process.returncode is None and time.monotonic() < deadline:
            # 110 * 0.99 = 108.9: the stop activates on the first bid heard and fires at 108.9.
            sent += fake.set_quotes(SYMBOL, [{"bid": "110", "ask": "111"}, {"bid": "108.9", "ask": "109"}])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.5)
        out, err = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    said = f"--- stdout ---\n{out.decode()}\n--- stderr ---\n{err.decode()}"
    assert process.returncode == 0, said
    assert "Binance live aggTrade stream and bookTicker stream" in out.decode(), said
    assert "price 108.9 reached stop 108.9 (reference 110, BestBid update" in out.decode(), said
    assert out.decode().splitlines()[-1].split()[:5] == ["live-bid", "XRPETH", "SELL", "1", "Filled"], said
    await fake.wait_for_stream_connections(0, timeout=START_TIMEOUT)


@pytest.mark.fakebinance  # uses loopback (a port nothing listens on), so it is no unit test
def test_record_with_binance_unreachable_fails_on_one_line_and_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("TRAILINGSTOP_BINANCE_API_URL", f"http://127.0.0.1:{port}/api")
    monkeypatch.setenv("TRAILINGSTOP_BINANCE_STREAM_URL", f"ws://127.0.0.1:{port}/")
    out = tmp_path / "book.jsonl"
    assert main(["record", "--symbol", SYMBOL, "--stream", "bookTicker", "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"error: cannot reach Binance at http://127.0.0.1:{port}/api"), err
    assert not out.exists()

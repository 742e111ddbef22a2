"""The fake Binance's configurable book: what taking orders fill, level by level (tests/fakebinance/book.py)."""

from __future__ import annotations

from decimal import Decimal

from tests.fakebinance.book import Book
from tests.fakebinance.market import Account, Exchange, OrderRequest
from tests.fakebinance.symbols import btcusdt

D = Decimal


def exchange(bids: list[list[str]], asks: list[list[str]]) -> tuple[Exchange, Account]:
    account = Account("k", "s", {"BTC": "10", "USDT": "1000000"})
    market = Exchange([btcusdt()], {}, [account], clock=lambda: 1)
    market.books["BTCUSDT"] = Book.from_levels(bids, asks)
    return market, account


def place(market: Exchange, account: Account, side: str, qty: str, kind: str = "LIMIT", price: str | None = None,
          tif: str | None = "IOC") -> tuple[str, Decimal, Decimal]:
    request = OrderRequest("BTCUSDT", side, kind, quantity=D(qty), price=None if price is None else D(price),
                           time_in_force=tif if kind == "LIMIT" else None)
    order = market.place(account, request)
    assert order is not None
    return order.status, order.executed_qty, order.cummulative_quote_qty


def test_a_sell_walks_the_bids_down_to_its_limit_and_the_rest_expires() -> None:
    market, account = exchange([["100", "1"], ["99", "1"], ["98", "5"]], [])
    assert place(market, account, "SELL", "3", price="99") == ("EXPIRED", D("2"), D("199"))
    # What was taken is gone: the next SELL at 99 finds nothing.
    assert place(market, account, "SELL", "1", price="99") == ("EXPIRED", D("0"), D("0"))
    assert account.balance("BTC").free == D("8")


def test_a_buy_walks_the_asks_up_and_fills_completely_when_it_can() -> None:
    market, account = exchange([], [["101", "1"], ["102", "1"]])
    assert place(market, account, "BUY", "1.5", price="102") == ("FILLED", D("1.5"), D("152"))


def test_fok_is_all_or_nothing() -> None:
    market, account = exchange([["100", "1"]], [])
    assert place(market, account, "SELL", "2", price="100", tif="FOK") == ("EXPIRED", D("0"), D("0"))
    assert market.books["BTCUSDT"].available("SELL", D("100")) == D("1")  # nothing taken


def test_a_market_order_expires_when_the_book_runs_out() -> None:
    market, account = exchange([["100", "0.5"]], [])
    assert place(market, account, "SELL", "1", kind="MARKET") == ("EXPIRED", D("0.5"), D("50"))

"""``FakeBinance``: one local Binance Spot (REST, WebSocket streams, admin API) on 127.0.0.1.

Typical use in an async test::

    fake = FakeBinance()                       # XRPETH demo tape + BTCUSDT, one account
    await fake.start()
    await fake.advance("XRPETH", 10)           # ten trades happen
    ...                                        # python-binance pointed at fake.api_url
    await fake.stop()

Point python-binance at it by overriding ``API_URL`` (REST) and ``STREAM_URL`` (WebSocket)::

    class Client(AsyncClient):
        API_URL = fake.api_url                 # "http://127.0.0.1:<port>/api"
    client = await Client.create(DEFAULT_API_KEY, DEFAULT_API_SECRET)
    bsm = BinanceSocketManager(client)
    bsm.STREAM_URL = fake.stream_url           # "ws://127.0.0.1:<port>/"
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from trailingstop.core.trade import Trade
from trailingstop.tradefiles import DEMO_SYMBOL, demo_trades_path, load_trades

from .admin import AdminApi
from .book import Book
from .faults import Faults
from .market import Account, Exchange, Order, Tape
from .server import RequestStats, RestApi
from .streams import StreamHub
from .symbols import SymbolSpec, default_symbols
from .ticker import TopOfBook, book_ticker_stream

DEFAULT_API_KEY = "fakebinanceApiKey"
DEFAULT_API_SECRET = "fakebinanceApiSecret"
DEFAULT_BALANCES: dict[str, str] = {
    "XRP": "100000",
    "ETH": "100",
    "BTC": "1",
    "USDT": "100000",
    "BNB": "0",
}
TradeSource = Iterable[Trade] | str | os.PathLike[str]


def default_account() -> Account:
    return Account(DEFAULT_API_KEY, DEFAULT_API_SECRET, dict(DEFAULT_BALANCES))


class FakeBinance:
    """A fake Binance Spot server running in the current asyncio loop.

    :param trades: tape per symbol: a list of ``Trade`` or a trade file path. Default: the
        bundled real XRPETH trades (``trailingstop.tradefiles.demo_trades_path()``).
    :param symbols: ``SymbolSpec`` list. Default: XRPETH and BTCUSDT like Binance's.
    :param accounts: ``Account`` list (apiKey, apiSecret, balances). Default: one account with
        ``DEFAULT_API_KEY`` / ``DEFAULT_API_SECRET`` and ``DEFAULT_BALANCES``.
    :param speed: trades per second per symbol when free-running; None or 0: trades happen only
        when the test calls ``advance``/``advance_to``.
    :param happened: how many trades of each tape have already happened at start (an int for
        every symbol, or a mapping per symbol).
    :param rebase_times: stamp each trade with the server time at which it happens (``T``);
        False keeps the recorded times.
    :param port: 0 picks a free port. The fake binds ``host`` (127.0.0.1) only.
    :param clock_offset_ms: the server clock's offset from this machine's clock.
    """

    def __init__(
        self,
        *,
        trades: Mapping[str, TradeSource] | None = None,
        symbols: Iterable[SymbolSpec] | None = None,
        accounts: Iterable[Account] | None = None,
        speed: float | None = None,
        happened: int | Mapping[str, int] = 0,
        rebase_times: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_offset_ms: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.clock_offset_ms = clock_offset_ms
        specs = list(symbols) if symbols is not None else default_symbols()
        if trades is None:
            trades = {DEMO_SYMBOL: demo_trades_path()}
        known = {s.symbol for s in specs}
        tapes: dict[str, Tape] = {}
        for symbol, source in trades.items():
            symbol = symbol.upper()
            if symbol not in known:
                raise ValueError(f"trades given for {symbol}, which has no SymbolSpec")
            loaded = load_trades(Path(source)) if isinstance(source, (str, os.PathLike)) else list(source)
            tapes[symbol] = Tape(symbol, loaded, rebase_times)
        self.faults = Faults()
        self.stats = RequestStats()
        self.exchange = Exchange(specs, tapes, accounts if accounts is not None else [default_account()], self.now_ms)
        self.hub = StreamHub(self.faults, self.now_ms)
        self.tickers = {spec.symbol: TopOfBook(spec.symbol, spec.tick_size) for spec in specs}
        for symbol, tape in self.exchange.tapes.items():
            count = happened if isinstance(happened, int) else happened.get(symbol, 0)
            tape.advance(count, self.now_ms())
        self._speeds: dict[str, float] = {}
        self.set_speed(speed or 0)
        self._runner: web.AppRunner | None = None
        self._pacer: asyncio.Task[None] | None = None
        self._order_event = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The fake server's clock (epoch milliseconds)."""
        return int(time.time() * 1000) + self.clock_offset_ms

    def build_app(self) -> web.Application:
        rest = RestApi(self)
        admin = AdminApi(self)
        app = web.Application(middlewares=[rest.middleware, admin.middleware])
        app.add_routes(rest.routes())
        app.add_routes(
            [
                web.get("/ws", self.hub.handle_bare),
                web.get("/ws/{name}", self.hub.handle_raw),
                web.get("/stream", self.hub.handle_combined),
            ]
        )
        app.add_routes(admin.routes())
        return app

    async def start(self) -> FakeBinance:
        """Start serving; afterwards ``port`` and the URLs are set."""
        self._runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._pacer = asyncio.create_task(self._pace())
        return self

    async def stop(self) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacer
            self._pacer = None
        await self.hub.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBinance:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """Value for python-binance's ``API_URL`` (it appends ``/v3/<endpoint>``)."""
        return f"{self.base_url}/api"

    @property
    def stream_url(self) -> str:
        """Value for ``BinanceSocketManager.STREAM_URL`` (it appends ``ws/<stream>``)."""
        return f"ws://{self.host}:{self.port}/"

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}/_fake"

    def urls(self) -> dict[str, Any]:
        return {
            "api_url": self.api_url,
            "stream_url": self.stream_url,
            "admin_url": self.admin_url,
            "base_url": self.base_url,
            "port": self.port,
        }

    # --- the tape ---------------------------------------------------------------------------

    def tape(self, symbol: str) -> Tape:
        return self.exchange.tapes[symbol.upper()]

    def _happen(self, symbol: str, trades: list[Trade]) -> None:
        for trade in trades:
            self.exchange.on_price(symbol, trade.price)
        self.hub.publish(symbol, trades)
        book = self.tickers[symbol]
        quotes = [quote for trade in trades if (quote := book.on_trade(trade)) is not None]
        self.hub.publish_events(book_ticker_stream(symbol), quotes)

    def set_quotes(
        self, symbol: str, quotes: Iterable[Mapping[str, Any]], follow_trades: bool = False
    ) -> list[dict[str, Any]]:
        """Make these top-of-book quotes happen now (``bid``, ``ask``, optional ``bidQty``/``askQty``,
        default 1), in order; the book then stays where they left it until ``follow_trades``."""
        book = self.tickers[symbol.upper()]
        events = [
            book.set(Decimal(str(q["bid"])), Decimal(str(q["ask"])), Decimal(str(q.get("bidQty", 1))),
                     Decimal(str(q.get("askQty", 1))))
            for q in quotes
        ]
        book.follows_trades = follow_trades
        self.hub.publish_events(book_ticker_stream(book.symbol), events)
        return events

    def advance_now(self, symbol: str, n: int = 1) -> list[Trade]:
        """Synchronous ``advance`` (for code already running in the fake's loop)."""
        symbol = symbol.upper()
        trades = self.tape(symbol).advance(n, self.now_ms())
        self._happen(symbol, trades)
        return trades

    async def advance(self, symbol: str, n: int = 1) -> list[Trade]:
        """Make the next ``n`` trades of ``symbol`` happen; returns them (as they happened)."""
        trades = self.advance_now(symbol, n)
        await asyncio.sleep(0)
        return trades

    async def advance_to(self, symbol: str, trade_id: int) -> list[Trade]:
        """Make every trade up to and including aggregate trade ``trade_id`` happen."""
        symbol = symbol.upper()
        trades = self.tape(symbol).advance_to(trade_id, self.now_ms())
        self._happen(symbol, trades)
        await asyncio.sleep(0)
        return trades

    def set_speed(self, speed: float, symbols: Iterable[str] | None = None) -> None:
        """Free-run at ``speed`` trades/second (0 stops) for ``symbols`` (default: all)."""
        for symbol in symbols if symbols is not None else self.exchange.tapes:
            self._speeds[symbol.upper()] = float(speed)

    def set_price(self, symbol: str, price: Decimal | str | None) -> None:
        """Set the market price; while set it stays the price even as trades happen (None: back
        to the last trade). Resting orders it reaches fill."""
        tape = self.tape(symbol)
        tape.price_override = None if price is None else Decimal(str(price))
        if tape.price_override is not None:
            self.exchange.on_price(tape.symbol, tape.price_override)

    def set_book(self, symbol: str, bids: Iterable[Iterable[Any]] | None, asks: Iterable[Iterable[Any]] = ()) -> None:
        """Liquidity for taking orders (``[[price, qty], ...]``); ``bids`` None: unlimited again
        (the default: a taking order fills fully at the market price). See :mod:`.book`."""
        symbol = self.tape(symbol).symbol
        if bids is None:
            self.exchange.books.pop(symbol, None)
        else:
            self.exchange.books[symbol] = Book.from_levels(bids, asks)

    async def _pace(self) -> None:
        carry: dict[str, float] = {}
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            elapsed, last = now - last, now
            for symbol, speed in self._speeds.items():
                if speed <= 0:
                    carry.pop(symbol, None)
                    continue
                carry[symbol] = carry.get(symbol, 0.0) + elapsed * speed
                due = int(carry[symbol])
                if due:
                    carry[symbol] -= due
                    self.advance_now(symbol, due)

    # --- accounts and orders ----------------------------------------------------------------

    def account(self, api_key: str = DEFAULT_API_KEY) -> Account:
        return self.exchange.accounts[api_key]

    def add_account(self, account: Account) -> None:
        self.exchange.accounts[account.api_key] = account

    def balances(self, api_key: str = DEFAULT_API_KEY) -> dict[str, dict[str, Decimal]]:
        """``{asset: {"free": Decimal, "locked": Decimal}}`` of an account."""
        return self.account(api_key).snapshot()

    def orders(self, client_order_id: str | None = None, symbol: str | None = None) -> list[Order]:
        """Orders the fake accepted (executed, resting, expired or canceled), oldest first."""
        return [
            o
            for o in self.exchange.orders
            if (client_order_id is None or o.client_order_id == client_order_id)
            and (symbol is None or o.symbol == symbol.upper())
        ]

    def order_count(self, client_order_id: str | None = None) -> int:
        """How many orders were accepted (with that clientOrderId)."""
        return len(self.orders(client_order_id))

    def order_posts(self, client_order_id: str) -> int:
        """How many ``POST order`` requests carried that newClientOrderId (accepted or not)."""
        return self.stats.order_posts[client_order_id]

    def requests(self) -> dict[str, int]:
        """Requests seen per endpoint: ``{"GET /api/v3/ping": n, ...}``."""
        return dict(self.stats.requests)

    def request_count(self, endpoint: str) -> int:
        """Requests seen for one endpoint, e.g. ``request_count("POST /api/v3/order")``."""
        return self.stats.requests[endpoint]

    def order_placed(self, order: Order) -> None:
        self._order_event.set()
        self._order_event = asyncio.Event()

    async def wait_for_orders(self, count: int, timeout: float = 5.0) -> list[Order]:
        """Wait until at least ``count`` orders were accepted."""

        async def wait() -> None:
            while len(self.exchange.orders) < count:
                await self._order_event.wait()

        await asyncio.wait_for(wait(), timeout)
        return list(self.exchange.orders)

    # --- streams ----------------------------------------------------------------------------

    @property
    def stream_connections(self) -> int:
        return len(self.hub.connections)

    async def wait_for_stream_connections(self, count: int, timeout: float = 5.0) -> None:
        await self.hub.wait_for_connections(count, timeout)

    def drop_streams(self, after_events: int = 0, refuse_seconds: float = 0.0, abrupt: bool = False) -> int:
        """Close every open socket (after ``after_events`` more events each) and refuse new
        handshakes for ``refuse_seconds``. Returns how many sockets were affected."""
        if refuse_seconds:
            self.faults.refuse_streams(refuse_seconds)
        return self.hub.drop_all(after_events, abrupt)

    def silence_streams(self, seconds: float | None = None) -> None:
        self.faults.silence_streams(seconds)

    def resume_streams(self) -> None:
        self.faults.resume_streams()

    # --- everything at once -----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """A JSON-able summary (``GET /_fake/state``)."""
        return {
            "serverTime": self.now_ms(),
            "symbols": {
                symbol: {
                    "happened": tape.position,
                    "total": tape.total,
                    "lastTradeId": tape.last_trade.trade_id if tape.last_trade else None,
                    "price": None if tape.last_price is None else format(tape.last_price, "f"),
                    "speed": self._speeds.get(symbol, 0.0),
                    "book": self.tickers[symbol].ws_event(),
                }
                for symbol, tape in self.exchange.tapes.items()
            },
            "streamConnections": self.stream_connections,
            "streamConnectionsTotal": self.hub.connections_total,
            "streamHandshakesRefused": self.hub.refused,
            "orders": len(self.exchange.orders),
            "faults": self.faults.describe(),
        }

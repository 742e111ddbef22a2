"""A faithful local fake of Binance Spot for tests: REST, WebSocket streams, faults.

In-process (asyncio)::

    from tests.fakebinance import FakeBinance, DEFAULT_API_KEY, DEFAULT_API_SECRET
    from tests.fakebinance.clients import async_client_class, socket_manager

    async with FakeBinance() as fake:                    # XRPETH demo tape, BTCUSDT, one account
        client = await async_client_class(fake.api_url).create(DEFAULT_API_KEY, DEFAULT_API_SECRET)
        await fake.advance("XRPETH", 10)                 # ten trades happen
        await client.order_market_sell(symbol="XRPETH", quantity="100", newClientOrderId="x1")
        assert fake.order_count("x1") == 1
        sock = socket_manager(client, fake.stream_url).aggtrade_socket("XRPETH")
        fake.set_quotes("XRPETH", [{"bid": "0.00145", "ask": "0.00146"}])   # the top of the book now
        book = socket_manager(client, fake.stream_url).symbol_book_ticker_socket("XRPETH")

python-binance is pointed at it with ``AsyncClient.API_URL = fake.api_url`` (on a subclass:
``create()`` pings at once) and ``BinanceSocketManager.STREAM_URL = fake.stream_url``.

Synchronous callers: ``ThreadedFakeBinance`` (same arguments, runs in a background thread).
Another process: ``python -m tests.fakebinance --port 0 --trades XRPETH=path.csv --speed N``
prints its URLs as one JSON line; drive it over the admin API at ``/_fake`` (see ``admin.py``).

Modules: ``fake`` (lifecycle, tape pacing, inspection), ``server`` (REST routes), ``streams``
(WebSocket), ``book`` (bookTicker: a book around the trades, or explicit quotes),
``market`` (tape, orders, fills, balances), ``symbols`` (exchangeInfo filters),
``auth`` (keys, signatures, timing), ``params`` (parameter rules), ``faults``, ``errors``
(Binance's codes, messages and HTTP statuses), ``admin``, ``threaded``, ``clients``.
"""

from .errors import BinanceError
from .fake import DEFAULT_API_KEY, DEFAULT_API_SECRET, DEFAULT_BALANCES, FakeBinance, default_account
from .faults import Faults
from .market import Account, Order, Tape
from .symbols import SymbolSpec, btcusdt, default_symbols, xrpeth
from .threaded import ThreadedFakeBinance

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "DEFAULT_BALANCES",
    "Account",
    "BinanceError",
    "FakeBinance",
    "Faults",
    "Order",
    "SymbolSpec",
    "Tape",
    "ThreadedFakeBinance",
    "btcusdt",
    "default_account",
    "default_symbols",
    "xrpeth",
]

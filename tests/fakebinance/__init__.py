"""A faithful local fake of Binance Spot for tests: REST, WebSocket streams, faults.

See ``fake.py`` for the in-process server, ``threaded.py`` for synchronous callers and
``__main__.py`` for running it as a process (``python -m tests.fakebinance``).
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

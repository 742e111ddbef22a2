"""The top of each symbol's order book, as Binance's bookTicker shows it.

Binance sends ``<symbol>@bookTicker`` events ``{"u": updateId, "s": symbol, "b": bidPrice, "B":
bidQty, "a": askPrice, "A": askQty}`` (no event type, no time) whenever the best bid or ask
changes, and ``GET /api/v3/ticker/bookTicker`` answers ``{"symbol", "bidPrice", "bidQty",
"askPrice", "askQty"}`` (no updateId). ``updateId`` is the order book's: it rises with every
book change, including the many that do not touch the top, so consecutive quotes are never one
apart; here each quote moves it by :data:`UPDATE_STEP`.

The book follows the trades (a trade hits the bid or lifts the ask: a buyer-maker trade leaves
the bid at its price and the ask one tick above, the other kind the ask at its price and the bid
one tick below), unless a test sets quotes explicitly (:meth:`TopOfBook.set`), which pins the book
until it is told to follow the trades again.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from trailingstop.core.trade import Trade

from .symbols import fmt

FIRST_UPDATE_ID = 400_900_000
UPDATE_STEP = 3  # book changes between two quotes of the top (Binance's ids skip too)


def book_ticker_stream(symbol: str) -> str:
    return f"{symbol.lower()}@bookTicker"


@dataclass
class TopOfBook:
    symbol: str
    tick_size: Decimal
    update_id: int = FIRST_UPDATE_ID
    bid: Decimal = Decimal(0)
    bid_qty: Decimal = Decimal(0)
    ask: Decimal = Decimal(0)
    ask_qty: Decimal = Decimal(0)
    follows_trades: bool = True

    def on_trade(self, trade: Trade) -> dict[str, Any] | None:
        """The quote a trade leaves (None if the book is pinned by explicit quotes)."""
        if not self.follows_trades:
            return None
        tick = self.tick_size or Decimal("0.00000001")
        if trade.buyer_maker:  # a seller hit the bid
            bid, ask = trade.price, trade.price + tick
        else:  # a buyer lifted the ask
            bid, ask = max(trade.price - tick, Decimal(0)), trade.price
        return self._quote(bid, trade.qty, ask, trade.qty)

    def set(self, bid: Decimal, ask: Decimal, bid_qty: Decimal, ask_qty: Decimal) -> dict[str, Any]:
        """An explicit quote; the book stops following the trades."""
        self.follows_trades = False
        return self._quote(bid, bid_qty, ask, ask_qty)

    def _quote(self, bid: Decimal, bid_qty: Decimal, ask: Decimal, ask_qty: Decimal) -> dict[str, Any]:
        self.update_id += UPDATE_STEP
        self.bid, self.bid_qty, self.ask, self.ask_qty = bid, bid_qty, ask, ask_qty
        return self.ws_event()

    def ws_event(self) -> dict[str, Any]:
        """The ``<symbol>@bookTicker`` payload (Binance's 8-decimal strings)."""
        return {"u": self.update_id, "s": self.symbol, "b": fmt(self.bid), "B": fmt(self.bid_qty),
                "a": fmt(self.ask), "A": fmt(self.ask_qty)}

    def rest(self) -> dict[str, str]:
        """``GET /api/v3/ticker/bookTicker``'s answer for this symbol."""
        return {"symbol": self.symbol, "bidPrice": fmt(self.bid), "bidQty": fmt(self.bid_qty),
                "askPrice": fmt(self.ask), "askQty": fmt(self.ask_qty)}

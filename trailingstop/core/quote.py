"""One quote of the top of a symbol's order book (Binance's bookTicker): what the book feed yields
and BestBidAsk stops follow. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class Quote:
    """The best bid and ask after one book update. Prices and quantities are exact decimals.

    ``update_id`` is Binance's order book updateId: it rises with every update, but not by one
    (the stream sends only the updates that change the top), so a missing quote cannot be told
    from the ids. The stream says it instead: ``previous_update_id`` is the quote before this one
    on the same unbroken stream, None for the first quote after a (re)connect. The payload has no
    exchange time; ``time`` is when the quote was received (epoch milliseconds).
    """

    update_id: int
    bid: Decimal
    bid_qty: Decimal
    ask: Decimal
    ask_qty: Decimal
    time: int
    previous_update_id: int | None = None

    def to_payload(self, symbol: str) -> dict[str, Any]:
        """The ``<symbol>@bookTicker`` WebSocket payload (decimals as strings, as Binance)."""
        return {
            "u": self.update_id,
            "s": symbol,
            "b": format(self.bid, "f"),
            "B": format(self.bid_qty, "f"),
            "a": format(self.ask, "f"),
            "A": format(self.ask_qty, "f"),
        }

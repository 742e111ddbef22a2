"""One Binance aggregate trade: what every trade source yields and the engine consumes. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class Trade:
    """One Binance aggregate trade. Prices and quantities are exact decimals."""

    trade_id: int
    price: Decimal
    qty: Decimal
    first_trade_id: int
    last_trade_id: int
    time: int  # epoch milliseconds
    buyer_maker: bool
    best_match: bool = True

    def to_payload(self) -> dict[str, Any]:
        """The REST ``aggTrades`` payload for this trade (strings for decimals, as Binance)."""
        return {
            "a": self.trade_id,
            "p": _plain(self.price),
            "q": _plain(self.qty),
            "f": self.first_trade_id,
            "l": self.last_trade_id,
            "T": self.time,
            "m": self.buyer_maker,
            "M": self.best_match,
        }

    def to_ws_event(self, symbol: str, event_time: int | None = None) -> dict[str, Any]:
        """The WebSocket ``<symbol>@aggTrade`` event for this trade."""
        return {
            "e": "aggTrade",
            "E": self.time if event_time is None else event_time,
            "s": symbol,
            **self.to_payload(),
        }


def _plain(number: Decimal) -> str:
    """A decimal as Binance writes it: fixed-point, never exponent notation."""
    return format(number, "f")

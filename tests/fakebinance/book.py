"""A configurable order book for one symbol: what a taking order can fill, level by level.

Without a book the fake fills a taking order fully at the market price (deep liquidity). With a
book set (tests, or ``POST /_fake/book``), MARKET and LIMIT IOC/FOK orders walk it as Binance's
matching engine walks its book:

* a SELL takes the bids from the highest down, a BUY the asks from the lowest up, each level at
  its own price; a LIMIT order stops at its price (a SELL at bids >= price, a BUY at asks <= price);
* what one order takes is gone for the next (the book is not refilled by the tape);
* what is left of an IOC order or a MARKET order when the book runs out expires (status EXPIRED,
  ``executedQty`` what did fill); a FOK order that cannot fill completely fills nothing (EXPIRED).

A resting GTC order is not matched against the book (it waits for the tape's trades, as before).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass
class Level:
    price: Decimal
    qty: Decimal


@dataclass
class Book:
    bids: list[Level] = field(default_factory=list)  # best (highest) first
    asks: list[Level] = field(default_factory=list)  # best (lowest) first

    @classmethod
    def from_levels(cls, bids: Iterable[Iterable[Any]], asks: Iterable[Iterable[Any]]) -> Book:
        """From ``[[price, qty], ...]`` pairs (strings or decimals), in any order."""
        def levels(pairs: Iterable[Iterable[Any]], best_first_high: bool) -> list[Level]:
            out = [Level(Decimal(str(p)), Decimal(str(q))) for p, q in pairs]
            return sorted(out, key=lambda level: level.price, reverse=best_first_high)

        return cls(levels(bids, True), levels(asks, False))

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Book:
        return cls.from_levels(body.get("bids", []), body.get("asks", []))

    def _side(self, taker_side: str) -> list[Level]:
        return self.bids if taker_side == "SELL" else self.asks

    @staticmethod
    def _reaches(taker_side: str, level: Level, limit: Decimal | None) -> bool:
        if limit is None:
            return True
        return level.price >= limit if taker_side == "SELL" else level.price <= limit

    def available(self, taker_side: str, limit: Decimal | None) -> Decimal:
        """How much a taker of ``taker_side`` could fill at ``limit`` or better (None: any price)."""
        total = Decimal(0)
        for level in self._side(taker_side):
            if not self._reaches(taker_side, level, limit):
                break
            total += level.qty
        return total

    def take(self, taker_side: str, qty: Decimal, limit: Decimal | None) -> list[tuple[Decimal, Decimal]]:
        """Consume up to ``qty`` at ``limit`` or better; the (price, qty) fills, best first."""
        fills: list[tuple[Decimal, Decimal]] = []
        levels = self._side(taker_side)
        while qty > 0 and levels and self._reaches(taker_side, levels[0], limit):
            level = levels[0]
            taken = min(qty, level.qty)
            fills.append((level.price, taken))
            qty -= taken
            level.qty -= taken
            if level.qty == 0:
                levels.pop(0)
        return fills

    def payload(self) -> dict[str, Any]:
        return {"bids": [[str(lv.price), str(lv.qty)] for lv in self.bids],
                "asks": [[str(lv.price), str(lv.qty)] for lv in self.asks]}

"""Binance symbol filters (from ``exchangeInfo``) that decide whether a MARKET order is valid.

Binance checks a MARKET order's quantity against LOT_SIZE *and* MARKET_LOT_SIZE:
``minQty <= qty <= maxQty`` and ``(qty - minQty) % stepSize == 0`` (a zero value disables a
check), and its notional (``qty * average price``) against NOTIONAL (``applyMinToMarket``) or the
older MIN_NOTIONAL (``applyToMarket``). A failed check is error -1013 "Filter failure: <NAME>".
We run the same checks when a stop is placed, so a bad quantity is reported at once rather than
at the trigger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from trailingstop.core.decimals import EXACT, to_wire


@dataclass(frozen=True, slots=True)
class LotSize:
    name: str
    min_qty: Decimal
    max_qty: Decimal
    step_size: Decimal

    def problem(self, qty: Decimal) -> str | None:
        if qty < self.min_qty:
            return f"quantity {_plain(qty)} is below {self.name} minQty {_plain(self.min_qty)}"
        if self.max_qty > 0 and qty > self.max_qty:
            return f"quantity {_plain(qty)} is above {self.name} maxQty {_plain(self.max_qty)}"
        if self.step_size > 0 and EXACT.remainder(EXACT.subtract(qty, self.min_qty), self.step_size) != 0:
            below = self.floor(qty)
            return (
                f"quantity {_plain(qty)} is not a multiple of {self.name} stepSize {_plain(self.step_size)} "
                f"(nearest below: {_plain(below)})"
            )
        return None

    def floor(self, qty: Decimal) -> Decimal:
        if self.step_size <= 0:
            return qty
        # Exact, whatever the digits: the default context would round a 40-digit quantity, and the
        # floor of a rounded-up quantity can be more than the stop's quantity.
        steps, rest = EXACT.divmod(EXACT.subtract(qty, self.min_qty), self.step_size)
        if rest < 0:  # divmod truncates toward zero; below minQty the floor is one step lower
            steps = EXACT.subtract(steps, 1)
        return EXACT.add(self.min_qty, EXACT.multiply(steps, self.step_size))


@dataclass(frozen=True, slots=True)
class SymbolFilters:
    """The filters of one symbol that apply to MARKET orders."""

    symbol: str
    lots: tuple[LotSize, ...] = ()
    min_notional: Decimal | None = None
    max_notional: Decimal | None = None
    status: str = "TRADING"

    @classmethod
    def from_exchange_info(cls, symbol_info: Mapping[str, Any]) -> SymbolFilters:
        """From one entry of ``exchangeInfo["symbols"]``."""
        lots: list[LotSize] = []
        min_notional = max_notional = None
        for item in symbol_info.get("filters", []):
            kind = item.get("filterType")
            if kind in ("LOT_SIZE", "MARKET_LOT_SIZE"):
                lots.append(
                    LotSize(kind, Decimal(item["minQty"]), Decimal(item["maxQty"]), Decimal(item["stepSize"]))
                )
            elif kind == "NOTIONAL":
                if item.get("applyMinToMarket", True):
                    min_notional = Decimal(item["minNotional"])
                if item.get("applyMaxToMarket", False) and Decimal(item.get("maxNotional", "0")) > 0:
                    max_notional = Decimal(item["maxNotional"])
            elif kind == "MIN_NOTIONAL" and item.get("applyToMarket", True):
                min_notional = Decimal(item["minNotional"])
        return cls(
            symbol=symbol_info["symbol"],
            lots=tuple(lots),
            min_notional=min_notional,
            max_notional=max_notional,
            status=symbol_info.get("status", "TRADING"),
        )

    def quantity_problem(self, qty: Decimal) -> str | None:
        """Why Binance would refuse a MARKET order of ``qty`` (LOT_SIZE / MARKET_LOT_SIZE), or None."""
        if self.status != "TRADING":
            return f"{self.symbol} is not trading (status {self.status})"
        for lot in self.lots:
            problem = lot.problem(qty)
            if problem is not None:
                return problem
        return None

    def notional_problem(self, qty: Decimal, price: Decimal) -> str | None:
        """Why ``qty`` at ``price`` fails NOTIONAL / MIN_NOTIONAL, or None."""
        notional = EXACT.multiply(qty, price)
        if self.min_notional is not None and notional < self.min_notional:
            return (
                f"order value {_plain(notional)} (quantity {_plain(qty)} x price {_plain(price)}) is below "
                f"minNotional {_plain(self.min_notional)}"
            )
        if self.max_notional is not None and notional > self.max_notional:
            return f"order value {_plain(notional)} is above maxNotional {_plain(self.max_notional)}"
        return None

    def floor_quantity(self, qty: Decimal) -> Decimal:
        """The largest quantity <= ``qty`` on every lot filter's step."""
        for lot in self.lots:
            qty = lot.floor(qty)
        return qty


def filters_by_symbol(exchange_info: Mapping[str, Any]) -> dict[str, SymbolFilters]:
    return {
        info["symbol"]: SymbolFilters.from_exchange_info(info) for info in exchange_info.get("symbols", [])
    }


def _plain(number: Decimal) -> str:
    return to_wire(number)

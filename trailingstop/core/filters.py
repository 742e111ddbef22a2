"""Binance symbol filters (from ``exchangeInfo``) that decide whether a MARKET or LIMIT order is valid.

Binance checks a MARKET order's quantity against LOT_SIZE *and* MARKET_LOT_SIZE:
``minQty <= qty <= maxQty`` and ``(qty - minQty) % stepSize == 0`` (a zero value disables a
check), and its notional (``qty * average price``) against NOTIONAL (``applyMinToMarket``) or the
older MIN_NOTIONAL (``applyToMarket``). A LIMIT order's quantity meets LOT_SIZE only, its notional
(``qty * price``) NOTIONAL's min and max whatever the ``apply...ToMarket`` flags, its price
PRICE_FILTER (``minPrice <= price <= maxPrice``, ``price % tickSize == 0``) and
PERCENT_PRICE_BY_SIDE (a SELL within ``[askMultiplierDown, askMultiplierUp] x`` the average price,
a BUY within the bid multipliers; PERCENT_PRICE: the same bounds for both sides). A failed check is
error -1013 "Filter failure: <NAME>". We run the same checks when a stop is placed, so a bad
quantity is reported at once rather than at the trigger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from trailingstop.core.decimals import EXACT, to_wire

OrderType = Literal["MARKET", "LIMIT"]
_HUNDRED = Decimal(100)
_ONE = Decimal(1)


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
class PriceFilter:
    """PRICE_FILTER: a LIMIT price's range and tick (a zero value disables that part)."""

    min_price: Decimal
    max_price: Decimal
    tick_size: Decimal

    def problem(self, price: Decimal) -> str | None:
        if self.min_price > 0 and price < self.min_price:
            return f"limit price {_plain(price)} is below PRICE_FILTER minPrice {_plain(self.min_price)}"
        if self.max_price > 0 and price > self.max_price:
            return f"limit price {_plain(price)} is above PRICE_FILTER maxPrice {_plain(self.max_price)}"
        if self.tick_size > 0 and EXACT.remainder(price, self.tick_size) != 0:
            return f"limit price {_plain(price)} is not a multiple of PRICE_FILTER tickSize {_plain(self.tick_size)}"
        return None

    def round_safe(self, side: str, price: Decimal) -> Decimal:
        """``price`` on the tick, never past it for the user: a SELL's lowest acceptable price
        rounds up, a BUY's highest acceptable price rounds down. Exact (integer quotient)."""
        tick = self.tick_size
        if tick <= 0:
            return price
        steps, rest = EXACT.divmod(price, tick)
        if rest != 0 and side == "SELL":
            steps = EXACT.add(steps, _ONE)
        return EXACT.multiply(steps, tick)


@dataclass(frozen=True, slots=True)
class PercentPrice:
    """PERCENT_PRICE_BY_SIDE (or PERCENT_PRICE: one pair for both sides): a LIMIT price within
    multipliers of the symbol's average price."""

    name: str
    bid_down: Decimal
    bid_up: Decimal
    ask_down: Decimal
    ask_up: Decimal

    def bounds(self, side: str) -> tuple[Decimal, Decimal]:
        return (self.ask_down, self.ask_up) if side == "SELL" else (self.bid_down, self.bid_up)

    def problem(self, side: str, price: Decimal, average: Decimal) -> str | None:
        down, up = self.bounds(side)
        low, high = EXACT.multiply(average, down), EXACT.multiply(average, up)
        if price < low or price > high:
            return (f"limit price {_plain(price)} is outside {self.name} for a {side}: "
                    f"{_plain(down)} to {_plain(up)} x the average price {_plain(average)}")
        return None

    def slippage_problem(self, side: str, factor: Decimal) -> str | None:
        """A limit at ``factor`` x the trigger price (1 - s/100 SELL, 1 + s/100 BUY) that Binance
        refuses even when the trigger price is the average price: the slippage allows more than
        the filter does. (After a fall a SELL's trigger is usually below the average, after a rise
        a BUY's above it, which only makes it worse.)"""
        down, up = self.bounds(side)
        if down <= factor <= up:
            return None
        return (f"a limit at {_plain(factor)} x the trigger price is outside {self.name} for a {side} "
                f"({_plain(down)} to {_plain(up)} x the average price)")


@dataclass(frozen=True, slots=True)
class SymbolFilters:
    """The filters of one symbol that apply to MARKET and LIMIT orders. ``min_notional`` and
    ``max_notional`` are a MARKET order's (NOTIONAL's ``apply...ToMarket``), ``limit_...`` a LIMIT's."""

    symbol: str
    lots: tuple[LotSize, ...] = ()
    min_notional: Decimal | None = None
    max_notional: Decimal | None = None
    status: str = "TRADING"
    limit_min_notional: Decimal | None = None
    limit_max_notional: Decimal | None = None
    price: PriceFilter | None = None
    percent_price: PercentPrice | None = None

    @classmethod
    def from_exchange_info(cls, symbol_info: Mapping[str, Any]) -> SymbolFilters:
        """From one entry of ``exchangeInfo["symbols"]``."""
        lots: list[LotSize] = []
        min_notional = max_notional = limit_min = limit_max = None
        price_filter = percent_price = None
        for item in symbol_info.get("filters", []):
            kind = item.get("filterType")
            if kind in ("LOT_SIZE", "MARKET_LOT_SIZE"):
                lots.append(
                    LotSize(kind, Decimal(item["minQty"]), Decimal(item["maxQty"]), Decimal(item["stepSize"]))
                )
            elif kind == "NOTIONAL":
                limit_min = Decimal(item["minNotional"])
                if Decimal(item.get("maxNotional", "0")) > 0:
                    limit_max = Decimal(item["maxNotional"])
                if item.get("applyMinToMarket", True):
                    min_notional = limit_min
                if item.get("applyMaxToMarket", False):
                    max_notional = limit_max
            elif kind == "MIN_NOTIONAL":
                limit_min = Decimal(item["minNotional"])
                if item.get("applyToMarket", True):
                    min_notional = limit_min
            elif kind == "PRICE_FILTER":
                price_filter = PriceFilter(
                    Decimal(item["minPrice"]), Decimal(item["maxPrice"]), Decimal(item["tickSize"])
                )
            elif kind == "PERCENT_PRICE_BY_SIDE":
                percent_price = PercentPrice(
                    kind,
                    Decimal(item["bidMultiplierDown"]),
                    Decimal(item["bidMultiplierUp"]),
                    Decimal(item["askMultiplierDown"]),
                    Decimal(item["askMultiplierUp"]),
                )
            elif kind == "PERCENT_PRICE" and percent_price is None:
                down, up = Decimal(item["multiplierDown"]), Decimal(item["multiplierUp"])
                percent_price = PercentPrice(kind, down, up, down, up)
        return cls(
            symbol=symbol_info["symbol"],
            lots=tuple(lots),
            min_notional=min_notional,
            max_notional=max_notional,
            status=symbol_info.get("status", "TRADING"),
            limit_min_notional=limit_min,
            limit_max_notional=limit_max,
            price=price_filter,
            percent_price=percent_price,
        )

    def _lots(self, order_type: OrderType) -> tuple[LotSize, ...]:
        if order_type == "MARKET":
            return self.lots
        return tuple(lot for lot in self.lots if lot.name != "MARKET_LOT_SIZE")

    def quantity_problem(self, qty: Decimal, order_type: OrderType = "MARKET") -> str | None:
        """Why Binance would refuse an order of ``qty`` (LOT_SIZE, and MARKET_LOT_SIZE for a
        MARKET order), or None."""
        if self.status != "TRADING":
            return f"{self.symbol} is not trading (status {self.status})"
        for lot in self._lots(order_type):
            problem = lot.problem(qty)
            if problem is not None:
                return problem
        return None

    def notional_problem(self, qty: Decimal, price: Decimal, order_type: OrderType = "MARKET") -> str | None:
        """Why ``qty`` at ``price`` fails NOTIONAL / MIN_NOTIONAL for this type of order, or None."""
        notional = EXACT.multiply(qty, price)
        low, high = (
            (self.min_notional, self.max_notional) if order_type == "MARKET"
            else (self.limit_min_notional, self.limit_max_notional)
        )
        if low is not None and notional < low:
            return (
                f"order value {_plain(notional)} (quantity {_plain(qty)} x price {_plain(price)}) is below "
                f"minNotional {_plain(low)}"
            )
        if high is not None and notional > high:
            return f"order value {_plain(notional)} is above maxNotional {_plain(high)}"
        return None

    def floor_quantity(self, qty: Decimal, order_type: OrderType = "MARKET") -> Decimal:
        """The largest quantity <= ``qty`` on every lot filter's step that applies to the order."""
        for lot in self._lots(order_type):
            qty = lot.floor(qty)
        return qty

    def limit_price(self, side: str, trigger_price: Decimal, slippage_percent: Decimal) -> Decimal:
        """The LIMIT price of a Limit stop: see :func:`limit_price`, on this symbol's tick."""
        return limit_price(side, trigger_price, slippage_percent, self.price)

    def limit_problem(self, side: str, qty: Decimal, price: Decimal | None, slippage_percent: Decimal) -> str | None:
        """Why Binance would refuse the LIMIT order of a Limit stop triggered at ``price`` (the
        best estimate there is: the activation price, else the last price): LOT_SIZE, PRICE_FILTER
        at its limit price, NOTIONAL at that price, and a slippage PERCENT_PRICE_BY_SIDE refuses
        whatever the price. None when nothing can be told yet."""
        problem = self.quantity_problem(qty, "LIMIT")
        if problem is not None:
            return problem
        if self.percent_price is not None:
            problem = self.percent_price.slippage_problem(side, _slippage_factor(side, slippage_percent))
            if problem is not None:
                return problem
        if price is None:
            return None
        limit = self.limit_price(side, price, slippage_percent)
        if self.price is not None and (problem := self.price.problem(limit)) is not None:
            return f"{problem} (the limit of a trigger at {_plain(price)})"
        quantity = self.floor_quantity(qty, "LIMIT")
        return self.notional_problem(quantity, limit, "LIMIT")


def _slippage_factor(side: str, slippage_percent: Decimal) -> Decimal:
    share = EXACT.divide(slippage_percent, _HUNDRED)
    return EXACT.subtract(_ONE, share) if side == "SELL" else EXACT.add(_ONE, share)


def limit_price(
    side: str, trigger_price: Decimal, slippage_percent: Decimal, price_filter: PriceFilter | None
) -> Decimal:
    """The worst price a Limit stop accepts: ``trigger x (1 - s/100)`` for a SELL, ``x (1 + s/100)``
    for a BUY, exactly; then on the tick size, rounded the way that never passes that bound (SELL
    up, BUY down: DESIGN §4 "Execution"). Without a PRICE_FILTER (simulated), the exact bound."""
    bound = EXACT.multiply(trigger_price, _slippage_factor(side, slippage_percent))
    return bound if price_filter is None else price_filter.round_safe(side, bound)


def filters_by_symbol(exchange_info: Mapping[str, Any]) -> dict[str, SymbolFilters]:
    return {
        info["symbol"]: SymbolFilters.from_exchange_info(info) for info in exchange_info.get("symbols", [])
    }


def _plain(number: Decimal) -> str:
    return to_wire(number)

"""Symbols and their trading rules, as ``GET /api/v3/exchangeInfo`` shows and order entry enforces.

Filter shapes, field names and the 8-decimal string format are Binance's (``filters.md``); the
checks are the documented ones:

* PRICE_FILTER: ``price >= minPrice``, ``price <= maxPrice``, ``price % tickSize == 0``
  (each part disabled when 0); LIMIT orders only (MARKET orders have no price).
* LOT_SIZE: ``minQty <= quantity <= maxQty`` and ``quantity % stepSize == 0``; every order.
* MARKET_LOT_SIZE: the same for MARKET orders (a 0 step or max disables that part).
* NOTIONAL: ``minNotional <= price * quantity <= maxNotional``; for MARKET orders only when
  ``applyMinToMarket`` / ``applyMaxToMarket``, using the current market price (Binance uses the
  average over ``avgPriceMins``; the fake uses the last price, which is what ``avgPriceMins: 0``
  means on Binance).
* MIN_NOTIONAL (the older filter some symbols still show) when ``legacy_min_notional`` is set.
* MAX_NUM_ORDERS: open orders per account and symbol.
* PERCENT_PRICE_BY_SIDE (when ``percent_price_by_side`` is set, as on Binance's BTCUSDT): a LIMIT
  SELL's price within ``[askMultiplierDown, askMultiplierUp] x`` the average price, a BUY's within
  the bid multipliers; the fake's average price is the market price (``avgPriceMins: 0``).

The two built-in symbols copy real ones: XRPETH (whole XRP lots, 8-decimal ETH prices, as when
the bundled 2019 trades were made) and BTCUSDT (0.00001 BTC steps, 0.01 USDT ticks, 5 USDT
minimum notional).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import errors

EIGHT_PLACES = Decimal("0.00000001")
ORDER_TYPES = (
    "LIMIT",
    "LIMIT_MAKER",
    "MARKET",
    "STOP_LOSS",
    "STOP_LOSS_LIMIT",
    "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
)
# What the fake can execute; a symbol lists these in exchangeInfo.orderTypes.
SUPPORTED_ORDER_TYPES = ("LIMIT", "LIMIT_MAKER", "MARKET")
STP_MODES = ("NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT")


def fmt(value: Decimal | int | str, places: int = 8) -> str:
    """A decimal as Binance writes it in responses: fixed point with ``places`` decimals."""
    number = Decimal(value)
    return format(number.quantize(Decimal(1).scaleb(-places)), "f")


def _d(value: str | Decimal | int) -> Decimal:
    return Decimal(str(value))


@dataclass
class SymbolSpec:
    """One spot symbol and its filters. Decimals may be given as strings."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Decimal = Decimal("0.00000001")
    min_price: Decimal = Decimal("0.00000001")
    max_price: Decimal = Decimal("1000.00000000")
    step_size: Decimal = Decimal("1")
    min_qty: Decimal = Decimal("1")
    max_qty: Decimal = Decimal("90000000")
    market_min_qty: Decimal = Decimal("0")
    market_max_qty: Decimal = Decimal("1000000")
    market_step_size: Decimal = Decimal("0")
    min_notional: Decimal = Decimal("0.01")
    max_notional: Decimal = Decimal("9000000")
    apply_min_to_market: bool = True
    apply_max_to_market: bool = False
    avg_price_mins: int = 5
    legacy_min_notional: bool = False
    max_num_orders: int = 200
    base_asset_precision: int = 8
    quote_asset_precision: int = 8
    status: str = "TRADING"
    order_types: tuple[str, ...] = SUPPORTED_ORDER_TYPES
    default_stp_mode: str = "EXPIRE_MAKER"
    allowed_stp_modes: tuple[str, ...] = STP_MODES
    extra_filters: list[dict[str, Any]] = field(default_factory=list)
    # (bidMultiplierUp, bidMultiplierDown, askMultiplierUp, askMultiplierDown), Binance's order
    percent_price_by_side: tuple[str, str, str, str] | None = None

    def __post_init__(self) -> None:
        self.symbol = self.symbol.upper()
        for name in (
            "tick_size",
            "min_price",
            "max_price",
            "step_size",
            "min_qty",
            "max_qty",
            "market_min_qty",
            "market_max_qty",
            "market_step_size",
            "min_notional",
            "max_notional",
        ):
            setattr(self, name, _d(getattr(self, name)))

    # --- exchangeInfo ---------------------------------------------------------------------

    def filters(self) -> list[dict[str, Any]]:
        """The symbol's ``filters`` array, in the order Binance lists them."""
        notional: dict[str, Any]
        if self.legacy_min_notional:
            notional = {
                "filterType": "MIN_NOTIONAL",
                "minNotional": fmt(self.min_notional),
                "applyToMarket": self.apply_min_to_market,
                "avgPriceMins": self.avg_price_mins,
            }
        else:
            notional = {
                "filterType": "NOTIONAL",
                "minNotional": fmt(self.min_notional),
                "applyMinToMarket": self.apply_min_to_market,
                "maxNotional": fmt(self.max_notional),
                "applyMaxToMarket": self.apply_max_to_market,
                "avgPriceMins": self.avg_price_mins,
            }
        return [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": fmt(self.min_price),
                "maxPrice": fmt(self.max_price),
                "tickSize": fmt(self.tick_size),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": fmt(self.min_qty),
                "maxQty": fmt(self.max_qty),
                "stepSize": fmt(self.step_size),
            },
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": fmt(self.market_min_qty),
                "maxQty": fmt(self.market_max_qty),
                "stepSize": fmt(self.market_step_size),
            },
            {
                "filterType": "TRAILING_DELTA",
                "minTrailingAboveDelta": 10,
                "maxTrailingAboveDelta": 2000,
                "minTrailingBelowDelta": 10,
                "maxTrailingBelowDelta": 2000,
            },
            notional,
            *self._percent_price_filter(),
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": self.max_num_orders},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
            *self.extra_filters,
        ]

    def _percent_price_filter(self) -> list[dict[str, Any]]:
        if self.percent_price_by_side is None:
            return []
        bid_up, bid_down, ask_up, ask_down = self.percent_price_by_side
        return [{
            "filterType": "PERCENT_PRICE_BY_SIDE",
            "bidMultiplierUp": bid_up,
            "bidMultiplierDown": bid_down,
            "askMultiplierUp": ask_up,
            "askMultiplierDown": ask_down,
            "avgPriceMins": self.avg_price_mins,
        }]

    def exchange_info(self) -> dict[str, Any]:
        """The symbol's entry in ``exchangeInfo.symbols``."""
        return {
            "symbol": self.symbol,
            "status": self.status,
            "baseAsset": self.base_asset,
            "baseAssetPrecision": self.base_asset_precision,
            "quoteAsset": self.quote_asset,
            "quotePrecision": self.quote_asset_precision,
            "quoteAssetPrecision": self.quote_asset_precision,
            "baseCommissionPrecision": self.base_asset_precision,
            "quoteCommissionPrecision": self.quote_asset_precision,
            "orderTypes": list(self.order_types),
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "amendAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": self.filters(),
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": self.default_stp_mode,
            "allowedSelfTradePreventionModes": list(self.allowed_stp_modes),
        }

    # --- order entry checks -----------------------------------------------------------------

    def check_price(self, price: Decimal) -> None:
        """PRICE_FILTER for a LIMIT price; raises -1013 ``Filter failure: PRICE_FILTER``."""
        if (
            (self.min_price and price < self.min_price)
            or (self.max_price and price > self.max_price)
            or (self.tick_size and price % self.tick_size != 0)
        ):
            raise errors.filter_failure("PRICE_FILTER")

    def check_percent_price(self, side: str, price: Decimal, average: Decimal) -> None:
        """PERCENT_PRICE_BY_SIDE for a LIMIT price against the average price; -1013 on failure."""
        if self.percent_price_by_side is None:
            return
        bid_up, bid_down, ask_up, ask_down = (Decimal(v) for v in self.percent_price_by_side)
        down, up = (ask_down, ask_up) if side == "SELL" else (bid_down, bid_up)
        if not average * down <= price <= average * up:
            raise errors.filter_failure("PERCENT_PRICE_BY_SIDE")

    def check_quantity(self, quantity: Decimal, market: bool) -> None:
        """LOT_SIZE (every order), then MARKET_LOT_SIZE (MARKET orders)."""
        if not _within_lot(quantity, self.min_qty, self.max_qty, self.step_size):
            raise errors.filter_failure("LOT_SIZE")
        if market and not _within_lot(quantity, self.market_min_qty, self.market_max_qty, self.market_step_size):
            raise errors.filter_failure("MARKET_LOT_SIZE")

    def check_notional(self, notional: Decimal, market: bool) -> None:
        """NOTIONAL (or the legacy MIN_NOTIONAL) for ``price * quantity``."""
        name = "MIN_NOTIONAL" if self.legacy_min_notional else "NOTIONAL"
        check_min = self.apply_min_to_market or not market
        check_max = not self.legacy_min_notional and (self.apply_max_to_market or not market)
        if check_min and notional < self.min_notional:
            raise errors.filter_failure(name)
        if check_max and self.max_notional and notional > self.max_notional:
            raise errors.filter_failure(name)

    def round_down_to_step(self, quantity: Decimal) -> Decimal:
        """The largest LOT_SIZE-valid quantity not above ``quantity`` (for quoteOrderQty)."""
        if not self.step_size:
            return quantity.quantize(EIGHT_PLACES)
        return (quantity // self.step_size) * self.step_size


def _within_lot(quantity: Decimal, low: Decimal, high: Decimal, step: Decimal) -> bool:
    if quantity < low:
        return False
    if high and quantity > high:
        return False
    return not (step and quantity % step != 0)


def xrpeth() -> SymbolSpec:
    """XRPETH as Binance listed it when the bundled trades were made (2019-10)."""
    return SymbolSpec(
        symbol="XRPETH",
        base_asset="XRP",
        quote_asset="ETH",
        tick_size=Decimal("0.00000001"),
        min_price=Decimal("0.00000001"),
        max_price=Decimal("1000.00000000"),
        step_size=Decimal("1.00000000"),
        min_qty=Decimal("1.00000000"),
        max_qty=Decimal("90000000.00000000"),
        market_min_qty=Decimal("0.00000000"),
        market_max_qty=Decimal("1000000.00000000"),
        market_step_size=Decimal("0.00000000"),
        min_notional=Decimal("0.01000000"),
        max_notional=Decimal("9000000.00000000"),
    )


def btcusdt() -> SymbolSpec:
    """A BTCUSDT like Binance's: 0.00001 BTC lots, 0.01 USDT ticks, 5 USDT minimum notional."""
    return SymbolSpec(
        symbol="BTCUSDT",
        base_asset="BTC",
        quote_asset="USDT",
        tick_size=Decimal("0.01000000"),
        min_price=Decimal("0.01000000"),
        max_price=Decimal("1000000.00000000"),
        step_size=Decimal("0.00001000"),
        min_qty=Decimal("0.00001000"),
        max_qty=Decimal("9000.00000000"),
        market_min_qty=Decimal("0.00000000"),
        market_max_qty=Decimal("100.00000000"),
        market_step_size=Decimal("0.00000000"),
        min_notional=Decimal("5.00000000"),
        max_notional=Decimal("9000000.00000000"),
        percent_price_by_side=("5", "0.2", "5", "0.2"),
    )


def default_symbols() -> list[SymbolSpec]:
    return [xrpeth(), btcusdt()]

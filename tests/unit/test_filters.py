"""Binance symbol filters, from exchangeInfo entries shaped exactly as Binance returns them."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from trailingstop.core.filters import LotSize, SymbolFilters, filters_by_symbol

D = Decimal

# GET /api/v3/exchangeInfo?symbol=BTCUSDT (2024), trimmed of nothing that matters to MARKET orders.
BTCUSDT: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "status": "TRADING",
    "baseAsset": "BTC",
    "baseAssetPrecision": 8,
    "quoteAsset": "USDT",
    "quotePrecision": 8,
    "quoteAssetPrecision": 8,
    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
    "icebergAllowed": True,
    "ocoAllowed": True,
    "isSpotTradingAllowed": True,
    "isMarginTradingAllowed": True,
    "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
         "tickSize": "0.01000000"},
        {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
        {"filterType": "ICEBERG_PARTS", "limit": 10},
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "76.73938033",
         "stepSize": "0.00000000"},
        {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
         "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
        {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
         "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
        {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
         "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
        {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
        {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
    ],
    "permissions": [],
    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
}

# XRPETH as listed in October 2019 (whole XRP, the older MIN_NOTIONAL filter).
XRPETH: dict[str, Any] = {
    "symbol": "XRPETH",
    "status": "TRADING",
    "baseAsset": "XRP",
    "quoteAsset": "ETH",
    "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "100000.00000000",
         "tickSize": "0.00000001"},
        {"filterType": "PERCENT_PRICE", "multiplierUp": "5", "multiplierDown": "0.2", "avgPriceMins": 5},
        {"filterType": "LOT_SIZE", "minQty": "1.00000000", "maxQty": "90000000.00000000", "stepSize": "1.00000000"},
        {"filterType": "MIN_NOTIONAL", "minNotional": "0.01000000", "applyToMarket": True, "avgPriceMins": 5},
        {"filterType": "ICEBERG_PARTS", "limit": 10},
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "5066373.79097222",
         "stepSize": "0.00000000"},
        {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
    ],
}


@pytest.fixture
def btc() -> SymbolFilters:
    return SymbolFilters.from_exchange_info(BTCUSDT)


@pytest.fixture
def xrp() -> SymbolFilters:
    return SymbolFilters.from_exchange_info(XRPETH)


def test_parsing_keeps_only_market_filters(btc: SymbolFilters) -> None:
    assert btc.symbol == "BTCUSDT" and btc.status == "TRADING"
    assert btc.lots == (
        LotSize("LOT_SIZE", D("0.00001"), D("9000"), D("0.00001")),
        LotSize("MARKET_LOT_SIZE", D("0"), D("76.73938033"), D("0")),
    )
    assert btc.min_notional == D("5")
    assert btc.max_notional is None  # applyMaxToMarket is false


def test_filters_by_symbol() -> None:
    table = filters_by_symbol({"timezone": "UTC", "serverTime": 1, "rateLimits": [], "symbols": [BTCUSDT, XRPETH]})
    assert sorted(table) == ["BTCUSDT", "XRPETH"]
    assert table["XRPETH"].min_notional == D("0.01")
    assert filters_by_symbol({}) == {}


@pytest.mark.parametrize("qty", ["0.001", "0.00001", "76.7", "76.73938", "1.23456"])
def test_valid_quantities(btc: SymbolFilters, qty: str) -> None:
    assert btc.quantity_problem(D(qty)) is None


@pytest.mark.parametrize(
    ("qty", "problem"),
    [
        ("0.000001", "quantity 0.000001 is below LOT_SIZE minQty 0.00001"),
        ("0", "quantity 0 is below LOT_SIZE minQty 0.00001"),
        ("0.000015", "quantity 0.000015 is not a multiple of LOT_SIZE stepSize 0.00001 (nearest below: 0.00001)"),
        ("1.234567", "quantity 1.234567 is not a multiple of LOT_SIZE stepSize 0.00001 (nearest below: 1.23456)"),
        ("9000.00001", "quantity 9000.00001 is above LOT_SIZE maxQty 9000"),
        # Fine for LOT_SIZE, too large for a MARKET order.
        ("100", "quantity 100 is above MARKET_LOT_SIZE maxQty 76.73938033"),
    ],
)
def test_lot_size_and_market_lot_size(btc: SymbolFilters, qty: str, problem: str) -> None:
    assert btc.quantity_problem(D(qty)) == problem


def test_step_is_counted_from_min_qty() -> None:
    # Binance: (quantity - minQty) % stepSize == 0.
    info = copy.deepcopy(BTCUSDT)
    info["filters"][1] = {"filterType": "LOT_SIZE", "minQty": "0.00150000", "maxQty": "100.00000000",
                          "stepSize": "0.00100000"}
    filters = SymbolFilters.from_exchange_info(info)
    assert filters.quantity_problem(D("0.0025")) is None
    assert filters.quantity_problem(D("0.003")) == (
        "quantity 0.003 is not a multiple of LOT_SIZE stepSize 0.001 (nearest below: 0.0025)"
    )
    assert filters.floor_quantity(D("0.0039")) == D("0.0035")


def test_whole_units(xrp: SymbolFilters) -> None:
    assert xrp.quantity_problem(D("100")) is None
    assert xrp.quantity_problem(D("100.5")) == (
        "quantity 100.5 is not a multiple of LOT_SIZE stepSize 1 (nearest below: 100)"
    )
    assert xrp.quantity_problem(D("0.5")) == "quantity 0.5 is below LOT_SIZE minQty 1"
    assert xrp.floor_quantity(D("100.99")) == D("100")


def test_floor_to_step(btc: SymbolFilters) -> None:
    assert btc.floor_quantity(D("0.0012345")) == D("0.00123")
    assert btc.floor_quantity(D("0.00123")) == D("0.00123")
    assert btc.quantity_problem(btc.floor_quantity(D("1.999999999"))) is None


def test_notional(btc: SymbolFilters) -> None:
    assert btc.notional_problem(D("0.0001"), D("50000")) is None  # exactly 5: allowed
    assert btc.notional_problem(D("0.00009"), D("50000")) == (
        "order value 4.5 (quantity 0.00009 x price 50000) is below minNotional 5"
    )
    assert btc.notional_problem(D("0.00001"), D("60000.10")) == (
        "order value 0.600001 (quantity 0.00001 x price 60000.1) is below minNotional 5"
    )
    # maxNotional is not applied to MARKET orders here.
    assert btc.notional_problem(D("9000"), D("100000")) is None


def test_max_notional_when_applied_to_market() -> None:
    info = copy.deepcopy(BTCUSDT)
    info["filters"][6]["applyMaxToMarket"] = True
    filters = SymbolFilters.from_exchange_info(info)
    assert filters.max_notional == D("9000000")
    assert filters.notional_problem(D("100"), D("100000")) == "order value 10000000 is above maxNotional 9000000"


def test_legacy_min_notional(xrp: SymbolFilters) -> None:
    assert xrp.notional_problem(D("1"), D("0.00141342")) == (
        "order value 0.00141342 (quantity 1 x price 0.00141342) is below minNotional 0.01"
    )
    assert xrp.notional_problem(D("100"), D("0.00141342")) is None
    info = copy.deepcopy(XRPETH)
    info["filters"][3]["applyToMarket"] = False
    assert SymbolFilters.from_exchange_info(info).notional_problem(D("1"), D("0.00141342")) is None


def test_notional_not_applied_to_market() -> None:
    info = copy.deepcopy(BTCUSDT)
    info["filters"][6]["applyMinToMarket"] = False
    assert SymbolFilters.from_exchange_info(info).notional_problem(D("0.00001"), D("1")) is None


def test_symbol_not_trading() -> None:
    info = {**BTCUSDT, "status": "BREAK"}
    assert SymbolFilters.from_exchange_info(info).quantity_problem(D("0.001")) == (
        "BTCUSDT is not trading (status BREAK)"
    )


def test_symbol_without_filters_accepts_anything() -> None:
    filters = SymbolFilters.from_exchange_info({"symbol": "NEWCOIN", "status": "TRADING", "filters": []})
    assert filters.quantity_problem(D("0.123456789")) is None
    assert filters.notional_problem(D("0.000001"), D("0.000001")) is None
    assert filters.floor_quantity(D("0.123456789")) == D("0.123456789")



def test_messages_never_use_exponent_notation(btc: SymbolFilters) -> None:
    # quantity "0.0000001" is a valid spec; the Invalid message reads "quantity 1E-7 is below ...".
    assert btc.quantity_problem(D("0.0000001")) == "quantity 0.0000001 is below LOT_SIZE minQty 0.00001"

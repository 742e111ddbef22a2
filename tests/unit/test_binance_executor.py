"""The executor's exchange rules against the fake Binance (python-binance over real HTTP)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from tests.fakebinance import DEFAULT_API_KEY, DEFAULT_API_SECRET, FakeBinance
from trailingstop.core.contracts import Phase, PlaceOrder, TrailingStopStatus, client_order_id
from trailingstop.core.lifecycle import apply_order_result, order_outcome
from trailingstop.exchange.binance import BinanceExecutor, BinanceSettings, connect_client

UID = "0b8c7f0e-5f6a-4a8e-9a49-2b1d2b1a9f00"


def order(quantity: str = "100", uid: str = UID) -> PlaceOrder:
    return PlaceOrder(client_order_id=client_order_id(uid), uid=uid, symbol="XRPETH", side="SELL",
                      quantity=Decimal(quantity), mode="Testnet", route="testnet-keys",
                      trigger_price=Decimal("0.0014"), triggered_at=0)


@pytest.fixture
async def executor(fake: FakeBinance) -> AsyncIterator[BinanceExecutor]:
    await fake.advance("XRPETH", 10)  # a market price to fill at
    settings = BinanceSettings(api_url=fake.api_url, stream_url=fake.stream_url,
                               api_key=DEFAULT_API_KEY, api_secret=DEFAULT_API_SECRET, request_timeout=1.0)
    client = await connect_client(settings)
    waits: list[int] = []
    yield BinanceExecutor(client, "testnet-keys", retry_delay=0.05, on_rate_limit=waits.append)
    await client.close_connection()


async def test_places_once_then_finds_the_order_by_client_order_id(
    executor: BinanceExecutor, fake: FakeBinance
) -> None:
    first = await executor.execute(order())
    again = await executor.execute(order())  # a redelivery
    assert (first.status, first.executed_qty) == ("FILLED", Decimal("100"))
    assert again.order_id == first.order_id
    assert (fake.order_count(first.client_order_id), fake.order_posts(first.client_order_id)) == (1, 1)


async def test_quantity_is_floored_to_the_step(executor: BinanceExecutor, fake: FakeBinance) -> None:
    result = await executor.execute(order("100.7"))
    assert result.executed_qty == Decimal("100")
    assert fake.orders(result.client_order_id)[0].orig_qty == Decimal("100")


async def test_exchange_rejection_keeps_binance_code_and_message(executor: BinanceExecutor) -> None:
    result = await executor.execute(order("0.4"))  # floors to 0: below LOT_SIZE minQty
    assert result.status == "REJECTED"
    assert result.error is not None and result.error.code == -1013
    assert result.error.message.startswith("Filter failure:")


async def test_rate_limit_waits_for_retry_after_and_never_earns_a_ban(
    executor: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.faults.rate_limit(1, retry_after=2)
    started = time.monotonic()
    result = await executor.execute(order())
    assert result.status == "FILLED"
    assert time.monotonic() - started >= 2.0, "Retry-After honoured"
    assert fake.requests().get("GET /api/v3/order", 0) >= 1
    assert fake.order_count(result.client_order_id) == 1


async def test_a_timeout_after_execution_is_looked_up_not_resent(executor: BinanceExecutor, fake: FakeBinance) -> None:
    fake.faults.delay(3, count=1, paths=["/api/v3/order"], after_handling=True)  # longer than the 1 s timeout
    result = await executor.execute(order())
    assert result.status == "FILLED"
    assert (fake.order_count(result.client_order_id), fake.order_posts(result.client_order_id)) == (1, 1)


async def test_settings_never_show_the_keys() -> None:
    settings = BinanceSettings(api_key="my-key-123456", api_secret="my-secret-123456")
    assert "my-key" not in repr(settings) and "my-secret" not in repr(settings)
    assert BinanceSettings.from_env("Testnet", {}).api_url == "https://testnet.binance.vision/api"
    assert BinanceSettings.from_env("Live", {"TRAILINGSTOP_BINANCE_API_URL": "http://x/api"}).api_url == "http://x/api"


# --- Limit execution: one LIMIT IOC order at the user's bound (DESIGN §4 "Execution") -------------

LIMIT_UID = "5c1d7f0e-5f6a-4a8e-9a49-2b1d2b1a9f01"


def limit_order(price: str, quantity: str = "0.5", side: str = "SELL", symbol: str = "BTCUSDT",
                trigger: str = "65000", uid: str = LIMIT_UID) -> PlaceOrder:
    return PlaceOrder(client_order_id=client_order_id(uid), uid=uid, symbol=symbol, side=side,  # type: ignore[arg-type]
                      quantity=Decimal(quantity), type="LIMIT", price=Decimal(price), time_in_force="IOC",
                      mode="Testnet", route="testnet-keys", trigger_price=Decimal(trigger), triggered_at=0)


async def test_a_limit_order_that_crosses_fills_and_is_placed_once(executor: BinanceExecutor,
                                                                    fake: FakeBinance) -> None:
    fake.set_price("BTCUSDT", "65000")
    first = await executor.execute(limit_order("64675"))
    again = await executor.execute(limit_order("64675"))  # a redelivery: looked up, not placed again
    assert (first.status, first.type, first.price, first.executed_qty) == (
        "FILLED", "LIMIT", Decimal("64675"), Decimal("0.5"))
    assert again.order_id == first.order_id
    (placed,) = fake.orders(first.client_order_id)
    assert (placed.type, placed.time_in_force, placed.price) == ("LIMIT", "IOC", Decimal("64675"))
    assert fake.order_posts(first.client_order_id) == 1
    assert order_outcome(first)[0] == Phase.FILLED


async def test_a_limit_price_off_the_tick_is_rounded_the_safe_way(executor: BinanceExecutor,
                                                                  fake: FakeBinance) -> None:
    # BTCUSDT ticks are 0.01: a SELL's bound 64675.004 goes up to 64675.01, a BUY's down.
    fake.set_price("BTCUSDT", "65000")
    sell = await executor.execute(limit_order("64675.004"))
    buy = await executor.execute(limit_order("65325.009", side="BUY", uid="5c1d7f0e-5f6a-4a8e-9a49-2b1d2b1a9f02"))
    assert (sell.price, buy.price) == (Decimal("64675.01"), Decimal("65325"))
    assert (sell.status, buy.status) == ("FILLED", "FILLED")


async def test_an_ioc_limit_the_market_does_not_reach_ends_unfilled(executor: BinanceExecutor,
                                                                     fake: FakeBinance) -> None:
    fake.set_price("BTCUSDT", "64000")  # below the SELL's bound of 64675: nothing fills
    result = await executor.execute(limit_order("64675"))
    assert (result.status, result.executed_qty, result.orig_qty) == ("EXPIRED", Decimal("0"), Decimal("0.5"))
    phase, reason, message = order_outcome(result)
    assert (phase, reason) == (Phase.UNFILLED, "Unfilled")
    assert message == "LIMIT order expired (limit 64675) with nothing filled; no further order"
    assert fake.order_posts(result.client_order_id) == 1
    assert len(fake.orders(result.client_order_id)) == 1


async def test_a_thin_book_fills_part_and_the_rest_expires(executor: BinanceExecutor, fake: FakeBinance) -> None:
    fake.set_price("BTCUSDT", "65000")
    fake.set_book("BTCUSDT", bids=[["64990", "0.2"], ["64800", "0.1"], ["64600", "5"]])
    result = await executor.execute(limit_order("64675"))
    # 0.2 at 64990 + 0.1 at 64800 = 0.3 (quote 19478); 64600 is below the bound: the 0.2 left expires.
    assert (result.status, result.executed_qty, result.cummulative_quote_qty) == (
        "EXPIRED", Decimal("0.3"), Decimal("19478"))
    assert result.avg_price == Decimal("19478") / Decimal("0.3")
    phase, reason, message = order_outcome(result)
    assert (phase, reason) == (Phase.PARTIALLY_FILLED, "PartiallyFilled")
    assert "0.2 remaining; no further order" in message
    status = apply_order_result(TrailingStopStatus(phase=Phase.TRIGGERED), result, "2026-01-01T00:00:00Z")
    assert status.phase == Phase.PARTIALLY_FILLED
    assert status.order is not None
    assert (status.order.executed_qty, status.order.remaining_qty, status.order.orig_qty) == (
        Decimal("0.3"), Decimal("0.2"), Decimal("0.5"))
    assert fake.order_posts(result.client_order_id) == 1  # no second order for the rest


async def test_a_limit_outside_percent_price_by_side_is_rejected_with_binances_code(
    executor: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.set_price("BTCUSDT", "65000")  # a SELL may not be priced below 0.2 x 65000 = 13000
    result = await executor.execute(limit_order("12999.99"))
    assert result.status == "REJECTED"
    assert result.error is not None
    assert (result.error.code, result.error.message) == (-1013, "Filter failure: PERCENT_PRICE_BY_SIDE")
    assert order_outcome(result)[0] == Phase.REJECTED


async def test_a_limit_above_price_filter_max_is_rejected_with_binances_code(
    executor: BinanceExecutor, fake: FakeBinance
) -> None:
    # XRPETH's maxPrice is 1000 (the fake's; no PERCENT_PRICE_BY_SIDE on it): a BUY bound above it.
    result = await executor.execute(limit_order("1000.00000001", quantity="1", side="BUY", symbol="XRPETH",
                                                trigger="1000"))
    assert result.status == "REJECTED"
    assert result.error is not None
    assert (result.error.code, result.error.message) == (-1013, "Filter failure: PRICE_FILTER")

"""The executor's exchange rules against the fake Binance (python-binance over real HTTP)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from tests.fakebinance import DEFAULT_API_KEY, DEFAULT_API_SECRET, FakeBinance
from trailingstop.core.contracts import PlaceOrder, client_order_id
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

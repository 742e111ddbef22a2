"""The fake Binance (tests/fakebinance) proven with the real python-binance client.

Each test drives the fake through python-binance exactly as the workers do (``AsyncClient``
with ``API_URL`` overridden, ``BinanceSocketManager`` with ``STREAM_URL`` overridden) and asserts
what Binance Spot would answer: payload shapes, error codes and messages, HTTP statuses and
headers, and the tape's visibility rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import yarl
from binance import AsyncClient
from binance.exceptions import BinanceAPIException
from binance.ws.reconnecting_websocket import ReconnectingWebsocket

from tests.fakebinance import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    Account,
    FakeBinance,
    SymbolSpec,
    ThreadedFakeBinance,
    auth,
    errors,
)
from tests.fakebinance.clients import async_client_class, client_class, socket_manager
from trailingstop.tradefiles import demo_trades_path, load_trades

pytestmark = pytest.mark.fakebinance  # a real server on loopback: not a unit test

SYMBOL = "XRPETH"
TRADES = load_trades(demo_trades_path())
IDS = [t.trade_id for t in TRADES]
REPO = Path(__file__).resolve().parents[2]
WS_EVENT_KEYS = {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"}


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(trades={SYMBOL: TRADES}) as running:
        yield running


@pytest.fixture
async def client(fake: FakeBinance) -> AsyncIterator[AsyncClient]:
    created = await async_client_class(fake.api_url).create(DEFAULT_API_KEY, DEFAULT_API_SECRET)
    yield created
    await created.close_connection()


def quick(sock: ReconnectingWebsocket) -> ReconnectingWebsocket:
    """Shorten python-binance's client-side waits (read timeout, reconnect backoff) for tests."""
    sock.TIMEOUT = 0.2
    sock._get_reconnect_wait = lambda attempts: 0.15
    return sock


@contextlib.asynccontextmanager
async def agg_socket(client: AsyncClient, fake: FakeBinance) -> AsyncIterator[ReconnectingWebsocket]:
    sock = quick(socket_manager(client, fake.stream_url).aggtrade_socket(SYMBOL))
    async with sock:
        await fake.wait_for_stream_connections(1)
        yield sock


async def recv(sock: ReconnectingWebsocket, timeout: float = 3.0) -> dict[str, Any]:
    return await asyncio.wait_for(sock.recv(), timeout)


async def recv_trade(sock: ReconnectingWebsocket, timeout: float = 3.0) -> dict[str, Any]:
    """The next aggTrade event, skipping python-binance's connection-error notices."""
    deadline = time.monotonic() + timeout
    while True:
        event = await recv(sock, max(0.01, deadline - time.monotonic()))
        if event.get("e") == "aggTrade":
            return event


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def api_error(call: Any) -> BinanceAPIException:
    with pytest.raises(BinanceAPIException) as caught:
        await call
    return caught.value


async def raw_request(
    fake: FakeBinance,
    method: str,
    path: str,
    params: dict[str, Any],
    *,
    key: str | None = DEFAULT_API_KEY,
    secret: str | None = DEFAULT_API_SECRET,
) -> tuple[int, Any]:
    """A hand-signed request (query string), for what python-binance cannot send."""
    query = urlencode(params)
    if secret is not None:
        query += "&signature=" + auth.sign(secret, query)
    headers = {"X-MBX-APIKEY": key} if key is not None else {}
    url = yarl.URL(f"{fake.base_url}/api/v3/{path}?{query}", encoded=True)
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers) as r:
        return r.status, await r.json()


def filters_of(symbol_info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["filterType"]: f for f in symbol_info["filters"]}


# --- connecting, exchangeInfo ---------------------------------------------------------------


async def test_create_pings_and_reads_the_fake_servers_clock() -> None:
    async with FakeBinance(trades={SYMBOL: TRADES[:10]}, clock_offset_ms=30_000) as fake:
        created = await async_client_class(fake.api_url).create(DEFAULT_API_KEY, DEFAULT_API_SECRET)
        try:
            assert fake.request_count("GET /api/v3/ping") == 1
            assert fake.request_count("GET /api/v3/time") == 1
            # create() learns the server clock: signed requests then pass the recvWindow check.
            assert 29_000 < created.timestamp_offset < 31_000
            account = await created.get_account()
            assert account["accountType"] == "SPOT"
        finally:
            await created.close_connection()


async def test_exchange_info_has_binance_filters(client: AsyncClient) -> None:
    xrp = filters_of(await client.get_symbol_info("XRPETH"))
    assert xrp["LOT_SIZE"] == {
        "filterType": "LOT_SIZE",
        "minQty": "1.00000000",
        "maxQty": "90000000.00000000",
        "stepSize": "1.00000000",
    }
    assert xrp["PRICE_FILTER"]["tickSize"] == "0.00000001"
    assert xrp["NOTIONAL"]["minNotional"] == "0.01000000"
    assert xrp["NOTIONAL"]["applyMinToMarket"] is True
    assert set(xrp["MARKET_LOT_SIZE"]) == {"filterType", "minQty", "maxQty", "stepSize"}

    one = await client._get("exchangeInfo", data={"symbol": "BTCUSDT"})
    assert [s["symbol"] for s in one["symbols"]] == ["BTCUSDT"]
    btc = one["symbols"][0]
    assert (btc["baseAsset"], btc["quoteAsset"]) == ("BTC", "USDT")
    assert filters_of(btc)["LOT_SIZE"]["stepSize"] == "0.00001000"
    assert "MARKET" in btc["orderTypes"]

    error = await api_error(client._get("exchangeInfo", data={"symbol": "NOPE"}))
    assert (error.status_code, error.code, error.message) == (400, -1121, "Invalid symbol.")


async def test_symbols_and_filters_are_configurable() -> None:
    spec = SymbolSpec(
        "ABCUSDT", "ABC", "USDT", step_size=Decimal("0.1"), min_qty=Decimal("0.1"), legacy_min_notional=True
    )
    async with FakeBinance(symbols=[spec], trades={}) as fake:
        created = await async_client_class(fake.api_url).create()
        try:
            filters = filters_of(await created.get_symbol_info("ABCUSDT"))
        finally:
            await created.close_connection()
    assert filters["LOT_SIZE"]["stepSize"] == "0.10000000"
    assert set(filters["MIN_NOTIONAL"]) == {"filterType", "minNotional", "applyToMarket", "avgPriceMins"}
    assert "NOTIONAL" not in filters


# --- orders ------------------------------------------------------------------------------------


async def test_market_order_fills_at_the_last_trade_and_moves_balances(fake: FakeBinance, client: AsyncClient) -> None:
    trades = await fake.advance(SYMBOL, 10)
    last = trades[-1].price
    before = fake.balances()

    placed = await client.order_market_sell(symbol=SYMBOL, quantity="100", newClientOrderId="ts-sell-1")

    assert set(placed) == {
        "symbol", "orderId", "orderListId", "clientOrderId", "transactTime", "price", "origQty",
        "executedQty", "origQuoteOrderQty", "cummulativeQuoteQty", "status", "timeInForce", "type",
        "side", "workingTime", "selfTradePreventionMode", "fills",
    }  # fmt: skip
    assert placed["status"] == "FILLED"
    assert (placed["type"], placed["side"], placed["clientOrderId"]) == ("MARKET", "SELL", "ts-sell-1")
    assert placed["executedQty"] == "100.00000000"
    quote = (last * 100).quantize(Decimal("0.00000001"))
    assert Decimal(placed["cummulativeQuoteQty"]) == quote
    [fill] = placed["fills"]
    assert Decimal(fill["price"]) == last
    assert fill["commissionAsset"] == "ETH"
    commission = Decimal(fill["commission"])
    assert commission == (quote * Decimal("0.001")).quantize(Decimal("0.00000001"), rounding="ROUND_UP")

    after = fake.balances()
    assert after["XRP"]["free"] == before["XRP"]["free"] - 100
    assert after["ETH"]["free"] == before["ETH"]["free"] + quote - commission
    wallet = {b["asset"]: b for b in (await client.get_account())["balances"]}
    assert Decimal(wallet["ETH"]["free"]) == after["ETH"]["free"]

    queried = await client.get_order(symbol=SYMBOL, origClientOrderId="ts-sell-1")
    assert queried["orderId"] == placed["orderId"]
    assert queried["status"] == "FILLED"
    assert {"time", "updateTime", "isWorking", "stopPrice", "icebergQty"} <= set(queried)
    assert fake.order_count("ts-sell-1") == 1

    error = await api_error(client.get_order(symbol=SYMBOL, origClientOrderId="never-placed"))
    assert (error.status_code, error.code, error.message) == (400, -2013, "Order does not exist.")


async def test_response_types_and_price_set_by_the_test(fake: FakeBinance, client: AsyncClient) -> None:
    fake.set_price("BTCUSDT", "50000.00")
    ack = await client.order_market_buy(symbol="BTCUSDT", quantity="0.00100", newOrderRespType="ACK")
    assert set(ack) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    assert ack["orderListId"] == -1
    result = await client.order_market_buy(symbol="BTCUSDT", quantity="0.00100", newOrderRespType="RESULT")
    assert "fills" not in result
    assert result["cummulativeQuoteQty"] == "50.00000000"
    by_quote = await client.order_market_buy(symbol="BTCUSDT", quoteOrderQty="100.5")
    assert (by_quote["origQuoteOrderQty"], by_quote["executedQty"]) == ("100.50000000", "0.00201000")
    assert by_quote["cummulativeQuoteQty"] == "100.50000000"
    # Generated client order ids look like Binance's (python-binance also sends its own).
    assert all(len(o.client_order_id) <= 36 for o in fake.orders())
    bought = 2 * (Decimal("0.001") - Decimal("0.000001")) + Decimal("0.00201") - Decimal("0.00000201")
    assert fake.balances()["BTC"]["free"] == 1 + bought


async def test_market_order_with_no_market_price_expires(client: AsyncClient) -> None:
    placed = await client.order_market_buy(symbol="BTCUSDT", quantity="0.00100")
    assert (placed["status"], placed["executedQty"], placed["fills"]) == ("EXPIRED", "0.00000000", [])


async def test_filter_failures_are_1013(fake: FakeBinance, client: AsyncClient) -> None:
    await fake.advance(SYMBOL, 1)  # price ~0.0014 ETH per XRP
    fake.set_price("BTCUSDT", "50000.00")
    cases = [
        (client.order_market_sell(symbol=SYMBOL, quantity="1.5"), "Filter failure: LOT_SIZE"),
        (client.order_market_sell(symbol=SYMBOL, quantity="2"), "Filter failure: NOTIONAL"),
        (client.order_market_sell(symbol=SYMBOL, quantity="1000001"), "Filter failure: MARKET_LOT_SIZE"),
        (client.order_market_buy(symbol="BTCUSDT", quantity="0.000015"), "Filter failure: LOT_SIZE"),
        (client.order_market_buy(symbol="BTCUSDT", quantity="0.00001"), "Filter failure: NOTIONAL"),
        (
            client.order_limit_buy(symbol="BTCUSDT", quantity="0.001", price="40000.005"),
            "Filter failure: PRICE_FILTER",
        ),
    ]
    for call, message in cases:
        error = await api_error(call)
        assert (error.status_code, error.code, error.message) == (400, -1013, message)
    assert fake.order_count() == 0


async def test_parameter_errors(fake: FakeBinance, client: AsyncClient) -> None:
    await fake.advance(SYMBOL, 1)
    bad_id = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="10", newClientOrderId="bad.id"))
    assert (bad_id.code, bad_id.message) == (
        -1100,
        "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[a-zA-Z0-9-_]{1,36}$'.",
    )
    too_long = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="10", newClientOrderId="x" * 37))
    assert too_long.code == -1100
    empty = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="10", newClientOrderId=""))
    assert (empty.code, empty.message) == (-1118, "New client order ID was empty.")
    no_qty = await api_error(client.order_market_sell(symbol=SYMBOL))
    assert (no_qty.code, no_qty.message) == (
        -1102,
        "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!",
    )
    tif = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="10", timeInForce="GTC"))
    assert (tif.code, tif.message) == (-1106, "Parameter 'timeInForce' sent when not required.")
    unknown = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="10", colour="blue"))
    assert (unknown.code, unknown.message) == (
        -1104,
        "Not all sent parameters were read; read '8' parameter(s) but was sent '9'.",
    )
    malformed = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="ten"))
    assert malformed.code == -1100 and "parameter 'quantity'" in malformed.message
    assert (
        await api_error(client.create_order(symbol=SYMBOL, side="HOLD", type="MARKET", quantity="10"))
    ).code == -1117
    assert (
        await api_error(client.create_order(symbol=SYMBOL, side="SELL", type="ICEBERG", quantity="10"))
    ).code == -1116
    assert (await api_error(client.order_market_sell(symbol="DOGEXRP", quantity="10"))).code == -1121
    stop = await api_error(
        client.create_order(symbol=SYMBOL, side="SELL", type="STOP_LOSS", quantity="10", stopPrice="0.001")
    )
    assert (stop.code, stop.message) == (-2010, "Stop loss orders are not supported for this symbol.")
    assert fake.order_count() == 0


async def test_insufficient_balance_is_2010(fake: FakeBinance, client: AsyncClient) -> None:
    await fake.advance(SYMBOL, 1)
    error = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="100001"))
    assert (error.status_code, error.code, error.message) == (
        400,
        -2010,
        "Account has insufficient balance for requested action.",
    )
    assert fake.order_count() == 0


async def test_duplicate_client_order_id_while_open_but_reuse_after_fill(
    fake: FakeBinance, client: AsyncClient
) -> None:
    [trade] = await fake.advance(SYMBOL, 1)
    low = (trade.price / 2).quantize(Decimal("0.00000001"))

    resting = await client.order_limit_buy(symbol=SYMBOL, quantity="100", price=str(low), newClientOrderId="stop-1")
    assert resting["status"] == "NEW"
    assert fake.balances()["ETH"]["locked"] == low * 100

    duplicate = await api_error(client.order_market_buy(symbol=SYMBOL, quantity="100", newClientOrderId="stop-1"))
    assert (duplicate.status_code, duplicate.code, duplicate.message) == (400, -2010, "Duplicate order sent.")
    assert fake.order_count("stop-1") == 1

    fake.set_price(SYMBOL, low)  # the market comes down to the resting order: it fills
    filled = await client.get_order(symbol=SYMBOL, orderId=resting["orderId"])
    assert filled["status"] == "FILLED"
    assert fake.balances()["ETH"]["locked"] == 0

    # Binance accepts the same newClientOrderId again once the earlier order is filled.
    again = await client.order_market_sell(symbol=SYMBOL, quantity="100", newClientOrderId="stop-1")
    assert again["status"] == "FILLED"
    assert fake.order_count("stop-1") == 2
    assert fake.order_posts("stop-1") == 3
    latest = await client.get_order(symbol=SYMBOL, origClientOrderId="stop-1")
    assert latest["orderId"] == again["orderId"]


async def test_canceled_order_releases_funds_and_its_id(fake: FakeBinance, client: AsyncClient) -> None:
    [trade] = await fake.advance(SYMBOL, 1)
    high = (trade.price * 2).quantize(Decimal("0.00000001"))
    await client.order_limit_sell(symbol=SYMBOL, quantity="500", price=str(high), newClientOrderId="c-1")
    assert fake.balances()["XRP"]["locked"] == 500
    assert [o["clientOrderId"] for o in await client.get_open_orders(symbol=SYMBOL)] == ["c-1"]
    canceled = await client.cancel_order(symbol=SYMBOL, origClientOrderId="c-1")
    assert (canceled["status"], canceled["origClientOrderId"]) == ("CANCELED", "c-1")
    assert fake.balances()["XRP"] == {"free": Decimal("100000"), "locked": Decimal("0")}
    again = await api_error(client.cancel_order(symbol=SYMBOL, origClientOrderId="c-1"))
    assert (again.code, again.message) == (-2011, "Unknown order sent.")
    maker = await api_error(
        client.create_order(symbol=SYMBOL, side="SELL", type="LIMIT_MAKER", quantity="10", price=str(trade.price))
    )
    assert (maker.code, maker.message) == (-2010, "Order would immediately match and take.")
    assert (await client.order_market_sell(symbol=SYMBOL, quantity="10", newClientOrderId="c-1"))["status"] == "FILLED"


async def test_order_test_endpoint_validates_without_executing(fake: FakeBinance, client: AsyncClient) -> None:
    await fake.advance(SYMBOL, 1)
    assert await client.create_test_order(symbol=SYMBOL, side="SELL", type="MARKET", quantity="10") == {}
    error = await api_error(client.create_test_order(symbol=SYMBOL, side="SELL", type="MARKET", quantity="1.5"))
    assert error.code == -1013
    assert fake.order_count() == 0


# --- authentication ---------------------------------------------------------------------------


async def test_wrong_secret_is_1022(fake: FakeBinance) -> None:
    await fake.advance(SYMBOL, 1)
    wrong = await async_client_class(fake.api_url).create(DEFAULT_API_KEY, "not-the-secret")
    try:
        error = await api_error(wrong.order_market_sell(symbol=SYMBOL, quantity="10"))
        assert (error.status_code, error.code, error.message) == (
            400,
            -1022,
            "Signature for this request is not valid.",
        )
    finally:
        await wrong.close_connection()
    assert fake.order_count() == 0


async def test_timestamp_outside_recv_window_is_1021(fake: FakeBinance, client: AsyncClient) -> None:
    # python-binance sends recvWindow=10000: a timestamp 11 s old is stale.
    client.timestamp_offset -= 11_000
    stale = await api_error(client.get_account())
    assert (stale.status_code, stale.code, stale.message) == (
        400,
        -1021,
        "Timestamp for this request is outside of the recvWindow.",
    )
    client.timestamp_offset += 11_000 + 1_500
    ahead = await api_error(client.get_account())
    assert (ahead.code, ahead.message) == (-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
    client.timestamp_offset -= 1_500
    assert "balances" in await client.get_account()


async def test_key_and_signature_checks_of_signed_endpoints(fake: FakeBinance) -> None:
    now = fake.now_ms()
    no_signature = "Mandatory parameter 'signature' was not sent, was empty/null, or malformed."
    status, body = await raw_request(fake, "GET", "account", {"timestamp": now})
    assert status == 200 and body["accountType"] == "SPOT"
    cases: list[tuple[dict[str, Any], dict[str, Any], int, int, str]] = [
        ({"key": None}, {"timestamp": now}, 401, -2014, "API-key format invalid."),
        ({"key": "unknownKey"}, {"timestamp": now}, 401, -2015, "Invalid API-key, IP, or permissions for action."),
        ({"secret": None}, {"timestamp": now}, 400, -1102, no_signature),
        ({}, {}, 400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."),
        ({}, {"timestamp": now, "recvWindow": 60001}, 400, -1131, "recvWindow must be less than 60000"),
        ({}, {"timestamp": now - 6000}, 400, -1021, "Timestamp for this request is outside of the recvWindow."),
    ]  # fmt: skip
    for options, params, status, code, msg in cases:
        assert await raw_request(fake, "GET", "account", params, **options) == (status, {"code": code, "msg": msg})
    assert (await raw_request(fake, "GET", "account", {"timestamp": now - 6000, "recvWindow": 10000}))[0] == 200


def test_signatures_match_binance_documentation_examples() -> None:
    # HMAC examples from Binance's rest-api.md ("SIGNED Endpoint Examples for POST /api/v3/order").
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    body = (
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    )
    assert auth.sign(secret, body) == "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    query, rest = (
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC",
        "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559",
    )
    mixed = "0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77"
    payload, signature = auth.total_params(query, f"{rest}&signature={mixed.upper()}")
    assert payload == query + rest  # no "&" between query string and body
    assert signature == mixed.upper()
    assert auth.sign(secret, payload) == mixed
    account = Account("vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A", secret)
    auth.check_signature(account, query, f"{rest}&signature={mixed.upper()}")  # case-insensitive
    with pytest.raises(errors.BinanceError) as caught:
        auth.check_signature(account, query, f"{rest}&signature={mixed[:-1]}0")
    assert caught.value.code == -1022


# --- faults -------------------------------------------------------------------------------------


async def test_5xx_after_execution_leaves_exactly_one_order(fake: FakeBinance, client: AsyncClient) -> None:
    await fake.advance(SYMBOL, 1)
    fake.faults.fail_orders(1)
    error = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="100", newClientOrderId="uid-1"))
    assert (error.status_code, error.code) == (503, -1007)
    assert error.message == errors.MSG_TIMEOUT
    # Execution status unknown to the client, but the order exists: query, never resend.
    assert fake.order_count("uid-1") == 1
    found = await client.get_order(symbol=SYMBOL, origClientOrderId="uid-1")
    assert found["status"] == "FILLED"
    assert fake.balances()["XRP"]["free"] == 100000 - 100

    fake.faults.fail_orders(1, status=502, code=None, execute=False)  # a gateway page, not executed
    gateway = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="100", newClientOrderId="uid-2"))
    assert gateway.status_code == 502 and gateway.message.startswith("Invalid JSON error message")
    assert fake.order_count("uid-2") == 0
    assert (await client.order_market_sell(symbol=SYMBOL, quantity="100"))["status"] == "FILLED"


async def test_429_with_retry_after_then_418_when_hammering(fake: FakeBinance, client: AsyncClient) -> None:
    fake.faults.rate_limit(count=1, retry_after=7, ban_seconds=120)
    limited = await api_error(client.ping())
    assert (limited.status_code, limited.code) == (429, -1003)
    assert limited.response.headers["Retry-After"] == "7"
    banned = await api_error(client.ping())  # inside the Retry-After window
    assert (banned.status_code, banned.code) == (418, -1003)
    assert banned.response.headers["Retry-After"] == "120"
    assert "IP banned until" in banned.message
    assert (await api_error(client.get_server_time())).status_code == 418  # still banned
    fake.faults.clear()
    assert await client.ping() == {}


async def test_delayed_answer_times_out_the_client_but_the_order_executed(
    fake: FakeBinance, client: AsyncClient
) -> None:
    await fake.advance(SYMBOL, 1)
    client.REQUEST_TIMEOUT = 0.2
    fake.faults.delay(0.5, count=1, paths=["order"], after_handling=True)
    with pytest.raises(TimeoutError):
        await client.order_market_sell(symbol=SYMBOL, quantity="100", newClientOrderId="slow-1")
    assert fake.order_count("slow-1") == 1
    client.REQUEST_TIMEOUT = 10
    assert (await client.get_order(symbol=SYMBOL, origClientOrderId="slow-1"))["status"] == "FILLED"


async def test_admin_http_api_sets_faults_and_shows_orders(fake: FakeBinance, client: AsyncClient) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.admin_url}/advance", json={"symbol": SYMBOL, "n": 3}) as r:
            assert [t["a"] for t in (await r.json())["trades"]] == IDS[:3]
        async with http.post(f"{fake.admin_url}/faults", json={"fault": "fail_orders", "status": 500}) as r:
            assert r.status == 200
        error = await api_error(client.order_market_sell(symbol=SYMBOL, quantity="100", newClientOrderId="adm-1"))
        assert (error.status_code, error.code) == (500, -1007)
        async with http.get(f"{fake.admin_url}/orders", params={"clientOrderId": "adm-1"}) as r:
            [order] = await r.json()
        assert (order["status"], order["executedQty"]) == ("FILLED", "100.00000000")
        async with http.get(f"{fake.admin_url}/requests") as r:
            seen = await r.json()
        assert seen["requests"]["POST /api/v3/order"] == 1
        assert seen["orderPosts"] == {"adm-1": 1}
        async with http.post(f"{fake.admin_url}/faults", json={"fault": "nonsense"}) as r:
            assert r.status == 400
        async with http.post(f"{fake.admin_url}/advance", json={"symbol": "NOPE"}) as r:
            assert r.status == 400


# --- the tape over REST ---------------------------------------------------------------------------


async def test_agg_trades_shows_only_trades_that_happened(fake: FakeBinance, client: AsyncClient) -> None:
    assert await client.get_aggregate_trades(symbol=SYMBOL) == []
    await fake.advance(SYMBOL, 600)
    recent = await client.get_aggregate_trades(symbol=SYMBOL)
    assert [t["a"] for t in recent] == IDS[100:600]  # default limit 500, most recent
    assert recent[0] == {**TRADES[100].to_payload(), "T": recent[0]["T"]}
    page = await client.get_aggregate_trades(symbol=SYMBOL, fromId=IDS[0], limit=1000)
    assert [t["a"] for t in page] == IDS[:600]
    assert await client.get_aggregate_trades(symbol=SYMBOL, fromId=IDS[600]) == []
    vwap = sum(t.price * t.qty for t in TRADES[:600]) / sum(t.qty for t in TRADES[:600])
    avg = await client.get_avg_price(symbol=SYMBOL)
    assert (avg["mins"], avg["price"]) == (5, format(vwap.quantize(Decimal("0.00000001")), "f"))
    error = await api_error(client.get_aggregate_trades(symbol=SYMBOL, limit=1001))
    assert (error.code, error.message) == (-1130, "Data sent for parameter 'limit' is not valid.")


async def test_agg_trades_by_time_with_recorded_times() -> None:
    async with FakeBinance(trades={SYMBOL: TRADES}, happened=50, rebase_times=False) as fake:
        created = await async_client_class(fake.api_url).create()
        try:
            start, end = TRADES[10].time, TRADES[20].time
            got = await created.get_aggregate_trades(symbol=SYMBOL, startTime=start, endTime=end)
            assert [t["a"] for t in got] == [t.trade_id for t in TRADES[:50] if start <= t.time <= end]
            assert got[0]["T"] == TRADES[10].time
            error = await api_error(
                created.get_aggregate_trades(symbol=SYMBOL, startTime=start, endTime=start + 3_600_001)
            )
            assert error.code == -1127
            ticker = await created.get_symbol_ticker(symbol=SYMBOL)
            assert ticker == {"symbol": SYMBOL, "price": format(TRADES[49].price, "f")}
            # Recorded 2019 times are not within the last 5 minutes: avgPrice is the last price.
            assert (await created.get_avg_price(symbol=SYMBOL))["price"] == ticker["price"]
        finally:
            await created.close_connection()


async def test_free_running_tape_paces_trades() -> None:
    async with FakeBinance(trades={SYMBOL: TRADES}, speed=200) as fake:
        deadline = time.monotonic() + 3
        while fake.tape(SYMBOL).position < 20:
            assert time.monotonic() < deadline, "the tape did not run"
            await asyncio.sleep(0.02)
        fake.set_speed(0)
        await asyncio.sleep(0.02)
        stopped_at = fake.tape(SYMBOL).position
        await asyncio.sleep(0.1)
        assert fake.tape(SYMBOL).position == stopped_at
        assert [t.trade_id for t in fake.tape(SYMBOL).happened] == IDS[:stopped_at]


# --- the tape over WebSocket ----------------------------------------------------------------------


async def test_aggtrade_socket_yields_binance_events_in_tape_order(fake: FakeBinance, client: AsyncClient) -> None:
    await fake.advance(SYMBOL, 2)  # before anyone listens: never sent on the socket
    async with agg_socket(client, fake) as sock:
        happened = await fake.advance(SYMBOL, 5)
        events = [await recv_trade(sock) for _ in happened]
    assert [e["a"] for e in events] == IDS[2:7]
    for event, trade in zip(events, happened, strict=True):
        assert set(event) == WS_EVENT_KEYS
        assert (event["e"], event["s"]) == ("aggTrade", SYMBOL)
        assert event == trade.to_ws_event(SYMBOL, event_time=event["E"])
        assert isinstance(event["p"], str) and isinstance(event["q"], str)
        assert isinstance(event["T"], int) and isinstance(event["m"], bool)
        assert event["E"] >= event["T"]


async def test_several_clients_and_combined_streams(fake: FakeBinance, client: AsyncClient) -> None:
    manager = socket_manager(client, fake.stream_url)
    raw = quick(manager.aggtrade_socket(SYMBOL))
    combined = quick(manager.multiplex_socket(["xrpeth@aggTrade"]))
    async with raw, combined:
        await fake.wait_for_stream_connections(2)
        await fake.advance(SYMBOL, 3)
        plain = [await recv_trade(raw) for _ in range(3)]
        wrapped = [await recv(combined) for _ in range(3)]
    assert [e["a"] for e in plain] == IDS[:3]
    assert [w["stream"] for w in wrapped] == ["xrpeth@aggTrade"] * 3
    assert [w["data"] for w in wrapped] == plain


async def test_dropped_socket_then_rest_backfill_recovers_every_trade(fake: FakeBinance, client: AsyncClient) -> None:
    async with agg_socket(client, fake) as sock:
        await fake.advance(SYMBOL, 3)
        seen = [(await recv_trade(sock))["a"] for _ in range(3)]
        assert fake.drop_streams(refuse_seconds=0.3) == 1
        notice = await recv(sock)
        assert notice["e"] == "error"  # python-binance reports the lost connection
        await fake.wait_for_stream_connections(0)
        missed = await fake.advance(SYMBOL, 7)  # nobody connected: these still happen

        backfill = await client.get_aggregate_trades(symbol=SYMBOL, fromId=seen[-1] + 1)
        assert [t["a"] for t in backfill] == [t.trade_id for t in missed]
        assert seen + [t["a"] for t in backfill] == IDS[:10]  # no gap, no duplicate

        # The client reconnects once handshakes are accepted again, and the tape goes on.
        await fake.wait_for_stream_connections(1, timeout=5)
        assert fake.hub.refused >= 1
        await fake.advance(SYMBOL, 1)
        assert (await recv_trade(sock))["a"] == IDS[10]


async def test_drop_after_n_events_and_silent_sockets(fake: FakeBinance, client: AsyncClient) -> None:
    async with agg_socket(client, fake) as sock:
        fake.drop_streams(after_events=2)
        await fake.advance(SYMBOL, 5)
        assert [(await recv_trade(sock))["a"] for _ in range(2)] == IDS[:2]
        assert (await recv(sock))["e"] == "error"  # closed right after the second event

        await wait_until(lambda: fake.hub.connections_total == 2 and fake.stream_connections == 1)
        fake.silence_streams()
        silent = await fake.advance(SYMBOL, 3)
        with pytest.raises(TimeoutError):
            await recv_trade(sock, timeout=0.4)
        assert fake.stream_connections == 1  # open, just silent
        fake.resume_streams()
        await fake.advance(SYMBOL, 1)
        assert (await recv_trade(sock))["a"] == IDS[8]  # what happened while silent is lost
    backfill = await client.get_aggregate_trades(symbol=SYMBOL, fromId=silent[0].trade_id, limit=3)
    assert [t["a"] for t in backfill] == IDS[5:8]


# --- other ways to run it ---------------------------------------------------------------------------


def test_background_thread_serves_the_synchronous_client() -> None:
    with ThreadedFakeBinance(trades={SYMBOL: TRADES[:100]}) as threaded:
        sync_client = client_class(threaded.api_url)(DEFAULT_API_KEY, DEFAULT_API_SECRET)
        try:
            assert threaded.advance(SYMBOL, 5)[-1].trade_id == IDS[4]
            placed = sync_client.order_market_sell(symbol=SYMBOL, quantity="50", newClientOrderId="sync-1")
            assert placed["status"] == "FILLED"
            assert threaded.order_count("sync-1") == 1
            assert [t["a"] for t in sync_client.get_aggregate_trades(symbol=SYMBOL)] == IDS[:5]
        finally:
            sync_client.close_connection()


async def test_process_mode_prints_urls_and_answers() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakebinance", "--port", "0", "--happened", "5",
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        info = json.loads(line)
        assert info["api_url"].startswith("http://127.0.0.1:") and info["api_url"].endswith("/api")
        assert info["stream_url"] == f"ws://127.0.0.1:{info['port']}/"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{info['api_url']}/v3/ping") as r:
                assert (r.status, await r.json()) == (200, {})
            async with http.post(f"{info['admin_url']}/advance", json={"symbol": SYMBOL, "n": 2}) as r:
                assert [t["a"] for t in (await r.json())["trades"]] == IDS[5:7]
        created = await async_client_class(info["api_url"]).create(DEFAULT_API_KEY, DEFAULT_API_SECRET)
        try:
            assert [t["a"] for t in await created.get_aggregate_trades(symbol=SYMBOL)] == IDS[:7]
            assert (await created.order_market_sell(symbol=SYMBOL, quantity="100"))["status"] == "FILLED"
        finally:
            await created.close_connection()
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0

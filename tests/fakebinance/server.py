"""The REST API (``/api/v3/...``) and the routing of the whole fake (REST, streams, admin).

Endpoints (Binance Spot names, parameters and payloads):

=========================  =========  ===================================================
``GET  /api/v3/ping``       NONE       ``{}``
``GET  /api/v3/time``       NONE       ``{"serverTime": ms}``
``GET  /api/v3/exchangeInfo`` NONE     all symbols, or ``symbol=`` / ``symbols=["A","B"]``
``GET  /api/v3/ticker/price`` NONE     ``{"symbol", "price"}`` or a list of them
``GET  /api/v3/ticker/bookTicker`` NONE ``{"symbol", "bidPrice", "bidQty", "askPrice", "askQty"}`` or a list
``GET  /api/v3/aggTrades``  NONE       fromId / startTime / endTime / limit (500, max 1000)
``GET  /api/v3/avgPrice``   NONE       ``{"mins": 5, "price", "closeTime"}`` (5-minute VWAP)
``GET  /api/v3/account``    USER_DATA  balances and commission rates
``POST /api/v3/order``      TRADE      MARKET / LIMIT / LIMIT_MAKER; ACK / RESULT / FULL
``POST /api/v3/order/test`` TRADE      validates like ``order``, executes nothing: ``{}``
``GET  /api/v3/order``      USER_DATA  by orderId or origClientOrderId
``DELETE /api/v3/order``    TRADE      cancel an open order
``GET  /api/v3/openOrders`` USER_DATA  open orders (one symbol or all)
``GET  /api/v3/allOrders``  USER_DATA  every order of a symbol
=========================  =========  ===================================================

Every REST answer carries ``X-MBX-USED-WEIGHT-1M`` (weights are approximate); order answers carry
``X-MBX-ORDER-COUNT-10S`` / ``-1D``. Errors are ``{"code", "msg"}`` with Binance's HTTP status.
Unknown paths get aiohttp's plain-text 404.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import auth, errors
from .market import Account, Exchange, OrderRequest, new_client_order_id
from .params import SIGNED_PARAMS, Params
from .symbols import ORDER_TYPES, SymbolSpec, fmt

if TYPE_CHECKING:
    from .fake import FakeBinance

API = "/api/v3"
_CLIENT_ORDER_ID = re.compile(r"^[a-zA-Z0-9\-_]{1,36}$")
RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]
WEIGHTS = {
    "exchangeInfo": 20,
    "aggTrades": 4,
    "ticker/price": 2,
    "ticker/bookTicker": 2,
    "account": 20,
    "GET order": 4,
    "openOrders": 6,
    "allOrders": 20,
}
ORDER_PARAMS = (
    frozenset(
        {
            "symbol",
            "side",
            "type",
            "timeInForce",
            "quantity",
            "quoteOrderQty",
            "price",
            "newClientOrderId",
            "strategyId",
            "strategyType",
            "stopPrice",
            "trailingDelta",
            "icebergQty",
            "newOrderRespType",
            "selfTradePreventionMode",
            "computeCommissionRates",
        }
    )
    | SIGNED_PARAMS
)
GATEWAY_PAGE = "<html><body><h1>{status}</h1>The server is temporarily unable to service your request.</body></html>"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestStats:
    """What the fake has seen: requests per endpoint and order POSTs per clientOrderId."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.order_posts: Counter[str] = Counter()
        self._weights: deque[tuple[float, int]] = deque()

    def record(self, method: str, path: str) -> None:
        self.requests[f"{method} {path}"] += 1

    def add_weight(self, weight: int) -> int:
        now = time.monotonic()
        self._weights.append((now, weight))
        while self._weights and self._weights[0][0] < now - 60:
            self._weights.popleft()
        return sum(w for _, w in self._weights)

    def reset(self) -> None:
        self.requests.clear()
        self.order_posts.clear()
        self._weights.clear()


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(payload, separators=(",", ":")),
        status=status,
        content_type="application/json",
        charset="UTF-8",
        headers=headers,
    )


def error_response(error: errors.BinanceError) -> web.Response:
    if error.code is None:  # a gateway answering for Binance: no JSON at all
        return web.Response(
            text=GATEWAY_PAGE.format(status=error.status),
            status=error.status,
            content_type="text/html",
            headers=error.headers,
        )
    return json_response(error.body(), error.status, error.headers)


class RestApi:
    """Handlers for ``/api/v3``; all state lives in the ``FakeBinance`` they serve."""

    def __init__(self, fake: FakeBinance) -> None:
        self.fake = fake

    @property
    def exchange(self) -> Exchange:
        return self.fake.exchange

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{API}/ping", self.ping),
            web.get(f"{API}/time", self.server_time),
            web.get(f"{API}/exchangeInfo", self.exchange_info),
            web.get(f"{API}/ticker/price", self.ticker_price),
            web.get(f"{API}/ticker/bookTicker", self.book_ticker),
            web.get(f"{API}/aggTrades", self.agg_trades),
            web.get(f"{API}/avgPrice", self.avg_price),
            web.get(f"{API}/account", self.account),
            web.post(f"{API}/order", self.new_order),
            web.post(f"{API}/order/test", self.test_order),
            web.get(f"{API}/order", self.query_order),
            web.delete(f"{API}/order", self.cancel_order),
            web.get(f"{API}/openOrders", self.open_orders),
            web.get(f"{API}/allOrders", self.all_orders),
        ]

    # --- middleware: stats, faults, headers -------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/api/"):
            return await handler(request)
        stats = self.fake.stats
        faults = self.fake.faults
        stats.record(request.method, path)
        name = path.removeprefix(f"{API}/")
        weight = WEIGHTS.get(f"{request.method} {name}", WEIGHTS.get(name, 1))
        used = stats.add_weight(weight)
        response: web.StreamResponse
        try:
            faults.check_rate_limit(path, self.fake.now_ms())
            delay = faults.take_delay(path, after_handling=False)
            if delay:
                await asyncio.sleep(delay)
            response = await handler(request)
        except errors.BinanceError as error:
            response = error_response(error)
        delay = faults.take_delay(path, after_handling=True)
        if delay:
            await asyncio.sleep(delay)
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(used)
        return response

    # --- helpers ----------------------------------------------------------------------------

    def _symbol(self, params: Params, required: bool = True) -> SymbolSpec | None:
        raw = params.required("symbol") if required else params.optional("symbol")
        if raw is None:
            return None
        spec = self.exchange.specs.get(raw)
        if spec is None:
            raise errors.bad_symbol()
        return spec

    async def _public(self, request: web.Request, readable: set[str]) -> Params:
        params = Params(request.rel_url.raw_query_string)
        params.check_read(readable)
        return params

    async def _signed(self, request: web.Request, readable: set[str] | frozenset[str]) -> tuple[Account, Params]:
        """Key, parameters, timing and signature checks of a SIGNED endpoint, in that order."""
        raw_query = request.rel_url.raw_query_string
        raw_body = ""
        if request.content_type == "application/x-www-form-urlencoded":
            raw_body = await request.text()
        account = auth.account_for(request.headers.get("X-MBX-APIKEY"), self.exchange.accounts)
        params = Params(raw_query, raw_body)
        auth.check_timing(params.values, self.fake.now_ms())
        auth.check_signature(account, raw_query, raw_body)
        params.check_read(set(readable) | SIGNED_PARAMS)
        return account, params

    # --- general ----------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        await self._public(request, set())
        return json_response({})

    async def server_time(self, request: web.Request) -> web.Response:
        await self._public(request, set())
        return json_response({"serverTime": self.fake.now_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        params = await self._public(request, {"symbol", "symbols", "permissions", "showPermissionSets", "symbolStatus"})
        specs = list(self.exchange.specs.values())
        spec = self._symbol(params, required=False)
        if spec is not None:
            specs = [spec]
        elif (raw := params.optional("symbols")) is not None:
            specs = [self._spec_named(name) for name in _json_list(raw, "symbols")]
        return json_response(
            {
                "timezone": "UTC",
                "serverTime": self.fake.now_ms(),
                "rateLimits": RATE_LIMITS,
                "exchangeFilters": [],
                "symbols": [s.exchange_info() for s in specs],
            }
        )

    def _spec_named(self, name: str) -> SymbolSpec:
        spec = self.exchange.specs.get(name)
        if spec is None:
            raise errors.bad_symbol()
        return spec

    # --- market data ------------------------------------------------------------------------

    def _ticker(self, symbol: str) -> dict[str, str]:
        price = self.exchange.market_price(symbol)
        return {"symbol": symbol, "price": fmt(price or 0)}

    async def ticker_price(self, request: web.Request) -> web.Response:
        params = await self._public(request, {"symbol", "symbols", "symbolStatus"})
        spec = self._symbol(params, required=False)
        if spec is not None:
            return json_response(self._ticker(spec.symbol))
        names = list(self.exchange.specs)
        if (raw := params.optional("symbols")) is not None:
            names = [self._spec_named(n).symbol for n in _json_list(raw, "symbols")]
        return json_response([self._ticker(n) for n in names])

    async def book_ticker(self, request: web.Request) -> web.Response:
        """The best bid and ask now (no updateId: Binance's REST answer has none)."""
        params = await self._public(request, {"symbol", "symbols", "symbolStatus"})
        spec = self._symbol(params, required=False)
        books = self.fake.tickers
        if spec is not None:
            return json_response(books[spec.symbol].rest())
        names = list(self.exchange.specs)
        if (raw := params.optional("symbols")) is not None:
            names = [self._spec_named(n).symbol for n in _json_list(raw, "symbols")]
        return json_response([books[n].rest() for n in names])

    async def agg_trades(self, request: web.Request) -> web.Response:
        params = await self._public(request, {"symbol", "fromId", "startTime", "endTime", "limit"})
        spec = self._symbol(params)
        assert spec is not None
        from_id = params.integer("fromId")
        start = params.integer("startTime")
        end = params.integer("endTime")
        limit = params.integer("limit")
        if limit is None:
            limit = 500
        elif not 1 <= limit <= 1000:
            raise errors.invalid_parameter("limit")
        if start is not None and end is not None and end - start > 3_600_000:
            raise errors.more_than_hours(1)
        tape = self.exchange.tapes[spec.symbol]
        trades = tape.agg_trades(from_id, start, end, limit)
        return json_response([t.to_payload() for t in trades])

    async def avg_price(self, request: web.Request) -> web.Response:
        """Volume-weighted price of the last 5 minutes of trades (by trade time); the last
        price when none is that recent."""
        params = await self._public(request, {"symbol"})
        spec = self._symbol(params)
        assert spec is not None
        now = self.fake.now_ms()
        recent = self.exchange.tapes[spec.symbol].agg_trades(start_time=now - 300_000, end_time=now, limit=0)
        volume = sum((t.qty for t in recent), Decimal(0))
        if volume:
            price = sum((t.price * t.qty for t in recent), Decimal(0)) / volume
        else:
            price = self.exchange.market_price(spec.symbol) or Decimal(0)
        last_time = recent[-1].time if recent else now
        return json_response({"mins": 5, "price": fmt(price), "closeTime": last_time})

    # --- account ----------------------------------------------------------------------------

    async def account(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, {"omitZeroBalances"})
        omit_zero = params.optional("omitZeroBalances") == "true"
        assets = sorted(self.exchange.assets() | set(account.wallet))
        balances = []
        for asset in assets:
            balance = account.balance(asset)
            if omit_zero and not (balance.free or balance.locked):
                continue
            balances.append({"asset": asset, "free": fmt(balance.free), "locked": fmt(balance.locked)})
        maker = account.maker_commission
        taker = account.taker_commission
        return json_response(
            {
                "makerCommission": int(maker * 10000),
                "takerCommission": int(taker * 10000),
                "buyerCommission": 0,
                "sellerCommission": 0,
                "commissionRates": {
                    "maker": fmt(maker),
                    "taker": fmt(taker),
                    "buyer": fmt(0),
                    "seller": fmt(0),
                },
                "canTrade": account.can_trade,
                "canWithdraw": True,
                "canDeposit": True,
                "brokered": False,
                "requireSelfTradePrevention": False,
                "preventSor": False,
                "updateTime": self.fake.now_ms(),
                "accountType": "SPOT",
                "balances": balances,
                "permissions": ["SPOT"],
                "uid": account.uid,
            }
        )

    # --- orders -----------------------------------------------------------------------------

    def _order_request(self, params: Params) -> tuple[OrderRequest, str]:
        """Parse and check a new order's parameters (the API-level checks, before filters)."""
        spec = self._symbol(params)
        assert spec is not None
        side = params.required("side")
        if side not in ("BUY", "SELL"):
            raise errors.invalid_side()
        order_type = params.required("type")
        if order_type not in ORDER_TYPES:
            raise errors.invalid_order_type()
        if params.get("newClientOrderId") == "":
            raise errors.empty_new_client_order_id()
        client_order_id = params.optional("newClientOrderId")
        if client_order_id is not None and not _CLIENT_ORDER_ID.match(client_order_id):
            raise errors.illegal_chars("newClientOrderId", errors.LEGAL_CLIENT_ORDER_ID)
        resp_type = params.optional("newOrderRespType")
        if resp_type is None:
            resp_type = "FULL" if order_type in ("MARKET", "LIMIT") else "ACK"
        elif resp_type not in ("ACK", "RESULT", "FULL"):
            raise errors.invalid_parameter("newOrderRespType")
        stp_mode = params.optional("selfTradePreventionMode")
        if stp_mode is not None and stp_mode not in spec.allowed_stp_modes:
            raise errors.invalid_parameter("selfTradePreventionMode")
        quantity = params.decimal("quantity", places=spec.base_asset_precision)
        quote_qty = params.decimal("quoteOrderQty", places=spec.quote_asset_precision)
        price = params.decimal("price", places=spec.quote_asset_precision)
        time_in_force = params.optional("timeInForce")
        if order_type == "MARKET":
            params.forbid("timeInForce")
            params.forbid("price")
            if quantity is None and quote_qty is None:
                raise errors.mandatory_one_of("quantity", "quoteOrderQty")
            if quantity is not None:
                params.forbid("quoteOrderQty")
        elif order_type in ("LIMIT", "LIMIT_MAKER"):
            if order_type == "LIMIT":
                time_in_force = params.required("timeInForce")
                if time_in_force not in ("GTC", "IOC", "FOK"):
                    raise errors.invalid_time_in_force()
            else:
                params.forbid("timeInForce")
            params.required("quantity")
            params.required("price")
            params.forbid("quoteOrderQty")
        request = OrderRequest(
            symbol=spec.symbol,
            side=side,
            type=order_type,
            quantity=quantity,
            quote_order_qty=quote_qty,
            price=price,
            time_in_force=time_in_force,
            client_order_id=client_order_id,
            stp_mode=stp_mode,
        )
        return request, resp_type

    def _order_headers(self) -> dict[str, str]:
        count = str(self.fake.stats.requests[f"POST {API}/order"])
        return {"X-MBX-ORDER-COUNT-10S": count, "X-MBX-ORDER-COUNT-1D": count}

    async def new_order(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, ORDER_PARAMS)
        order_request, resp_type = self._order_request(params)
        if order_request.client_order_id:
            self.fake.stats.order_posts[order_request.client_order_id] += 1
        failure = self.fake.faults.take_order_failure()
        if failure is not None and not failure.execute:
            raise failure.error()
        order = self.exchange.place(account, order_request)
        assert order is not None
        self.fake.order_placed(order)
        if failure is not None:
            raise failure.error()
        return json_response(order.response(resp_type), headers=self._order_headers())

    async def test_order(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, ORDER_PARAMS)
        order_request, _ = self._order_request(params)
        self.exchange.place(account, order_request, test=True)
        return json_response({})

    def _order_ref(self, params: Params) -> tuple[SymbolSpec, int | None, str | None]:
        spec = self._symbol(params)
        assert spec is not None
        order_id = params.integer("orderId")
        if params.get("origClientOrderId") == "":
            raise errors.empty_orig_client_order_id()
        client_order_id = params.optional("origClientOrderId")
        if order_id is None and client_order_id is None:
            raise errors.mandatory_one_of("origClientOrderId", "orderId")
        return spec, order_id, client_order_id

    async def query_order(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, {"symbol", "orderId", "origClientOrderId"})
        spec, order_id, client_order_id = self._order_ref(params)
        order = self.exchange.find(account, spec.symbol, order_id, client_order_id)
        return json_response(order.query())

    async def cancel_order(self, request: web.Request) -> web.Response:
        account, params = await self._signed(
            request,
            {"symbol", "orderId", "origClientOrderId", "newClientOrderId", "cancelRestrictions"},
        )
        spec, order_id, client_order_id = self._order_ref(params)
        cancel_id = params.optional("newClientOrderId")
        if cancel_id is not None and not _CLIENT_ORDER_ID.match(cancel_id):
            raise errors.illegal_chars("newClientOrderId", errors.LEGAL_CLIENT_ORDER_ID)
        order = self.exchange.cancel(account, spec.symbol, order_id, client_order_id)
        result = order.result()
        result.pop("workingTime")
        result.update(
            {
                "origClientOrderId": order.client_order_id,
                "clientOrderId": cancel_id or new_client_order_id(),
                "transactTime": order.update_time,
            }
        )
        return json_response(result)

    async def open_orders(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, {"symbol"})
        spec = self._symbol(params, required=False)
        orders = self.exchange.open_orders(account, spec.symbol if spec else None)
        return json_response([o.query() for o in orders])

    async def all_orders(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, {"symbol", "orderId", "startTime", "endTime", "limit"})
        spec = self._symbol(params)
        assert spec is not None
        from_order_id = params.integer("orderId") or 0
        limit = params.integer("limit") or 500
        if not 1 <= limit <= 1000:
            raise errors.invalid_parameter("limit")
        orders = [
            o
            for o in self.exchange.orders
            if o.api_key == account.api_key and o.symbol == spec.symbol and o.order_id >= from_order_id
        ]
        return json_response([o.query() for o in orders[:limit]])


def _json_list(raw: str, name: str) -> list[str]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise errors.illegal_chars(name, '["SYMBOL1","SYMBOL2"]') from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.illegal_chars(name, '["SYMBOL1","SYMBOL2"]')
    return value

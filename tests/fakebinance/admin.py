"""The admin HTTP API under ``/_fake``: drive and inspect a fake running in another process.

Not part of Binance; never rate-limited, delayed or counted.

=====================  =======================================================================
``GET  /_fake/health``   ``{"ok": true}``
``GET  /_fake/state``    tape positions, prices, speeds, sockets, order count, faults
``GET  /_fake/orders``   accepted orders (``?clientOrderId=``, ``?symbol=``), query payloads plus
                         ``apiKey`` and ``fills``
``GET  /_fake/requests`` ``{"requests": {"GET /api/v3/ping": n, ...}, "orderPosts": {cid: n}}``
``GET  /_fake/balances`` ``?apiKey=`` (default account) -> ``{asset: {"free", "locked"}}``
``POST /_fake/advance``  ``{"symbol": "XRPETH", "n": 5}`` or ``{"symbol": ..., "to": tradeId}``
                         -> ``{"trades": [aggTrade payloads]}``
``POST /_fake/speed``    ``{"speed": 20, "symbols": ["XRPETH"]}`` (symbols optional)
``POST /_fake/price``    ``{"symbol": "XRPETH", "price": "0.0015"}`` (null: back to the tape)
``POST /_fake/book``     ``{"symbol": "BTCUSDT", "bids": [["64900", "0.3"]], "asks": []}``: the
                         liquidity taking orders walk (``"bids": null``: unlimited again)
``POST /_fake/quotes``   ``{"symbol": "XRPETH", "quotes": [{"bid": "1", "ask": "1.1", "bidQty": "2",
                         "askQty": "3"}], "followTrades": false}``: quotes happen now, in order
                         (the book then stays put until ``followTrades``) -> ``{"quotes": [...]}``
``POST /_fake/balances`` ``{"apiKey": ..., "balances": {"XRP": "100"}}``
``POST /_fake/faults``   ``{"fault": <name>, ...arguments}``; names: ``fail_orders``,
                         ``rate_limit``, ``delay``, ``drop_streams``, ``silence_streams``,
                         ``resume_streams``, ``clock_offset`` (``{"ms": ...}``)
``DELETE /_fake/faults`` clear every fault
=====================  =======================================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .fake import FakeBinance

PREFIX = "/_fake"


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status, dumps=lambda v: json.dumps(v, default=str))


class AdminApi:
    def __init__(self, fake: FakeBinance) -> None:
        self.fake = fake

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Bad admin input (unknown symbol or account, missing field, bad JSON) is a 400."""
        if not request.path.startswith(PREFIX):
            return await handler(request)
        try:
            return await handler(request)
        except (KeyError, ValueError, TypeError) as exc:
            return _json({"error": f"{type(exc).__name__}: {exc}"}, 400)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/health", self.health),
            web.get(f"{PREFIX}/state", self.state),
            web.get(f"{PREFIX}/orders", self.orders),
            web.get(f"{PREFIX}/requests", self.requests),
            web.get(f"{PREFIX}/balances", self.get_balances),
            web.post(f"{PREFIX}/advance", self.advance),
            web.post(f"{PREFIX}/speed", self.speed),
            web.post(f"{PREFIX}/price", self.price),
            web.post(f"{PREFIX}/book", self.book),
            web.post(f"{PREFIX}/quotes", self.quotes),
            web.post(f"{PREFIX}/balances", self.set_balances),
            web.post(f"{PREFIX}/faults", self.add_fault),
            web.delete(f"{PREFIX}/faults", self.clear_faults),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    async def state(self, request: web.Request) -> web.Response:
        return _json(self.fake.state())

    async def orders(self, request: web.Request) -> web.Response:
        orders = self.fake.orders(request.query.get("clientOrderId"), request.query.get("symbol"))
        return _json([{**o.query(), "apiKey": o.api_key, "fills": [f.payload() for f in o.fills]} for o in orders])

    async def requests(self, request: web.Request) -> web.Response:
        return _json(
            {
                "requests": dict(self.fake.stats.requests),
                "orderPosts": dict(self.fake.stats.order_posts),
            }
        )

    async def get_balances(self, request: web.Request) -> web.Response:
        api_key = request.query.get("apiKey")
        account = self.fake.account(api_key) if api_key else self.fake.account()
        return _json(account.snapshot())

    async def advance(self, request: web.Request) -> web.Response:
        body = await request.json()
        symbol = body["symbol"]
        if "to" in body:
            trades = await self.fake.advance_to(symbol, int(body["to"]))
        else:
            trades = await self.fake.advance(symbol, int(body.get("n", 1)))
        return _json({"trades": [t.to_payload() for t in trades]})

    async def speed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.fake.set_speed(float(body["speed"]), body.get("symbols"))
        return _json(self.fake.state()["symbols"])

    async def price(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.fake.set_price(body["symbol"], body.get("price"))
        return _json({"ok": True})

    async def book(self, request: web.Request) -> web.Response:
        body = await request.json()
        bids = body.get("bids")
        self.fake.set_book(body["symbol"], bids, body.get("asks") or [])
        book = self.fake.exchange.books.get(body["symbol"].upper())
        return _json(book.payload() if book is not None else None)

    async def quotes(self, request: web.Request) -> web.Response:
        body = await request.json()
        quotes = self.fake.set_quotes(body["symbol"], body.get("quotes", []), bool(body.get("followTrades", False)))
        return _json({"quotes": quotes})

    async def set_balances(self, request: web.Request) -> web.Response:
        body = await request.json()
        account = self.fake.account(body["apiKey"]) if "apiKey" in body else self.fake.account()
        account.set_balances(body["balances"])
        return _json(account.snapshot())

    async def add_fault(self, request: web.Request) -> web.Response:
        body = dict(await request.json())
        name = body.pop("fault")
        actions: dict[str, Callable[..., Any]] = {
            "fail_orders": self.fake.faults.fail_orders,
            "rate_limit": self.fake.faults.rate_limit,
            "delay": self.fake.faults.delay,
            "drop_streams": self.fake.drop_streams,
            "silence_streams": self.fake.silence_streams,
            "resume_streams": self.fake.resume_streams,
            "clock_offset": self._clock_offset,
        }
        if name not in actions:
            return _json({"error": f"unknown fault {name!r}", "known": sorted(actions)}, 400)
        actions[name](**body)
        return _json(self.fake.faults.describe())

    def _clock_offset(self, ms: int) -> None:
        self.fake.clock_offset_ms = int(ms)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.fake.faults.clear()
        return _json(self.fake.faults.describe())

"""Binance Spot through python-binance: a gap-free trade feed and exactly-once MARKET orders.

Settings come from the environment (the pod gets the keys from a Secret via ``secretKeyRef``):

==================================  ============================================================
``BINANCE_API_KEY``                 API key (Testnet/Live executors only); never logged
``BINANCE_API_SECRET``              API secret; never logged
``TRAILINGSTOP_BINANCE_API_URL``    REST base, e.g. ``https://api.binance.com/api`` (overrides)
``TRAILINGSTOP_BINANCE_STREAM_URL`` WebSocket base, e.g. ``wss://stream.binance.com:9443/``
==================================  ============================================================

python-binance appends ``/v3/<path>`` to the REST base and ``ws/<symbol>@aggTrade`` to the stream
base, so pointing both at a Binance-compatible server (the tests' fake) is a matter of these two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

import aiohttp
from binance import AsyncClient, BinanceSocketManager
from binance.exceptions import (
    BinanceAPIException,
    BinanceRequestException,
    BinanceWebsocketUnableToConnect,
    ReadLoopClosed,
)
from binance.ws.constants import WSListenerState

from trailingstop.aio import stop_if_cancelled
from trailingstop.core.contracts import OrderError, OrderResult, PlaceOrder, now_ms
from trailingstop.core.filters import SymbolFilters
from trailingstop.core.trade import Trade
from trailingstop.settings import (
    LIVE_API_URL,
    LIVE_STREAM_URL,
    TESTNET_API_URL,
    TESTNET_STREAM_URL,
    Settings,
    load_settings,
)
from trailingstop.tradefiles import trade_from_payload

log = logging.getLogger(__name__)

AGG_TRADES_LIMIT = 1000
CLOSE_TIMEOUT = 2.0  # seconds a trade socket gets to close before its read loop is cancelled

# Binance codes after which the order's fate is unknown: query, never resend blindly.
UNKNOWN_STATUS_CODES = frozenset({-1007, -1001, -1006})
ORDER_DOES_NOT_EXIST = -2013
DUPLICATE_ORDER = -2010  # also "insufficient balance"; told apart by the message
TIMESTAMP_OUTSIDE_WINDOW = -1021


@dataclass(frozen=True)
class BinanceSettings:
    api_url: str = LIVE_API_URL
    stream_url: str = LIVE_STREAM_URL
    api_key: str | None = None
    api_secret: str | None = None
    request_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings, mode: str = "Live") -> BinanceSettings:
        """Binance's view of the settings: its own URLs (Testnet's for Testnet) unless set."""
        testnet = mode == "Testnet"
        key, secret = settings.binance_api_key, settings.binance_api_secret
        return cls(
            api_url=settings.binance_api_url or (TESTNET_API_URL if testnet else LIVE_API_URL),
            stream_url=settings.binance_stream_url or (TESTNET_STREAM_URL if testnet else LIVE_STREAM_URL),
            api_key=key.get_secret_value() or None if key else None,
            api_secret=secret.get_secret_value() or None if secret else None,
            request_timeout=settings.binance_timeout,
        )

    @classmethod
    def from_env(cls, mode: str = "Live", environ: Mapping[str, str] | None = None) -> BinanceSettings:
        return cls.from_settings(load_settings(environ), mode)

    def __repr__(self) -> str:  # keys stay out of every repr, hence out of logs and tracebacks
        keys = "set" if self.api_key else "none"
        return f"BinanceSettings(api_url={self.api_url!r}, stream_url={self.stream_url!r}, keys={keys})"


async def connect_client(settings: BinanceSettings) -> AsyncClient:
    """An AsyncClient aimed at ``settings.api_url``, with its clock offset to the server measured."""
    client = AsyncClient(settings.api_key, settings.api_secret)
    client.API_URL = settings.api_url.rstrip("/")
    client.REQUEST_TIMEOUT = settings.request_timeout
    try:
        await client.ping()
        server = await client.get_server_time()
        client.timestamp_offset = server["serverTime"] - int(time.time() * 1000)
    except BaseException:
        await client.close_connection()
        raise
    return client


async def symbol_filters(client: AsyncClient, symbol: str) -> SymbolFilters:
    info = await client.get_symbol_info(symbol)
    if info is None:
        raise ValueError(f"{symbol} is not a Binance symbol")
    return SymbolFilters.from_exchange_info(info)


async def agg_trades(
    client: AsyncClient, symbol: str, from_id: int, to_id: int | None = None
) -> AsyncGenerator[Trade, None]:
    """Trades ``from_id`` .. ``to_id`` (inclusive; to the newest when None) over REST, in order."""
    next_id = from_id
    while to_id is None or next_id <= to_id:
        batch = await client.get_aggregate_trades(symbol=symbol, fromId=next_id, limit=AGG_TRADES_LIMIT)
        if not batch:
            return
        for payload in batch:
            trade = trade_from_payload(payload)
            if to_id is not None and trade.trade_id > to_id:
                return
            yield trade
            next_id = trade.trade_id + 1
        if len(batch) < AGG_TRADES_LIMIT:
            return


# --- the trade feed ------------------------------------------------------------------------------


class TradeFeed:
    """One symbol's aggTrades with no gap: WebSocket first, REST for whatever it missed.

    python-binance reconnects by itself and puts ``{"e": "error"}`` markers in the stream (skipped
    here); when it gives up, its read loop ends and the socket is recreated. A socket that stays
    open but silent is never noticed by the library, so after ``silence`` seconds without a
    message the feed asks REST for trades after the last one: if there are some, the socket is
    dead and is replaced; if not, the market is just quiet. Aggregate trade ids are consecutive
    per symbol, so any jump in ids is a gap and is backfilled before the trade after it.
    """

    def __init__(
        self,
        client: AsyncClient,
        symbol: str,
        stream_url: str,
        *,
        silence: float = 30.0,
        last_trade_id: int | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.client = client
        self.symbol = symbol
        self.stream_url = stream_url
        self.silence = silence
        self.last_trade_id = last_trade_id
        self.max_backoff = max_backoff
        self.connected = False
        self.last_message_at = time.monotonic()
        # When the read loop last woke (a message, its silence timeout, a reconnect): liveness
        # asks that it keeps waking, which it does in a quiet market too.
        self.progress_at = time.monotonic()
        self.connections = 0  # sockets we opened
        self.reconnects = 0  # the library's own reconnects (its error markers) and our new sockets
        self.backfilled = 0

    async def trades(self) -> AsyncGenerator[Trade, None]:
        """The trades, for ever. Close it (``aclosing``) to close the socket at once."""
        backoff = 0.5
        while True:
            self.progress_at = time.monotonic()
            socket = self._socket()
            try:
                async with _promptly_closed(socket) as stream, aclosing(self._read(stream)) as reading:
                    self.connections += 1
                    if self.connections > 1:
                        self.reconnects += 1
                    self.connected = True
                    backoff = 0.5
                    async for trade in reading:
                        yield trade
            except (TimeoutError, BinanceWebsocketUnableToConnect, ReadLoopClosed, OSError) as exc:
                log.warning("%s trade stream lost (%r); reconnecting", self.symbol, exc, extra={"symbol": self.symbol})
            finally:
                self.connected = False
            async with aclosing(self._catch_up()) as missed:
                async for trade in missed:
                    yield trade
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _socket(self) -> Any:
        manager = BinanceSocketManager(self.client, max_queue_size=10_000)
        manager.STREAM_URL = self.stream_url
        return manager.aggtrade_socket(self.symbol)

    async def _read(self, stream: Any) -> AsyncGenerator[Trade, None]:
        """Trades from one socket until it dies (returns) or goes silent while trades happen."""
        while True:
            self.progress_at = time.monotonic()
            try:
                # asyncio.timeout, not wait_for: wait_for can lose a cancellation (trailingstop.aio).
                async with asyncio.timeout(self.silence):
                    message = await stream.recv()
            except TimeoutError:
                missed = False
                async with aclosing(self._catch_up()) as caught_up:
                    async for trade in caught_up:
                        missed = True
                        yield trade
                if missed:
                    log.warning("%s socket silent while trades happened; replacing it", self.symbol,
                                extra={"symbol": self.symbol})
                    return
                continue
            self.last_message_at = time.monotonic()
            if not isinstance(message, dict) or message.get("e") == "error":
                # python-binance's marker of a dropped connection it is re-establishing.
                self.reconnects += 1
                log.info("%s stream reported %s", self.symbol, message, extra={"symbol": self.symbol})
                continue
            trade = trade_from_payload(message)
            async with aclosing(self._in_order(trade)) as accepted:
                async for in_order in accepted:
                    yield in_order

    async def _in_order(self, trade: Trade) -> AsyncGenerator[Trade, None]:
        last = self.last_trade_id
        if last is not None and trade.trade_id <= last:
            return
        if last is not None and trade.trade_id > last + 1:
            async with aclosing(self._backfill(last + 1, trade.trade_id - 1)) as missed:
                async for trade_missed in missed:
                    yield trade_missed
        self.last_trade_id = trade.trade_id
        yield trade

    async def _catch_up(self) -> AsyncGenerator[Trade, None]:
        """Trades after the last one seen, over REST (nothing when none was seen yet)."""
        if self.last_trade_id is None:
            return
        try:
            async with aclosing(self._backfill(self.last_trade_id + 1, None)) as missed:
                async for trade in missed:
                    yield trade
        except (TimeoutError, BinanceAPIException, BinanceRequestException, aiohttp.ClientError) as exc:
            log.warning("%s backfill failed (%r); will retry", self.symbol, exc, extra={"symbol": self.symbol})

    async def _backfill(self, from_id: int, to_id: int | None) -> AsyncGenerator[Trade, None]:
        async with aclosing(agg_trades(self.client, self.symbol, from_id, to_id)) as fetched:
            async for trade in fetched:
                if self.last_trade_id is not None and trade.trade_id <= self.last_trade_id:
                    continue
                self.last_trade_id = trade.trade_id
                self.backfilled += 1
                yield trade


class _OwnCloseIsNoError(logging.Filter):
    """python-binance logs every closed connection as an error, ours included (we sent the close
    frame first, code 1000): that one is a clean shutdown, not something for an operator to chase."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("ConnectionClosedOK (sent 1000")


logging.getLogger("binance.ws.reconnecting_websocket").addFilter(_OwnCloseIsNoError())


@contextlib.asynccontextmanager
async def _promptly_closed(socket: Any) -> AsyncIterator[Any]:
    """A python-binance socket whose close does not wait for the next message, nor for ever.

    Its own close waits until its read loop notices it is exiting, which happens only once a
    message arrives or its 10 s receive timeout passes: a quiet market held up every shutdown (a
    pod's SIGTERM, Ctrl-C of ``run --live``) by up to 10 s. And a read loop that is reconnecting
    sleeps up to a minute between tries and forgets it was told to exit when it connects. So the
    connection is closed and the read loop cancelled first; what is left of the close gets
    :data:`CLOSE_TIMEOUT`.
    """
    stream = await socket.__aenter__()
    try:
        yield stream
    finally:
        socket.ws_state = WSListenerState.EXITING
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if socket.ws is not None:
                    await socket.ws.close()
                for task in _read_loops(socket):
                    task.cancel()
                await socket.__aexit__(None, None, None)
        except TimeoutError:
            log.warning("trade socket did not close in %.0fs; left to the garbage collector", CLOSE_TIMEOUT)


def _read_loops(socket: Any) -> list[asyncio.Task[Any]]:
    """The tasks running ``socket``'s read loop (python-binance keeps only a callback handle)."""
    found = []
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if frame is not None and frame.f_code.co_name == "_read_loop" and frame.f_locals.get("self") is socket:
            found.append(task)
    return found


async def live_trades(
    symbols: list[str], settings: BinanceSettings, queue_size: int = 10_000
) -> AsyncGenerator[tuple[str, Trade], None]:
    """Live trades of several symbols, merged (each symbol in its own order).

    Close it (``aclosing``) when done: the feeds stop and their sockets close within about
    :data:`CLOSE_TIMEOUT`, even with the queue full and a socket that is slow to close. A feed
    that fails ends the stream with its error instead of leaving the reader waiting.
    """
    client = await connect_client(settings)
    queue: asyncio.Queue[tuple[str, Trade] | None] = asyncio.Queue(maxsize=queue_size)
    ended: list[asyncio.Task[None]] = []

    async def pump(symbol: str) -> None:
        async with aclosing(TradeFeed(client, symbol, settings.stream_url).trades()) as trades:
            async for trade in trades:
                stop_if_cancelled()  # never block on the full queue below once asked to stop
                await queue.put((symbol, trade))

    def on_end(task: asyncio.Task[None]) -> None:
        ended.append(task)
        with contextlib.suppress(asyncio.QueueFull):  # a full queue: the reader sees `ended` soon
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(symbol)) for symbol in symbols]
    for task in tasks:
        task.add_done_callback(on_end)
    try:
        while not ended:
            item = await queue.get()
            if item is not None:
                yield item
        ended[0].result()  # a feed's error, raised here
        raise RuntimeError("a trade feed ended")  # it never does by itself
    finally:
        await _stop(tasks)
        await client.close_connection()


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the feeds and give them (their sockets) a bounded time to close."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=2 * CLOSE_TIMEOUT)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("trade feed ended with %r", task.exception())
    if pending:
        log.warning("%d trade feed(s) did not stop in %.0fs", len(pending), 2 * CLOSE_TIMEOUT)


# --- exactly-once orders ---------------------------------------------------------------------------


class RateLimited(Exception):
    def __init__(self, status: int, retry_after: float) -> None:
        super().__init__(f"HTTP {status}: retry after {retry_after}s")
        self.status = status
        self.retry_after = retry_after


class BinanceExecutor:
    """Places one MARKET order per clientOrderId, whatever happens (DESIGN §6).

    Binance accepts a reused clientOrderId once the earlier order has filled, so a resend after a
    crash or a lost answer could place a second order. Hence: look the id up first; place only if
    Binance has never seen it; after a timeout, HTTP 5xx or -1007 the outcome is unknown, so look
    it up again instead of resending.
    """

    def __init__(
        self,
        client: AsyncClient,
        route: str,
        *,
        retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        on_rate_limit: Any = None,
        on_latency: Any = None,
    ) -> None:
        self.client = client
        self.route = route
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._filters: dict[str, SymbolFilters] = {}
        self._on_rate_limit = on_rate_limit or (lambda status: None)
        self._on_latency = on_latency or (lambda call, seconds: None)

    async def execute(self, order: PlaceOrder) -> OrderResult:
        delay = self.retry_delay
        while True:
            try:
                existing = await self._query(order)
                if existing is not None:
                    return existing
                return await self._place(order)
            except RateLimited as limited:
                self._on_rate_limit(limited.status)
                log.warning("Binance rate limit (HTTP %s); waiting %.1fs", limited.status, limited.retry_after,
                            extra={"clientOrderId": order.client_order_id})
                await asyncio.sleep(limited.retry_after)
            except _OutcomeUnknown as unknown:
                log.warning("order %s: outcome unknown (%s); querying again in %.1fs",
                            order.client_order_id, unknown, delay, extra={"clientOrderId": order.client_order_id})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)

    async def _query(self, order: PlaceOrder) -> OrderResult | None:
        try:
            found = await self._call("get_order", symbol=order.symbol, origClientOrderId=order.client_order_id)
        except BinanceAPIException as exc:
            if exc.code == ORDER_DOES_NOT_EXIST:
                return None
            error = self._classify(exc)
            if isinstance(error, OrderError):
                return self._rejected(order, error)
            raise error from exc
        return self._result(order, found)

    async def _place(self, order: PlaceOrder) -> OrderResult:
        quantity = await self._quantity(order)
        try:
            placed = await self._call(
                "create_order",
                symbol=order.symbol,
                side=order.side,
                type="MARKET",
                quantity=format(quantity, "f"),
                newClientOrderId=order.client_order_id,
                newOrderRespType="FULL",
            )
        except BinanceAPIException as exc:
            if exc.code == DUPLICATE_ORDER and "Duplicate" in (exc.message or ""):
                raise _OutcomeUnknown("duplicate order: it exists, look it up") from exc
            if exc.code == TIMESTAMP_OUTSIDE_WINDOW:
                await self._resync_clock()
                raise _OutcomeUnknown("clock drift; resynced") from exc
            error = self._classify(exc)
            if isinstance(error, OrderError):
                return self._rejected(order, error)
            raise error from exc
        return self._result(order, placed)

    async def _quantity(self, order: PlaceOrder) -> Decimal:
        filters = self._filters.get(order.symbol)
        if filters is None:
            info = await self._call("get_symbol_info", symbol=order.symbol)
            if info is not None:
                filters = self._filters[order.symbol] = SymbolFilters.from_exchange_info(info)
        return filters.floor_quantity(order.quantity) if filters is not None else order.quantity

    async def _call(self, call: str, **params: Any) -> Any:
        started = time.monotonic()
        try:
            return await getattr(self.client, call)(**params)
        except (TimeoutError, aiohttp.ClientError, BinanceRequestException) as exc:
            raise _OutcomeUnknown(f"{call}: {exc!r}") from exc
        except BinanceAPIException as exc:
            if exc.status_code in (429, 418):
                raise RateLimited(exc.status_code, _retry_after(exc)) from exc
            raise
        finally:
            self._on_latency(call, time.monotonic() - started)

    def _classify(self, exc: BinanceAPIException) -> OrderError | Exception:
        """A definite rejection (OrderError) or an unknown outcome (an exception to retry on)."""
        if exc.status_code >= 500 or exc.code in UNKNOWN_STATUS_CODES:
            return _OutcomeUnknown(f"HTTP {exc.status_code}, code {exc.code}: {exc.message}")
        return OrderError(code=int(exc.code or 0), message=str(exc.message or "unknown error"))

    async def _resync_clock(self) -> None:
        server = await self._call("get_server_time")
        self.client.timestamp_offset = server["serverTime"] - int(time.time() * 1000)

    def _rejected(self, order: PlaceOrder, error: OrderError) -> OrderResult:
        return OrderResult.for_order(order, status="REJECTED", error=error, at=now_ms())

    def _result(self, order: PlaceOrder, payload: Mapping[str, Any]) -> OrderResult:
        executed = Decimal(payload.get("executedQty", "0"))
        quote = Decimal(payload.get("cummulativeQuoteQty", "0"))
        return OrderResult.for_order(
            order,
            status=payload.get("status", "NEW"),
            order_id=payload.get("orderId"),
            executed_qty=executed,
            avg_price=_average(quote, executed),
            cummulative_quote_qty=quote,
            at=payload.get("updateTime") or payload.get("transactTime") or now_ms(),
        )


class _OutcomeUnknown(Exception):
    """The exchange may or may not have the order: look it up before anything else."""


def _average(quote: Decimal, executed: Decimal) -> Decimal | None:
    if executed <= 0:
        return None
    with localcontext() as context:
        context.prec = 28  # an average price for display, not a decision
        return (quote / executed).normalize()


def _retry_after(exc: BinanceAPIException) -> float:
    headers = getattr(exc.response, "headers", None) or {}
    try:
        return max(1.0, float(headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0

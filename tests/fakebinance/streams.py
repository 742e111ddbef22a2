"""WebSocket market streams, as Binance Spot serves them.

* Raw streams at ``/ws/<streamName>``: each message is the bare event.
* Combined streams at ``/stream?streams=<a>/<b>``: each message is
  ``{"stream": "<streamName>", "data": <event>}``.
* ``<symbol>@aggTrade`` (symbol lower case) carries
  ``{"e":"aggTrade","E":...,"s":"XRPETH","a":...,"p":"...","q":"...","f":...,"l":...,"T":...,
  "m":...,"M":...}``: decimals as strings, ids and times as integers, compact JSON.
* ``<symbol>@bookTicker`` carries ``{"u":updateId,"s":"XRPETH","b":"...","B":"...","a":"...",
  "A":"..."}`` (see :mod:`tests.fakebinance.book`).
* Live subscription changes over the socket: ``{"method": "SUBSCRIBE" | "UNSUBSCRIBE" |
  "LIST_SUBSCRIPTIONS", "params": [...], "id": ...}`` answered with ``{"result": ..., "id": ...}``.
* A stream name that matches nothing is accepted and stays quiet, as on Binance.
* A socket only receives trades that happen after it connected; trades that happen while no
  socket is connected are not replayed to the next one (REST backfill is the way to get them).

Faults: drop every socket now (close frame 1001, or an abrupt TCP abort) or after N more
events each, refuse handshakes for a while (HTTP 503), and "silent" sockets that stay open but
send nothing and answer no pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import WSMsgType, web

from trailingstop.core.trade import Trade

from .faults import Faults

log = logging.getLogger(__name__)
CLOSE_LINGER = 0.05  # seconds between a drop-after-N socket's last event and its close


def agg_trade_stream(symbol: str) -> str:
    return f"{symbol.lower()}@aggTrade"


class StreamConnection:
    """One client socket: its subscriptions, its outgoing queue and its drop countdown."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, combined: bool) -> None:
        self.ws = ws
        self.request = request
        self.combined = combined
        self.streams: set[str] = set()
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent = 0
        self.drop_after: int | None = None
        self.abrupt = False
        self.closing = False

    def enqueue(self, stream: str, event: dict[str, Any]) -> None:
        payload = {"stream": stream, "data": event} if self.combined else event
        self.queue.put_nowait(json.dumps(payload, separators=(",", ":")))

    def close_soon(self) -> None:
        """Close at once; events still queued are not sent."""
        self.closing = True
        self.queue.put_nowait(None)

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class StreamHub:
    """All open sockets; fans tape trades out to the ones subscribed."""

    def __init__(self, faults: Faults, clock: Any) -> None:
        self.faults = faults
        self.clock = clock
        self.connections: set[StreamConnection] = set()
        self.connections_total = 0
        self.refused = 0
        self._changed = asyncio.Event()

    # --- serving ----------------------------------------------------------------------------

    async def handle_raw(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, [request.match_info["name"]], combined=False)

    async def handle_combined(self, request: web.Request) -> web.StreamResponse:
        names = [n for n in request.query.get("streams", "").split("/") if n]
        return await self._serve(request, names, combined=True)

    async def handle_bare(self, request: web.Request) -> web.StreamResponse:
        """``/ws`` with no stream: subscriptions come over the socket."""
        return await self._serve(request, [], combined=False)

    async def _serve(self, request: web.Request, names: Iterable[str], combined: bool) -> web.StreamResponse:
        if self.faults.refusing_streams:
            self.refused += 1
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = StreamConnection(ws, request, combined)
        conn.streams.update(names)
        self.connections.add(conn)
        self.connections_total += 1
        self._notify()
        writer = asyncio.create_task(self._write(conn))
        try:
            await self._read(conn)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self.connections.discard(conn)
            self._notify()
            if not ws.closed:
                await ws.close()
        return ws

    async def _read(self, conn: StreamConnection) -> None:
        async for msg in conn.ws:
            if msg.type == WSMsgType.PING:
                if not self.faults.silent:
                    await conn.ws.pong(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await self._control(conn, msg.data)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    async def _control(self, conn: StreamConnection, text: str) -> None:
        """SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS requests sent over the socket."""
        try:
            request = json.loads(text)
            method = request["method"]
            params = request.get("params", [])
            request_id = request.get("id")
        except (ValueError, KeyError, TypeError):
            await conn.ws.send_str(json.dumps({"code": 3, "msg": "Invalid JSON: invalid request"}))
            return
        result: Any = None
        if method == "SUBSCRIBE":
            conn.streams.update(params)
        elif method == "UNSUBSCRIBE":
            conn.streams.difference_update(params)
        elif method == "LIST_SUBSCRIPTIONS":
            result = sorted(conn.streams)
        else:
            await conn.ws.send_str(json.dumps({"code": 2, "msg": f"Invalid request: unknown method {method}"}))
            return
        await conn.ws.send_str(json.dumps({"result": result, "id": request_id}))

    async def _write(self, conn: StreamConnection) -> None:
        while True:
            text = await conn.queue.get()
            if conn.closing or text is None:
                break
            await conn.ws.send_str(text)
            conn.sent += 1
            if conn.drop_after is not None:
                conn.drop_after -= 1
                if conn.drop_after <= 0:
                    # python-binance stops reading once it sees the close frame, dropping
                    # frames still buffered: let the last event be read first.
                    await asyncio.sleep(CLOSE_LINGER)
                    break
        if conn.abrupt:
            conn.abort()
        else:
            await conn.ws.close(code=1001, message=b"going away")

    # --- publishing -------------------------------------------------------------------------

    def publish(self, symbol: str, trades: Iterable[Trade]) -> None:
        """Queue the events of trades that just happened for every subscribed socket."""
        self.publish_events(agg_trade_stream(symbol), (t.to_ws_event(symbol, event_time=self.clock()) for t in trades))

    def publish_events(self, stream: str, events: Iterable[dict[str, Any]]) -> None:
        """Queue events of ``stream`` (built lazily: nothing is built with no subscriber)."""
        if self.faults.silent or not self.connections:
            return
        targets = [c for c in self.connections if stream in c.streams and not (c.closing or c.ws.closed)]
        if not targets:
            return
        for event in events:
            for conn in targets:
                conn.enqueue(stream, event)

    # --- faults -----------------------------------------------------------------------------

    def drop_all(self, after_events: int = 0, abrupt: bool = False) -> int:
        """Close every open socket now, or after each has sent ``after_events`` more events."""
        for conn in list(self.connections):
            conn.abrupt = abrupt
            if after_events > 0:
                conn.drop_after = after_events
            else:
                conn.close_soon()
        return len(self.connections)

    # --- waiting ----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_connections(self, count: int, timeout: float = 5.0) -> None:
        """Wait until exactly ``count`` sockets are open."""

        async def wait() -> None:
            while len(self.connections) != count:
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def close_all(self) -> None:
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutdown")

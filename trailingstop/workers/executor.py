"""``trailingstop worker executor --route R``: PlaceOrders in, OrderResults out, one order per stop.

Route ``simulate`` fills at the trigger price (status SIMULATED). ``testnet-<secret>`` and
``live-<secret>`` place real MARKET orders with the keys in ``BINANCE_API_KEY`` /
``BINANCE_API_SECRET`` (from the Secret, via the pod's environment), exactly once (see
:class:`~trailingstop.exchange.binance.BinanceExecutor`). A PlaceOrder is acked only after its
OrderResult is confirmed by the broker, so a crash in between redelivers it, and the lookup by
clientOrderId then finds the order instead of placing a second one. A rotated credentials Secret
ends the process cleanly so that its container starts again with the new keys (credentials.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from trailingstop import telemetry
from trailingstop.bus import Bus, executor_queue
from trailingstop.core.contracts import OrderResult, PlaceOrder
from trailingstop.exchange.binance import BinanceExecutor, BinanceSettings, connect_client
from trailingstop.exchange.simulated import SimulatedExchange
from trailingstop.health import HealthServer
from trailingstop.settings import Settings
from trailingstop.workers.credentials import fingerprint, wait_for_rotation
from trailingstop.workers.service import serve

log = logging.getLogger(__name__)

Execute = Callable[[PlaceOrder], Awaitable[OrderResult]]


class WrongRoute(Exception):
    """A PlaceOrder this executor must not place (another route or mode): it is dead-lettered."""


def route_mode(route: str) -> str:
    """``Simulate``, ``Testnet`` or ``Live`` from a route name."""
    if route == "simulate":
        return "Simulate"
    prefix = route.split("-", 1)[0]
    modes = {"testnet": "Testnet", "live": "Live"}
    if prefix not in modes or "-" not in route:
        raise ValueError(f"route must be simulate, testnet-<secret> or live-<secret>, got {route!r}")
    return modes[prefix]


class Executor:
    def __init__(self, bus: Bus, route: str, execute: Execute) -> None:
        self.bus = bus
        self.route = route
        self.mode = route_mode(route)
        self.execute = execute

    async def on_order(self, order: PlaceOrder, headers: dict[str, Any]) -> None:
        fields = telemetry.stop_fields(order.namespace, order.name, order.uid, order.symbol,
                                       route=self.route, clientOrderId=order.client_order_id)
        if order.route != self.route or order.mode != self.mode:
            # Never place an order with the wrong account: refuse loudly, keep the message.
            raise WrongRoute(f"order for route {order.route} ({order.mode}) reached executor {self.route}")
        with telemetry.span("place order", headers, clientOrderId=order.client_order_id, route=self.route):
            result = await self.execute(order)
            await self.bus.publish_result(result)
            telemetry.EXECUTOR_ORDERS.labels(route=self.route, status=result.status).inc()
            if result.error is not None:
                log.warning("order %s rejected: Binance %s: %s", order.client_order_id, result.error.code,
                            result.error.message, extra=fields)
            else:
                log.info("order %s %s: %s %s at %s", order.client_order_id, result.status, order.side,
                         result.executed_qty, result.avg_price, extra=fields)


async def simulated() -> Execute:
    exchange = SimulatedExchange()

    async def execute(order: PlaceOrder) -> OrderResult:
        return exchange.place(order)

    return execute


async def main(args: argparse.Namespace, settings: Settings) -> int:
    route = args.route
    mode = route_mode(route)

    async def body(bus: Bus, health: HealthServer) -> None:
        if mode == "Simulate":
            execute = await simulated()
            await _consume(bus, Executor(bus, route, execute))
            return
        binance = BinanceSettings.from_settings(settings, mode)
        if not (binance.api_key and binance.api_secret):
            raise SystemExit(f"executor {route}: BINANCE_API_KEY and BINANCE_API_SECRET (or their TRAILINGSTOP_ "
                             "names) must be set, from the Secret")
        client = await connect_client(binance)
        try:
            waits, latency = telemetry.EXECUTOR_RATE_LIMIT_WAITS, telemetry.EXECUTOR_EXCHANGE_LATENCY
            executor = BinanceExecutor(
                client,
                route,
                on_rate_limit=lambda status: waits.labels(route, str(status)).inc(),
                on_latency=lambda call, seconds: latency.labels(route, call).observe(seconds),
            )
            consume = _consume(bus, Executor(bus, route, executor.execute))
            await _until_keys_rotate(consume, binance.api_key, binance.api_secret, settings)
        finally:
            await client.close_connection()

    return await serve(f"executor-{route}", body, settings)


async def _until_keys_rotate(work: Coroutine[Any, Any, None], api_key: str, api_secret: str,
                             settings: Settings) -> None:
    """Run ``work`` until the mounted credentials Secret no longer holds the keys in use."""
    if not settings.credentials_dir:
        await work
        return
    running = fingerprint(api_key, api_secret)
    rotation = wait_for_rotation(Path(settings.credentials_dir), running, settings.credentials_check_interval)
    tasks = {asyncio.create_task(work), asyncio.create_task(rotation)}
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in done:
        task.result()


async def _consume(bus: Bus, executor: Executor) -> None:
    await bus.consume(executor_queue(executor.route), PlaceOrder, executor.on_order, prefetch=16, ordered=False)
    await asyncio.Event().wait()

"""The life of a worker process: logs, tracing, health port, broker connection, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from trailingstop import telemetry
from trailingstop.bus import Bus, connect_bus
from trailingstop.health import HealthServer
from trailingstop.settings import Settings

log = logging.getLogger(__name__)

Body = Callable[[Bus, HealthServer], Coroutine[Any, Any, None]]


async def serve(name: str, body: Body, settings: Settings) -> int:
    """Run ``body`` until it returns or SIGTERM/SIGINT arrives; serve /healthz and /metrics meanwhile."""
    telemetry.setup(settings, name)
    health = HealthServer(settings.health_port)
    port = await health.start()
    log.info("%s starting; health and metrics on port %d", name, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bus: Bus | None = None
    try:
        bus = await _until_stopped(connect_bus(settings.amqp, name, topology="check"), stop)
        if bus is None:
            return 0
        connected = bus
        health.add_check("broker", lambda: (connected.connected, "connected" if connected.connected else "down"))
        work = asyncio.create_task(body(connected, health))
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            stopping.cancel()
            work.result()  # re-raise a crash: the process exits non-zero and the pod restarts
            return 0
        log.info("%s stopping", name)
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return 0
    finally:
        if bus is not None:
            await bus.close()
        await health.stop()


async def _until_stopped(coroutine: Awaitable[Bus], stop: asyncio.Event) -> Bus | None:
    task = asyncio.ensure_future(coroutine)
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopping.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None

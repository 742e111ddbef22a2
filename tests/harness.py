"""Test harness: worker processes, a RabbitMQ vhost per test, a bus probe, an in-memory operator.

Workers run as real processes (``python -m trailingstop worker ...``), exactly as a pod runs them,
against the real broker; Binance is the project's fake (``tests.fakebinance``). The in-memory
operator is the operator's own event router and status writer (``trailingstop.operator.events``)
over a store kept in memory instead of the Kubernetes API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiohttp

from trailingstop.bus import EXCHANGES, MARKETDATA_EXCHANGE, ORDER_EVENTS_EXCHANGE, STOP_EVENTS_EXCHANGE, Bus
from trailingstop.core.contracts import (
    OrderResult,
    PriceTick,
    StopCommand,
    StopEvent,
    TrailingStopSpec,
    TrailingStopStatus,
)
from trailingstop.operator.events import EventRouter, StatusWriter
from trailingstop.operator.stops import StopRecord, StopStore


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy; fail with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(interval)


def wait_until(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25, what: str = "") -> Any:
    """:func:`eventually` for synchronous tests."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


def metric_total(text: str, series: str) -> float:
    """Sum of the samples of ``series`` in a Prometheus text page: a bare name sums every label
    set, a name with its labels (``x_total{kind="a"}``) picks that one series."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(series) and line[len(series)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(port: int) -> str:
    """A local process's /metrics page (blocking; for benchmark loops)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


# --- RabbitMQ vhosts ---------------------------------------------------------------------------------


class Vhost:
    """A fresh vhost on the test broker (management API), deleted afterwards: tests never share queues."""

    def __init__(self, amqp_url: str, management_url: str) -> None:
        self.base_url = amqp_url
        self.management_url = management_url.rstrip("/")
        self.name = f"ts-test-{uuid.uuid4().hex[:10]}"
        parts = urlsplit(amqp_url)
        self.user = parts.username or "guest"
        credentials = base64.b64encode(f"{self.user}:{parts.password or 'guest'}".encode()).decode()
        self.auth_headers = {"Authorization": f"Basic {credentials}"}
        self.url = urlunsplit(parts._replace(path="/" + quote(self.name, safe="")))

    async def create(self) -> str:
        async with aiohttp.ClientSession(headers=self.auth_headers) as session:
            async with session.put(f"{self.management_url}/api/vhosts/{self.name}") as response:
                response.raise_for_status()
            permissions = {"configure": ".*", "write": ".*", "read": ".*"}
            url = f"{self.management_url}/api/permissions/{self.name}/{self.user}"
            async with session.put(url, json=permissions) as response:
                response.raise_for_status()
        return self.url

    async def delete_tenants(self, namespaces: Iterable[str]) -> None:
        """The operator's broker tenants (vhost and user ``ts.<instance>.<namespace>``) of these namespaces."""
        endings = tuple(f".{namespace}" for namespace in namespaces)
        async with aiohttp.ClientSession(headers=self.auth_headers) as session:
            for kind in ("vhosts", "users"):
                async with session.get(f"{self.management_url}/api/{kind}") as response:
                    names = [item["name"] for item in await response.json()]
                for name in names:
                    if name.startswith("ts.") and name.endswith(endings):
                        async with session.delete(f"{self.management_url}/api/{kind}/{quote(name, safe='')}"):
                            pass

    async def queues(self, vhost: str) -> list[dict[str, Any]]:
        """The queues of ``vhost`` as the management API lists them (name, messages, consumers, ...)."""
        async with (
            aiohttp.ClientSession(headers=self.auth_headers) as session,
            session.get(f"{self.management_url}/api/queues/{quote(vhost, safe='')}") as response,
        ):
            response.raise_for_status()
            return list(await response.json())

    async def exists(self, kind: str, name: str) -> bool:
        """Whether the broker has this vhost or user (``kind``: ``vhosts`` or ``users``)."""
        async with (
            aiohttp.ClientSession(headers=self.auth_headers) as session,
            session.get(f"{self.management_url}/api/{kind}/{quote(name, safe='')}") as response,
        ):
            return response.status == 200

    async def delete(self) -> None:
        async with (
            aiohttp.ClientSession(headers=self.auth_headers) as session,
            session.delete(f"{self.management_url}/api/vhosts/{self.name}") as response,
        ):
            if response.status not in (204, 404):
                response.raise_for_status()



# --- worker processes --------------------------------------------------------------------------------


def worker_env(amqp_url: str, fake: Any = None, **extra: str) -> dict[str, str]:
    """The environment a worker pod would get, pointed at the test broker and the fake Binance."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "TRAILINGSTOP_"))}
    env.update(
        AMQP_URL=amqp_url,
        TRAILINGSTOP_LOG_FORMAT="json",
        TRAILINGSTOP_SYNC_TIMEOUT="3",
        TRAILINGSTOP_FLUSH_INTERVAL="0.2",
        TRAILINGSTOP_SILENCE_TIMEOUT="2",
        PYTHONUNBUFFERED="1",
    )
    if fake is not None:
        env.update(TRAILINGSTOP_BINANCE_API_URL=fake.api_url, TRAILINGSTOP_BINANCE_STREAM_URL=fake.stream_url)
    env.update(extra)
    return env


class WorkerProcess:
    """``trailingstop <args>`` as a child process with its own health port and log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: Path, name: str | None = None) -> None:
        self.args = args
        self.name = name or "-".join(a.lstrip("-") for a in args[:3])
        self.port = free_port()
        self.env = {**env, "TRAILINGSTOP_HEALTH_PORT": str(self.port)}
        self.log_path = log_dir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trailingstop", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def health(self) -> tuple[int, dict[str, Any]]:
        status, text = await self._get("/healthz")
        return status, dict(json.loads(text))

    async def metrics(self) -> str:
        return (await self._get("/metrics"))[1]

    async def _get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(f"{self.url}{path}") as response,
        ):
            return response.status, await response.text()

    async def wait_healthy(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            self.assert_running()
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                status, body = await self.health()
                if status == 200:
                    return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not healthy after {timeout}s; log:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def assert_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}; log:\n{self.log_tail()}")

    def kill(self) -> None:
        """``kill -9``: no cleanup, no goodbye, like a node dying."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    async def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.process.poll() is None:
            self.kill()
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records


class Workers:
    """Every worker process a test starts; all stopped (and their logs kept) at the end."""

    def __init__(self, amqp_url: str, fake: Any, log_dir: Path) -> None:
        self.amqp_url = amqp_url
        self.fake = fake
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(self, *args: str, env: dict[str, str] | None = None, name: str | None = None) -> WorkerProcess:
        base = worker_env(self.amqp_url, self.fake)
        process = WorkerProcess(list(args), {**base, **(env or {})}, self.log_dir, name).start()
        self.started.append(process)
        return process

    def marketdata(self, symbol: str, source: str = "binance", **env: str) -> WorkerProcess:
        return self.start("worker", "marketdata", "--symbol", symbol, "--source", source, env=env,
                          name=f"marketdata-{symbol}-{len(self.started)}")

    def orchestrator(self, symbol: str, **env: str) -> WorkerProcess:
        return self.start("worker", "orchestrator", "--symbol", symbol, env=env,
                          name=f"orchestrator-{symbol}-{len(self.started)}")

    def executor(self, route: str = "simulate", **env: str) -> WorkerProcess:
        return self.start("worker", "executor", "--route", route, env=env, name=f"executor-{route}-{len(self.started)}")

    async def stop_all(self) -> None:
        await asyncio.gather(*(process.stop() for process in self.started))


# --- watching the bus --------------------------------------------------------------------------------


class Probe:
    """Private queues on the exchanges, recording every StopEvent, OrderResult and PriceTick."""

    def __init__(self, amqp_url: str, tick_symbols: Iterable[str] = ()) -> None:
        self.amqp_url = amqp_url
        self.tick_symbols = list(tick_symbols)
        self.events: list[StopEvent] = []
        self.results: list[OrderResult] = []
        self.ticks: list[PriceTick] = []
        self.headers: list[tuple[str, dict[str, Any]]] = []  # (clientOrderId, headers) of results
        self.tick_headers: dict[int, dict[str, Any]] = {}  # trade id -> headers
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> Probe:
        self._connection = await aio_pika.connect_robust(self.amqp_url)
        channel = await self._connection.channel()
        for name, kind in EXCHANGES.items():  # the same declaration every component makes
            await channel.declare_exchange(name, kind, durable=True)
        bindings: list[tuple[str, str, Callable[[bytes, dict[str, Any]], None]]] = [
            (STOP_EVENTS_EXCHANGE, "#", lambda body, h: self.events.append(StopEvent.from_json(body))),
            (ORDER_EVENTS_EXCHANGE, "", lambda body, h: self._result(body, h)),
        ]
        bindings += [(MARKETDATA_EXCHANGE, s, self._tick) for s in self.tick_symbols]
        for exchange, key, record in bindings:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, key)
            await queue.consume(self._consumer(record), no_ack=True)
        return self

    def _tick(self, body: bytes, headers: dict[str, Any]) -> None:
        tick = PriceTick.from_json(body)
        self.ticks.append(tick)
        self.tick_headers[tick.trade_id] = headers

    def _result(self, body: bytes, headers: dict[str, Any]) -> None:
        result = OrderResult.from_json(body)
        self.results.append(result)
        self.headers.append((result.client_order_id, headers))

    @staticmethod
    def _consumer(record: Callable[[bytes, dict[str, Any]], None]) -> Callable[[Any], Any]:
        async def consume(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            record(message.body, dict(message.headers or {}))

        return consume

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    def results_for(self, client_order_id: str) -> list[OrderResult]:
        return [r for r in self.results if r.client_order_id == client_order_id]

    def events_for(self, uid: str, kind: str | None = None) -> list[StopEvent]:
        return [e for e in self.events if e.uid == uid and (kind is None or e.type == kind)]


# --- the operator's bus side, in memory -----------------------------------------------------------------


class MemoryOperator:
    """The operator's real event router and status writer over an in-memory store."""

    def __init__(self, bus: Bus, interval: float = 0.2, namespace: str = "default") -> None:
        self.bus = bus
        self.namespace = namespace  # the one tenant: the test's vhost
        self.store = StopStore()
        self.router = EventRouter(self.store, StatusWriter(self.store, interval=interval))

    async def start(self) -> MemoryOperator:
        await self.router.start()
        await self.router.attach(self.namespace, self.bus)
        return self

    async def stop(self) -> None:
        await self.router.stop()

    async def add(self, name: str, spec: dict[str, Any]) -> StopRecord:
        """What ``kubectl apply`` + the operator's create handler do: record the stop and upsert it."""
        record = self.store.put(
            StopRecord(str(uuid.uuid4()), self.namespace, name, 1, TrailingStopSpec.model_validate(spec))
        )
        await self.bus.publish_command(StopCommand.upsert(record.definition()))
        return record

    def status(self, record: StopRecord) -> TrailingStopStatus:
        return record.status

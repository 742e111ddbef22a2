"""Probes and metrics on one port, for every process.

* ``/livez`` (liveness): only the process's own progress. That it answers at all says its event
  loop runs; a role adds what else must advance (marketdata: its feed's read loop). Never the
  broker or the exchange: an outage of either must not restart pods, which would then all sync at
  once when it ends.
* ``/readyz`` and ``/healthz`` (readiness): every check, the broker's and the exchange's included;
  the detail says which failed.
* ``/metrics``: Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

# A check answers (healthy, detail).
Check = Callable[[], tuple[bool, str]]


class HealthServer:
    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self.checks: dict[str, Check] = {}
        self.liveness: set[str] = set()
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: Check, *, liveness: bool = False) -> None:
        """A readiness check; with ``liveness``, one of the process's own progress as well."""
        self.checks[name] = check
        if liveness:
            self.liveness.add(name)

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def report(self, names: set[str] | None = None) -> tuple[bool, dict[str, dict[str, object]]]:
        results = {}
        for name, check in self.checks.items():
            if names is None or name in names:
                healthy, detail = check()
                results[name] = {"ok": healthy, "detail": detail}
        return all(r["ok"] for r in results.values()), results

    async def _livez(self, request: web.Request) -> web.Response:
        return self._answer(*self.report(self.liveness))

    async def _readyz(self, request: web.Request) -> web.Response:
        return self._answer(*self.report())

    @staticmethod
    def _answer(healthy: bool, results: dict[str, dict[str, object]]) -> web.Response:
        return web.Response(
            status=200 if healthy else 503,
            text=json.dumps({"ok": healthy, "checks": results}),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

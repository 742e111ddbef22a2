"""``/healthz`` and ``/metrics`` on one port, for every process (probes and Prometheus)."""

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
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._healthz)
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

    def report(self) -> tuple[bool, dict[str, dict[str, object]]]:
        results = {}
        for name, check in self.checks.items():
            healthy, detail = check()
            results[name] = {"ok": healthy, "detail": detail}
        return all(r["ok"] for r in results.values()), results

    async def _healthz(self, request: web.Request) -> web.Response:
        healthy, results = self.report()
        return web.Response(
            status=200 if healthy else 503,
            text=json.dumps({"ok": healthy, "checks": results}),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

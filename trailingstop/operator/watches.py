"""Watches the operator keeps besides kopf's: the namespaces' ``ts-amqp`` Secret.

kopf's watches filter on the client, so watching Secrets through kopf would need the right to list
every Secret, API keys included. This watch asks the API server for the one Secret by name
(``fieldSelector=metadata.name=ts-amqp``), which RBAC authorizes against the Role's
``resourceNames``: the operator still cannot read any other Secret. A deleted or edited ts-amqp
Secret is written back within seconds, without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.rest import ApiException

from trailingstop.operator.kube import Kube

log = logging.getLogger(__name__)

OnChange = Callable[[str], Awaitable[None]]
SERVER_TIMEOUT = 300  # seconds a watch stays open before the server ends it (then it starts again)


class SecretWatch:
    def __init__(self, kube: Kube, name: str, namespaces: tuple[str, ...], clusterwide: bool,
                 on_change: OnChange) -> None:
        self.kube = kube
        self.name = name
        self.namespaces = namespaces
        self.clusterwide = clusterwide
        self.on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> SecretWatch:
        scopes: list[str | None] = [None] if self.clusterwide else list(self.namespaces)
        self._tasks = [asyncio.create_task(self._follow(scope)) for scope in scopes]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, namespace: str | None) -> None:
        delay = 1.0
        while True:
            try:
                await self._stream(namespace)
                delay = 1.0
            except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("watching the %s Secret of %s failed (%s); again in %.0fs", self.name,
                            namespace or "every namespace", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _stream(self, namespace: str | None) -> None:
        core = self.kube.core
        selector = f"metadata.name={self.name}"
        lister = core.list_secret_for_all_namespaces if namespace is None else core.list_namespaced_secret
        args = () if namespace is None else (namespace,)
        async with watch.Watch().stream(lister, *args, field_selector=selector, timeout_seconds=SERVER_TIMEOUT,
                                        _request_timeout=SERVER_TIMEOUT + 30) as stream:
            async for event in stream:
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    await self.on_change(event["object"].metadata.namespace)

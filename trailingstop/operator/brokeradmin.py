"""The two ways the operator sets broker tenants up (:class:`~trailingstop.operator.tenancy.BrokerAdmin`).

* :class:`ManagementApi`: RabbitMQ's management HTTP API, with the operator's own account, which
  needs the ``administrator`` tag (creating users and vhosts requires it).
* :class:`TopologyOperator`: ``Vhost``, ``User`` and ``Permission`` resources of the RabbitMQ
  messaging-topology-operator, created in the operator's own namespace (so the users' credentials
  Secrets never reach a tenant namespace except as the workers' URL) and referring to a
  ``RabbitmqCluster``. The topology operator makes the broker objects; we wait until they are Ready.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from trailingstop.bus import worker_permissions
from trailingstop.operator import builders
from trailingstop.operator.kube import Kube
from trailingstop.operator.tenancy import BrokerAdminError

FULL_PERMISSIONS = {"configure": ".*", "write": ".*", "read": ".*"}
MANAGEMENT_PORT = 15672


def default_management_url(amqp_url: str) -> str:
    """``http(s)://<broker host>:15672``: where the management plugin listens next to AMQP."""
    parts = urlsplit(amqp_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{MANAGEMENT_PORT}"


def credentials_of(amqp_url: str) -> tuple[str, str]:
    parts = urlsplit(amqp_url)
    return unquote(parts.username or "guest"), unquote(parts.password or "guest")


class ManagementApi:
    def __init__(self, management_url: str, username: str, password: str, timeout: float = 15.0) -> None:
        self.base = management_url.rstrip("/")
        self.username = username
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def check(self) -> None:
        me = await self._request("GET", "/api/whoami")
        tags = me.get("tags", []) if isinstance(me, dict) else []
        tags = tags.split(",") if isinstance(tags, str) else tags
        if "administrator" not in tags:
            raise BrokerAdminError(
                f"the operator's broker user {self.username!r} needs the administrator tag to create "
                f"the namespaces' vhosts and users (it has {sorted(tags) or 'none'}); see docs/INSTALL.md"
            )

    async def put_tenant(self, vhost: str, user: str, password: str) -> None:
        v, u = quote(vhost, safe=""), quote(user, safe="")
        await self._request("PUT", f"/api/vhosts/{v}", {"description": "trailingstop tenant", "tags": "trailingstop"})
        await self._request("PUT", f"/api/users/{u}", {"password": password, "tags": ""})
        await self._request("PUT", f"/api/permissions/{v}/{u}", worker_permissions())
        await self._request("PUT", f"/api/permissions/{v}/{quote(self.username, safe='')}", FULL_PERMISSIONS)

    async def remove_tenant(self, vhost: str, user: str) -> None:
        await self._request("DELETE", f"/api/users/{quote(user, safe='')}", missing_ok=True)
        await self._request("DELETE", f"/api/vhosts/{quote(vhost, safe='')}", missing_ok=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, body: Any = None, missing_ok: bool = False) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        try:
            async with self._session.request(method, self.base + path, json=body) as response:
                if response.status == 404 and missing_ok:
                    return None
                if response.status >= 400:
                    text = (await response.text())[:300]
                    raise BrokerAdminError(f"RabbitMQ management API: {method} {path}: HTTP {response.status} {text}")
                if response.content_type == "application/json":
                    return await response.json()
                return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BrokerAdminError(f"RabbitMQ management API at {self.base} unreachable: {exc!r}") from exc


class TopologyOperator:
    def __init__(
        self, kube: Kube, namespace: str, cluster: str, operator_user: str, ready_timeout: float = 60.0
    ) -> None:
        self.kube = kube
        self.namespace = namespace  # the operator's own: tenants never see these objects
        self.cluster = cluster
        self.operator_user = operator_user
        self.ready_timeout = ready_timeout

    async def check(self) -> None:
        if not self.cluster:
            raise BrokerAdminError(
                "TRAILINGSTOP_RABBITMQ_CLUSTER must name the RabbitmqCluster the topology operator's objects refer to"
            )

    async def put_tenant(self, vhost: str, user: str, password: str) -> None:
        objects = builders.topology_objects(self.namespace, self.cluster, vhost, user, password, self.operator_user)
        for desired in objects:
            await self.kube.apply(desired)
        await self._wait_ready([o for o in objects if o["kind"] != "Secret"])

    async def remove_tenant(self, vhost: str, user: str) -> None:
        objects = builders.topology_objects(self.namespace, self.cluster, vhost, user, "", self.operator_user)
        for desired in reversed(objects):
            await self.kube.delete(desired)

    async def close(self) -> None:
        return None

    async def _wait_ready(self, objects: list[dict[str, Any]]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        for desired in objects:
            while not await self._ready(desired):
                if time.monotonic() > deadline:
                    raise BrokerAdminError(
                        f"{desired['kind']} {self.namespace}/{desired['metadata']['name']} not Ready after "
                        f"{self.ready_timeout:.0f}s: is the messaging-topology-operator running?"
                    )
                await asyncio.sleep(1.0)

    async def _ready(self, desired: dict[str, Any]) -> bool:
        current = await self.kube.read(desired)
        conditions = (current or {}).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

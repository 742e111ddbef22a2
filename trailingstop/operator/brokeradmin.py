"""The two ways the operator sets broker tenants up (:class:`~trailingstop.operator.tenancy.BrokerAdmin`).

* :class:`ManagementApi`: RabbitMQ's management HTTP API, with the operator's own account, which
  needs the ``administrator`` tag (creating users and vhosts requires it).
* :class:`TopologyOperator`: ``Vhost``, ``User`` and ``Permission`` resources of the RabbitMQ
  messaging-topology-operator, created in the operator's own namespace (so the users' credentials
  Secrets never reach a tenant namespace except as the workers' URL) and referring to a
  ``RabbitmqCluster`` or to a connection Secret (uri, username, password) for a broker no Cluster
  Operator manages. The topology operator makes the broker objects; we wait until they are Ready.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from trailingstop.bus import worker_permissions
from trailingstop.operator import builders
from trailingstop.operator.kube import Kube
from trailingstop.operator.tenancy import BrokerAdminError

log = logging.getLogger(__name__)

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
    """Tenants as the messaging-topology-operator's objects, in the operator's own namespace.

    The topology operator declares them on the broker and marks each ``Ready`` once it has; we
    wait for that, at the object's current generation. Deleting the objects makes it remove the
    vhost and the user (its finalizers), and we wait until they are gone, so a tenant set up
    again right after never meets a half-deleted one.

    It imports the User's password once, into its own ``<user>-user-credentials`` Secret. When
    the tenant's password changes (a new ``ts-amqp``), the User and the workers' Permission are
    made again: deleting the broker user drops its permissions, and new objects are Ready only
    once declared with the new password. That generated Secret is deleted too (after the User,
    before the new one): a new User would otherwise adopt it with the old password.

    Definitions the broker loses later (a broker without persistence, restarted) come back with
    the topology operator's own periodic reconcile (its ``SYNC_PERIOD``), not from here.
    """

    def __init__(
        self, kube: Kube, namespace: str, reference: dict[str, Any], operator_user: str,
        ready_timeout: float = 60.0, poll_interval: float = 0.5,
    ) -> None:
        self.kube = kube
        self.namespace = namespace  # the operator's own: tenants never see these objects
        self.reference = reference
        self.operator_user = operator_user
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval

    async def check(self) -> None:
        """A connection Secret must be there with its three keys (their values are the topology
        operator's business; we only look at the key names)."""
        secret = self.reference.get("connectionSecret", {}).get("name")
        if not secret:
            return  # a RabbitmqCluster: the topology operator says on our objects if it is missing
        found = await self.kube.read({"kind": "Secret", "metadata": {"namespace": self.namespace, "name": secret}})
        if found is None:
            raise BrokerAdminError(f"the connection Secret {self.namespace}/{secret} (TRAILINGSTOP_RABBITMQ_CONNECTION_"
                                   f"SECRET) does not exist; it needs the keys uri, username and password")
        missing = sorted({"uri", "username", "password"} - set(found.get("data") or {}))
        if missing:
            raise BrokerAdminError(f"the connection Secret {self.namespace}/{secret} lacks the key(s) "
                                   f"{', '.join(missing)} (it needs uri, username and password)")

    async def put_tenant(self, vhost: str, user: str, password: str) -> None:
        objects = self._objects(vhost, user, password)
        deadline = time.monotonic() + self.ready_timeout
        await self._wait_gone([o for o in objects if await self._terminating(o)], deadline)
        await self._forget_old_password(objects, user, password, deadline)
        for desired in objects:
            await self.kube.apply(desired)
        await self._wait_ready([o for o in objects if o["kind"] != "Secret"], deadline)

    async def remove_tenant(self, vhost: str, user: str) -> None:
        objects = self._objects(vhost, user, "")
        for desired in reversed(objects):
            await self.kube.delete(desired)
        await self._wait_gone([o for o in objects if o["kind"] != "Secret"], time.monotonic() + self.ready_timeout)

    async def close(self) -> None:
        return None

    def _objects(self, vhost: str, user: str, password: str) -> list[dict[str, Any]]:
        return builders.topology_objects(self.namespace, self.reference, vhost, user, password, self.operator_user)

    async def _forget_old_password(
        self, objects: list[dict[str, Any]], username: str, password: str, deadline: float
    ) -> None:
        """The User and the workers' Permission go if the User was made with another password."""
        user = next(o for o in objects if o["kind"] == "User")
        workers = next(o for o in objects if o["kind"] == "Permission" and o["spec"]["user"] == username)
        current = await self.kube.read(user)
        generated = ((current or {}).get("status") or {}).get("credentials", {}).get("name")
        if not generated:
            return
        if await self.kube.secret_value(self.namespace, generated, "password") in (None, password):
            return
        log.info("broker user %s gets a new password: its User and Permission are made again",
                 user["metadata"]["name"])
        for desired in (workers, user):
            await self.kube.delete(desired)
        await self._wait_gone([workers, user], deadline)
        # Then the User's generated Secret, before the User is made again: the garbage collector
        # removes it only some time after the User, and a new User of the same name that finds it
        # adopts it, old password and all (the broker user keeps the old password, and the
        # workers' new URL is refused).
        stale = {"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": self.namespace, "name": generated}}
        await self.kube.delete(stale)
        await self._wait_gone([stale], deadline)

    async def _terminating(self, desired: dict[str, Any]) -> bool:
        current = await self.kube.read(desired)
        return bool(current and current["metadata"].get("deletionTimestamp"))

    async def _wait_gone(self, objects: list[dict[str, Any]], deadline: float) -> None:
        for desired in objects:
            while await self.kube.read(desired) is not None:
                if time.monotonic() > deadline:
                    raise BrokerAdminError(f"{self._describe(desired)} still being deleted after "
                                           f"{self.ready_timeout:.0f}s: is the messaging-topology-operator running?")
                await asyncio.sleep(self.poll_interval)

    async def _wait_ready(self, objects: list[dict[str, Any]], deadline: float) -> None:
        for desired in objects:
            while (problem := await self._not_ready(desired)) is not None:
                if time.monotonic() > deadline:
                    raise BrokerAdminError(f"{self._describe(desired)} not Ready after {self.ready_timeout:.0f}s: "
                                           f"{problem}")
                await asyncio.sleep(self.poll_interval)

    async def _not_ready(self, desired: dict[str, Any]) -> str | None:
        """None once the topology operator has declared the object's current generation, else why not."""
        current = await self.kube.read(desired)
        if current is None:
            return "it is gone"
        status = current.get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
        if ready is None:
            return "no status yet: is the messaging-topology-operator running and watching this namespace?"
        if ready.get("status") != "True":
            return str(ready.get("message") or ready.get("reason") or "not ready")
        if status.get("observedGeneration") != current["metadata"].get("generation"):
            return "its latest change is not declared yet"
        return None

    def _describe(self, desired: dict[str, Any]) -> str:
        return f"{desired['kind']} {self.namespace}/{desired['metadata']['name']}"

"""Broker tenants: one RabbitMQ virtual host and one least-privilege user per watched namespace.

A namespace's workers (marketdata, orchestrator, executors) and the operator's side of that
namespace talk in the namespace's own vhost, ``ts.<instance>.<namespace>``, where ``instance``
names the operator release (``TRAILINGSTOP_INSTANCE``, by default ``<release namespace>.<release>``).
So queue names need not carry the namespace: two namespaces never meet on the broker, and two
releases on one broker each consume only their own events (DESIGN §5.1).

The workers get a user of the same name that may touch only their own queues in that vhost
(:func:`trailingstop.bus.worker_permissions`); the operator's own account, which administers the
broker, never leaves the operator's namespace. The user's URL, password included, is written to
the namespace's ``ts-amqp`` Secret; a restarted operator reads the password back from there, so
workers keep their connections. The tenant goes (user and vhost) with the namespace's last stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from trailingstop.bus import Bus, connect_bus

log = logging.getLogger(__name__)


def tenant_name(instance: str, namespace: str) -> str:
    """The vhost, and the workers' user, of ``namespace`` under operator release ``instance``."""
    return f"ts.{instance}.{namespace}"


def with_heartbeat(url: str, seconds: int) -> str:
    """``url`` asking for AMQP heartbeats every ``seconds`` (unchanged for 0)."""
    if seconds <= 0:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "heartbeat"] + [("heartbeat", str(seconds))]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def amqp_url(base: str, vhost: str, user: str | None = None, password: str | None = None) -> str:
    """``base`` (scheme, host, port, query kept) pointed at ``vhost``, with other credentials if given."""
    parts = urlsplit(base)
    host = parts.hostname or "localhost"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    user = user if user is not None else unquote(parts.username or "")
    password = password if password is not None else unquote(parts.password or "")
    if user:
        credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        netloc = f"{credentials}@{netloc}"
    return urlunsplit((parts.scheme, netloc, "/" + quote(vhost, safe=""), parts.query, ""))


def password_in(url: str | None, user: str, vhost: str) -> str | None:
    """The password of a tenant URL made earlier for this user and vhost (None if it is not one)."""
    if not url:
        return None
    parts = urlsplit(url)
    same = unquote(parts.username or "") == user and unquote(parts.path.removeprefix("/")) == vhost
    return unquote(parts.password) if same and parts.password else None


def credentials_digest(url: str) -> str:
    """A digest of a tenant URL for the workers' pod template: a new password rolls them."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class BrokerAdminError(Exception):
    """The broker refused or could not be asked to set a tenant up (the message says which)."""


class BrokerAdmin(Protocol):
    """Creates and removes tenants: the RabbitMQ management API or the topology operator."""

    async def check(self) -> None:
        """Fail with a clear message if the operator's account cannot administer tenants."""

    async def put_tenant(self, vhost: str, user: str, password: str) -> None:
        """Vhost, user with that password, the user's and the operator's permissions; idempotent."""

    async def remove_tenant(self, vhost: str, user: str) -> None:
        """User and vhost gone; nothing to do if they already are."""

    async def close(self) -> None: ...


@dataclass
class Tenant:
    namespace: str
    name: str  # vhost and user
    worker_url: str  # carries the workers' password: never logged, only written to ts-amqp
    bus: Bus  # the operator's connection to the tenant

    @property
    def digest(self) -> str:
        return credentials_digest(self.worker_url)


# Reads the URL saved in a namespace's ts-amqp Secret (None if there is none).
SavedUrl = Callable[[str], Awaitable[str | None]]
# Called once a tenant's connection is up: the event router starts consuming there.
Attach = Callable[[str, Bus], Awaitable[None]]


class Tenants:
    """The operator's tenants, set up on demand and serialized per namespace."""

    def __init__(self, instance: str, admin_url: str, admin: BrokerAdmin, saved_url: SavedUrl, attach: Attach,
                 heartbeat: int = 0) -> None:
        self.instance = instance
        self.admin_url = admin_url
        self.heartbeat = heartbeat  # seconds, for the operator's own connections (0: the broker's)
        self.admin = admin
        self.saved_url = saved_url
        self.attach = attach
        self._tenants: dict[str, Tenant] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, namespace: str) -> Tenant | None:
        return self._tenants.get(namespace)

    def all(self) -> list[Tenant]:
        return list(self._tenants.values())

    async def provision(self, namespace: str) -> Tenant:
        """The namespace's tenant, set up (or checked again) on the broker, connected and attached."""
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            tenant = self._tenants.get(namespace)
            if tenant is not None:
                return tenant
            name = tenant_name(self.instance, namespace)
            password = password_in(await self.saved_url(namespace), name, name) or secrets.token_urlsafe(24)
            await self.admin.put_tenant(name, name, password)
            own = with_heartbeat(amqp_url(self.admin_url, name), self.heartbeat)
            bus = await connect_bus(own, f"trailingstop-operator/{namespace}", attempts=5)
            try:
                await self.attach(namespace, bus)
            except BaseException:
                await bus.close()
                raise
            tenant = Tenant(namespace, name, amqp_url(self.admin_url, name, name, password), bus)
            self._tenants[namespace] = tenant
            log.info("broker tenant %s ready for namespace %s", name, namespace, extra={"namespace": namespace})
            return tenant

    async def retire(self, namespace: str) -> None:
        """The namespace has no stops any more: close our connection, remove user and vhost."""
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            tenant = self._tenants.pop(namespace, None)
            if tenant is not None:
                await tenant.bus.close()
            name = tenant_name(self.instance, namespace)
            await self.admin.remove_tenant(name, name)
            log.info("broker tenant %s removed: no TrailingStop left in %s", name, namespace,
                     extra={"namespace": namespace})

    async def audit(self) -> None:
        """Set every tenant up again (idempotent): a broker that lost its definitions, such as the
        quickstart broker without persistence after a restart, gets them back, and the robust
        connections reconnect by themselves once the vhost is there again."""
        for tenant in self.all():
            async with self._locks.setdefault(tenant.namespace, asyncio.Lock()):
                if self._tenants.get(tenant.namespace) is tenant:
                    password = password_in(tenant.worker_url, tenant.name, tenant.name) or ""
                    await self.admin.put_tenant(tenant.name, tenant.name, password)

    async def close(self) -> None:
        for tenant in self._tenants.values():
            await tenant.bus.close()
        self._tenants.clear()
        await self.admin.close()

    @property
    def connected(self) -> bool:
        return all(tenant.bus.connected for tenant in self._tenants.values())

"""Leader election on a coordination.k8s.io Lease: two operator replicas, one working.

The chart runs two replicas; each starts its health server, then waits for the Lease. The holder
renews it every ``renew`` seconds; the other retries every ``retry`` seconds and takes the Lease
over once it has not been renewed for ``duration`` seconds (the leader's node stopped) or at once
when the leader gives it up (its pod was deleted: a clean shutdown releases it). A leader that
cannot renew in time stops working before anyone else can start, so two never run together:
renewals are optimistic (resourceVersion), and a leader gives up ``renew`` seconds before its
Lease could expire in the other's eyes.

A leader that hangs (a frozen process, a paused VM) holds broker deliveries it has not settled.
Two things keep them from being lost or delayed: the operator's own AMQP connections ask for
heartbeats at a third of the Lease's duration, so the broker drops a silent leader's connections
(and requeues its deliveries) before the standby can take over; and :meth:`LeaderElection.fence`
holds every message and status write of a leader not renewed in time, so a leader that wakes up
after losing the Lease acts on nothing (found by tests/e2e/test_production.py: a thawed leader
acked an Armed event for a stop it did not know, and the stop stayed Pending).

The same scheme as client-go's leader election, which kube-controller-manager uses; kopf's own
peering pauses lower-priority operators but is not an election (two of equal priority both stop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from trailingstop import telemetry

log = logging.getLogger(__name__)


class LeaderElection:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str, *,
                 duration: float = 15.0, renew: float = 5.0, retry: float = 2.0) -> None:
        self.leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew = renew
        self.retry = retry
        self.leading = False
        self._renewed_at = 0.0  # monotonic time of our last successful renewal

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease."""
        announced = False
        while not await self._try_to_lead():
            if not announced:
                log.info("standing by: the Lease %s/%s is held by another replica", self.namespace, self.name)
                announced = True
            await asyncio.sleep(self.retry)
        self.leading = True
        telemetry.OPERATOR_LEADING.set(1)
        log.info("leading: holding the Lease %s/%s as %s", self.namespace, self.name, self.identity)

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew the Lease until cancelled; if it cannot be renewed in time, call ``on_lost``."""
        while True:
            await asyncio.sleep(self.renew)
            if await self._try_to_lead():
                continue
            if time.monotonic() - self._renewed_at >= self.duration - self.renew:
                self.leading = False
                telemetry.OPERATOR_LEADING.set(0)
                log.error("lost the Lease %s/%s: stopping work so the other replica can take over",
                          self.namespace, self.name)
                on_lost()
                return

    def certain(self) -> bool:
        """Leading, and renewed recently enough that no other replica can have taken the Lease
        since. A process that was frozen (SIGSTOP, a paused VM, a stalled node) wakes up still
        "leading" with a Lease that may be another replica's by now: until :meth:`keep` finds
        out, nothing it does may reach the stops."""
        return self.leading and time.monotonic() - self._renewed_at < self.duration - self.renew

    async def fence(self) -> None:
        """Return at once while :meth:`certain`; otherwise wait for a renewal, or for ever if the
        Lease is lost (the process is stopping: its unsettled messages go back to their queues
        for the new leader instead of being acted on and acked here)."""
        while not self.certain():
            await asyncio.sleep(0.2)

    async def release(self) -> None:
        """Give the Lease up (a clean shutdown): the standby takes over at once."""
        if not self.leading:
            return
        self.leading = False
        telemetry.OPERATOR_LEADING.set(0)
        try:
            lease = await self.leases.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.lease_duration_seconds = 1
                await self.leases.replace_namespaced_lease(self.name, self.namespace, lease)
                log.info("released the Lease %s/%s", self.namespace, self.name)
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not release the Lease (%s); the other replica waits for it to expire", exc)

    async def _try_to_lead(self) -> bool:
        """One attempt to take or renew the Lease; True if we hold it afterwards."""
        now = datetime.now(UTC)
        try:
            lease = await self.leases.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                return self._failed(exc)
            return await self._create(now)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._failed(exc)
        spec = lease.spec
        ours = spec.holder_identity == self.identity
        if not ours and spec.holder_identity and not _expired(spec):
            return False
        if not ours:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = int(self.duration)
        spec.renew_time = now
        try:
            await self.leases.replace_namespaced_lease(self.name, self.namespace, lease)  # resourceVersion checked
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            return self._failed(exc)
        self._renewed_at = time.monotonic()
        return True

    async def _create(self, now: datetime) -> bool:
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=int(self.duration),
                                    acquire_time=now, renew_time=now, lease_transitions=0),
        )
        try:
            await self.leases.create_namespaced_lease(self.namespace, body)
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            return self._failed(exc)  # 409: the other replica created it first
        self._renewed_at = time.monotonic()
        return True

    def _failed(self, exc: BaseException) -> bool:
        if not (isinstance(exc, ApiException) and exc.status == 409):
            log.warning("the Lease %s/%s could not be read or written: %s", self.namespace, self.name, exc)
        return False


def _expired(spec: Any) -> bool:
    renewed = spec.renew_time or spec.acquire_time
    if renewed is None:
        return True
    if isinstance(renewed, str):
        renewed = datetime.fromisoformat(renewed.replace("Z", "+00:00"))
    age = (datetime.now(UTC) - renewed).total_seconds()
    return age > (spec.lease_duration_seconds or 0)

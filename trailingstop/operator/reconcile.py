"""What the operator does for a TrailingStop: child objects, commands to the orchestrator, refusals.

Every function here is idempotent: kopf calls ``reconcile`` on create and again on resume after an
operator restart, and nothing is written unless it changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client.rest import ApiException
from pydantic import ValidationError

from trailingstop.bus import Bus
from trailingstop.core.contracts import (
    Phase,
    StopCommand,
    TrailingStopSpec,
    TrailingStopStatus,
    describe_errors,
    ms_to_rfc3339,
    now_ms,
    to_wire,
)
from trailingstop.core.lifecycle import has_fired, is_final, pending, spec_accepted, spec_refused
from trailingstop.operator import builders
from trailingstop.operator.builders import Owner
from trailingstop.operator.coalesce import Coalescer
from trailingstop.operator.config import OperatorConfig
from trailingstop.operator.events import StatusWriter
from trailingstop.operator.kube import Kube
from trailingstop.operator.stops import StopRecord, StopStore
from trailingstop.operator.tenancy import BrokerAdminError, Tenant, Tenants
from trailingstop.telemetry import stop_fields

log = logging.getLogger(__name__)

# What a child object is for: ("broker", namespace, ""), ("symbol", namespace, SYMBOL) or
# ("route", namespace, route).
WorkloadKey = tuple[str, str, str]
# Phase reached -> (Kubernetes Event reason, is a warning)
TRANSITION_EVENTS: dict[Phase, tuple[str, bool]] = {
    Phase.TRACKING: ("Activated", False),
    Phase.TRIGGERED: ("Triggered", False),
    Phase.FILLED: ("Filled", False),
    Phase.REJECTED: ("Rejected", True),
    Phase.FAILED: ("Failed", True),
    Phase.INVALID: ("Invalid", True),
}


def record_from_body(body: Mapping[str, Any]) -> StopRecord:
    metadata = body["metadata"]
    try:
        spec = TrailingStopSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:  # the CRD refuses these; only a hand-made object gets here
        raise kopf.PermanentError("; ".join(describe_errors(exc, "spec"))) from None
    try:
        status = TrailingStopStatus.model_validate(body.get("status") or {})
    except ValidationError:
        log.warning("unreadable status on %s/%s; starting from Pending", metadata["namespace"], metadata["name"])
        status = TrailingStopStatus()
    return StopRecord(
        uid=metadata["uid"],
        namespace=metadata["namespace"],
        name=metadata["name"],
        generation=int(metadata.get("generation", 1)),
        spec=spec,
        status=status,
    )


class Reconciler:
    def __init__(
        self, config: OperatorConfig, kube: Kube, store: StopStore, writer: StatusWriter, home: Bus, tenants: Tenants
    ) -> None:
        self.config = config
        self.kube = kube
        self.store = store
        self.writer = writer
        self.home = home  # the operator's own connection: its health says the broker is there
        self.tenants = tenants
        self._children: Coalescer[WorkloadKey] = Coalescer(self._apply_children)

    async def load(self) -> int:
        """Read every TrailingStop once at start-up, so a sync request is answered in full."""
        bodies = await self.kube.list_stops(self.config.namespaces, self.config.clusterwide)
        for body in bodies:
            self.store.put(record_from_body(body), body.get("status"))
        return len(bodies)

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        """On create and on resume: children exist with this stop among their owners; the
        orchestrator has the stop (with its saved progress)."""
        self._require_broker()
        record = self.store.put(record_from_body(body), body.get("status"))
        if record.status.observed_generation is None:  # never written: a new stop
            await self.writer.submit(record, pending(record.status, record.generation, ms_to_rfc3339(now_ms())))
        await self.apply_workloads(record)
        if not is_final(record.status.phase):
            await self._tenant_bus(record).publish_command(StopCommand.upsert(record.definition()))

    async def spec_changed(self, body: Mapping[str, Any]) -> None:
        self._require_broker()
        record = self.store.put(record_from_body(body), body.get("status"))
        now = ms_to_rfc3339(now_ms())
        if has_fired(record.status.phase):
            # The stop fired: its order exists. A new spec would be a new stop; say so, change nothing.
            await self.writer.submit(record, spec_refused(record.status, record.generation, now))
            log.warning("spec change of %s refused: already %s", record.key, record.status.phase,
                        extra=stop_fields(record.namespace, record.name, record.uid, record.spec.symbol))
            return
        await self.writer.submit(record, spec_accepted(record.status, record.generation, now))
        await self.apply_workloads(record)
        await self._tenant_bus(record).publish_command(StopCommand.upsert(record.definition()))

    async def deleted(self, body: Mapping[str, Any]) -> None:
        self._require_broker()
        record = self.store.get(body["metadata"]["uid"]) or record_from_body(body)
        tenant = self.tenants.get(record.namespace)
        if not is_final(record.status.phase) and tenant is not None:
            await tenant.bus.publish_command(StopCommand.cancel(record.definition(with_state=False)))
        self.store.remove(record.uid)
        self.writer.forget(record)
        if not self.store.in_namespace(record.namespace):  # the last one: its broker tenant goes too
            await self._request(("broker", record.namespace, ""))
        elif _needs_book(record):  # marketdata may stop streaming the book
            await self._request(("symbol", record.namespace, record.spec.symbol))

    async def apply_workloads(self, record: StopRecord) -> None:
        """The namespace's broker Secret, the symbol's workers, the route's executor, each with
        every stop that needs it among its owners (coalesced: see :mod:`.coalesce`)."""
        namespace = record.namespace
        # The broker Secret first: a pod that starts must find its tenant's URL, not an older one.
        await self._request(("broker", namespace, ""))
        workers = [("symbol", namespace, record.spec.symbol), ("route", namespace, record.spec.route)]
        await asyncio.gather(*(self._request(key) for key in workers))

    async def _request(self, key: WorkloadKey) -> None:
        try:
            await self._children.request(key)
        except (ApiException, aiohttp.ClientError, TimeoutError, BrokerAdminError) as exc:
            what = f"{key[0]} {key[2] or key[1]}"
            raise kopf.TemporaryError(f"setting up {what} failed ({exc}); retrying", delay=5) from exc

    async def _apply_children(self, key: WorkloadKey) -> None:
        kind, namespace, name = key
        stops = self.store.in_namespace(namespace)
        if not stops:
            if kind == "broker":
                await self.tenants.retire(namespace)
            return  # the garbage collector removes the workers of the last stop
        tenant = await self.tenants.provision(namespace)
        if kind == "broker":
            await self.kube.apply(builders.amqp_secret(self.config, namespace, tenant.worker_url, _owners(stops)))
        elif kind == "symbol":
            await self._apply_symbol(tenant, name, [r for r in stops if r.spec.symbol == name])
        else:
            await self._apply_route(tenant, name, [r for r in stops if r.spec.route == name])

    async def _apply_symbol(self, tenant: Tenant, symbol: str, users: list[StopRecord]) -> None:
        if not users:
            return
        owners, namespace = _owners(users), tenant.namespace
        # The book (bookTicker) is streamed only while some stop of the symbol follows it.
        book = any(_needs_book(r) for r in users)
        await self.kube.apply(
            builders.marketdata_deployment(self.config, namespace, symbol, owners, tenant.digest, book=book)
        )
        await self.kube.apply(builders.orchestrator_deployment(self.config, namespace, symbol, owners, tenant.digest))

    async def _apply_route(self, tenant: Tenant, route: str, users: list[StopRecord]) -> None:
        if not users:
            return  # the last stop of the route is gone: its executor goes with it
        reference = users[0].spec.credentials_secret_ref
        secret = reference.name if reference else None
        await self.kube.apply(
            builders.executor_deployment(self.config, tenant.namespace, route, secret, _owners(users), tenant.digest)
        )

    async def on_transition(self, record: StopRecord, status: TrailingStopStatus, before: str) -> None:
        """A Kubernetes Event for each phase people want to hear about."""
        reason, warning = TRANSITION_EVENTS.get(status.phase, ("", False))
        if reason:
            await self.kube.post_event(record, reason, status.message or _describe(status), warning)
        if record.spec.price_source == "BestBidAsk" and has_fired(status.phase) and not has_fired(before):
            await self._request(("symbol", record.namespace, record.spec.symbol))  # one book stop fewer

    async def on_gap(self, record: StopRecord, status: TrailingStopStatus) -> None:
        """A Warning Event: the stop's book quotes had a gap; it went on from the first fresh one."""
        gap = status.last_gap
        assert gap is not None
        await self.kube.post_event(
            record, "PriceGap",
            f"no {status.price_source} quote from {gap.from_} to {gap.to} ({_plain(gap.seconds)}s); the book has "
            f"no history, so the stop went on from the first fresh quote (updateId {gap.to_update_id})",
            warning=True,
        )

    def _require_broker(self) -> None:
        if not self.home.connected:
            raise kopf.TemporaryError("the message broker is unreachable; retrying", delay=5)

    def _tenant_bus(self, record: StopRecord) -> Bus:
        tenant = self.tenants.get(record.namespace)
        if tenant is None:  # retired by a concurrent delete of the namespace's last other stop
            raise kopf.TemporaryError(f"the broker tenant of {record.namespace} is being set up again", delay=1)
        return tenant.bus


def _needs_book(record: StopRecord) -> bool:
    """A BestBidAsk stop that can still trigger follows the book (an Invalid one too: a fixed
    spec puts it back where it was)."""
    return record.spec.price_source == "BestBidAsk" and not has_fired(record.status.phase) and not is_final(
        record.status.phase)


def _owners(records: Iterable[StopRecord]) -> list[Owner]:
    return [Owner(r.name, r.uid) for r in records]


def _describe(status: TrailingStopStatus) -> str:
    if status.phase == Phase.TRACKING:
        return f"activated at {_plain(status.activated_price)}; stop {_plain(status.stop_price)}"
    if status.phase == Phase.TRIGGERED:
        return f"price {_plain(status.trigger_price)} reached stop {_plain(status.stop_price)}; order sent"
    return status.phase


def _plain(number: Decimal | None) -> str:
    return "-" if number is None else to_wire(number)

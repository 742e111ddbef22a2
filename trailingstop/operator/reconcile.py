"""What the operator does for a TrailingStop: child objects, commands to the orchestrator, refusals.

Every function here is idempotent: kopf calls ``reconcile`` on create and again on resume after an
operator restart, and nothing is written unless it changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Mapping
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
from trailingstop.core.lifecycle import (
    has_fired,
    is_final,
    is_frozen,
    pending,
    spec_accepted,
    spec_refused,
    workers_ready,
)
from trailingstop.operator import builders, pods
from trailingstop.operator.builders import Owner
from trailingstop.operator.coalesce import Coalescer
from trailingstop.operator.config import OperatorConfig
from trailingstop.operator.events import StatusWriter
from trailingstop.operator.kube import Kube, contains
from trailingstop.operator.rollout import RolloutGate
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
    # The order ended with part or none of the quantity filled: the rest is the user's to handle.
    Phase.PARTIALLY_FILLED: ("PartiallyFilled", True),
    Phase.UNFILLED: ("Unfilled", True),
    Phase.EXPIRED: ("Expired", False),  # what the user asked for: an end time, no order
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
        self._rollouts = RolloutGate(config.worker_rollout_batch, config.worker_rollout_timeout)
        self._tasks: set[asyncio.Task[None]] = set()
        # (namespace, component, symbol or route) -> pod name -> its newest word (pod watch)
        self._pods: dict[tuple[str, str, str], dict[str, pods.PodWord]] = {}

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
        known = self.store.get(body["metadata"]["uid"])
        previous_spec = known.spec if known is not None else None
        record = self.store.put(record_from_body(body), body.get("status"))
        now = ms_to_rfc3339(now_ms())
        if is_frozen(record.status.phase) and record.spec == previous_spec:
            # Not a change: kopf compared with a last-handled spec that lacked a field the API
            # server now defaults (a CRD upgrade, e.g. priceSource); the parsed spec is the same.
            return
        if is_frozen(record.status.phase):
            # The stop fired (its order exists) or ended (expired): a new spec would be a new stop;
            # say so, change nothing.
            await self.writer.submit(record, spec_refused(record.status, record.generation, now))
            log.warning("spec change of %s refused: already %s", record.key, record.status.phase,
                        extra=stop_fields(record.namespace, record.name, record.uid, record.spec.symbol))
            return
        await self.writer.submit(record, spec_accepted(record.status, record.generation, now))
        await self.apply_workloads(record)
        if previous_spec is not None and previous_spec.route != record.spec.route:
            # Another mode or Secret: the old executor loses this stop, and goes if it was its last.
            await self._request(("route", record.namespace, previous_spec.route))
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
        """The symbol's workers, owned by its stops that are still working; none left: retired
        (a final stop keeps its status, and the next stop of the symbol brings them back)."""
        namespace, active = tenant.namespace, _active(users)
        if not active:
            await self._retire(namespace, builders.marketdata_name(symbol), builders.orchestrator_name(symbol))
            return
        owners, digest = _owners(active), tenant.digest
        # The book (bookTicker) is streamed only while some stop of the symbol follows it.
        book = any(_needs_book(r) for r in active)
        await self._apply_workload(
            builders.marketdata_deployment(self.config, namespace, symbol, owners, digest, book=book))
        await self._apply_workload(builders.orchestrator_deployment(self.config, namespace, symbol, owners, digest))

    async def _apply_route(self, tenant: Tenant, route: str, users: list[StopRecord]) -> None:
        """The route's executor, owned by its stops whose order may still be placed (not final)."""
        active = _active(users)
        if not active:
            # The NetworkPolicy stays: it selects no pod now, still guards a terminating one, and
            # goes with its stops (owner references).
            await self._retire(tenant.namespace, builders.executor_name(route))
            return
        reference = active[0].spec.credentials_secret_ref
        secret = reference.name if reference else None
        executor = builders.executor_deployment(
            self.config, tenant.namespace, route, secret, _owners(active), tenant.digest)
        if self.config.executor_network_policy:
            # before the pod exists, so the keys never sit in a pod that may talk anywhere
            await self.kube.apply(builders.executor_network_policy(self.config, executor))
        await self._apply_workload(executor)

    async def _apply_workload(self, deployment: dict[str, Any]) -> None:
        existing = await self.kube.read(deployment)
        template = deployment["spec"]["template"]
        if existing is None or contains(existing["spec"]["template"], template):
            await self.kube.apply(deployment)  # a new worker, or a change that restarts no pod
        else:
            name = f'{deployment["metadata"]["namespace"]}/{deployment["metadata"]["name"]}'
            await self._rollouts.roll(name, lambda: self.kube.apply(deployment), lambda: self.kube.read(deployment))
        if self.config.worker_disruption_budget:
            await self.kube.apply(builders.disruption_budget(deployment["metadata"]["namespace"], deployment))

    # --- the children, as the watches report them -------------------------------------------------

    async def child_event(self, deployment: Mapping[str, Any], deleted: bool) -> None:
        """A worker Deployment was deleted or its spec changed (by someone else, or by us): apply
        what it should be, or retire it (the apply compares first, so our own changes cost a read)."""
        metadata = deployment.get("metadata") or {}
        status = deployment.get("status") or {}
        if not deleted and metadata.get("generation") == status.get("observedGeneration"):
            return  # a status update, or a spec its controller has seen and we applied
        key = _workload_key(metadata)
        if key is not None:
            await self._request_quietly(key)

    async def broker_secret_event(self, namespace: str) -> None:
        """The namespace's ts-amqp Secret was deleted or changed: write it back."""
        if self.store.in_namespace(namespace):
            await self._request_quietly(("broker", namespace, ""))

    async def pod_event(self, pod: Mapping[str, Any], deleted: bool) -> None:
        """A worker pod's news: the stops it serves learn whether their workers run, and why not."""
        workload = pods.workload_of(pod)
        if workload is None:
            return
        name = str((pod.get("metadata") or {}).get("name", ""))
        known = self._pods.setdefault(workload, {})
        if deleted:
            known.pop(name, None)
        else:
            known[name] = pods.pod_word(pod)
        namespace, component, key = workload
        served = (self.store.for_symbol(key, namespace) if component in ("marketdata", "orchestrator")
                  else [r for r in self.store.in_namespace(namespace) if r.spec.route == key])
        for record in _active(served):
            await self._report_workers(record)

    async def _report_workers(self, record: StopRecord) -> None:
        namespace, symbol, route = record.namespace, record.spec.symbol, record.spec.route
        words = [pods.deployment_word(self._pods.get((namespace, component, key), {}).values())
                 for component, key in (("marketdata", symbol), ("orchestrator", symbol), ("executor", route))]
        word = pods.workers_word(words, len(words))
        if word is None:
            return
        now = ms_to_rfc3339(now_ms())
        before = next((c for c in record.status.conditions if c.type == "WorkersReady"), None)
        await self.writer.submit(record, workers_ready(record.status, word.ready, word.reason, word.message, now))
        if not word.ready and (before is None or before.status != "False" or before.reason != word.reason):
            await self.kube.post_event(record, word.reason, word.message, warning=True)

    async def _request_quietly(self, key: WorkloadKey) -> None:
        """For the watches, which have no one to hand an error to: log it (the next event retries)."""
        try:
            await self._children.request(key)
        except (ApiException, aiohttp.ClientError, TimeoutError, BrokerAdminError) as exc:
            log.warning("restoring %s %s failed: %s", key[0], key[2] or key[1], exc)

    async def _retire(self, namespace: str, *deployments: str) -> None:
        for name in deployments:
            if await self.kube.delete(builders.deployment_ref(namespace, name)):
                log.info("retired %s/%s: no stop needs it any more", namespace, name, extra={"namespace": namespace})
            if self.config.worker_disruption_budget:
                await self.kube.delete(builders.disruption_budget_ref(namespace, name))

    async def on_transition(self, record: StopRecord, status: TrailingStopStatus, before: str) -> None:
        """A Kubernetes Event for each phase people want to hear about; a final phase may retire
        the stop's workers (it was perhaps the last one needing them)."""
        reason, warning = TRANSITION_EVENTS.get(status.phase, ("", False))
        if reason:
            await self.kube.post_event(record, reason, status.message or _describe(status), warning)
        if is_final(status.phase) and not is_final(before):
            self._in_background(self._retire_if_last(record))
        elif record.spec.price_source == "BestBidAsk" and has_fired(status.phase) and not has_fired(before):
            await self._request(("symbol", record.namespace, record.spec.symbol))  # one book stop fewer

    async def _retire_if_last(self, record: StopRecord) -> None:
        keys = [("symbol", record.namespace, record.spec.symbol), ("route", record.namespace, record.spec.route)]
        delay = 1.0
        while True:  # the API may be briefly away; the workers must not stay forever
            try:
                await asyncio.gather(*(self._children.request(key) for key in keys))
                return
            except (ApiException, aiohttp.ClientError, TimeoutError, BrokerAdminError) as exc:
                log.warning("retiring the workers of %s failed (%s); retrying in %.0fs", record.key, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)

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


def _workload_key(metadata: Mapping[str, Any]) -> WorkloadKey | None:
    """("symbol", namespace, SYMBOL) or ("route", namespace, route) of a worker Deployment."""
    labels = metadata.get("labels") or {}
    namespace = str(metadata.get("namespace", ""))
    if builders.SYMBOL_LABEL in labels:
        return "symbol", namespace, str(labels[builders.SYMBOL_LABEL])
    if builders.ROUTE_LABEL in labels:
        return "route", namespace, str(labels[builders.ROUTE_LABEL])
    return None


def _active(records: Iterable[StopRecord]) -> list[StopRecord]:
    """The stops that still need workers: every one not final."""
    return [r for r in records if not is_final(r.status.phase)]


def _describe(status: TrailingStopStatus) -> str:
    if status.phase == Phase.TRACKING:
        return f"activated at {_plain(status.activated_price)}; stop {_plain(status.stop_price)}"
    if status.phase == Phase.TRIGGERED:
        return f"price {_plain(status.trigger_price)} reached stop {_plain(status.stop_price)}; order sent"
    return status.phase


def _plain(number: Decimal | None) -> str:
    return "-" if number is None else to_wire(number)

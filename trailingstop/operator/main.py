"""``trailingstop operator``: thin kopf handlers; the work is in :mod:`trailingstop.operator.reconcile`.

Own finalizer and annotation prefixes (``trailingstop.dev``), so this operator never collides
with another kopf operator on the same objects. Run one replica with strategy Recreate:
``--standalone`` (the default in the chart) turns kopf's peering off; without it, kopf pauses
lower-priority peers through its KopfPeering resources, which must then be installed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from typing import Any

import kopf

from trailingstop import telemetry
from trailingstop.bus import Bus, connect_bus
from trailingstop.core.contracts import API_GROUP, API_VERSION, PLURAL
from trailingstop.health import HealthServer
from trailingstop.operator import builders
from trailingstop.operator.brokeradmin import ManagementApi, TopologyOperator, credentials_of, default_management_url
from trailingstop.operator.builders import MANAGED_BY
from trailingstop.operator.config import OperatorConfig
from trailingstop.operator.events import EventRouter, Fence, StatusWriter, no_fence
from trailingstop.operator.kube import Kube, KubeStopStore, api_client
from trailingstop.operator.leader import LeaderElection
from trailingstop.operator.legacy import LegacyDrain
from trailingstop.operator.reconcile import Reconciler
from trailingstop.operator.tenancy import BrokerAdmin, BrokerAdminError, Tenants
from trailingstop.operator.watches import SecretWatch
from trailingstop.settings import SettingsError, load_settings

log = logging.getLogger(__name__)


class Operator:
    """Everything the handlers share, created at kopf start-up and closed at clean-up."""

    def __init__(self) -> None:
        self.config = OperatorConfig()
        self._clear()

    def _clear(self) -> None:
        self.health: HealthServer | None = None
        self.home: Bus | None = None
        self.kube: Kube | None = None
        self.router: EventRouter | None = None
        self.tenants: Tenants | None = None
        self.reconciler: Reconciler | None = None
        self.legacy: LegacyDrain | None = None
        self._audit: asyncio.Task[None] | None = None
        self.secrets: SecretWatch | None = None

    async def start(self, config: OperatorConfig, health: HealthServer, fence: Fence = no_fence) -> None:
        """kopf retries a start that failed (the broker not there yet, the broker admin's check): it
        releases what it had opened first, so the next attempt begins afresh."""
        try:
            await self._start(config, health, fence)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, config: OperatorConfig, health: HealthServer, fence: Fence) -> None:
        self.config = config
        self.health = health  # the process's, up before the election (a standby answers its probes)
        self.kube = kube = Kube(await api_client())
        store = KubeStopStore(kube)
        # The operator's own vhost holds nothing of ours; the connection proves the broker is there
        # and reads what the pre-tenancy layout left behind (see legacy.py).
        self.home = home = await connect_bus(config.amqp_url, "trailingstop-operator", topology="none")
        writer = StatusWriter(store, interval=config.status_interval, stop_metrics=config.stop_metrics, fence=fence)
        self.router = router = EventRouter(store, writer)
        await router.start()
        admin = broker_admin(config, kube)
        try:
            await admin.check()
        except BaseException:
            await admin.close()  # not yet the tenants' to close
            raise

        async def saved_url(namespace: str) -> str | None:
            return await kube.secret_value(namespace, config.amqp_secret_name, "url")

        # A hung leader's connections must close (the broker requeueing what it was delivered) before
        # its Lease can expire and a standby take over: RabbitMQ gives up on a peer silent for about
        # two heartbeat timeouts, so a third of the Lease's duration.
        heartbeat = max(1, int(config.lease_duration / 3)) if config.leader_election else 0
        self.tenants = tenants = Tenants(config.instance, config.amqp_url, admin, saved_url, router.attach,
                                         heartbeat=heartbeat)
        self.reconciler = Reconciler(config, kube, store, writer, home, tenants)
        writer.on_transition = self.reconciler.on_transition
        writer.on_gap = self.reconciler.on_gap
        loaded = await self.reconciler.load()
        self.legacy = await LegacyDrain(home, store, router, tenants, quiet=config.legacy_queue_grace).start()
        self._audit = asyncio.create_task(_audit_every(tenants, 60.0))
        self.secrets = SecretWatch(kube, config.amqp_secret_name, config.namespaces, config.clusterwide,
                                   self.reconciler.broker_secret_event).start()
        self.health.add_check("broker", lambda: (home.connected, "connected" if home.connected else "down"))
        log.info("operator started (%r); %d TrailingStops loaded", config, loaded)

    async def stop(self) -> None:
        if self._audit is not None:
            self._audit.cancel()
        if self.secrets is not None:
            await self.secrets.stop()
        if self.legacy is not None:
            await self.legacy.stop()
        if self.router is not None:
            await self.router.stop()
        if self.tenants is not None:
            await self.tenants.close()
        if self.home is not None:
            await self.home.close()
        if self.kube is not None:
            await self.kube.close()
        self._clear()  # nothing is closed twice; a new start begins afresh

    @property
    def work(self) -> Reconciler:
        assert self.reconciler is not None, "the operator has not started"
        return self.reconciler


def broker_admin(config: OperatorConfig, kube: Kube) -> BrokerAdmin:
    user, password = credentials_of(config.amqp_url)
    if config.broker_admin == "topology-operator":
        reference = builders.cluster_reference(config.rabbitmq_cluster, config.rabbitmq_connection_secret)
        return TopologyOperator(kube, config.operator_namespace, reference, user)
    return ManagementApi(config.management_url or default_management_url(config.amqp_url), user, password)


async def _audit_every(tenants: Tenants, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await tenants.audit()
        except BrokerAdminError as exc:
            log.warning("broker tenant audit failed: %s", exc)


OPERATOR = Operator()
RESOURCE = (API_GROUP, API_VERSION, PLURAL)


@kopf.on.startup(backoff=10)  # a failed start (see Operator.start) is tried again 10 s later, not 60
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events say what matters; kopf's only problems
    # The resource is named in full, so kopf need not list CRDs cluster-wide: a namespaced Role
    # (no ClusterRole) is enough to run the operator in its namespaces.
    settings.scanning.disabled = True
    settings.networking.error_backoffs = [1, 2, 5, 10, 20, 30]
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    await OPERATOR.start(memo.config, memo.health, memo.get("fence", no_fence))


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await OPERATOR.stop()


@kopf.on.create(*RESOURCE)
@kopf.on.resume(*RESOURCE)
async def reconcile(body: kopf.Body, **_: Any) -> None:
    telemetry.OPERATOR_RECONCILES.labels(handler="reconcile").inc()
    await OPERATOR.work.reconcile(body)


@kopf.on.update(*RESOURCE, field="spec")
async def spec_changed(body: kopf.Body, **_: Any) -> None:
    telemetry.OPERATOR_RECONCILES.labels(handler="spec").inc()
    await OPERATOR.work.spec_changed(body)


@kopf.on.delete(*RESOURCE)
async def deleted(body: kopf.Body, **_: Any) -> None:
    telemetry.OPERATOR_RECONCILES.labels(handler="delete").inc()
    await OPERATOR.work.deleted(body)


# The children, watched (not polled): a deleted or edited worker Deployment is put back within
# seconds, and the pods' troubles reach the stops' status. Raw events: no finalizer, no annotation
# is ever written on these objects.
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def worker_deployment(event: kopf.RawEvent, **_: Any) -> None:
    if OPERATOR.reconciler is not None:
        await OPERATOR.work.child_event(event["object"], deleted=event["type"] == "DELETED")


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def worker_pod(event: kopf.RawEvent, **_: Any) -> None:
    if OPERATOR.reconciler is not None:
        await OPERATOR.work.pod_event(event["object"], deleted=event["type"] == "DELETED")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:  # the Deployment's env, not a bug: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    telemetry.setup(settings, "trailingstop-operator")
    config = OperatorConfig.from_settings(
        settings,
        namespaces=tuple(args.namespaces) if args.namespaces else None,
        clusterwide=True if args.all_namespaces else None,
        standalone=True if args.standalone else None,
    )
    return asyncio.run(_lead_then_work(config))


async def _lead_then_work(config: OperatorConfig) -> int:
    """Health first (probes answer while standing by), then the Lease, then kopf. A lost Lease
    stops kopf and exits 1: the pod restarts as the standby."""
    health = HealthServer(config.health_port)
    await health.start()
    api = await api_client()
    election = LeaderElection(api, config.operator_namespace, config.lease_name, socket.gethostname(),
                              duration=config.lease_duration, renew=config.lease_renew)
    # A standby is ready: it is healthy and waiting. Were it not, `helm install --wait` and a
    # RollingUpdate with maxUnavailable 0 would wait for ever on the replica that cannot lead yet.
    # Who leads is in the report (and the trailingstop_operator_leading gauge), not the verdict.
    health.add_check("leader", lambda: (True, "leading" if election.leading else "standing by"))
    stop = asyncio.Event()
    lost = False

    def on_lost() -> None:
        nonlocal lost
        lost = True
        stop.set()

    scope: dict[str, Any] = {"clusterwide": True} if config.clusterwide else {"namespaces": list(config.namespaces)}
    try:
        if config.leader_election:
            await election.acquire()
            keeping = asyncio.create_task(election.keep(on_lost))
        await kopf.operator(standalone=config.standalone, stop_flag=stop,
                            memo=kopf.Memo(config=config, health=health,
                                           fence=election.fence if config.leader_election else no_fence),
                            **scope)
    finally:
        if config.leader_election:
            keeping.cancel()
            await election.release()
        await api.close()
        await health.stop()
    return 1 if lost else 0

"""Tenancy on the real control plane and broker: namespaces and operator releases never meet.

Each test compares what happened with the offline engine over the same trades, and checks on the
fake Binance which API key placed each order.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from kubernetes_asyncio import client

from tests.conftest import Tool, missing
from tests.e2e.conftest import CRD, CRD_NAME, REPO, Cluster, Release
from tests.fakebinance import DEFAULT_API_KEY, DEFAULT_API_SECRET, DEFAULT_BALANCES
from tests.fakebinance.market import Account
from tests.harness import eventually
from tests.integration.test_workers import expected_triggers
from trailingstop.bus import STOP_COMMANDS_EXCHANGE
from trailingstop.core.contracts import StopCommand, client_order_id, to_wire
from trailingstop.core.engine import Engine
from trailingstop.operator.builders import BROKER_CREDENTIALS_ANNOTATION
from trailingstop.operator.tenancy import amqp_url, tenant_name
from trailingstop.tradefiles import demo_trades_path, load_trades

pytestmark = pytest.mark.timeout(300)

SYMBOL = "XRPETH"
TRADES = load_trades(demo_trades_path())
FIRST_ID = TRADES[0].trade_id
OTHER_KEY, OTHER_SECRET = "otherNamespaceKey", "otherNamespaceSecret"
FAST, SLOW = ("SELL", "0.5", None), ("SELL", "1", "0.00145")  # trigger at trade offsets 311 and 4848


def stop_manifest(name: str, stop: tuple[str, str, str | None], **spec: Any) -> str:
    side, trail, activation = stop
    body: dict[str, Any] = {"symbol": SYMBOL, "side": side, "quantity": "100", "trailingPercent": trail, **spec}
    if activation:
        body["activationPrice"] = activation
    return json.dumps({"apiVersion": "trailingstop.dev/v1", "kind": "TrailingStop", "metadata": {"name": name},
                       "spec": body})


def keys_secret(key: str, secret: str) -> str:
    data = {"apiKey": base64.b64encode(key.encode()).decode(), "apiSecret": base64.b64encode(secret.encode()).decode()}
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "binance-keys"}, "data": data})


async def wait_status(
    cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 90
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        resource = await cluster.stop_resource(name, namespace)
        status = resource.get("status", {})
        # Filled with the trigger's details: the order's result and the trigger event may come in either order
        complete = status.get("phase") == phase and (phase != "Filled" or status.get("triggerTradeId"))
        return resource if complete else None

    return dict(await eventually(reached, timeout=timeout, interval=0.2, what=f"{namespace}/{name} {phase}"))


async def advance(cluster: Cluster, upto: int, streams: int) -> None:
    await cluster.fake.wait_for_stream_connections(streams, timeout=60)
    tape = cluster.fake.tape(SYMBOL)
    while tape.position < upto:
        await cluster.fake.advance(SYMBOL, min(100, upto - tape.position))
        await asyncio.sleep(0.02)


async def test_tenancy_two_namespaces_with_one_symbol_and_one_secret_name_order_with_their_own_keys(
    cluster: Cluster,
) -> None:
    other = await cluster.add_namespace()
    cluster.fake.add_account(Account(OTHER_KEY, OTHER_SECRET, dict(DEFAULT_BALANCES)))
    keys = {cluster.namespace: (DEFAULT_API_KEY, DEFAULT_API_SECRET), other: (OTHER_KEY, OTHER_SECRET)}
    stops = {cluster.namespace: FAST, other: SLOW}
    for namespace, (key, secret) in keys.items():
        assert cluster.apply(keys_secret(key, secret), namespace).returncode == 0
    release = await cluster.install(watch=[cluster.namespace, other])
    instance = release.instance
    testnet = {"mode": "Testnet", "credentialsSecretRef": {"name": "binance-keys"}}
    for namespace, stop in stops.items():
        assert cluster.apply(stop_manifest("protect", stop, **testnet), namespace).returncode == 0
    for namespace in stops:
        await wait_status(cluster, namespace, "protect", "Armed")

    await advance(cluster, 5000, streams=2)
    for namespace, stop in stops.items():
        final = await wait_status(cluster, namespace, "protect", "Filled")
        assert final["status"]["triggerTradeId"] == expected_triggers([stop], 5000)[0], namespace
        [order] = cluster.fake.orders(client_order_id(final["metadata"]["uid"]))
        assert order.api_key == keys[namespace][0], f"{namespace}'s order placed with another namespace's key"
        assert final["status"]["order"]["orderId"] == order.order_id
    assert cluster.fake.order_count() == 2

    # The credentials the operator made for one namespace are worthless in the other's vhost, and
    # in its own they cannot command an orchestrator.
    mine = cluster.kubectl("get", "secret", "ts-amqp", "-n", cluster.namespace, "-o", "jsonpath={.data.url}").stdout
    url = base64.b64decode(mine).decode()
    with pytest.raises(aiormq.exceptions.AMQPError):
        await aio_pika.connect(amqp_url(url, tenant_name(instance, other)))
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(STOP_COMMANDS_EXCHANGE, ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await exchange.publish(aio_pika.Message(StopCommand(op="synced", symbol=SYMBOL).to_json()), SYMBOL)
    finally:
        await connection.close()

    # The last stop of a namespace takes the namespace's broker user and vhost with it.
    name = tenant_name(instance, other)
    assert await cluster.vhost.exists("users", name) and await cluster.vhost.exists("vhosts", name)
    cluster.kubectl("delete", "trailingstop", "protect", "-n", other)
    await eventually(lambda: _gone(cluster, name), timeout=30, what="the tenant's user and vhost removed")
    assert await cluster.vhost.exists("users", tenant_name(instance, cluster.namespace))


async def test_tenancy_two_releases_on_one_broker_each_get_every_status_update(cluster: Cluster) -> None:
    """Two operator releases share the broker (and even their home vhost), each watching its own
    namespace with stops on the same symbol: both see all of their events and none of the other's."""
    other = await cluster.add_namespace()
    stops = {cluster.namespace: [FAST, SLOW], other: [SLOW, FAST]}
    operators: list[Release] = [await cluster.install(namespace=namespace) for namespace in stops]
    for namespace, specs in stops.items():
        for index, stop in enumerate(specs):
            assert cluster.apply(stop_manifest(f"stop-{index}", stop), namespace).returncode == 0
    for namespace, specs in stops.items():
        for index in range(len(specs)):
            await wait_status(cluster, namespace, f"stop-{index}", "Armed")

    await advance(cluster, 5000, streams=2)
    for namespace, specs in stops.items():
        for index, stop in enumerate(specs):
            final = (await wait_status(cluster, namespace, f"stop-{index}", "Filled"))["status"]
            assert final["triggerTradeId"] == expected_triggers([stop], 5000)[0], (namespace, index)
            assert final["order"]["status"] == "SIMULATED"
            conditions = {c["type"]: c["status"] for c in final["conditions"]}
            # WorkersReady: written if the pods were seen before the stop fired (not after)
            assert conditions.pop("WorkersReady", "True") == "True"
            assert conditions == {"Ready": "True", "Activated": "True", "Triggered": "True", "Filled": "True"}
            assert final["activatedTradeId"] and final["referencePrice"] and final["stopPrice"]
    for operator in operators:  # nothing came in that belonged to the other release
        log = operator.log_text()
        assert "unknown stop" not in log, log[-3000:]


async def _gone(cluster: Cluster, name: str) -> bool:
    return not await cluster.vhost.exists("users", name) and not await cluster.vhost.exists("vhosts", name)


# --- upgrading from the shared layout (0.1) -------------------------------------------------------------

# The last commit of the pre-tenancy layout: every namespace's queues in the operator's vhost.
LEGACY_COMMIT = "3d595f4"
# Its package in an image (`scripts/testenv images legacy`: 0.1's code, today's Dockerfile)
LEGACY_IMAGE = os.environ.get("TESTENV_LEGACY_IMAGE") or "trailingstop.local/trailingstop:0.1"
TRACKING = ("SELL", "2", None)  # never triggers in the first 5,000 trades
ORDER_STUCK = ("BUY", "0.5", "0.0014")  # triggers at offset 1320, while the old executor is gone
WORKERS = "app.kubernetes.io/managed-by=trailingstop-operator"


@pytest.fixture
def legacy_chart(tmp_path: Path) -> Path:
    """The 0.1 chart, from the repository's history (what a user of 0.1 installed)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", LEGACY_COMMIT, "charts/trailingstop-operator"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        missing(f"git history with commit {LEGACY_COMMIT} (a clone of the repository): {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    return tmp_path / "charts" / "trailingstop-operator"


@pytest.fixture
def restore_crd(kubectl: Tool) -> Iterator[None]:
    """The upgrade test's releases install the shared CRD: afterwards it is crds/'s again, owned by
    no release (a release in a deleted namespace would otherwise hold it)."""
    yield
    kubectl("annotate", "crd", CRD_NAME, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-", check=False)
    kubectl("label", "crd", CRD_NAME, "app.kubernetes.io/managed-by-", check=False)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))


@pytest.mark.timeout(600)
async def test_tenancy_upgrade_from_the_shared_layout_loses_no_stop_and_doubles_no_order(
    cluster: Cluster, legacy_chart: Path, restore_crd: None
) -> None:
    """0.1 (its chart, its image) runs four stops; its operator goes away before the upgrade while
    trades go on: one stop fills with nobody to write it down, another triggers with its executor
    gone. `helm upgrade` to today's chart and image, with trades still going: the new operator
    moves everything into the namespace's tenant, each stop ends where the engine says, with
    exactly one order on the exchange, and the old queues are removed. Each release brings its
    CRD (crds.install=true), as a user's does."""
    cluster.node.require_image(LEGACY_IMAGE)
    assert cluster.apply(keys_secret(DEFAULT_API_KEY, DEFAULT_API_SECRET)).returncode == 0
    release = await cluster.install(chart=legacy_chart, image=LEGACY_IMAGE, replicas=None, crds=True)
    operator = release.operator_pod()
    assert [c["image"] for c in operator["spec"]["containers"]] == [LEGACY_IMAGE]

    testnet = {"mode": "Testnet", "credentialsSecretRef": {"name": "binance-keys"}}
    stops = {"fills-unseen": (FAST, {}), "order-stuck": (ORDER_STUCK, testnet), "fills-later": (SLOW, testnet),
             "tracking": (TRACKING, {})}
    for name, (stop, extra) in stops.items():
        assert cluster.apply(stop_manifest(name, stop, **extra)).returncode == 0
    for name in stops:
        await eventually(functools.partial(_phase_in, cluster, name, ("Armed", "Tracking")), timeout=120,
                         what=f"{name} armed")
    old_workers = await worker_deployments(cluster)
    # 0.1's workers: its image, its templates (no per-namespace broker credentials yet)
    assert len(old_workers) == 4 and all(_image(d) == LEGACY_IMAGE for d in old_workers.values()), old_workers
    assert not any(BROKER_CREDENTIALS_ANNOTATION in _annotations(d) for d in old_workers.values())

    await advance(cluster, 200, streams=1)
    # The old operator goes before the upgrade (0.1's Deployment is Recreate), its executor too.
    cluster.kubectl("scale", "deployment", release.fullname, "-n", cluster.namespace, "--replicas=0")
    await eventually(lambda: _no_pods(release), timeout=120, what="0.1's operator pod gone")
    executor = old_workers["ts-executor-testnet-binance-keys"]["spec"]["selector"]["matchLabels"]
    cluster.kubectl("delete", "deployment", "ts-executor-testnet-binance-keys", "-n", cluster.namespace)
    # gone, not only terminating: a pod in its grace period may still take the order
    await eventually(lambda: _no_pods_of(cluster, executor), timeout=120, what="0.1's testnet executor pod gone")
    await advance(cluster, 1500, streams=1)  # fills-unseen fills, order-stuck's order waits in its queue
    legacy_vhost = cluster.vhost.name
    depths: dict[str, int] = {}
    try:
        await eventually(lambda: _in_flight(cluster, legacy_vhost, depths), timeout=60,
                         what="the stuck order and the unwritten events waiting in the old queues")
    except AssertionError as failed:
        raise AssertionError(f"{failed}; the queues' depths: {depths}") from None

    # helm upgrade while trades go on; the old workers may still run a while, as pods roll
    grace = json.dumps([{"name": "TRAILINGSTOP_LEGACY_QUEUE_GRACE", "value": "3"}])
    upgrade = release.upgrade(*cluster.values(release, crds=True), "--set-json", f"operator.extraEnv={grace}")
    await asyncio.gather(upgrade, advance(cluster, 2500, streams=1))
    await eventually(lambda: _rolled(cluster), timeout=180, interval=0.5,
                     what="every worker replaced by the new version")
    await advance(cluster, 5000, streams=1)

    offline = {name: expected_triggers([stop], 5000)[0] for name, (stop, _) in stops.items()}
    for name in ("fills-unseen", "order-stuck", "fills-later"):
        final = (await wait_status(cluster, cluster.namespace, name, "Filled"))
        assert final["status"]["triggerTradeId"] == offline[name], name
        orders = cluster.fake.orders(client_order_id(final["metadata"]["uid"]))
        assert len(orders) == (0 if name == "fills-unseen" else 1), (name, orders)
    tracking = await eventually(lambda: _status_at(cluster, "tracking", FIRST_ID + 4999), timeout=60,
                                what=f"the tracking stop at trade {FIRST_ID + 4999}")
    reference, stop_price = _offline_levels(TRACKING, 5000)
    assert (tracking["referencePrice"], tracking["stopPrice"]) == (reference, stop_price)
    await eventually(lambda: _legacy_queues_gone(cluster, legacy_vhost), timeout=60, what="the old queues deleted")
    assert "handed to executor" in release.log_text()


async def _phase_in(cluster: Cluster, name: str, phases: tuple[str, ...]) -> bool:
    return (await cluster.stop_resource(name)).get("status", {}).get("phase") in phases


async def _status_at(cluster: Cluster, name: str, trade_id: int) -> dict[str, Any] | None:
    status = (await cluster.stop_resource(name)).get("status", {})
    return dict(status) if status.get("lastTradeId") == trade_id and status.get("referencePrice") else None


def _offline_levels(stop: tuple[str, str, str | None], upto: int) -> tuple[str, str]:
    side, trail, activation = stop
    engine = Engine(SYMBOL)
    engine.upsert("s", side, Decimal(trail), Decimal(activation) if activation else None)  # type: ignore[arg-type]
    for trade in TRADES[:upto]:
        engine.on_trade(trade.price, trade.trade_id, trade.time)
    state = engine.state("s")
    return to_wire(state.reference), to_wire(state.stop_price)  # type: ignore[arg-type]


async def worker_deployments(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The worker Deployments the operator made in the test's namespace, by name."""
    deployments = await cluster.deployments()
    return {name: d for name, d in deployments.items()
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "trailingstop-operator"}


def _image(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def _annotations(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"].get("annotations") or {})


def _no_pods(release: Release) -> bool:
    return not release.operator_pods()


async def _rolled(cluster: Cluster) -> bool:
    """Four worker Deployments on today's image and templates, each rolled out to one Ready pod,
    and no pod of 0.1 left in the namespace (a terminating one may still be reading its queue)."""
    workers = await worker_deployments(cluster)
    if len(workers) != 4:
        return False
    for deployment in workers.values():
        status = deployment["status"]
        if _image(deployment) != cluster.node.image or BROKER_CREDENTIALS_ANNOTATION not in _annotations(deployment):
            return False
        if status.get("observedGeneration") != deployment["metadata"]["generation"] or not all(
            status.get(count) == 1 for count in ("replicas", "updatedReplicas", "readyReplicas")
        ):
            return False
    pods = await client.CoreV1Api(cluster.kube).list_namespaced_pod(cluster.namespace, label_selector=WORKERS)
    return not any(container.image == LEGACY_IMAGE for pod in pods.items for container in pod.spec.containers)


async def _no_pods_of(cluster: Cluster, labels: dict[str, str]) -> bool:
    selector = ",".join(f"{key}={value}" for key, value in labels.items())
    pods = await client.CoreV1Api(cluster.kube).list_namespaced_pod(cluster.namespace, label_selector=selector)
    return not pods.items


async def _in_flight(cluster: Cluster, vhost: str, depths: dict[str, int]) -> bool:
    """``depths``: the queues' message counts, as last seen (for the failure's message)."""
    depths.clear()
    depths.update({queue["name"]: queue.get("messages", 0) for queue in await cluster.vhost.queues(vhost)})
    return bool(depths.get("executor.testnet-binance-keys.orders") == 1 and depths.get("operator.order-events")
                and depths.get("operator.stop-events"))


async def _legacy_queues_gone(cluster: Cluster, vhost: str) -> bool:
    left = {queue["name"] for queue in await cluster.vhost.queues(vhost)}
    return not any(name.startswith(("operator.", "executor.", "orchestrator.")) for name in left)

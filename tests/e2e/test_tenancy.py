"""Tenancy on the real control plane and broker: namespaces and operator releases never meet.

Each test compares what happened with the offline engine over the same trades, and checks on the
fake Binance which API key placed each order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest

from tests.conftest import missing
from tests.e2e.conftest import CRD, REPO, Cluster, Release
from tests.e2e.podrunner import (
    PodRunner,
    PodRunnerCluster,
    podrunner_cluster,  # noqa: F401 (a fixture: the upgrade test is still on it)
)
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

AnyCluster = Cluster | PodRunnerCluster

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
    cluster: AnyCluster, namespace: str, name: str, phase: str, timeout: float = 90
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        resource = await cluster.stop_resource(name, namespace)
        status = resource.get("status", {})
        # Filled with the trigger's details: the order's result and the trigger event may come in either order
        complete = status.get("phase") == phase and (phase != "Filled" or status.get("triggerTradeId"))
        return resource if complete else None

    return dict(await eventually(reached, timeout=timeout, interval=0.2, what=f"{namespace}/{name} {phase}"))


async def advance(cluster: AnyCluster, upto: int, streams: int) -> None:
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
TRACKING = ("SELL", "2", None)  # never triggers in the first 5,000 trades
ORDER_STUCK = ("BUY", "0.5", "0.0014")  # triggers at offset 1320, while the old executor is gone


def _legacy_crd() -> str:
    path = f"{LEGACY_COMMIT}:crds/trailingstops.trailingstop.dev.yaml"
    shown = subprocess.run(["git", "-C", str(REPO), "show", path], capture_output=True, text=True, check=True)
    return shown.stdout


def _apply_crd(cluster: PodRunnerCluster, text: str, replace: bool = False) -> None:
    """``replace``: the whole CRD (server-side apply keeps the fields other managers own, such as a
    release of the chart's, and today's priceSource with its default would stay)."""
    verb = ["replace"] if replace else ["apply", "--server-side", "--force-conflicts"]
    cluster.kubectl(*verb, "-f", "-", input=text)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trailingstops.trailingstop.dev")


@pytest.fixture
def legacy_code(tmp_path: Path) -> Path:
    """The 0.1 package, from the repository's history (the way an installed 0.1 image runs it)."""
    target = tmp_path / "legacy-code"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", LEGACY_COMMIT, "trailingstop"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        missing(f"git history with commit {LEGACY_COMMIT} (a clone of the repository): {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


async def test_tenancy_upgrade_from_the_shared_layout_loses_no_stop_and_doubles_no_order(
    podrunner_cluster: PodRunnerCluster, legacy_code: Path  # noqa: F811 (the fixture imported above)
) -> None:
    """0.1 runs four stops; its operator goes away for the upgrade (Recreate) while trades go on:
    one stop fills with nobody to write it down, another triggers with its executor gone. The new
    operator moves everything into the namespace's tenant: each stop ends where the engine says,
    with exactly one order on the exchange, and the old queues are removed."""
    cluster = podrunner_cluster  # still on the pod runner: the 0.1 workers need an image of the 0.1 code

    def code_for(template: dict[str, Any]) -> Path | None:
        return None if BROKER_CREDENTIALS_ANNOTATION in template["metadata"].get("annotations", {}) else legacy_code

    assert cluster.pods is not None
    await cluster.pods.stop()
    cluster.pods = await PodRunner(cluster.kube, cluster.namespace, cluster.log_dir, cluster.pods.host_env,
                                   code_for=code_for).start()
    assert cluster.apply(keys_secret(DEFAULT_API_KEY, DEFAULT_API_SECRET)).returncode == 0
    # 0.1's CRD while 0.1 runs, as on a cluster before `helm upgrade` (today's CRD defaults fields,
    # such as priceSource, that 0.1's operator refuses as unknown)
    _apply_crd(cluster, _legacy_crd(), replace=True)
    old = cluster.start_operator(code=legacy_code)
    await old.wait_healthy()
    assert await asyncio.to_thread(_imported_from, legacy_code) == str(legacy_code / "trailingstop" / "__init__.py")

    testnet = {"mode": "Testnet", "credentialsSecretRef": {"name": "binance-keys"}}
    stops = {"fills-unseen": (FAST, {}), "order-stuck": (ORDER_STUCK, testnet), "fills-later": (SLOW, testnet),
             "tracking": (TRACKING, {})}
    for name, (stop, extra) in stops.items():
        assert cluster.apply(stop_manifest(name, stop, **extra)).returncode == 0
    for name in stops:
        await eventually(lambda n=name: _phase_in(cluster, n, ("Armed", "Tracking")), timeout=60, what=f"{name} armed")

    await advance(cluster, 200, streams=1)
    await old.stop()  # helm upgrade: the old operator pod goes first
    cluster.kubectl("delete", "deployment", "ts-executor-testnet-binance-keys", "-n", cluster.namespace)
    await advance(cluster, 1500, streams=1)  # fills-unseen fills, order-stuck's order waits in its queue
    legacy_vhost = cluster.vhost.name
    await eventually(lambda: _in_flight(cluster, legacy_vhost), timeout=30,
                     what="the stuck order and the unwritten events waiting in the old queues")

    _apply_crd(cluster, CRD.read_text())  # the upgrade brings the new CRD with the new operator
    new = cluster.start_operator(TRAILINGSTOP_LEGACY_QUEUE_GRACE="3")
    await new.wait_healthy()
    await advance(cluster, 2500, streams=1)  # the old workers may still run a while, as pods roll
    await eventually(lambda: _rolled(cluster), timeout=60, what="every worker replaced by the new version")
    await advance(cluster, 5000, streams=1)

    offline = {name: expected_triggers([stop], 5000)[0] for name, (stop, _) in stops.items()}
    for name in ("fills-unseen", "order-stuck", "fills-later"):
        final = (await wait_status(cluster, cluster.namespace, name, "Filled"))
        assert final["status"]["triggerTradeId"] == offline[name], name
        orders = cluster.fake.orders(client_order_id(final["metadata"]["uid"]))
        assert len(orders) == (0 if name == "fills-unseen" else 1), (name, orders)
    tracking = await eventually(lambda: _status_at(cluster, "tracking", FIRST_ID + 4999), timeout=30,
                                what=f"the tracking stop at trade {FIRST_ID + 4999}")
    reference, stop_price = _offline_levels(TRACKING, 5000)
    assert (tracking["referencePrice"], tracking["stopPrice"]) == (reference, stop_price)
    await eventually(lambda: _legacy_queues_gone(cluster, legacy_vhost), timeout=60, what="the old queues deleted")
    assert "handed to executor" in new.log_text()


def _imported_from(code: Path) -> str:
    """Where a process started like WorkerProcess(code=...) finds the package."""
    probe = [sys.executable, "-c", "import trailingstop, sys; sys.stdout.write(trailingstop.__file__)"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run(probe, env=env, cwd=code, capture_output=True, text=True, check=True).stdout


async def _phase_in(cluster: PodRunnerCluster, name: str, phases: tuple[str, ...]) -> bool:
    return (await cluster.stop_resource(name)).get("status", {}).get("phase") in phases


async def _status_at(cluster: PodRunnerCluster, name: str, trade_id: int) -> dict[str, Any] | None:
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


async def _rolled(cluster: PodRunnerCluster) -> bool:
    """Each worker Deployment runs the new code, healthy (the pod runner's processes)."""
    assert cluster.pods is not None
    running = [process for _, process in cluster.pods.running.values()]
    if len(running) != 4 or any(process.code is not None for process in running):
        return False
    for process in running:
        with contextlib.suppress(AssertionError):
            await process.wait_healthy(timeout=0.5)
            continue
        return False
    return True


async def _in_flight(cluster: PodRunnerCluster, vhost: str) -> bool:
    depths = {queue["name"]: queue.get("messages", 0) for queue in await cluster.vhost.queues(vhost)}
    return bool(depths.get("executor.testnet-binance-keys.orders") == 1 and depths.get("operator.order-events")
                and depths.get("operator.stop-events"))


async def _legacy_queues_gone(cluster: PodRunnerCluster, vhost: str) -> bool:
    left = {queue["name"] for queue in await cluster.vhost.queues(vhost)}
    return not any(name.startswith(("operator.", "executor.", "orchestrator.")) for name in left)

"""Faults on the real node (issue 16 item 5), each ending with every stop Filled and exactly one
order per stop at the exchange (the fake Binance counts them per clientOrderId)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, pod_ready
from tests.e2e.node import frozen
from tests.e2e.stops import advance, keyed_stop, keys_secret, wait_phase
from tests.harness import eventually
from trailingstop.core.contracts import client_order_id

pytestmark = pytest.mark.timeout(600)

# Testnet stops (the executor places real orders at the fake): "fast" triggers at trade offset 311,
# "slow" (from 0.00145, 1 %) at 4848.
STOPS = {"fast": {"trail": "0.5", "activation": None}, "slow": {"trail": "1", "activation": "0.00145"}}


async def start(cluster: Cluster) -> None:
    assert cluster.apply(keys_secret()).returncode == 0
    await cluster.install()
    for name, options in STOPS.items():
        assert cluster.apply(keyed_stop(name, **options)).returncode == 0
    for name in STOPS:
        await wait_phase(cluster, name, "Armed", timeout=180)


async def one_order_each(cluster: Cluster) -> None:
    for name in STOPS:
        final = await wait_phase(cluster, name, "Filled", timeout=180)
        cid = client_order_id(final["metadata"]["uid"])
        assert cluster.fake.order_count(cid) == 1, (name, cluster.fake.orders(cid))
        assert final["status"]["order"]["orderId"] == cluster.fake.orders(cid)[0].order_id


async def pod_of(cluster: Cluster, component: str) -> dict[str, Any]:
    listed = await asyncio.to_thread(cluster.kubectl, "get", "pods", "-n", cluster.namespace, "-l",
                                     f"app.kubernetes.io/component={component}", "-o", "json")
    (pod,) = [p for p in json.loads(listed.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
    return dict(pod)


async def delete_pod(cluster: Cluster, component: str) -> None:
    """``kubectl delete pod`` of the component's pod; returns once its replacement is Ready."""
    old = (await pod_of(cluster, component))["metadata"]["name"]
    cluster.kubectl("delete", "pod", old, "-n", cluster.namespace, "--wait=false")

    async def replaced() -> bool:
        try:
            pod = await pod_of(cluster, component)
        except ValueError:  # none, or the old one still terminating beside the new one
            return False
        return pod["metadata"]["name"] != old and pod_ready(pod)

    await eventually(replaced, timeout=180, interval=0.5, what=f"a new {component} pod Ready")


def restarts(pod: dict[str, Any]) -> int:
    return sum(s.get("restartCount", 0) for s in pod["status"].get("containerStatuses") or [])


async def test_deleting_the_orchestrator_executor_and_operator_pods_mid_stop_places_one_order_each(
    cluster: Cluster,
) -> None:
    await start(cluster)
    await advance(cluster, 200)
    await delete_pod(cluster, "orchestrator")
    await advance(cluster, 330)  # "fast" triggers at 311: its order goes out as the executor goes
    await delete_pod(cluster, "executor")
    await delete_pod(cluster, "operator")
    await advance(cluster, 5000)
    await one_order_each(cluster)


async def test_a_frozen_worker_is_replaced_by_its_liveness_probe(cluster: Cluster) -> None:
    await start(cluster)
    orchestrator = await pod_of(cluster, "orchestrator")
    before = restarts(orchestrator)
    with frozen(orchestrator):
        async def restarted() -> bool:
            return restarts(await pod_of(cluster, "orchestrator")) > before

        await eventually(restarted, timeout=180, interval=1, what="the kubelet restarting the frozen container")
    await eventually(lambda: _ready(cluster, "orchestrator"), timeout=120, interval=0.5, what="the new container Ready")
    await advance(cluster, 5000)
    await one_order_each(cluster)


async def test_a_restart_of_containerd_and_the_kubelet_loses_nothing(cluster: Cluster) -> None:
    await start(cluster)
    pods = {c: await pod_of(cluster, c) for c in ("operator", "marketdata", "orchestrator", "executor")}
    await advance(cluster, 200)
    script = os.environ["TESTENV_SCRIPT"]
    done = await asyncio.to_thread(subprocess.run, [script, "restart-node"], capture_output=True, text=True,
                                   timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for component, pod in pods.items():  # before the fills, which retire the workers
        now = await pod_of(cluster, component)
        assert (now["metadata"]["uid"], restarts(now)) == (pod["metadata"]["uid"], restarts(pod)), component
    await advance(cluster, 5000)
    await one_order_each(cluster)


async def _ready(cluster: Cluster, component: str) -> bool:
    return pod_ready(await pod_of(cluster, component))


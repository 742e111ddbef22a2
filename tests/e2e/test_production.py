"""The operator's production behaviour on the real node (issue 13): leader failover, pods that
cannot start, retirement after Filled, children put back, a broker outage.

Each test installs the chart with ``helm install`` (tests/e2e/conftest.py); the workers are real
pods; the faults are made from the host, where the tests run as root: ``kubectl delete``,
SIGSTOP of a container's processes (found through its cgroup), a packet filter between pods and
the broker.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, Release, pod_ready
from tests.e2e.node import broker_cut, frozen
from tests.e2e.stops import advance, keyed_stop, keys_secret, manifest, wait_phase
from tests.harness import eventually
from trailingstop.core.contracts import client_order_id

pytestmark = pytest.mark.timeout(600)

WORKERS = ("ts-marketdata-xrpeth", "ts-orchestrator-xrpeth", "ts-executor-simulate")


def wide(name: str) -> str:
    """A stop that starts trailing at its first trade and, 10 % wide, never triggers on the tape."""
    return manifest(name, trail="10", activation=None)


# --- (a) leader failover ---------------------------------------------------------------------------


async def test_a_standby_takes_over_from_a_deleted_leader_and_from_a_frozen_one(cluster: Cluster) -> None:
    release = await cluster.install(replicas=2)
    first = release.operator_pod()["metadata"]["name"]
    assert cluster.apply(wide("before")).returncode == 0
    await wait_phase(cluster, "before", "Armed", timeout=180)

    # `kubectl delete pod` of the leader: it gives the Lease up as it stops and another replica
    # takes it. Which one is a race: the standby, or the Deployment's replacement for the deleted
    # pod if it starts first and polls the Lease before the standby does (both retry every 2 s).
    await _standby(release)
    started = time.monotonic()
    cluster.kubectl("delete", "pod", first, "-n", release.namespace, "--wait=false")
    await eventually(lambda: _holder_is_not(release, first), timeout=40, interval=0.2,
                     what=f"a replica other than {first} leading")
    took = time.monotonic() - started
    assert cluster.apply(wide("after-delete")).returncode == 0
    await wait_phase(cluster, "after-delete", "Armed", timeout=60)
    await advance(cluster, 50)
    for name in ("before", "after-delete"):
        await wait_phase(cluster, name, "Tracking", timeout=60)

    # A frozen leader neither renews nor releases: the Lease runs out (15 s) and the standby (the
    # Deployment's replacement for the deleted pod) takes over.
    leader = await release.wait_operator_ready()
    standby = await _standby(release)
    with frozen(leader):
        started = time.monotonic()
        await eventually(lambda: _holder_is(release, standby), timeout=40, interval=0.5, what=f"{standby} leading")
        expired = time.monotonic() - started
        assert cluster.apply(wide("after-freeze")).returncode == 0
        await wait_phase(cluster, "after-freeze", "Armed", timeout=60)
        await advance(cluster, 100)
        await wait_phase(cluster, "after-freeze", "Tracking", timeout=60)
    print(f"\ntakeover after a delete: {took:.1f}s; after a freeze: {expired:.1f}s")
    assert expired >= 5, "the Lease is the frozen leader's until it expires, never sooner"
    # Thawed, the old leader finds the Lease gone and stops working (exits: its pod restarts).
    await eventually(lambda: _holder_is(release, standby), timeout=5, what="the Lease staying with the new leader")
    for name in ("before", "after-delete", "after-freeze"):
        assert (await cluster.stop_resource(name))["status"]["phase"] == "Tracking"


async def _standby(release: Release) -> str:
    """The replica that does not hold the Lease, once it runs (standing by: alive, not Ready)."""
    async def found() -> str | None:
        holder = await asyncio.to_thread(release.lease_holder)
        pods = await asyncio.to_thread(release.operator_pods)
        others = [p["metadata"]["name"] for p in pods if p["metadata"]["name"] != holder
                  and not p["metadata"].get("deletionTimestamp") and _running(p)]
        return others[0] if holder and len(others) == 1 else None

    return str(await eventually(found, timeout=120, interval=0.5, what="a standby replica running"))


def _running(pod: dict[str, Any]) -> bool:
    return any("running" in (s.get("state") or {}) for s in pod.get("status", {}).get("containerStatuses") or [])


async def _holder_is(release: Release, name: str) -> bool:
    return await asyncio.to_thread(release.lease_holder) == name


async def _holder_is_not(release: Release, name: str) -> bool:
    holder = await asyncio.to_thread(release.lease_holder)
    return bool(holder) and holder != name


# --- (b) pods that cannot start ------------------------------------------------------------------------


async def test_a_worker_image_that_cannot_be_pulled_shows_in_the_stops_status_and_events(cluster: Cluster) -> None:
    await cluster.install("--set", "workers.image.repository=trailingstop.local/absent",
                          "--set", "workers.image.tag=dev", "--set", "workers.pullPolicy=IfNotPresent")
    assert cluster.apply(manifest("unpulled")).returncode == 0
    condition = await eventually(lambda: _workers_condition(cluster, "unpulled", {"ErrImagePull", "ImagePullBackOff"}),
                                 timeout=120, what="WorkersReady False with the pull error")
    assert "ts-" in condition["message"], condition
    stop = await cluster.stop_resource("unpulled")
    assert stop["status"]["phase"] == "Pending"
    ready = next(c for c in stop["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False", ready
    await eventually(lambda: _warning(cluster, "unpulled", {"ErrImagePull", "ImagePullBackOff"}), timeout=60,
                     what="a Warning Event on the stop")


async def test_a_missing_credentials_secret_shows_in_the_stops_status_and_events(cluster: Cluster) -> None:
    await cluster.install()
    assert cluster.apply(keyed_stop("keyless", secret="no-such-keys")).returncode == 0
    condition = await eventually(lambda: _workers_condition(cluster, "keyless", {"CreateContainerConfigError"}),
                                 timeout=120, what="WorkersReady False: CreateContainerConfigError")
    assert "ts-executor-testnet-no-such-keys" in condition["message"], condition
    await eventually(lambda: _warning(cluster, "keyless", {"CreateContainerConfigError"}), timeout=60,
                     what="a Warning Event on the stop")
    # The user creates the Secret: the executor starts, the condition clears, the stop trades.
    assert cluster.apply(keys_secret("no-such-keys")).returncode == 0
    await eventually(lambda: _workers_ready(cluster, "keyless"), timeout=120, what="WorkersReady True")


async def _workers_condition(cluster: Cluster, name: str, reasons: set[str]) -> dict[str, Any] | None:
    conditions = (await cluster.stop_resource(name)).get("status", {}).get("conditions") or []
    found = next((c for c in conditions if c["type"] == "WorkersReady"), None)
    return found if found and found["status"] == "False" and found["reason"] in reasons else None


async def _workers_ready(cluster: Cluster, name: str) -> bool:
    conditions = (await cluster.stop_resource(name)).get("status", {}).get("conditions") or []
    return any(c["type"] == "WorkersReady" and c["status"] == "True" for c in conditions)


async def _warning(cluster: Cluster, name: str, reasons: set[str]) -> bool:
    listed = await asyncio.to_thread(cluster.kubectl, "get", "events", "-n", cluster.namespace, "--field-selector",
                                     f"involvedObject.kind=TrailingStop,involvedObject.name={name},type=Warning",
                                     "-o", "json")
    return any(e["reason"] in reasons for e in json.loads(listed.stdout)["items"])


# --- (c) retirement ---------------------------------------------------------------------------------


async def test_a_filled_stop_retires_its_workers_and_a_new_stop_brings_them_back(cluster: Cluster) -> None:
    await cluster.install()
    assert cluster.apply(manifest("first", trail="0.5", activation=None)).returncode == 0
    ready = await asyncio.to_thread(cluster.kubectl, "wait", "ts/first", "-n", cluster.namespace,
                                    "--for=condition=Ready", "--timeout=180s", check=False, timeout=200)
    assert ready.returncode == 0, ready.stderr
    assert (await cluster.stop_resource("first"))["status"]["phase"] == "Armed"
    # What a user runs: it returns once the stop has filled (the trades come meanwhile).
    waiting = asyncio.create_task(asyncio.to_thread(
        cluster.kubectl, "wait", "ts/first", "-n", cluster.namespace, "--for=jsonpath={.status.phase}=Filled",
        "--timeout=120s", check=False, timeout=150))
    await asyncio.sleep(1)
    assert not waiting.done()
    await advance(cluster, 400)
    filled = await waiting
    assert filled.returncode == 0 and "condition met" in filled.stdout, filled.stderr

    await eventually(lambda: _none_of(cluster, WORKERS), timeout=60, what="the symbol's and route's workers retired")
    await asyncio.sleep(3)  # the retirement writes nothing to the stop
    final = await cluster.stop_resource("first")
    assert final["status"]["phase"] == "Filled" and final["status"]["order"]["status"] == "SIMULATED"
    table = cluster.kubectl("get", "ts", "first", "-n", cluster.namespace).stdout.splitlines()
    assert table[1].split()[4] == "Filled"

    assert cluster.apply(manifest("second", trail="0.5", activation=None)).returncode == 0
    await eventually(lambda: _all_of(cluster, WORKERS), timeout=60, what="the workers back")
    await wait_phase(cluster, "second", "Armed", timeout=180)
    assert (await cluster.stop_resource("first"))["status"]["phase"] == "Filled"


async def _none_of(cluster: Cluster, names: tuple[str, ...]) -> bool:
    return not set(names) & set(await cluster.deployments())


async def _all_of(cluster: Cluster, names: tuple[str, ...]) -> bool:
    return set(names) <= set(await cluster.deployments())


# --- (d) deleted children ----------------------------------------------------------------------------


async def test_a_deleted_worker_deployment_and_broker_secret_are_put_back_within_seconds(cluster: Cluster) -> None:
    await cluster.install()
    assert cluster.apply(EXAMPLE_LIKE).returncode == 0
    await wait_phase(cluster, "restored", "Armed", timeout=180)

    old = (await cluster.deployments())["ts-orchestrator-xrpeth"]["metadata"]["uid"]
    started = time.monotonic()
    cluster.kubectl("delete", "deployment", "ts-orchestrator-xrpeth", "-n", cluster.namespace, "--wait=false")
    back = await eventually(lambda: _new_deployment(cluster, "ts-orchestrator-xrpeth", old), timeout=15,
                            interval=0.2, what="the orchestrator's Deployment put back")
    deployment_back = time.monotonic() - started
    assert back["metadata"]["ownerReferences"][0]["name"] == "restored"

    secret = json.loads(cluster.kubectl("get", "secret", "ts-amqp", "-n", cluster.namespace, "-o", "json").stdout)
    started = time.monotonic()
    cluster.kubectl("delete", "secret", "ts-amqp", "-n", cluster.namespace)
    again = await eventually(lambda: _secret(cluster, "ts-amqp", secret["metadata"]["uid"]), timeout=15,
                             interval=0.2, what="ts-amqp put back")
    secret_back = time.monotonic() - started
    assert again["data"]["url"] == secret["data"]["url"], "the same tenant's credentials"
    print(f"\nput back: the Deployment in {deployment_back:.1f}s, the Secret in {secret_back:.1f}s")

    await cluster.worker("ts-orchestrator-xrpeth", timeout=120)
    await wait_phase(cluster, "restored", "Armed", timeout=60)
    await advance(cluster, 400)
    final = await wait_phase(cluster, "restored", "Filled", timeout=120)
    assert final["status"]["order"]["status"] == "SIMULATED"


EXAMPLE_LIKE = manifest("restored", trail="0.5", activation=None)


async def _new_deployment(cluster: Cluster, name: str, old_uid: str) -> dict[str, Any] | None:
    found = (await cluster.deployments()).get(name)
    return found if found and found["metadata"]["uid"] != old_uid else None


async def _secret(cluster: Cluster, name: str, old_uid: str) -> dict[str, Any] | None:
    got = await asyncio.to_thread(cluster.kubectl, "get", "secret", name, "-n", cluster.namespace, "-o", "json",
                                  check=False)
    if got.returncode != 0:
        return None
    found = json.loads(got.stdout)
    return dict(found) if found["metadata"]["uid"] != old_uid else None


# --- (e) a broker outage --------------------------------------------------------------------------------


OUTAGE = 150.0  # seconds: longer than every reconnect backoff, shorter than a person's patience


async def test_a_broker_outage_restarts_no_pod_and_the_stops_go_on_afterwards(cluster: Cluster) -> None:
    assert cluster.apply(keys_secret()).returncode == 0
    release = await cluster.install()
    assert cluster.apply(keyed_stop("through-outage", trail="1", activation="0.00145")).returncode == 0
    await wait_phase(cluster, "through-outage", "Armed", timeout=180)
    await advance(cluster, 3400)
    await wait_phase(cluster, "through-outage", "Tracking", timeout=60)

    await eventually(lambda: _all_ready(cluster, release), timeout=120, interval=1, what="every pod Ready")
    pods = await _all_pods(cluster, release)
    restarts = {name: _restarts(pod) for name, pod in pods.items()}
    with broker_cut(cluster.node.ip, [pod["status"]["podIP"] for pod in pods.values()]):
        await asyncio.sleep(OUTAGE)
        during = await _all_pods(cluster, release)
    assert {name: _restarts(pod) for name, pod in during.items()} == restarts, "no pod restarted in the outage"
    await eventually(lambda: _all_ready(cluster, release), timeout=120, interval=1, what="every pod Ready again")
    after = await _all_pods(cluster, release)
    assert {name: _restarts(pod) for name, pod in after.items()} == restarts, "the same pods, never restarted"

    await advance(cluster, 5000)
    final = await wait_phase(cluster, "through-outage", "Filled", timeout=180)
    cid = client_order_id(final["metadata"]["uid"])
    assert (cluster.fake.order_count(cid), cluster.fake.order_posts(cid)) == (1, 1)


async def _all_pods(cluster: Cluster, release: Release) -> dict[str, dict[str, Any]]:
    """The operator's pod and the workers' (every pod of the namespace, which holds just those)."""
    listed = await asyncio.to_thread(cluster.kubectl, "get", "pods", "-n", release.namespace, "-o", "json")
    return {p["metadata"]["name"]: p for p in json.loads(listed.stdout)["items"]
            if not p["metadata"].get("deletionTimestamp")}


def _restarts(pod: dict[str, Any]) -> int:
    return sum(s.get("restartCount", 0) for s in pod.get("status", {}).get("containerStatuses") or [])


async def _all_ready(cluster: Cluster, release: Release) -> bool:
    return all(pod_ready(p) for p in (await _all_pods(cluster, release)).values())


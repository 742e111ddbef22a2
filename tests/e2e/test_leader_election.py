"""Leader election of the operator's replicas on a real Lease (the API server of scripts/testenv)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from tests.conftest import Tool
from trailingstop.operator.leader import LeaderElection

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def lease_namespace(kubectl: Tool, kubeconfig: Path) -> AsyncIterator[tuple[client.ApiClient, str]]:
    name = f"ts-lease-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    api = await config.new_client_from_config(config_file=str(kubeconfig))
    yield api, name
    await api.close()
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def replica(api: client.ApiClient, namespace: str, identity: str) -> LeaderElection:
    return LeaderElection(api, namespace, "trailingstop-operator", identity, duration=3.0, renew=1.0, retry=0.2)


async def test_one_replica_leads_the_other_takes_over_when_it_is_released(
    lease_namespace: tuple[client.ApiClient, str],
) -> None:
    api, namespace = lease_namespace
    first, second = replica(api, namespace, "pod-a"), replica(api, namespace, "pod-b")
    await first.acquire()
    keeping = asyncio.create_task(first.keep(lambda: None))
    waiting = asyncio.create_task(second.acquire())
    await asyncio.sleep(2.0)  # several renewals of the leader, several tries of the standby
    assert first.leading and not waiting.done() and not second.leading

    started = time.monotonic()
    keeping.cancel()
    await first.release()  # the leader's pod is deleted: a clean shutdown gives the Lease up
    await asyncio.wait_for(waiting, 5)
    assert second.leading and not first.leading
    assert time.monotonic() - started < 1.5, "the standby takes over at once, not after the Lease expires"
    lease = await client.CoordinationV1Api(api).read_namespaced_lease("trailingstop-operator", namespace)
    assert (lease.spec.holder_identity, lease.spec.lease_transitions) == ("pod-b", 1)


async def test_a_leader_that_stops_renewing_is_replaced_once_its_lease_expires(
    lease_namespace: tuple[client.ApiClient, str],
) -> None:
    """A node that stops: its leader neither renews nor releases. The standby waits the Lease's
    duration (never less: the old leader may still be working), then takes over."""
    api, namespace = lease_namespace
    first, second = replica(api, namespace, "pod-a"), replica(api, namespace, "pod-b")
    await first.acquire()
    started = time.monotonic()
    await asyncio.wait_for(second.acquire(), 10)
    waited = time.monotonic() - started
    assert 3.0 <= waited < 6.0, waited


async def test_a_leader_that_cannot_renew_stops_before_anyone_else_may_start(
    lease_namespace: tuple[client.ApiClient, str],
) -> None:
    api, namespace = lease_namespace
    leader = replica(api, namespace, "pod-a")
    await leader.acquire()
    lost = asyncio.Event()
    keeping = asyncio.create_task(leader.keep(lost.set))
    # Someone else holds the Lease now (an operator that thought ours expired, a person): our
    # renewals fail, and we must stop within the Lease's duration.
    leases = client.CoordinationV1Api(api)
    lease = await leases.read_namespaced_lease("trailingstop-operator", namespace)
    lease.spec.holder_identity = "pod-z"
    await leases.replace_namespaced_lease("trailingstop-operator", namespace, lease)
    started = time.monotonic()
    await asyncio.wait_for(lost.wait(), 5)
    assert time.monotonic() - started <= 3.0 and not leader.leading
    with contextlib.suppress(asyncio.CancelledError):
        await keeping


async def test_a_leader_not_renewed_in_time_acts_on_nothing_until_a_renewal(
    lease_namespace: tuple[client.ApiClient, str],
) -> None:
    """A frozen leader (SIGSTOP, a paused VM) wakes up "leading" with a Lease another replica may
    hold by now: its fence holds every message and status write until a renewal says it still
    leads (or for ever, when the Lease is lost and the process stops)."""
    api, namespace = lease_namespace
    leader = replica(api, namespace, "pod-a")  # duration 3 s, renewals every 1 s
    await leader.acquire()
    await asyncio.wait_for(leader.fence(), 0.5)
    await asyncio.sleep(2.2)  # no renewals meanwhile, as if frozen: past duration - renew
    assert leader.leading and not leader.certain()
    fenced = asyncio.create_task(leader.fence())
    await asyncio.sleep(0.5)
    assert not fenced.done(), "a stale leader waits"
    keeping = asyncio.create_task(leader.keep(lambda: None))  # nobody took the Lease: renewed
    await asyncio.wait_for(fenced, 3)
    assert leader.certain()
    keeping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeping

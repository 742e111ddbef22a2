"""Worker rollouts a few at a time (trailingstop/operator/rollout.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from trailingstop.operator.rollout import RolloutGate, rolled_out


def deployment(generation: int, observed: int, updated: int, available: int, replicas: int = 1) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "availableReplicas": available}}


def test_rolled_out_needs_the_new_generation_seen_updated_and_available() -> None:
    assert rolled_out(deployment(3, 3, 1, 1))
    assert not rolled_out(deployment(3, 2, 1, 1))  # the controller has not seen the change yet
    assert not rolled_out(deployment(3, 3, 0, 1))  # the old pod still serves
    assert not rolled_out(deployment(3, 3, 1, 0))  # the new pod is not ready
    assert not rolled_out({"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": None})
    assert rolled_out(None)  # deleted meanwhile: nothing to wait for


class Fleet:
    """Deployments whose new pod becomes available ``delay`` seconds after each apply."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.rolling: set[str] = set()
        self.most = 0
        self.ready_at: dict[str, float] = {}

    async def apply(self, name: str) -> None:
        self.rolling.add(name)
        self.most = max(self.most, len(self.rolling))
        self.ready_at[name] = asyncio.get_running_loop().time() + self.delay

    async def read(self, name: str) -> dict[str, Any]:
        if asyncio.get_running_loop().time() < self.ready_at[name]:
            return deployment(2, 2, 1, 0)
        self.rolling.discard(name)
        return deployment(2, 2, 1, 1)


async def test_no_more_than_a_batch_restarts_at_once_and_all_finish() -> None:
    fleet, gate = Fleet(delay=0.05), RolloutGate(batch=3, timeout=10, poll=0.01)
    names = [f"ts-orchestrator-s{i}" for i in range(10)]
    results = await asyncio.gather(*(gate.roll(n, lambda n=n: fleet.apply(n), lambda n=n: fleet.read(n))
                                     for n in names))
    assert results == [True] * 10
    assert fleet.most == 3 and not fleet.rolling
    assert set(fleet.ready_at) == set(names)


async def test_a_worker_that_never_starts_holds_its_slot_only_until_the_timeout() -> None:
    stuck, gate = Fleet(delay=3600), RolloutGate(batch=1, timeout=0.05, poll=0.01)
    healthy = Fleet(delay=0)
    first = await gate.roll("stuck", lambda: stuck.apply("stuck"), lambda: stuck.read("stuck"))
    second = await asyncio.wait_for(gate.roll("next", lambda: healthy.apply("next"), lambda: healthy.read("next")), 5)
    assert (first, second) == (False, True)

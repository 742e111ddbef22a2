"""Worker rollouts a few at a time.

After `helm upgrade` (a new worker image, new settings), the operator's first reconcile changes
the pod template of every worker Deployment at once: every orchestrator of every symbol would
restart together, each then asking for its stops in the same second. A Deployment whose pod
template changes waits here for one of ``batch`` slots and keeps it until its new pod is
available (or ``timeout`` passes: a worker that cannot start is reported by its stops'
WorkersReady condition and must not hold the others back for ever). New Deployments and changes
that restart no pod take no slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Read = Callable[[], Awaitable[dict[str, Any] | None]]


def rolled_out(deployment: dict[str, Any] | None) -> bool:
    """The controller has seen the newest spec and every replica runs it and is available (or
    the Deployment is gone: nothing left to wait for)."""
    if deployment is None:
        return True
    metadata, spec, status = deployment["metadata"], deployment.get("spec", {}), deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    return (
        (status.get("observedGeneration") or 0) >= (metadata.get("generation") or 0)
        and (status.get("updatedReplicas") or 0) >= wanted
        and (status.get("availableReplicas") or 0) >= wanted
    )


class RolloutGate:
    def __init__(self, batch: int, timeout: float, poll: float = 1.0) -> None:
        self._slots = asyncio.Semaphore(batch)
        self.timeout = timeout
        self.poll = poll  # the API's Deployment status; a watch per rollout would cost more than it saves

    async def roll(self, name: str, apply: Callable[[], Awaitable[Any]], read: Read) -> bool:
        """``apply`` in a slot, then hold the slot until ``read`` shows it rolled out. False on timeout."""
        async with self._slots:
            await apply()
            deadline = time.monotonic() + self.timeout
            while not rolled_out(await read()):
                if time.monotonic() >= deadline:
                    log.warning("%s did not roll out within %.0fs; rolling the next workers anyway", name, self.timeout)
                    return False
                await asyncio.sleep(self.poll)
            return True

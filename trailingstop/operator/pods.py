"""What the worker pods are doing, as the stops' ``WorkersReady`` condition. Pure: no I/O.

The operator watches its pods (label ``app.kubernetes.io/managed-by``) and keeps the newest word of
each; a stop's workers are its symbol's marketdata and orchestrator and its route's executor. A
pod that cannot start says why in its status (the kubelet's waiting reason, or the scheduler's),
and that reason reaches the stop's status and Events, so ``kubectl describe trailingstop`` says
why a stop stays Pending instead of leaving the user to find the pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trailingstop.operator.builders import ROUTE_LABEL, SYMBOL_LABEL

# The kubelet's waiting reasons that need a person (a pod merely being created is not a problem).
STUCK_REASONS = frozenset({
    "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "CrashLoopBackOff", "RunContainerError",
})
COMPONENT_LABEL = "app.kubernetes.io/component"


@dataclass(frozen=True)
class PodWord:
    """One pod's state: ready, stuck (with the reason), or neither yet (starting)."""

    ready: bool
    reason: str = ""
    message: str = ""

    @property
    def stuck(self) -> bool:
        return not self.ready and bool(self.reason)


@dataclass(frozen=True)
class WorkersWord:
    ready: bool
    reason: str
    message: str


def workload_of(pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(namespace, component, symbol or route) of one of our worker pods."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    component = labels.get(COMPONENT_LABEL)
    key = labels.get(SYMBOL_LABEL) if component in ("marketdata", "orchestrator") else labels.get(ROUTE_LABEL)
    if not component or not key:
        return None
    return str(metadata.get("namespace", "")), str(component), str(key)


def pod_word(pod: Mapping[str, Any]) -> PodWord:
    name = (pod.get("metadata") or {}).get("name", "")
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return PodWord(False, str(condition.get("reason") or "Unschedulable"),
                           f"{name}: {condition.get('message') or 'cannot be scheduled'}")
    containers = status.get("containerStatuses") or []
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return PodWord(False, str(waiting["reason"]), f"{name}: {waiting.get('message') or waiting['reason']}")
    if containers and all(container.get("ready") for container in containers):
        return PodWord(True, "Running", f"{name} is ready")
    return PodWord(False)  # being created or starting: no word yet


def deployment_word(pods: Iterable[PodWord]) -> PodWord | None:
    """One Deployment's word from its pods (several during a rollout): ready if one is, stuck if
    none is and one is stuck, starting otherwise; None when it has no pod yet."""
    words = list(pods)
    if any(word.ready for word in words):
        return next(word for word in words if word.ready)
    return next((word for word in words if word.stuck), PodWord(False) if words else None)


def workers_word(words: Iterable[PodWord | None], expected: int) -> WorkersWord | None:
    """The stop's word from its workers' pods (``expected`` Deployments): stuck as soon as one is;
    ready when every one is; None while they are still starting (nothing to say)."""
    known = [word for word in words if word is not None]
    stuck = [word for word in known if word.stuck]
    if stuck:
        return WorkersWord(False, stuck[0].reason, "; ".join(word.message for word in stuck))
    if len(known) == expected and all(word.ready for word in known):
        return WorkersWord(True, "Running", "every worker pod is ready")
    return None

"""The Kubernetes API, as the operator uses it (kubernetes_asyncio; kopf has no public client).

* child objects: compared with what exists, then server-side applied only if they differ;
* statuses: JSON merge patches on the status subresource, with ``null`` for fields that went away;
* Kubernetes Events for the transitions people watch for.

API errors are retried with backoff here (409, 429, 5xx, timeouts); anything else is raised.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from trailingstop import telemetry
from trailingstop.core.contracts import API_GROUP, API_VERSION, KIND, PLURAL, TrailingStopStatus, ms_to_rfc3339, now_ms
from trailingstop.operator.builders import MANAGED_BY, RABBITMQ_TOPOLOGY_GROUP
from trailingstop.operator.stops import StopRecord, StopStore

log = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
# The generated client would send a dict as a JSON patch, which the API server refuses here.
MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
APPLY_PATCH: dict[str, Any] = {
    "_content_type": "application/apply-patch+yaml",
    "field_manager": MANAGED_BY,
    "force": True,
}
T = TypeVar("T")


async def api_client() -> client.ApiClient:
    """In a pod: its service account; elsewhere: $KUBECONFIG / ~/.kube/config."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        await config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient, attempts: int = 6) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.networking = client.NetworkingV1Api(api)
        self.attempts = attempts
        self.instance = socket.gethostname()

    async def close(self) -> None:
        await self.api.close()

    # --- calls with retries ------------------------------------------------------------------------

    async def call(self, operation: str, request: Callable[[], Awaitable[T]]) -> T:
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                return await request()
            except ApiException as exc:
                telemetry.OPERATOR_API_ERRORS.labels(operation=operation).inc()
                if exc.status not in RETRIED_STATUSES or attempt == self.attempts:
                    raise
                log.warning("%s: HTTP %s, retry %d in %.1fs", operation, exc.status, attempt, delay)
            except (TimeoutError, aiohttp.ClientError):
                telemetry.OPERATOR_API_ERRORS.labels(operation=operation).inc()
                if attempt == self.attempts:
                    raise
                log.warning("%s: connection problem, retry %d in %.1fs", operation, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    # --- trailing stops ----------------------------------------------------------------------------

    async def list_stops(self, namespaces: tuple[str, ...], clusterwide: bool) -> list[dict[str, Any]]:
        custom = self.custom
        if clusterwide:
            listed = await self.call("list", lambda: custom.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL))
            return list(listed["items"])
        items: list[dict[str, Any]] = []
        for namespace in namespaces:

            def list_namespace(ns: str = namespace) -> Awaitable[Any]:
                return custom.list_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL)

            items.extend((await self.call("list", list_namespace))["items"])
        return items

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch the status subresource; False if the resource is gone."""
        try:
            await self.call(
                "patch-status",
                lambda: self.custom.patch_namespaced_custom_object_status(
                    API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": patch}, **MERGE_PATCH
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def post_event(self, record: StopRecord, reason: str, message: str, warning: bool = False) -> None:
        moment = ms_to_rfc3339(now_ms())
        event: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{record.name}.", "namespace": record.namespace},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": record.name,
                "namespace": record.namespace,
                "uid": record.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": MANAGED_BY},
            "reportingComponent": MANAGED_BY,
            "reportingInstance": self.instance,
            "firstTimestamp": moment,
            "lastTimestamp": moment,
            "count": 1,
        }
        await self.call("event", lambda: self.core.create_namespaced_event(record.namespace, event))

    # --- child objects -------------------------------------------------------------------------------

    async def apply(self, desired: dict[str, Any]) -> bool:
        """Server-side apply ``desired`` unless what exists already contains it. True if written."""
        kind, namespace, name = desired["kind"], desired["metadata"]["namespace"], desired["metadata"]["name"]
        existing = await self.read(desired)
        if existing is not None and contains(existing, desired):
            return False
        patch = self._verbs(desired)[1]
        await self.call(f"apply-{kind}", lambda: patch(name, namespace, desired, **APPLY_PATCH))
        log.info("applied %s %s/%s", kind, namespace, name)
        return True

    async def read(self, desired: dict[str, Any]) -> dict[str, Any] | None:
        """The object named like ``desired`` as it is on the server (None if there is none)."""
        kind, namespace, name = desired["kind"], desired["metadata"]["namespace"], desired["metadata"]["name"]
        reader = self._verbs(desired)[0]
        try:
            existing = await self.call(f"get-{kind}", lambda: reader(name, namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return dict(self.api.sanitize_for_serialization(existing))

    async def delete(self, desired: dict[str, Any]) -> bool:
        """Delete the object named like ``desired``; False if there was none."""
        kind, namespace, name = desired["kind"], desired["metadata"]["namespace"], desired["metadata"]["name"]
        remove = self._verbs(desired)[2]
        try:
            await self.call(f"delete-{kind}", lambda: remove(name, namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False
        return True

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, decoded (None if the Secret or the key is missing)."""
        found = await self.read({"kind": "Secret", "metadata": {"namespace": namespace, "name": name}})
        encoded = ((found or {}).get("data") or {}).get(key)
        return base64.b64decode(encoded).decode() if encoded else None

    def _verbs(self, desired: dict[str, Any]) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        """(read, patch, delete), each called with (name, namespace[, body, ...])."""
        kind = desired["kind"]
        if kind == "Deployment":
            apps = self.apps
            return apps.read_namespaced_deployment, apps.patch_namespaced_deployment, apps.delete_namespaced_deployment
        if kind == "Secret":
            core = self.core
            return core.read_namespaced_secret, core.patch_namespaced_secret, core.delete_namespaced_secret
        if kind == "NetworkPolicy":
            networking = self.networking
            return (networking.read_namespaced_network_policy, networking.patch_namespaced_network_policy,
                    networking.delete_namespaced_network_policy)
        if kind == "PodDisruptionBudget":
            policy = self.policy
            return (policy.read_namespaced_pod_disruption_budget, policy.patch_namespaced_pod_disruption_budget,
                    policy.delete_namespaced_pod_disruption_budget)
        group, _, version = desired["apiVersion"].partition("/")
        if group != RABBITMQ_TOPOLOGY_GROUP:
            raise ValueError(f"no verbs for {kind}")
        plural = kind.lower() + "s"
        custom = self.custom

        def read(name: str, namespace: str) -> Any:
            return custom.get_namespaced_custom_object(group, version, namespace, plural, name)

        def patch(name: str, namespace: str, body: Any, **options: Any) -> Any:
            return custom.patch_namespaced_custom_object(group, version, namespace, plural, name, body, **options)

        def delete(name: str, namespace: str) -> Any:
            return custom.delete_namespaced_custom_object(group, version, namespace, plural, name)

        return read, patch, delete


def contains(existing: Any, desired: Any) -> bool:
    """Whether ``existing`` holds every field of ``desired`` (server defaults may add more)."""
    if isinstance(desired, dict):
        return isinstance(existing, dict) and all(contains(existing.get(k), v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(existing, list)
            and len(existing) == len(desired)
            and all(contains(e, d) for e, d in zip(existing, desired, strict=True))
        )
    return bool(existing == desired)


def status_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The merge patch from ``before`` to ``after`` (top-level status fields; null removes one)."""
    patch: dict[str, Any] = {key: value for key, value in after.items() if before.get(key) != value}
    patch.update({key: None for key in before if key not in after})
    return patch


class KubeStopStore(StopStore):
    """The store whose statuses are written to the TrailingStops' status subresource."""

    def __init__(self, kube: Kube) -> None:
        super().__init__()
        self.kube = kube
        self._written: dict[str, dict[str, Any]] = {}

    def put(self, record: StopRecord, on_server: Mapping[str, Any] | None = None) -> StopRecord:
        """``on_server``: the status as read from the API, the base of the next merge patch."""
        known = self.get(record.uid) is not None
        stored = super().put(record, on_server)
        if not known:
            self._written[record.uid] = dict(on_server or {})
        return stored

    def remove(self, uid: str) -> StopRecord | None:
        self._written.pop(uid, None)
        return super().remove(uid)

    async def write(self, record: StopRecord, status: TrailingStopStatus) -> None:
        after = status.wire()
        patch = status_patch(self._written.get(record.uid, {}), after)
        if not patch:
            return
        if await self.kube.patch_status(record.namespace, record.name, patch):
            self._written[record.uid] = after

"""Desired child objects, built from the TrailingStops that own them. Pure: no I/O.

Per namespace and symbol: ``ts-marketdata-<symbol>`` and ``ts-orchestrator-<symbol>``; per
namespace and route: ``ts-executor-<route>``; per namespace: the ``ts-amqp`` Secret with the URL
of the namespace's own broker tenant (:mod:`trailingstop.operator.tenancy`). Each object is owned
by every TrailingStop that needs it, so the garbage collector deletes it with the last one. The
workers' pod template carries a digest of that URL, so new credentials roll them.

With the messaging-topology-operator, the tenant itself is made of ``Vhost``, ``User`` and
``Permission`` objects in the operator's namespace (:func:`topology_objects`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trailingstop.bus import worker_permissions
from trailingstop.core.contracts import API_GROUP, API_VERSION, KIND
from trailingstop.operator.config import HEALTH_PORT, OperatorConfig

MANAGED_BY = "trailingstop-operator"
SYMBOL_LABEL = f"{API_GROUP}/symbol"
ROUTE_LABEL = f"{API_GROUP}/route"
TENANT_LABEL = f"{API_GROUP}/tenant"
# The digest of the ts-amqp URL the pods were started with: a new one (new credentials) rolls them.
BROKER_CREDENTIALS_ANNOTATION = f"{API_GROUP}/broker-credentials"
AMQP_KEY = "url"
WORKER_UID = 10001
CREDENTIALS_DIR = "/var/run/trailingstop/credentials"  # the executor's credentials Secret, as files
RABBITMQ_TOPOLOGY_GROUP = "rabbitmq.com"
RABBITMQ_TOPOLOGY_VERSION = "v1beta1"


@dataclass(frozen=True, order=True)
class Owner:
    """A TrailingStop, as an owner of a child object."""

    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": False,
            "blockOwnerDeletion": False,
        }


def owner_references(owners: Iterable[Owner]) -> list[dict[str, Any]]:
    """Sorted and unique, so the same owners always build the same object."""
    return [owner.reference() for owner in sorted(set(owners))]


def marketdata_name(symbol: str) -> str:
    return f"ts-marketdata-{symbol.lower()}"


def orchestrator_name(symbol: str) -> str:
    return f"ts-orchestrator-{symbol.lower()}"


def executor_name(route: str) -> str:
    return f"ts-executor-{route.lower()}"


def deployment_ref(namespace: str, name: str) -> dict[str, Any]:
    """Enough of a Deployment to name it (to read or delete it)."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"namespace": namespace, "name": name}}


def disruption_budget_ref(namespace: str, name: str) -> dict[str, Any]:
    metadata = {"namespace": namespace, "name": name}
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata}


def amqp_secret(config: OperatorConfig, namespace: str, url: str, owners: Iterable[Owner]) -> dict[str, Any]:
    """The namespace's broker tenant URL (its own user, password and vhost) for the workers."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": config.amqp_secret_name,
            "namespace": namespace,
            "labels": _labels("broker-credentials"),
            "ownerReferences": owner_references(owners),
        },
        "type": "Opaque",
        "data": {AMQP_KEY: _b64(url)},
    }


def marketdata_deployment(
    config: OperatorConfig, namespace: str, symbol: str, owners: Iterable[Owner], broker: str = "",
    book: bool = False,
) -> dict[str, Any]:
    """``book``: some stop of the symbol follows BestBidAsk, so marketdata streams the book too
    (a change of it rolls the pod: the orchestrator refills the trades it missed meanwhile)."""
    return _deployment(
        config,
        namespace,
        broker=broker,
        name=marketdata_name(symbol),
        component="marketdata",
        args=["worker", "marketdata", "--symbol", symbol, *(["--book"] if book else [])],
        selector={SYMBOL_LABEL: symbol},
        owners=owners,
    )


def orchestrator_deployment(
    config: OperatorConfig, namespace: str, symbol: str, owners: Iterable[Owner], broker: str = ""
) -> dict[str, Any]:
    # One replica, and Recreate: two orchestrators of one symbol would both fire (DESIGN §6).
    return _deployment(
        config,
        namespace,
        broker=broker,
        name=orchestrator_name(symbol),
        component="orchestrator",
        args=["worker", "orchestrator", "--symbol", symbol],
        selector={SYMBOL_LABEL: symbol},
        owners=owners,
    )


def executor_deployment(
    config: OperatorConfig, namespace: str, route: str, secret_name: str | None, owners: Iterable[Owner],
    broker: str = "",
) -> dict[str, Any]:
    env: list[dict[str, Any]] = []
    volumes: list[tuple[dict[str, Any], str]] = []
    if secret_name is not None:
        # Keys reach the process as environment variables from the Secret, and nowhere else. The
        # Secret is mounted too, only so the executor sees a rotation and restarts for the new keys
        # (workers/credentials.py): the operator itself may not read it to roll the Deployment.
        env = [
            {"name": "BINANCE_API_KEY", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "apiKey"}}},
            {"name": "BINANCE_API_SECRET", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "apiSecret"}}},
            {"name": "TRAILINGSTOP_CREDENTIALS_DIR", "value": CREDENTIALS_DIR},
        ]
        # Optional, so a missing Secret stops the container at the environment references, which the
        # kubelet reports as CreateContainerConfigError (the stop's WorkersReady says so); a
        # required volume would leave the pod in ContainerCreating with only a FailedMount Event.
        volumes = [({"name": "credentials", "secret": {"secretName": secret_name, "optional": True}},
                    CREDENTIALS_DIR)]
    return _deployment(
        config,
        namespace,
        broker=broker,
        name=executor_name(route),
        component="executor",
        args=["worker", "executor", "--route", route],
        selector={ROUTE_LABEL: route},
        owners=owners,
        extra_env=env,
        extra_volumes=volumes,
    )


def _labels(component: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "trailingstop",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "trailingstop",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **(extra or {}),
    }


def _deployment(
    config: OperatorConfig,
    namespace: str,
    *,
    broker: str,
    name: str,
    component: str,
    args: list[str],
    selector: dict[str, str],
    owners: Iterable[Owner],
    extra_env: list[dict[str, Any]] | None = None,
    extra_volumes: list[tuple[dict[str, Any], str]] | None = None,  # (volume, read-only mount path)
) -> dict[str, Any]:
    match = {"app.kubernetes.io/name": "trailingstop", "app.kubernetes.io/component": component, **selector}
    labels = _labels(component, selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": owner_references(owners),
        },
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {**config.worker_pod_annotations, BROKER_CREDENTIALS_ANNOTATION: broker},
                },
                "spec": _pod_spec(config, args, extra_env or [], extra_volumes or []),
            },
        },
    }


def _pod_spec(config: OperatorConfig, args: list[str], extra_env: list[dict[str, Any]],
              extra_volumes: list[tuple[dict[str, Any], str]]) -> dict[str, Any]:
    env = [
        {"name": "AMQP_URL", "valueFrom": {"secretKeyRef": {"name": config.amqp_secret_name, "key": AMQP_KEY}}},
        {"name": "TRAILINGSTOP_HEALTH_PORT", "value": str(HEALTH_PORT)},
        *({"name": key, "value": str(value)} for key, value in sorted(config.worker_env.items())),
        *extra_env,
    ]
    # Liveness asks only for the process's own progress (/livez); the broker and the exchange are
    # readiness (/readyz): an outage of either restarts no pod (trailingstop/health.py).
    def probe(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 3}

    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 30,
        "containers": [
            {
                "name": "worker",
                "image": config.worker_image,
                "imagePullPolicy": config.image_pull_policy,
                "args": args,
                "env": env,
                "ports": [{"name": "http", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
                "livenessProbe": {**probe("/livez"), "initialDelaySeconds": 20, "failureThreshold": 6},
                "readinessProbe": {**probe("/readyz"), "initialDelaySeconds": 2, "failureThreshold": 3},
                "resources": config.worker_resources,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    *({"name": volume["name"], "mountPath": path, "readOnly": True} for volume, path in extra_volumes),
                ],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, *(volume for volume, _ in extra_volumes)],
    }
    if config.worker_service_account:
        spec["serviceAccountName"] = config.worker_service_account
    spec.update({key: value for key, value in config.worker_scheduling.items() if value})
    return spec


def disruption_budget(namespace: str, deployment: dict[str, Any]) -> dict[str, Any]:
    """A worker Deployment's PodDisruptionBudget (minAvailable 1), owned like it: a drain waits for
    a person rather than stop a symbol's only orchestrator on its own."""
    metadata = deployment["metadata"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": metadata["name"], "namespace": namespace, "labels": metadata["labels"],
                     "ownerReferences": metadata["ownerReferences"]},
        "spec": {"minAvailable": 1, "selector": deployment["spec"]["selector"]},
    }


def executor_network_policy(config: OperatorConfig, deployment: dict[str, Any]) -> dict[str, Any]:
    """The executor holds the Binance keys: its pods may send only DNS and the configured ports
    (the broker's and the exchange's; by port, because Binance's addresses change and the broker's
    differ per cluster, and no API server rule is needed, so it works the same on Cilium and
    Calico), and receive only on the health port (probes, metrics)."""
    metadata = deployment["metadata"]
    tcp = [{"port": port, "protocol": "TCP"} for port in config.executor_egress_ports]
    dns = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": metadata["name"], "namespace": metadata["namespace"], "labels": metadata["labels"],
                     "ownerReferences": metadata["ownerReferences"]},
        "spec": {
            "podSelector": deployment["spec"]["selector"],
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": HEALTH_PORT, "protocol": "TCP"}]}],
            "egress": [{"ports": dns}, {"ports": tcp}],
        },
    }


# --- broker tenants through the messaging-topology-operator -------------------------------------------

# The Secret the topology operator's User controller makes from the imported credentials, and
# reads the password from on every reconcile (the imported Secret is read only once).
USER_CREDENTIALS_SUFFIX = "-user-credentials"


def cluster_reference(cluster: str, connection_secret: str) -> dict[str, Any]:
    """The objects' ``rabbitmqClusterReference``: a RabbitmqCluster by name, or a connection Secret
    (``uri``, ``username``, ``password``); both live in the objects' own namespace."""
    if bool(cluster) == bool(connection_secret):
        raise ValueError("name exactly one of a RabbitmqCluster or a connection Secret")
    return {"name": cluster} if cluster else {"connectionSecret": {"name": connection_secret}}


def topology_base(vhost: str) -> str:
    """The prefix of a tenant's object names: short, and the same on every call for one vhost."""
    return "ts-tenant-" + hashlib.sha256(vhost.encode()).hexdigest()[:16]


def topology_objects(
    namespace: str, reference: dict[str, Any], vhost: str, user: str, password: str, operator_user: str
) -> list[dict[str, Any]]:
    """A tenant as the topology operator's objects, in the operator's ``namespace``: the workers'
    credentials Secret, the Vhost, the User, and the Permissions of the workers and the operator.

    The order is the order of creation (deletion goes the other way). The User has no tags, like
    the management API path's workers."""
    base = topology_base(vhost)
    labels = _labels("broker-tenant", {TENANT_LABEL: base})
    credentials = f"{base}-credentials"

    def custom(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": f"{RABBITMQ_TOPOLOGY_GROUP}/{RABBITMQ_TOPOLOGY_VERSION}",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {**spec, "rabbitmqClusterReference": reference},
        }

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": credentials, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "data": {"username": _b64(user), "password": _b64(password)},
    }
    return [
        secret,
        custom("Vhost", base, {"name": vhost}),
        custom("User", f"{base}-workers", {"importCredentialsSecret": {"name": credentials}}),
        custom("Permission", f"{base}-workers", {"vhost": vhost, "user": user, "permissions": worker_permissions()}),
        custom("Permission", f"{base}-operator", {
            "vhost": vhost, "user": operator_user, "permissions": {"configure": ".*", "write": ".*", "read": ".*"},
        }),
    ]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()

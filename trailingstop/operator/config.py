"""Operator settings: where it watches, and what it puts in the worker Deployments.

All from the environment (the chart sets them) with command-line overrides for the scope.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trailingstop import __version__

DEFAULT_IMAGE = f"ghcr.io/trailingstop/trailingstop:{__version__}"
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "96Mi"},
    "limits": {"cpu": "1", "memory": "256Mi"},
}
HEALTH_PORT = 8080
BROKER_ADMINS = ("management-api", "topology-operator")


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    clusterwide: bool = False
    standalone: bool = True
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    worker_image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    worker_resources: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    worker_env: dict[str, str] = field(default_factory=dict)  # extra env for every worker container
    worker_service_account: str = ""  # none: pods get no token at all
    status_interval: float = 5.0  # at most one reference/price write per resource per interval
    health_port: int = HEALTH_PORT
    amqp_secret_name: str = "ts-amqp"  # per namespace, made by the operator for its workers
    # This operator release on the broker: each namespace's vhost and user is ts.<instance>.<ns>,
    # so two releases on one broker never share a queue (the chart: <release namespace>.<release>).
    instance: str = "default.trailingstop"
    operator_namespace: str = "default"
    # How broker tenants are made: management-api (the operator's user needs the administrator
    # tag) or topology-operator (Vhost/User/Permission objects for the messaging-topology-operator).
    broker_admin: str = "management-api"
    management_url: str = ""  # default: http://<AMQP host>:15672
    # topology-operator: what the Vhost/User/Permission objects' rabbitmqClusterReference names, in
    # the operator's namespace; exactly one of the two. rabbitmq_cluster: a RabbitmqCluster of the
    # RabbitMQ Cluster Operator (the topology operator reads its default user and Service).
    # rabbitmq_connection_secret: a Secret with keys `uri` (the management API's URL, e.g.
    # http://rabbitmq.broker.svc:15672), `username` and `password` (an account with the
    # administrator tag), for a broker no Cluster Operator manages. The topology operator is
    # what uses it; this operator only checks at start that it has those three keys.
    rabbitmq_cluster: str = ""
    rabbitmq_connection_secret: str = ""
    # Queues of the pre-tenancy layout are deleted once drained and quiet this long (legacy.py).
    legacy_queue_grace: float = 300.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> OperatorConfig:
        env = os.environ if environ is None else environ
        namespaces = tuple(n.strip() for n in env.get("WATCH_NAMESPACES", "").split(",") if n.strip())
        values: dict[str, Any] = {
            "namespaces": namespaces,
            "clusterwide": env.get("WATCH_ALL_NAMESPACES", "").lower() in ("1", "true", "yes"),
            "amqp_url": env.get("AMQP_URL", cls.amqp_url),
            "worker_image": env.get("TRAILINGSTOP_WORKER_IMAGE", DEFAULT_IMAGE),
            "image_pull_policy": env.get("TRAILINGSTOP_WORKER_IMAGE_PULL_POLICY", "IfNotPresent"),
            "worker_env": _json_object(env, "TRAILINGSTOP_WORKER_ENV", {}),
            "worker_resources": _json_object(env, "TRAILINGSTOP_WORKER_RESOURCES", dict(DEFAULT_RESOURCES)),
            "worker_service_account": env.get("TRAILINGSTOP_WORKER_SERVICE_ACCOUNT", ""),
            "status_interval": float(env.get("TRAILINGSTOP_STATUS_INTERVAL", "5")),
            "health_port": int(env.get("TRAILINGSTOP_HEALTH_PORT", str(HEALTH_PORT))),
            "legacy_queue_grace": float(env.get("TRAILINGSTOP_LEGACY_QUEUE_GRACE", "300")),
        }
        own_namespace = env.get("POD_NAMESPACE", "default")
        values.update(
            operator_namespace=own_namespace,
            instance=env.get("TRAILINGSTOP_INSTANCE", "") or f"{own_namespace}.trailingstop",
            broker_admin=env.get("TRAILINGSTOP_BROKER_ADMIN", "management-api"),
            management_url=env.get("TRAILINGSTOP_RABBITMQ_MANAGEMENT_URL", ""),
            rabbitmq_cluster=env.get("TRAILINGSTOP_RABBITMQ_CLUSTER", ""),
            rabbitmq_connection_secret=env.get("TRAILINGSTOP_RABBITMQ_CONNECTION_SECRET", ""),
        )
        if values["broker_admin"] not in BROKER_ADMINS:
            raise ValueError(f"TRAILINGSTOP_BROKER_ADMIN must be one of {', '.join(BROKER_ADMINS)}, "
                             f"got {values['broker_admin']!r}")
        if values["broker_admin"] == "topology-operator" and bool(values["rabbitmq_cluster"]) == bool(
            values["rabbitmq_connection_secret"]
        ):
            raise ValueError("TRAILINGSTOP_BROKER_ADMIN=topology-operator needs exactly one of "
                             "TRAILINGSTOP_RABBITMQ_CLUSTER (a RabbitmqCluster) or "
                             "TRAILINGSTOP_RABBITMQ_CONNECTION_SECRET (a Secret with uri, username, password), "
                             "in the operator's namespace")
        if not values["namespaces"] and not values["clusterwide"]:
            values["namespaces"] = (own_namespace,)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __repr__(self) -> str:  # the AMQP URL may carry a password
        scope = "all namespaces" if self.clusterwide else ",".join(self.namespaces)
        return f"OperatorConfig(scope={scope}, image={self.worker_image})"


def _json_object(env: Mapping[str, str], name: str, default: dict[str, Any]) -> dict[str, Any]:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {raw!r}")
    return value

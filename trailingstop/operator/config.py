"""The operator's view of the settings (:mod:`trailingstop.settings`): where it watches, how it
sets broker tenants up, and what it puts in the worker Deployments. The command line may override
the scope."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trailingstop.settings import DEFAULT_IMAGE, DEFAULT_WORKER_RESOURCES, Settings, load_settings

HEALTH_PORT = 8080


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    clusterwide: bool = False
    standalone: bool = True
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    worker_image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    worker_resources: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_WORKER_RESOURCES))
    worker_env: dict[str, str] = field(default_factory=dict)  # extra env for every worker container
    worker_service_account: str = ""  # none: pods get no token at all
    # tolerations, affinity, nodeSelector, priorityClassName, imagePullSecrets of the worker pods
    worker_scheduling: dict[str, Any] = field(default_factory=dict)
    worker_pod_annotations: dict[str, str] = field(default_factory=dict)
    worker_disruption_budget: bool = False
    worker_rollout_batch: int = 3
    worker_rollout_timeout: float = 180.0
    executor_network_policy: bool = True
    executor_egress_ports: tuple[int, ...] = (443, 5671, 5672)
    stop_metrics: bool = False
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
    leader_election: bool = True
    lease_name: str = "trailingstop-operator"
    lease_duration: float = 15.0
    lease_renew: float = 5.0
    legacy_queue_grace: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OperatorConfig:
        """The operator's view of the settings; ``overrides`` (command-line scope) win when not None."""
        values: dict[str, Any] = {
            "namespaces": settings.namespaces,
            "clusterwide": settings.watch_all_namespaces,
            "amqp_url": settings.amqp,
            "worker_image": settings.worker_image,
            "image_pull_policy": settings.worker_image_pull_policy,
            "worker_env": dict(settings.worker_env),
            "worker_resources": dict(settings.worker_resources),
            "worker_service_account": settings.worker_service_account,
            "worker_scheduling": {
                "tolerations": list(settings.worker_tolerations),
                "affinity": dict(settings.worker_affinity),
                "nodeSelector": dict(settings.worker_node_selector),
                "priorityClassName": settings.worker_priority_class,
                "imagePullSecrets": [{"name": name} for name in settings.worker_image_pull_secrets],
            },
            "worker_pod_annotations": dict(settings.worker_pod_annotations),
            "worker_disruption_budget": settings.worker_disruption_budget,
            "worker_rollout_batch": settings.worker_rollout_batch,
            "worker_rollout_timeout": settings.worker_rollout_timeout,
            "executor_network_policy": settings.executor_network_policy,
            "executor_egress_ports": tuple(settings.executor_egress_ports),
            "stop_metrics": settings.stop_metrics,
            "status_interval": settings.status_interval,
            "health_port": settings.health_port,
            "legacy_queue_grace": settings.legacy_queue_grace,
            "leader_election": settings.leader_election,
            "lease_name": settings.lease_name,
            "lease_duration": settings.lease_duration,
            "lease_renew": settings.lease_renew,
            "operator_namespace": settings.pod_namespace,
            "instance": settings.instance_name,
            "broker_admin": settings.broker_admin,
            "management_url": settings.rabbitmq_management_url,
            "rabbitmq_cluster": settings.rabbitmq_cluster,
            "rabbitmq_connection_secret": settings.rabbitmq_connection_secret,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["namespaces"] and not values["clusterwide"]:
            values["namespaces"] = (settings.pod_namespace,)
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> OperatorConfig:
        return cls.from_settings(load_settings(environ), **overrides)

    def __repr__(self) -> str:  # the AMQP URL may carry a password
        scope = "all namespaces" if self.clusterwide else ",".join(self.namespaces)
        return f"OperatorConfig(scope={scope}, image={self.worker_image})"

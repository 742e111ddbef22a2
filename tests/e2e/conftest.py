"""Fixtures for the operator on the real control plane, with workers run by the pod runner."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from tests.conftest import Tool
from tests.e2e.podrunner import PodRunner
from tests.fakebinance import FakeBinance
from tests.harness import Vhost, WorkerProcess, worker_env

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "trailingstops.trailingstop.dev.yaml"


@pytest.fixture(scope="session")
def crd(kubectl: Tool) -> Path:
    """The TrailingStop CRD installed from crds/ and Established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trailingstops.trailingstop.dev")
    return CRD


def create_namespace(kubectl: Tool) -> str:
    """A fresh namespace that enforces the restricted Pod Security Standard."""
    name = f"ts-e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest")
    return name


def delete_namespace(kubectl: Tool, name: str) -> None:
    # The operator is gone by now: its finalizers would hold the namespace in Terminating.
    listed = kubectl("get", "trailingstops", "-n", name, "-o", "name", check=False).stdout.split()
    for resource in listed:
        kubectl("patch", resource, "-n", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(kubectl: Tool, crd: Path) -> Any:
    name = create_namespace(kubectl)
    yield name
    delete_namespace(kubectl, name)


@pytest.fixture
async def kube(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    api = await config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    await api.close()


@dataclass
class Cluster:
    """One test's view: its namespace, the operator process, the pod runner, kubectl.

    The operator's home vhost is the test's own; the namespaces' broker tenants it makes are
    removed at the end (the operator is stopped before it could retire them itself).
    """

    namespace: str
    kubectl: Tool
    kube: client.ApiClient
    vhost: Vhost
    fake: FakeBinance
    log_dir: Path
    kubeconfig: Path
    operators: list[WorkerProcess] = field(default_factory=list)
    pods: PodRunner | None = None
    more: dict[str, PodRunner] = field(default_factory=dict)  # namespace -> the pods of added namespaces

    async def add_namespace(self) -> str:
        """Another namespace, with its own pod runner (for tests of several tenants)."""
        name = create_namespace(self.kubectl)
        host_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        (self.log_dir / name).mkdir()
        self.more[name] = await PodRunner(self.kube, name, self.log_dir / name, host_env).start()
        return name

    def start_operator(
        self, namespaces: list[str] | None = None, instance: str = "", code: Path | None = None, **extra: str
    ) -> WorkerProcess:
        worker_settings = {
            "TRAILINGSTOP_BINANCE_API_URL": self.fake.api_url,
            "TRAILINGSTOP_BINANCE_STREAM_URL": self.fake.stream_url,
            "TRAILINGSTOP_SYNC_TIMEOUT": "3",
            "TRAILINGSTOP_FLUSH_INTERVAL": "0.2",
            "TRAILINGSTOP_LOG_FORMAT": "json",
            "TRAILINGSTOP_TRACING": "on",
        }
        env = worker_env(
            self.vhost.url,
            KUBECONFIG=str(self.kubeconfig),
            WATCH_NAMESPACES=",".join(namespaces or [self.namespace]),
            TRAILINGSTOP_INSTANCE=instance,
            TRAILINGSTOP_RABBITMQ_MANAGEMENT_URL=self.vhost.management_url,
            TRAILINGSTOP_STATUS_INTERVAL="1",
            TRAILINGSTOP_TRACING="on",
            TRAILINGSTOP_WORKER_ENV=json.dumps(worker_settings),
            **extra,
        )
        process = WorkerProcess(["operator"], env, self.log_dir, f"operator-{len(self.operators)}", code).start()
        self.operators.append(process)
        return process

    def apply(self, manifest: str | Path, namespace: str = "") -> Any:
        text = manifest.read_text() if isinstance(manifest, Path) else manifest
        return self.kubectl("apply", "-n", namespace or self.namespace, "-f", "-", input=text, check=False)

    async def stop_resource(self, name: str, namespace: str = "") -> dict[str, Any]:
        custom = client.CustomObjectsApi(self.kube)
        return dict(await custom.get_namespaced_custom_object("trailingstop.dev", "v1", namespace or self.namespace,
                                                              "trailingstops", name))

    @property
    def namespaces(self) -> list[str]:
        return [self.namespace, *self.more]


@pytest.fixture
async def cluster(
    namespace: str, kubectl: Tool, kube: client.ApiClient, vhost: Vhost, fake: FakeBinance, tmp_path: Path,
    kubeconfig: Path,
) -> AsyncIterator[Cluster]:
    here = Cluster(namespace, kubectl, kube, vhost, fake, tmp_path, kubeconfig)
    host_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    here.pods = await PodRunner(kube, namespace, tmp_path, host_env).start()
    yield here
    for runner in [here.pods, *here.more.values()]:
        await runner.stop()
    for process in here.operators:
        await process.stop()
    for name in here.more:
        delete_namespace(kubectl, name)
    await vhost.delete_tenants(here.namespaces)

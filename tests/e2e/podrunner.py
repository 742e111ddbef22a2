"""A stand-in kubelet for the e2e tests: runs each Deployment's container as a local process.

There is no kubelet (nor container runtime) on the test machine, so pods the controllers create
stay Pending. This runner watches the operator's Deployments in one namespace and, for each, starts
``python -m trailingstop <container args>`` with the container's environment resolved the way the
kubelet resolves it: plain values as they are, ``secretKeyRef`` values read from the Secret through
the API. Only the health port is moved (every "pod" shares one host). A changed template restarts
the process (strategy Recreate); a deleted Deployment stops it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from tests.conftest import Tool
from tests.e2e.conftest import create_namespace, delete_namespace
from tests.fakebinance import FakeBinance
from tests.harness import Vhost, WorkerProcess, worker_env

MANAGED = "app.kubernetes.io/managed-by=trailingstop-operator"


class PodRunner:
    def __init__(
        self, api: client.ApiClient, namespace: str, log_dir: Path, host_env: dict[str, str],
        code_for: Callable[[dict[str, Any]], Path | None] | None = None,
    ) -> None:
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.log_dir = log_dir
        self.host_env = host_env  # PATH and the like: what the image would provide
        # Which version of the code "the image" holds, by pod template (an upgrade test runs the old
        # code for old templates, as a new image tag would only come with the new ones).
        self.code_for = code_for
        self.running: dict[str, tuple[str, WorkerProcess]] = {}  # deployment -> (template hash, process)
        self.starts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> PodRunner:
        self._task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(process.stop() for _, process in self.running.values()))
        self.running.clear()

    def process(self, deployment: str) -> WorkerProcess:
        return self.running[deployment][1]

    async def _loop(self) -> None:
        while True:
            await self.sync_once()
            await asyncio.sleep(0.3)

    async def sync_once(self) -> None:
        listed = await self.apps.list_namespaced_deployment(self.namespace, label_selector=MANAGED)
        present = {}
        for deployment in listed.items:
            present[deployment.metadata.name] = deployment
        for name in list(self.running):
            if name not in present:
                await self.running.pop(name)[1].stop()
        for name, deployment in present.items():
            template = self.apps.api_client.sanitize_for_serialization(deployment.spec.template)
            digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
            current = self.running.get(name)
            if current is not None and current[0] == digest:
                current[1].assert_running()
                continue
            env = await self._environment(template)
            if env is None:
                continue  # a Secret is not there yet: the kubelet would wait too
            if current is not None:
                await current[1].stop()
            args = template["spec"]["containers"][0]["args"]
            self.starts[name] = self.starts.get(name, 0) + 1
            code = self.code_for(template) if self.code_for else None
            process = WorkerProcess(args, env, self.log_dir, f"{name}-{self.starts[name]}", code).start()
            self.running[name] = (digest, process)

    async def _environment(self, template: dict[str, Any]) -> dict[str, str] | None:
        container = template["spec"]["containers"][0]
        env = dict(self.host_env)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            try:
                secret = await self.core.read_namespaced_secret(ref["name"], self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            env[item["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
        return env


# --- the podrunner era's cluster fixture, for the tests that have not moved onto the node yet ----------


@dataclass
class PodRunnerCluster:
    """One test's view: its namespace, the operator as a host process, the pod runner, kubectl.

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
        (self.log_dir / name).mkdir()
        self.more[name] = await PodRunner(self.kube, name, self.log_dir / name, _host_env()).start()
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
            TRAILINGSTOP_LEADER_ELECTION="false",
            # The pod runner runs the workers as processes: their Deployments never become available,
            # so a changed pod template (an upgrade, new broker credentials) must not wait for that.
            TRAILINGSTOP_WORKER_ROLLOUT_TIMEOUT="0.5",
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


def _host_env() -> dict[str, str]:
    return {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}


@pytest.fixture
async def podrunner_cluster(
    namespace: str, kubectl: Tool, kube: client.ApiClient, vhost: Vhost, fake: FakeBinance, tmp_path: Path,
    kubeconfig: Path,
) -> AsyncIterator[PodRunnerCluster]:
    """For the tests still on the pod runner (the operator a host process, the workers too)."""
    here = PodRunnerCluster(namespace, kubectl, kube, vhost, fake, tmp_path, kubeconfig)
    here.pods = await PodRunner(kube, namespace, tmp_path, _host_env()).start()
    yield here
    for runner in [here.pods, *here.more.values()]:
        await runner.stop()
    for process in here.operators:
        await process.stop()
    for name in here.more:
        delete_namespace(kubectl, name)
    await vhost.delete_tenants(here.namespaces)

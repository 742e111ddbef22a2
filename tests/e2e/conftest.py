"""Fixtures for the operator on the real node: installed by ``helm install``, its workers real pods.

The operator runs as a pod of the image built from this tree (``scripts/testenv images``), installed
by ``helm install`` of ``charts/trailingstop-operator`` into the test's namespace with nothing but
the chart's ServiceAccount and namespaced Role. The worker pods are the Deployments it creates, run
by the kubelet. The broker is the host's RabbitMQ, given to the chart as an existing broker
(``existingSecret``): a fresh vhost per test, reached by pods at the node address. Binance is the
project's fake, run in the test's process on the node address, so the pods reach it and the test
drives its tape and counts its orders directly.

Two places make everything: :meth:`Cluster.install` (a release into a test namespace) and the
``fake`` fixture below (a fake Binance the pods can reach). When a test fails, every pod's log
(the previous container's too), ``kubectl describe`` and the events of its namespaces are written
to ``<tmp_path>/pods/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config

from tests.conftest import Tool, missing
from tests.e2e.node import RESTRICTED_LABELS, Node
from tests.fakebinance import FakeBinance
from tests.harness import Vhost, eventually

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "trailingstops.trailingstop.dev.yaml"
CHART = REPO / "charts" / "trailingstop-operator"
HEALTH_PORT = 8080  # the workers' and (by the chart's default) the operator's /healthz and /metrics
OPERATOR = "app.kubernetes.io/component=operator"
# What every test's workers get on top of the chart's defaults (through workers.env, as a user
# sets a private endpoint): quicker syncs and status flushes than production wants.
WORKER_ENV = {
    "TRAILINGSTOP_SYNC_TIMEOUT": "3",
    "TRAILINGSTOP_FLUSH_INTERVAL": "0.2",
    "TRAILINGSTOP_SILENCE_TIMEOUT": "5",
}


# --- pytest plumbing: the outcome of a test, for its fixtures' teardown ---------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call"))


# --- the node, the CRD, the fake Binance -------------------------------------------------------------


@pytest.fixture(scope="session")
def node(kubectl: Tool) -> Node:
    """The testenv node, Ready, with the project's image."""
    found = Node.from_env(kubectl)
    found.require_image(found.image)
    return found


@pytest.fixture
def crd(kubectl: Tool) -> Path:
    """The TrailingStop CRD installed from crds/ and Established (the releases of the tests use
    ``crds.install=false``: the CRD outlives releases, and one cluster has one copy). Applied for
    every test: checkouts sharing this cluster apply their own versions of it."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trailingstops.trailingstop.dev")
    return CRD


@pytest.fixture
async def fake(node: Node) -> AsyncIterator[FakeBinance]:
    """Binance's stand-in on the node address: the worker pods reach it, the test drives it."""
    async with FakeBinance(host=node.ip) as server:
        yield server


def worker_env(fake: FakeBinance, **extra: str) -> dict[str, str]:
    """The workers' settings pointing them at ``fake`` (the chart's ``workers.env``)."""
    return {"TRAILINGSTOP_BINANCE_API_URL": fake.api_url, "TRAILINGSTOP_BINANCE_STREAM_URL": fake.stream_url,
            **WORKER_ENV, **extra}


def image_values(key: str, image: str) -> list[str]:
    """--set arguments giving the chart a local image (in the node's containerd, never pulled)."""
    repository, _, tag = image.rpartition(":")
    return ["--set", f"{key}.repository={repository}", "--set", f"{key}.tag={tag}",
            "--set", f"{key}.pullPolicy=Never"]


# --- namespaces ------------------------------------------------------------------------------------


def create_namespace(kubectl: Tool, prefix: str = "ts-e2e") -> str:
    """A fresh namespace that enforces the restricted Pod Security Standard."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, *RESTRICTED_LABELS)
    return name


def delete_namespace(kubectl: Tool, name: str) -> None:
    """Deleted without waiting. The stops get their deletionTimestamp first, from a delete of their
    own (the namespace's delete sets it only later, from the namespace controller: finalizers
    removed before that were put back by the operator still running, and the namespace stayed
    Terminating for ever once the operator's pod was gone); an operator still running then never
    puts its finalizer back. Then the finalizers go, in case no operator is left to remove them."""
    kubectl("delete", "trailingstops", "--all", "-n", name, "--wait=false", check=False)
    listed = kubectl("get", "trailingstops", "-n", name, "-o", "name", check=False).stdout.split()
    for resource in listed:
        kubectl("patch", resource, "-n", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(kubectl: Tool, crd: Path) -> Iterator[str]:
    name = create_namespace(kubectl)
    yield name
    delete_namespace(kubectl, name)


@pytest.fixture
async def kube(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    api = await config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    await api.close()


@pytest.fixture
async def home_vhost(node: Node, management_url: str) -> AsyncIterator[Vhost]:
    """The operator's own vhost on the host broker, as pods reach it (the ``testenv`` user, an
    administrator, at the node address): what a user puts into the chart's ``existingSecret``."""
    if not node.pod_amqp_url:
        missing("TESTENV_POD_AMQP_URL is not set (the managed broker's user for pods)")
    vhost = Vhost(node.pod_amqp_url, management_url)
    await vhost.create()
    yield vhost
    await vhost.delete()


# --- releases ----------------------------------------------------------------------------------------


@dataclass
class Release:
    """One ``helm install`` of the chart."""

    name: str
    namespace: str
    kubectl: Tool
    helm: Tool

    @property
    def fullname(self) -> str:
        return self.name if "trailingstop" in self.name else f"{self.name}-trailingstop-operator"

    @property
    def instance(self) -> str:
        """The release's name on the broker (the chart's TRAILINGSTOP_INSTANCE)."""
        return f"{self.namespace}.{self.name}"

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name},{OPERATOR}"

    def operator_pods(self) -> list[dict[str, Any]]:
        listed = self.kubectl("get", "pods", "-n", self.namespace, "-l", self.selector, "-o", "json").stdout
        return list(json.loads(listed)["items"])

    def lease_holder(self) -> str:
        """The pod holding the release's Lease (its name is the pod's hostname), or ''."""
        lease = self.kubectl("get", "lease", self.fullname, "-n", self.namespace, "-o", "json", check=False)
        return str(json.loads(lease.stdout)["spec"].get("holderIdentity") or "") if lease.returncode == 0 else ""

    def operator_pod(self) -> dict[str, Any]:
        """The working operator's pod: the Lease's holder (of two replicas), or the one pod."""
        live = [p for p in self.operator_pods() if not p["metadata"].get("deletionTimestamp")]
        holder = self.lease_holder()
        leading = [p for p in live if p["metadata"]["name"] == holder]
        assert len(leading) == 1 or len(live) == 1, ([p["metadata"]["name"] for p in live], holder)
        return leading[0] if leading else live[0]

    async def wait_operator_ready(self, timeout: float = 180) -> dict[str, Any]:
        """The leader's pod, once it is Ready (/readyz answers only for the Lease's holder)."""
        async def ready() -> dict[str, Any] | None:
            live = await asyncio.to_thread(self.operator_pods)
            holder = await asyncio.to_thread(self.lease_holder)
            running = [p for p in live if not p["metadata"].get("deletionTimestamp") and pod_ready(p)
                       and p["metadata"]["name"] == holder]
            return running[0] if running else None

        return dict(await eventually(ready, timeout=timeout, interval=0.5, what=f"{self.fullname}'s leader Ready"))

    def log_text(self) -> str:
        """The operator's log (every container it had in this pod)."""
        name = self.operator_pod()["metadata"]["name"]
        return str(self.kubectl("logs", "-n", self.namespace, name, check=False).stdout)

    def log_records(self) -> list[dict[str, Any]]:
        return json_lines(self.log_text())

    async def metrics(self) -> str:
        return await http_get(self.operator_pod(), "/metrics")

    async def upgrade(self, *values: str, chart: Path = CHART, timeout: float = 300) -> None:
        await asyncio.to_thread(self.helm, "upgrade", self.name, str(chart), "-n", self.namespace, *values, "--wait",
                                "--timeout", f"{timeout:.0f}s", timeout=timeout + 60)

    async def uninstall(self, timeout: float = 180) -> str:
        done = await asyncio.to_thread(self.helm, "uninstall", self.name, "-n", self.namespace, "--wait",
                                       "--timeout", f"{timeout:.0f}s", timeout=timeout + 60)
        return str(done.stdout + done.stderr)


CRD_NAME = "trailingstops.trailingstop.dev"


def adopt_crd(kubectl: Tool, release: str, namespace: str) -> None:
    """Helm installs the templated CRD, but this shared test cluster may already have it (the
    ``crd`` fixture applies crds/): let the release adopt it, as a user moving to the chart would."""
    if kubectl("get", "crd", CRD_NAME, check=False).returncode == 0:
        kubectl("annotate", "--overwrite", "crd", CRD_NAME, f"meta.helm.sh/release-name={release}",
                f"meta.helm.sh/release-namespace={namespace}")
        kubectl("label", "--overwrite", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm")


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def json_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


async def http_get(pod: dict[str, Any], path: str, port: int = HEALTH_PORT) -> str:
    """GET a pod's own port from the host (pod addresses are on the node's bridge)."""
    url = f"http://{pod['status']['podIP']}:{port}{path}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(url) as response,
    ):
        response.raise_for_status()
        return await response.text()


# --- one test's cluster ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    """One test's view: its namespace, its releases of the chart, the fake Binance, kubectl.

    The releases' home vhost is the test's own; the namespaces' broker tenants their operators
    make are removed at the end (the operators are gone before they could retire them)."""

    namespace: str
    kubectl: Tool
    helm: Tool
    kube: client.ApiClient
    vhost: Vhost
    fake: FakeBinance
    log_dir: Path
    node: Node
    releases: list[Release] = field(default_factory=list)
    more: list[str] = field(default_factory=list)  # namespaces added by the test

    async def add_namespace(self) -> str:
        """Another namespace (for tests of several tenants, or an operator's own namespace)."""
        name = await asyncio.to_thread(create_namespace, self.kubectl)
        self.more.append(name)
        return name

    async def install(
        self, *values: str, namespace: str = "", watch: list[str] | None = None, name: str = "",
        chart: Path = CHART, image: str = "", amqp_url: str = "", workers: dict[str, str] | None = None,
        replicas: int | None = 1, crds: bool = False, wait: bool = True, timeout: float = 240,
    ) -> Release:
        """``helm install`` of the chart into ``namespace`` (the test's by default), watching
        ``watch`` (that namespace by default), the operator and workers on ``image`` (the one
        built from this tree), the broker an existing one (``existingSecret``: the test's vhost).

        One operator replica unless a test is about the election (one pod to find, half the CPU
        of this 2-core machine's tests); with two, this waits for the Lease's holder to be Ready
        (the pod the tests talk to), not only for the Deployment. ``replicas=None``: the chart's
        own (a chart from before ``operator.replicas``). ``crds``: the release installs the CRD
        (adopting the cluster's). ``wait=False``: returns once Helm has created the objects."""
        release = Release(name or f"ts-{uuid.uuid4().hex[:6]}", namespace or self.namespace, self.kubectl, self.helm)
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{release.name}-amqp"},
                  "stringData": {"url": amqp_url or self.vhost.url}}
        self.kubectl("apply", "-n", release.namespace, "-f", "-", input=json.dumps(secret))
        if crds:
            adopt_crd(self.kubectl, release.name, release.namespace)
        settings = self.values(release, watch=watch, image=image, workers=workers, replicas=replicas, crds=crds)
        self.releases.append(release)
        waits = wait and replicas in (1, None)
        flags = ["--wait", "--timeout", f"{timeout:.0f}s"] if waits else []
        await asyncio.to_thread(self.helm, "install", release.name, str(chart), "-n", release.namespace, *settings,
                                *values, *flags, timeout=timeout + 60)
        if wait and not waits:
            await release.wait_operator_ready(timeout)
        return release

    def values(
        self, release: Release, watch: list[str] | None = None, image: str = "",
        workers: dict[str, str] | None = None, replicas: int | None = 1, crds: bool = False,
    ) -> list[str]:
        """The chart's settings of :meth:`install` (for a ``helm upgrade`` to give them again)."""
        return [
            "--set", f"crds.install={'true' if crds else 'false'}",
            *image_values("image", image or self.node.image),
            "--set", f"rabbitmq.existingSecret={release.name}-amqp",
            "--set-json", f"watch.namespaces={json.dumps(watch or [release.namespace])}",
            "--set-json", f"workers.env={json.dumps(workers if workers is not None else worker_env(self.fake))}",
            "--set", "operator.statusInterval=1",
            *(["--set", f"operator.replicas={replicas}"] if replicas is not None else []),
            # Small CPU requests: the scheduler counts requests, not use, and at the chart's 50m a
            # pod a node shared with other suites or benchmarks can fill up (pods Pending for
            # minutes: "0/1 nodes are available: 1 Insufficient cpu").
            "--set", "operator.resources.requests.cpu=10m", "--set", "workers.resources.requests.cpu=10m",
            # Ready (and so `helm install --wait` done) soon after /healthz answers
            "--set", "operator.readinessProbe.initialDelaySeconds=1",
            "--set", "operator.readinessProbe.periodSeconds=1",
        ]

    def apply(self, manifest: str | Path, namespace: str = "") -> Any:
        text = manifest.read_text() if isinstance(manifest, Path) else manifest
        return self.kubectl("apply", "-n", namespace or self.namespace, "-f", "-", input=text, check=False)

    async def stop_resource(self, name: str, namespace: str = "") -> dict[str, Any]:
        custom = client.CustomObjectsApi(self.kube)
        return dict(await custom.get_namespaced_custom_object("trailingstop.dev", "v1", namespace or self.namespace,
                                                              "trailingstops", name))

    async def deployments(self, namespace: str = "") -> dict[str, Any]:
        listed = await client.AppsV1Api(self.kube).list_namespaced_deployment(namespace or self.namespace)
        return {d.metadata.name: self.kube.sanitize_for_serialization(d) for d in listed.items}

    async def pods_of(self, deployment: str, namespace: str = "") -> list[dict[str, Any]]:
        """The pods of a Deployment (by its selector), the terminating ones included."""
        where = namespace or self.namespace
        found = (await self.deployments(where)).get(deployment)
        if found is None:
            return []
        selector = ",".join(f"{k}={v}" for k, v in found["spec"]["selector"]["matchLabels"].items())
        listed = await client.CoreV1Api(self.kube).list_namespaced_pod(where, label_selector=selector)
        return [self.kube.sanitize_for_serialization(p) for p in listed.items]

    async def worker(self, deployment: str, namespace: str = "", timeout: float = 120) -> dict[str, Any]:
        """The one Ready pod of a worker Deployment (waits for it)."""
        async def one_ready() -> dict[str, Any] | None:
            pods = await self.pods_of(deployment, namespace)
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            return live[0] if len(pods) == 1 and pod_ready(live[0]) else None

        return dict(await eventually(one_ready, timeout=timeout, interval=0.5, what=f"{deployment}'s pod Ready"))

    def pod_log(self, pod: dict[str, Any], previous: bool = False) -> str:
        args = ["logs", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"]]
        return str(self.kubectl(*args, *(["--previous"] if previous else []), check=False).stdout)

    def pod_records(self, pod: dict[str, Any]) -> list[dict[str, Any]]:
        return json_lines(self.pod_log(pod))

    @property
    def namespaces(self) -> list[str]:
        return [self.namespace, *self.more]

    def save_pod_logs(self) -> Path:
        """Every pod's log (and its previous container's), descriptions and events, per namespace."""
        target = self.log_dir / "pods"
        for where in dict.fromkeys([*self.namespaces, *(r.namespace for r in self.releases)]):
            folder = target / where
            folder.mkdir(parents=True, exist_ok=True)
            names = self.kubectl("get", "pods", "-n", where, "-o", "name", check=False).stdout.split()
            for pod in names:
                short = pod.removeprefix("pod/")
                for previous in (False, True):
                    log = self.kubectl("logs", "-n", where, short, "--all-containers", "--timestamps",
                                       *(["--previous"] if previous else []), check=False)
                    if log.stdout:
                        (folder / f"{short}{'.previous' if previous else ''}.log").write_text(log.stdout)
            for what, args in {"describe.txt": ("describe", "pods"), "events.txt": ("get", "events", "--sort-by",
                               ".lastTimestamp"), "objects.yaml": ("get", "all,trailingstops,secrets", "-o", "yaml")
                               }.items():
                (folder / what).write_text(self.kubectl(*args, "-n", where, check=False).stdout)
        return target


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest, namespace: str, kubectl: Tool, helm: Tool, kube: client.ApiClient,
    home_vhost: Vhost, fake: FakeBinance, tmp_path: Path, node: Node,
) -> AsyncIterator[Cluster]:
    here = Cluster(namespace, kubectl, helm, kube, home_vhost, fake, tmp_path, node)
    yield here
    if failed(request):
        saved = await asyncio.to_thread(here.save_pod_logs)
        print(f"\nthe pods' logs, descriptions and events: {saved}", file=sys.stderr)
    for name in [*here.more, *(r.namespace for r in here.releases if r.namespace not in here.namespaces)]:
        await asyncio.to_thread(delete_namespace, kubectl, name)
    await home_vhost.delete_tenants([*here.namespaces])

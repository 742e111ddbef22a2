"""Tenancy through the real RabbitMQ messaging-topology-operator (the chart's
``rabbitmq.tenancy.admin=topologyOperator``).

Our operator is a release of the chart on the node (``Cluster.install``), in its own namespace
and watching the test's; its workers are pods. The topology operator is built from the Go module
proxy by ``scripts/topology-operator`` (once, cached; a session fixture) and runs out of cluster
against the test API server, one per test, watching only our operator's namespace, where our
operator creates the tenants' Vhost, User and Permission objects. They refer to the test broker
through a connection Secret (``uri``, ``username``, ``password``: the test broker's management API
and its guest account, which RabbitMQ accepts from loopback, where the topology operator runs).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiohttp
import aiormq
import pytest

from tests.conftest import Tool, missing
from tests.e2e.conftest import REPO, Cluster, Release, create_namespace
from tests.e2e.test_tenancy import FAST, keys_secret, stop_manifest, wait_status, worker_deployments
from tests.fakebinance import DEFAULT_API_KEY, DEFAULT_API_SECRET
from tests.harness import eventually
from tests.integration.test_workers import expected_triggers
from trailingstop.bus import worker_permissions
from trailingstop.core.contracts import client_order_id
from trailingstop.operator.builders import BROKER_CREDENTIALS_ANNOTATION, USER_CREDENTIALS_SUFFIX
from trailingstop.operator.tenancy import tenant_name

# Measured without the fixtures: a cold build of the topology operator takes minutes (see
# docs/DEVELOPING.md) and has its own timeout below.
pytestmark = pytest.mark.timeout(300, func_only=True)

SCRIPT = REPO / "scripts" / "topology-operator"
BUILD_TIMEOUT = 1800.0
CONNECTION_SECRET = "rabbitmq-admin"
CLUSTER_NAME = "rabbit"
TOPOLOGY_KINDS = "vhosts.rabbitmq.com,users.rabbitmq.com,permissions.rabbitmq.com"


# --- the topology operator ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def topology_operator_crds(kubectl: Tool) -> Path:
    """Both operators built (or found in the cache); their CRDs installed and Established."""
    built = subprocess.run([str(SCRIPT), "crds"], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if built.returncode != 0:
        if "go not found" in built.stderr:
            missing("Go, to build the messaging-topology-operator (scripts/topology-operator build)")
        pytest.fail(f"scripts/topology-operator crds failed ({built.returncode}):\n{built.stderr[-4000:]}")
    crds = Path(built.stdout.strip())
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
    return crds


@dataclass
class Process:
    """One of the two operators, run by the script in the foreground, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


@dataclass
class TopologyHome:
    """Our operator's namespace, with a messaging-topology-operator watching it, and what the
    objects' rabbitmqClusterReference names: a connection Secret, or a RabbitmqCluster that a
    Cluster Operator (watching it too) has given its status."""

    namespace: str
    kubectl: Tool
    reference: dict[str, Any]
    topology: Process
    cluster_operator: Process | None = None

    def objects(self, namespace: str = "") -> list[dict[str, Any]]:
        listed = self.kubectl("get", TOPOLOGY_KINDS, "-n", namespace or self.namespace, "-o", "json").stdout
        return list(json.loads(listed)["items"])

    def chart_values(self) -> list[str]:
        """Our operator's settings for this home (the chart's ``rabbitmq.tenancy``)."""
        values = ["--set", "rabbitmq.tenancy.admin=topologyOperator"]
        if "connectionSecret" in self.reference:
            return [*values, "--set", f"rabbitmq.tenancy.connectionSecret={self.reference['connectionSecret']['name']}"]
        return [*values, "--set", f"rabbitmq.tenancy.clusterName={self.reference['name']}"]

    def log_tail(self) -> str:
        processes = [self.topology, *([self.cluster_operator] if self.cluster_operator else [])]
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in processes)


def connection_secret(management_url: str, amqp_url: str) -> str:
    """The test broker's management API and an administrator of it (guest: RabbitMQ accepts it
    from loopback), as the topology operator's connection Secret expects them."""
    parts = urlsplit(amqp_url)
    data = {"uri": management_url, "username": unquote(parts.username or "guest"),
            "password": unquote(parts.password or "guest")}
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CONNECTION_SECRET},
                       "type": "Opaque", "data": encoded})


def rabbitmq_cluster(management_url: str) -> str:
    """A RabbitmqCluster whose default user is the connection Secret's account (an external
    Secret), and whose management API the topology operator is told is the test broker's: its
    own pods never run (the Cluster Operator runs out of cluster, and the broker is the host's)."""
    return json.dumps({
        "apiVersion": "rabbitmq.com/v1beta1", "kind": "RabbitmqCluster",
        "metadata": {"name": CLUSTER_NAME, "annotations": {"rabbitmq.com/operator-connection-uri": management_url}},
        "spec": {"replicas": 1, "secretBackend": {"externalSecret": {"name": CONNECTION_SECRET}}},
    })


def start_process(name: str, command: list[str], kubeconfig: Path, log_dir: Path) -> Process:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen([str(SCRIPT), *command], env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Process(name, popen, log_path)


@pytest.fixture
def topology_home(
    request: pytest.FixtureRequest, topology_operator_crds: Path, kubectl: Tool, kubeconfig: Path, amqp_url: str,
    management_url: str, tmp_path: Path,
) -> Iterator[TopologyHome]:
    """Parametrize indirectly with "connection-secret" (the default) or "rabbitmq-cluster". Request
    it before ``cluster``: it is then torn down after our operator's namespace (this one) is
    deleted, while the topology operator still runs to remove what is left."""
    by_cluster = getattr(request, "param", "connection-secret") == "rabbitmq-cluster"
    namespace = create_namespace(kubectl)
    kubectl("apply", "-n", namespace, "-f", "-", input=connection_secret(management_url, amqp_url))
    reference = {"name": CLUSTER_NAME} if by_cluster else {"connectionSecret": {"name": CONNECTION_SECRET}}
    home = TopologyHome(namespace, kubectl, reference,
                        start_process("topology-operator", ["run", namespace], kubeconfig, tmp_path))
    try:
        if by_cluster:
            home.cluster_operator = start_process("cluster-operator", ["run-cluster-operator", namespace], kubeconfig,
                                                  tmp_path)
            kubectl("apply", "-n", namespace, "-f", "-", input=rabbitmq_cluster(management_url))
            # What the topology operator reads: the default user's Secret and the Service, from the status.
            kubectl("wait", f"rabbitmqcluster/{CLUSTER_NAME}", "-n", namespace, "--timeout=60s",
                    f"--for=jsonpath={{.status.binding.name}}={CONNECTION_SECRET}")
        yield home
    finally:
        _tear_down(home)


def _tear_down(home: TopologyHome) -> None:
    """Whatever a failed test left: deleted through the operators (so the broker loses it too),
    then the operators stopped and the namespace deleted."""
    if home.topology.popen.poll() is None:
        home.kubectl("delete", TOPOLOGY_KINDS, "--all", "-n", home.namespace, "--timeout=60s", check=False)
    if home.cluster_operator is not None:
        if home.cluster_operator.popen.poll() is None:
            home.kubectl("delete", "rabbitmqclusters", "--all", "-n", home.namespace, "--timeout=60s", check=False)
        home.cluster_operator.stop()
    home.topology.stop()
    kinds = f"{TOPOLOGY_KINDS},rabbitmqclusters.rabbitmq.com"
    leftovers = home.kubectl("get", kinds, "-n", home.namespace, "-o", "name", check=False).stdout.split()
    for name in leftovers:  # only if an operator could not finish: nothing would remove the finalizers
        home.kubectl("patch", name, "-n", home.namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                     check=False)
    home.kubectl("delete", "namespace", home.namespace, "--wait=false", check=False)


async def start_operator(cluster: Cluster, home: TopologyHome, wait: bool = True) -> Release:
    """Our operator: a release of the chart in ``home``'s namespace, watching the test's."""
    return await cluster.install(*home.chart_values(), namespace=home.namespace, watch=[cluster.namespace],
                                 wait=wait)


async def stop_operator(release: Release) -> None:
    """Our operator's Deployment scaled to none, its pod gone."""
    release.kubectl("scale", "deployment", release.fullname, "-n", release.namespace, "--replicas=0")
    await eventually(lambda: not release.operator_pods(), timeout=120, interval=0.5,
                     what=f"{release.fullname}'s pod gone")


# --- the tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology_home", ["connection-secret", "rabbitmq-cluster"], indirect=True)
async def test_tenancy_through_the_topology_operator_from_first_stop_to_last(
    topology_home: TopologyHome, cluster: Cluster
) -> None:
    """A stop makes the namespace's tenant through the real topology operator; the workers run on
    its least-privilege user; the stop fills with the namespace's keys; deleting it removes the
    objects, and with them the broker's user and vhost."""
    assert cluster.apply(keys_secret(DEFAULT_API_KEY, DEFAULT_API_SECRET)).returncode == 0
    operator = await start_operator(cluster, topology_home)
    tenant = tenant_name(operator.instance, cluster.namespace)
    testnet = {"mode": "Testnet", "credentialsSecretRef": {"name": "binance-keys"}}
    assert cluster.apply(stop_manifest("protect", FAST, **testnet)).returncode == 0
    await wait_status(cluster, cluster.namespace, "protect", "Armed")

    # The objects are in the operator's namespace, declared by the topology operator; the tenant
    # namespace has none.
    objects = topology_home.objects()
    assert sorted(o["kind"] for o in objects) == ["Permission", "Permission", "User", "Vhost"], topology_home.log_tail()
    for item in objects:
        ready = {c["type"]: c["status"] for c in item["status"]["conditions"]}
        assert ready == {"Ready": "True"} and item["status"]["observedGeneration"] == item["metadata"]["generation"]
    assert {o["spec"]["vhost"] for o in objects if o["kind"] == "Permission"} == {tenant}
    assert all(o["spec"]["rabbitmqClusterReference"] == topology_home.reference for o in objects)
    assert topology_home.objects(cluster.namespace) == []

    # On the broker: the user the topology operator made, with exactly the workers' rights; the
    # workers are connected as that user, with the URL the operator gave them.
    assert await management_get(cluster, f"/api/permissions/{quote(tenant, safe='')}/{quote(tenant, safe='')}") == {
        "user": tenant, "vhost": tenant, **worker_permissions()}
    assert (await management_get(cluster, f"/api/users/{quote(tenant, safe='')}"))["tags"] in ([], "")
    url = worker_url(cluster)
    assert unquote(urlsplit(url).username or "") == tenant
    workers = {"marketdata-XRPETH", "orchestrator-XRPETH", "executor-testnet-binance-keys"}
    await eventually(lambda: _connected_as(cluster, tenant, workers), timeout=120, interval=0.5,
                     what="the three workers connected to the tenant's vhost as its user")

    await advance_all(cluster)
    final = await wait_status(cluster, cluster.namespace, "protect", "Filled")
    assert final["status"]["triggerTradeId"] == expected_triggers([FAST], 5000)[0]
    [order] = cluster.fake.orders(client_order_id(final["metadata"]["uid"]))
    assert order.api_key == DEFAULT_API_KEY

    # The last stop goes: the objects go, the topology operator removes the user and the vhost.
    cluster.kubectl("delete", "trailingstop", "protect", "-n", cluster.namespace)
    await eventually(lambda: _tenant_gone(cluster, topology_home, tenant), timeout=60, interval=0.5,
                     what="the tenant's objects, Secrets, broker user and vhost removed")
    log = operator.log_text()
    assert "Traceback" not in log, log[-4000:]


async def test_tenancy_topology_operator_user_made_again_when_the_password_changes(
    topology_home: TopologyHome, cluster: Cluster
) -> None:
    """The namespace's ts-amqp is lost while our operator is down: the restarted operator picks a
    new password, and the User (which the topology operator imports only once) and the workers'
    Permission are made again with it. The old password is refused, the workers roll onto the new
    one and the stop still fills."""
    operator = await start_operator(cluster, topology_home)
    tenant = tenant_name(operator.instance, cluster.namespace)
    assert cluster.apply(stop_manifest("protect", FAST)).returncode == 0
    await wait_status(cluster, cluster.namespace, "protect", "Armed")
    old_url, old_user = worker_url(cluster), _uid(topology_home, "User")
    before = await worker_deployments(cluster)
    assert len(before) == 3, sorted(before)

    await stop_operator(operator)
    cluster.kubectl("delete", "secret", "ts-amqp", "-n", cluster.namespace)
    operator.kubectl("scale", "deployment", operator.fullname, "-n", operator.namespace, "--replicas=1")
    await operator.wait_operator_ready()
    new_url = await eventually(lambda: _url_changed(cluster, old_url), timeout=90, interval=0.5,
                               what="a new ts-amqp URL")
    assert _uid(topology_home, "User") != old_user
    generated = f"{_name(topology_home, 'User')}{USER_CREDENTIALS_SUFFIX}"
    stored = cluster.kubectl("get", "secret", generated, "-n", topology_home.namespace,
                             "-o", "jsonpath={.data.password}").stdout
    assert base64.b64decode(stored).decode() == unquote(urlsplit(new_url).password or "")
    with pytest.raises(aiormq.exceptions.AMQPConnectionError):  # ACCESS_REFUSED: the old password
        await aio_pika.connect(old_url)
    connection = await aio_pika.connect(new_url)
    await connection.close()
    assert await management_get(cluster, f"/api/permissions/{quote(tenant, safe='')}/{quote(tenant, safe='')}") == {
        "user": tenant, "vhost": tenant, **worker_permissions()}

    # Trades only once the new workers run: the old ones lost their user and may not see them.
    await eventually(lambda: _restarted(cluster, before), timeout=180, interval=0.5,
                     what="the workers restarted with the new URL, Ready")
    await advance_all(cluster)
    final = await wait_status(cluster, cluster.namespace, "protect", "Filled")
    assert final["status"]["triggerTradeId"] == expected_triggers([FAST], 5000)[0]


async def test_tenancy_topology_operator_waits_for_a_complete_connection_secret(
    topology_home: TopologyHome, cluster: Cluster, management_url: str, amqp_url: str
) -> None:
    """Our operator started before its connection Secret exists, then with one that lacks keys:
    each time it says what is missing, and tries again; with the whole Secret it
    starts and serves stops."""
    home = topology_home.namespace
    topology_home.kubectl("delete", "secret", CONNECTION_SECRET, "-n", home)
    operator = await start_operator(cluster, topology_home, wait=False)
    absent = f"the connection Secret {home}/{CONNECTION_SECRET} (TRAILINGSTOP_RABBITMQ_CONNECTION_SECRET) does not"
    await eventually(lambda: absent in _log_so_far(operator), timeout=180, interval=0.5,
                     what="the missing Secret named")

    whole = json.loads(connection_secret(management_url, amqp_url))
    partial = {**whole, "data": {"uri": whole["data"]["uri"]}}
    topology_home.kubectl("apply", "-n", home, "-f", "-", input=json.dumps(partial))
    lacking = f"the connection Secret {home}/{CONNECTION_SECRET} lacks the key(s) password, username"
    await eventually(lambda: lacking in _log_so_far(operator), timeout=60, interval=0.5, what="the missing keys named")

    topology_home.kubectl("apply", "-n", home, "-f", "-", input=json.dumps(whole))
    await operator.wait_operator_ready()
    assert cluster.apply(stop_manifest("protect", FAST)).returncode == 0
    await wait_status(cluster, cluster.namespace, "protect", "Armed")
    assert "address already in use" not in operator.log_text()  # each failed start released its port


# --- helpers ---------------------------------------------------------------------------------------------


async def advance_all(cluster: Cluster, upto: int = 5000) -> None:
    await cluster.fake.wait_for_stream_connections(1, timeout=60)
    tape = cluster.fake.tape("XRPETH")
    while tape.position < upto:
        await cluster.fake.advance("XRPETH", min(100, upto - tape.position))
        await asyncio.sleep(0.02)


def worker_url(cluster: Cluster) -> str:
    """The URL in the namespace's ts-amqp Secret ("" while there is none)."""
    read = cluster.kubectl("get", "secret", "ts-amqp", "-n", cluster.namespace, "-o", "jsonpath={.data.url}",
                           check=False)
    return base64.b64decode(read.stdout).decode() if read.returncode == 0 else ""


async def management_get(cluster: Cluster, path: str) -> Any:
    """The test broker's management API, as its administrator (404: None)."""
    async with (
        aiohttp.ClientSession(headers=cluster.vhost.auth_headers) as session,
        session.get(cluster.vhost.management_url + path) as response,
    ):
        if response.status == 404:
            return None
        response.raise_for_status()
        return await response.json()


async def _connected_as(cluster: Cluster, tenant: str, names: set[str]) -> bool:
    connections = await management_get(cluster, f"/api/vhosts/{quote(tenant, safe='')}/connections") or []
    users = {c.get("client_properties", {}).get("connection_name"): c["user"] for c in connections}
    return names <= set(users) and all(users[name] == tenant for name in names)


async def _tenant_gone(cluster: Cluster, home: TopologyHome, tenant: str) -> bool:
    if home.objects():
        return False
    labelled = cluster.kubectl("get", "secrets", "-n", home.namespace, "-l", "trailingstop.dev/tenant",
                               "-o", "name").stdout.split()
    generated = [name for name in cluster.kubectl("get", "secrets", "-n", home.namespace, "-o", "name").stdout.split()
                 if name.endswith(USER_CREDENTIALS_SUFFIX)]
    if labelled or generated:
        return False
    escaped = quote(tenant, safe="")
    return await management_get(cluster, f"/api/users/{escaped}") is None and (
        await management_get(cluster, f"/api/vhosts/{escaped}") is None)


def _url_changed(cluster: Cluster, old: str) -> str | None:
    url = worker_url(cluster)
    return url if url and url != old else None


def _log_so_far(release: Release) -> str:
    """The operator's log, "" while its pod is not there yet (helm install did not wait for it)."""
    return release.log_text() if release.operator_pods() else ""


def _credentials(deployment: dict[str, Any]) -> str:
    return str((deployment["spec"]["template"]["metadata"].get("annotations") or {}).get(BROKER_CREDENTIALS_ANNOTATION))


async def _restarted(cluster: Cluster, before: dict[str, dict[str, Any]]) -> bool:
    """Every worker's template changed once, to the new credentials' digest, and rolled out: one
    Ready pod of the new template, none of the old left (not even terminating)."""
    now = await worker_deployments(cluster)
    if set(now) != set(before):
        return False
    for name, deployment in now.items():
        old = before[name]
        if _credentials(deployment) == _credentials(old):
            return False
        assert deployment["metadata"]["generation"] == old["metadata"]["generation"] + 1, (name, "changed twice")
        status = deployment["status"]
        if status.get("observedGeneration") != deployment["metadata"]["generation"] or not all(
            status.get(count) == 1 for count in ("replicas", "updatedReplicas", "readyReplicas")
        ):
            return False
        if len(await cluster.pods_of(name)) != 1:
            return False
    return True


def _item(home: TopologyHome, kind: str) -> dict[str, Any]:
    [item] = [o for o in home.objects() if o["kind"] == kind]
    return item


def _uid(home: TopologyHome, kind: str) -> str:
    return str(_item(home, kind)["metadata"]["uid"])


def _name(home: TopologyHome, kind: str) -> str:
    return str(_item(home, kind)["metadata"]["name"])

"""Smoke tests of the real node that ``scripts/testenv`` runs: each piece is real.

- the project's image (built from the Dockerfile, ``scripts/testenv images``) runs as a pod under
  the restricted Pod Security Standard, and the runtime really applies it (user, no capabilities,
  no new privileges, seccomp filter, read-only root filesystem); a non-compliant pod is refused;
- a pod reaches the API server through the ``kubernetes`` Service with its ServiceAccount token,
  and gets exactly its Role's rights;
- a pod resolves a Service by its DNS name (CoreDNS) and fetches from it (kube-proxy);
- ``kubectl logs`` and ``kubectl exec`` work (the API server's kubelet client certificate);
- ``helm test`` of the chart runs its pod to Succeeded, with the operator running as a pod of the
  project's image and connected to the host's RabbitMQ through the node address;
- the image's layers hold nothing of the CA bundle handed to pip as a build secret.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import trailingstop
from tests.conftest import Tool, missing
from tests.e2e.node import Node, python_pod, restricted_pod
from tests.harness import Vhost, wait_until

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trailingstop-operator"
DOCKER = "/usr/bin/docker"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def node(kubectl: Tool) -> Node:
    found = Node.from_env(kubectl)
    found.require_image(found.image)
    return found


@pytest.fixture
def namespace(node: Node) -> Iterator[str]:
    with node.namespace() as name:
        yield name


# --- the image under the restricted Pod Security Standard ------------------------------------------

RUNTIME_PROBE = """
import errno, json, os, trailingstop
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
try:
    open("/opt/trailingstop/probe", "w")
    write = "allowed"
except OSError as error:
    write = errno.errorcode[error.errno]
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "version": trailingstop.__version__, "write": write,
                  "CapEff": status["CapEff"].strip(), "NoNewPrivs": status["NoNewPrivs"].strip(),
                  "Seccomp": status["Seccomp"].strip()}))
"""


def test_the_image_runs_as_a_restricted_pod_and_the_runtime_enforces_it(node: Node, namespace: str) -> None:
    phase, log = node.run(namespace, python_pod("probe", node.image, RUNTIME_PROBE))
    assert phase == "Succeeded", log
    seen = json.loads(log.strip().splitlines()[-1])
    assert seen == {
        "uid": 10001, "gid": 10001, "version": trailingstop.__version__,
        "write": "EROFS",  # readOnlyRootFilesystem
        "CapEff": "0000000000000000",  # capabilities: drop ALL
        "NoNewPrivs": "1",  # allowPrivilegeEscalation: false
        "Seccomp": "2",  # RuntimeDefault: a filter
    }
    assert node.pod(namespace, "probe")["spec"]["nodeName"] == node.name


def test_the_images_entrypoint_runs_the_engine_on_the_bundled_trades(node: Node, namespace: str) -> None:
    args = ["backtest", "--side", "SELL", "--trailing-percent", "1", "--activation-price", "0.00145", "--json"]
    phase, log = node.run(namespace, restricted_pod("backtest", node.image, args=args))
    assert phase == "Succeeded", log
    (result,) = json.loads(log)
    # the same fill as `make demo` (README): exact decimals through the image's own venv
    assert (result["triggered"], result["referencePrice"], result["stopPrice"], result["triggerPrice"]) == (
        True, "0.00149267", "0.0014777433", "0.0014772")


def test_a_pod_breaking_the_restricted_standard_is_refused(node: Node, namespace: str) -> None:
    pod = restricted_pod("privileged", node.image, args=["--version"])
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    refused = node.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused


# --- the API server through the `kubernetes` Service ---------------------------------------------

API_PROBE = """
import json, ssl, urllib.error, urllib.request
account = "/var/run/secrets/kubernetes.io/serviceaccount"
namespace = open(account + "/namespace").read()
context = ssl.create_default_context(cafile=account + "/ca.crt")
headers = {"Authorization": "Bearer " + open(account + "/token").read()}
def get(path):
    request = urllib.request.Request("https://kubernetes.default.svc" + path, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, None
status, pods = get(f"/api/v1/namespaces/{namespace}/pods")
denied, _ = get(f"/api/v1/namespaces/{namespace}/secrets")
print(json.dumps({"status": status, "pods": [p["metadata"]["name"] for p in pods["items"]], "secrets": denied}))
"""


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(node: Node, namespace: str) -> None:
    node.apply(
        namespace,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]},
    )
    phase, log = node.run(namespace, python_pod("api-client", node.image, API_PROBE, service_account="reader"))
    assert phase == "Succeeded", log
    seen = json.loads(log.strip().splitlines()[-1])
    assert seen == {"status": 200, "pods": ["api-client"], "secrets": 403}, "its Role's rights and no more"
    # the Service's endpoint is the API server on the node address (the lease endpoint reconciler)
    slices = json.loads(node.kubectl("get", "endpointslices", "-n", "default", "-l",
                                     "kubernetes.io/service-name=kubernetes", "-o", "json").stdout)["items"]
    assert [a for s in slices for e in s["endpoints"] for a in e["addresses"]] == [node.ip]


# --- Services by DNS name ----------------------------------------------------------------------------

DNS_PROBE = """
import json, socket, sys, time, urllib.error, urllib.request
namespace = sys.argv[1]
found = {name: socket.gethostbyname(name) for name in ("web", f"web.{namespace}.svc.cluster.local")}
try:
    socket.gethostbyname("no-such-service")
    missing = "resolved"
except socket.gaierror as error:
    missing = "not found"
# kube-proxy programs the endpoint a moment after the server turns Ready: retry a refused connection
for attempt in range(40):
    try:
        with urllib.request.urlopen("http://web/page.txt", timeout=10) as response:
            body = response.read().decode()
        break
    except urllib.error.URLError as error:
        print("not yet:", error, file=sys.stderr)
        time.sleep(0.5)
print(json.dumps({"resolved": found, "missing": missing, "body": body}))
"""


def test_a_pod_resolves_a_service_by_name_and_fetches_from_it(node: Node, namespace: str) -> None:
    token = uuid.uuid4().hex
    server = restricted_pod(
        "web-server", node.image, restart="Always", labels={"app": "web"}, port=8000,
        command=["python", "-m", "http.server", "8000", "--directory", "/data"],
        volumes=[{"name": "data", "configMap": {"name": "page"}}],
        mounts=[{"name": "data", "mountPath": "/data", "readOnly": True}],
    )
    node.apply(
        namespace,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "page"}, "data": {"page.txt": token}},
        server,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]}},
    )
    node.wait_ready(namespace, "web-server")
    client = python_pod("dns-client", node.image, DNS_PROBE)
    client["spec"]["containers"][0]["command"] += [namespace]
    phase, log = node.run(namespace, client)
    assert phase == "Succeeded", log
    seen = json.loads(log.strip().splitlines()[-1])
    cluster_ip = node.kubectl("get", "service", "web", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").stdout
    assert seen == {"resolved": {"web": cluster_ip, f"web.{namespace}.svc.cluster.local": cluster_ip},
                    "missing": "not found", "body": token}


# --- kubectl logs and exec ---------------------------------------------------------------------------


def test_kubectl_logs_and_exec_reach_the_container(node: Node, namespace: str) -> None:
    token = uuid.uuid4().hex
    script = f"import time; print('ready {token}', flush=True); time.sleep(3600)"
    node.apply(namespace, python_pod("shell", node.image, script, restart="Always"))
    node.wait_ready(namespace, "shell")
    wait_until(lambda: f"ready {token}" in node.logs(namespace, "shell"), timeout=30, what="the pod's log line")

    ran = node.kubectl("exec", "-n", namespace, "shell", "--", "python", "-c", "import os; print(os.getuid())")
    assert ran.stdout.strip() == "10001"
    piped = node.kubectl("exec", "-i", "-n", namespace, "shell", "--", "python", "-c",
                         "import sys; print(sys.stdin.read().upper())", input="streamed both ways")
    assert piped.stdout.strip() == "STREAMED BOTH WAYS"
    failed = node.kubectl("exec", "-n", namespace, "shell", "--", "python", "-c", "raise SystemExit(3)", check=False)
    assert failed.returncode == 3, failed


# --- helm test, with the operator as a pod on the host's broker --------------------------------------


async def connections_of(management_url: str, vhost: Vhost) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers=vhost.auth_headers) as session,
        session.get(f"{management_url.rstrip('/')}/api/vhosts/{vhost.name}/connections") as response,
    ):
        response.raise_for_status()
        return list(await response.json())


async def test_helm_test_of_the_chart_succeeds_with_the_operator_as_a_pod(
    node: Node, namespace: str, helm: Tool, crd: Path, management_url: str,
) -> None:
    if not node.pod_amqp_url:
        missing("TESTENV_POD_AMQP_URL is not set (the managed broker's user for pods)")
    vhost = Vhost(node.pod_amqp_url, management_url)
    await vhost.create()
    try:
        # the broker as an existing one, given through existingSecret: the host's, at the node address
        node.kubectl("create", "secret", "generic", "trailingstop-amqp", "-n", namespace,
                     f"--from-literal=url={vhost.url}")
        repository, _, tag = node.image.rpartition(":")
        helm("install", "ts", str(CHART), "-n", namespace, "--set", "crds.install=false",
             "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
             "--wait", "--timeout", "180s", timeout=240)
        tested = helm("test", "ts", "-n", namespace, "--timeout", "180s", timeout=240, check=False)
        if tested.returncode != 0:  # the test pod is deleted only when it succeeds; the operator says why
            logs = node.kubectl("logs", "-n", namespace, "--all-containers", "--prefix", "--tail=60",
                                "-l", "app.kubernetes.io/instance=ts", check=False)
            raise AssertionError(f"helm test failed:\n{tested.stdout}{tested.stderr}\n{logs.stdout}{logs.stderr}")
        assert re.search(r"TEST SUITE:\s+ts-trailingstop-operator-test", tested.stdout), tested.stdout
        assert re.search(r"Phase:\s+Succeeded", tested.stdout), tested.stdout
        # the operator pod's own connection, from the pod network to the node address
        connections = await connections_of(management_url, vhost)
        assert any(ipaddress.ip_address(c["peer_host"]) in node.pod_cidr for c in connections), connections
        helm("uninstall", "ts", "-n", namespace, "--wait", "--timeout", "120s", timeout=180)
    finally:
        await vhost.delete()


# --- the build secret stays out of the image -----------------------------------------------------------


def _certificates(text: str) -> set[str]:
    return set(re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", text, re.S))


def _layer_files(image: str) -> Iterator[tuple[str, bytes]]:
    """Every regular file of every layer of ``image`` (docker save), with its content."""
    saved = subprocess.run([DOCKER, "save", image], capture_output=True, check=True, timeout=300).stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer_name in manifest[0]["Layers"]:
            layer = archive.extractfile(layer_name)
            assert layer is not None
            with tarfile.open(fileobj=io.BytesIO(layer.read())) as files:
                for member in files:
                    if member.isfile():
                        content = files.extractfile(member)
                        yield member.name, content.read() if content else b""


def test_the_ca_bundle_given_to_pip_as_a_secret_is_in_no_layer(node: Node) -> None:
    if subprocess.run([DOCKER, "info"], capture_output=True, check=False).returncode != 0:
        missing("no Docker engine answers (scripts/testenv images starts one)")
    bundle = Path(os.environ.get("TESTENV_CA_BUNDLE") or "/etc/ssl/certs/ca-certificates.crt")
    image_bundle = subprocess.run([DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "cat", node.image,
                                   "/etc/ssl/certs/ca-certificates.crt"], capture_output=True, text=True, check=True)
    # What the machine's bundle adds to the base image's own (a TLS-inspecting proxy's CA): that is
    # what pip needed, and what must not be in the image.
    secret_only = _certificates(bundle.read_text()) - _certificates(image_bundle.stdout)
    if not secret_only:
        pytest.skip(f"{bundle} adds no certificate to the image's own bundle: nothing could leak")
    needles = [body.split("\n")[2].encode() for body in secret_only]  # a line deep inside each
    leaked = [name for name, content in _layer_files(node.image) if any(n in content for n in needles)]
    assert leaked == [], f"the machine's CA certificates are in the image: {leaked}"

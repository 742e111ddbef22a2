"""Helpers for tests that run real pods on the testenv node (``scripts/testenv up``).

``scripts/testenv`` runs a single-node cluster: containerd + runc + the CNI bridge, a kubelet,
kube-proxy and CoreDNS. The images pods may use are built on this machine and loaded into the
node's containerd (``scripts/testenv images``): nothing is ever pulled, so a pod only runs an image
the node already has (``imagePullPolicy: Never`` makes a missing one fail at once).

What ``eval "$(scripts/testenv env)"`` exports for these tests:

- ``TESTENV_NODE_NAME``, ``TESTENV_NODE_IP``: the node, and the address host services listen on
  for pods (RabbitMQ does; a test's own server, e.g. a fake Binance, binds there too);
- ``TESTENV_POD_CIDR``: the pods' addresses;
- ``TESTENV_IMAGE``, ``TESTENV_FAKEBINANCE_IMAGE``, ``TESTENV_RABBITMQ_IMAGE``: the images;
- ``TESTENV_POD_AMQP_URL``: the host broker as pods reach it (user ``testenv``, an administrator
  that can make a vhost and give itself its permissions: ``tests.harness.Vhost`` does).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import Tool, missing

RESTRICTED_LABELS = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/enforce-version=latest",
)
# The restricted Pod Security Standard, as the chart's and the operator's pod specs set it.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
FINAL_PHASES = ("Succeeded", "Failed")


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        missing(f"{name} is not set (the testenv node)")
    return value


@dataclass
class Node:
    """The testenv node, seen through kubectl."""

    kubectl: Tool
    name: str
    ip: str
    image: str
    fakebinance_image: str
    rabbitmq_image: str
    pod_amqp_url: str
    pod_cidr: ipaddress.IPv4Network | ipaddress.IPv6Network

    @classmethod
    def from_env(cls, kubectl: Tool) -> Node:
        node = cls(
            kubectl=kubectl,
            name=_env("TESTENV_NODE_NAME"),
            ip=_env("TESTENV_NODE_IP"),
            image=_env("TESTENV_IMAGE"),
            fakebinance_image=_env("TESTENV_FAKEBINANCE_IMAGE"),
            rabbitmq_image=_env("TESTENV_RABBITMQ_IMAGE"),
            pod_amqp_url=os.environ.get("TESTENV_POD_AMQP_URL", ""),
            pod_cidr=ipaddress.ip_network(_env("TESTENV_POD_CIDR")),
        )
        ready = kubectl("get", "node", node.name, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                        check=False)
        if ready.stdout.strip() != "True":
            missing(f"the node {node.name} is not Ready ({ready.stdout.strip() or ready.stderr.strip()})")
        return node

    def images(self) -> set[str]:
        """Every image name the kubelet reports for the node."""
        status = json.loads(self.kubectl("get", "node", self.name, "-o", "json").stdout)["status"]
        return {name for image in status.get("images", []) for name in image.get("names") or []}

    def require_image(self, image: str, timeout: float = 60.0) -> str:
        """``image`` is in the node's containerd (the kubelet reports it within its status period)."""
        deadline = time.monotonic() + timeout
        while not any(name.endswith(image) for name in self.images()):
            if time.monotonic() > deadline:
                missing(f"the node has no image {image}: run `scripts/testenv images`")
            time.sleep(1)
        return image

    @contextmanager
    def namespace(self, prefix: str = "node") -> Iterator[str]:
        """A fresh namespace enforcing the restricted Pod Security Standard, deleted afterwards."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        self.kubectl("label", "namespace", name, *RESTRICTED_LABELS)
        try:
            yield name
        finally:
            self.kubectl("delete", "namespace", name, "--wait=false", check=False)

    def apply(self, namespace: str, *documents: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in documents))

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout))

    def wait_for_phase(self, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            phase = self.pod(namespace, name).get("status", {}).get("phase", "")
            if phase in phases:
                return str(phase)
            if time.monotonic() > deadline:
                described = self.kubectl("describe", "pod", name, "-n", namespace, check=False).stdout
                raise AssertionError(f"pod {namespace}/{name} is {phase!r}, not {phases}, after {timeout}s:\n"
                                     f"{described}")
            time.sleep(0.5)

    def wait_ready(self, namespace: str, name: str, timeout: float = 120.0) -> None:
        done = self.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"pod/{name}",
                            f"--timeout={timeout:.0f}s", check=False, timeout=timeout + 30)
        if done.returncode != 0:
            described = self.kubectl("describe", "pod", name, "-n", namespace, check=False).stdout
            raise AssertionError(f"pod {namespace}/{name} not Ready: {done.stderr}\n{described}")

    def logs(self, namespace: str, name: str) -> str:
        return str(self.kubectl("logs", "-n", namespace, name).stdout)

    def run(self, namespace: str, manifest: dict[str, Any], timeout: float = 120.0) -> tuple[str, str]:
        """Create a run-to-completion pod; return its final phase and its log."""
        self.apply(namespace, manifest)
        name = manifest["metadata"]["name"]
        phase = self.wait_for_phase(namespace, name, FINAL_PHASES, timeout)
        return phase, self.logs(namespace, name)


def restricted_pod(
    name: str,
    image: str,
    *,
    command: list[str] | None = None,
    args: list[str] | None = None,
    labels: dict[str, str] | None = None,
    restart: str = "Never",
    service_account: str | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    port: int | None = None,
) -> dict[str, Any]:
    """A pod that passes the restricted Pod Security Standard, running a local image (never pulled)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "securityContext": CONTAINER_SECURITY,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
    }
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    if mounts:
        container["volumeMounts"] = mounts
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port}]
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 1}
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "securityContext": POD_SECURITY,
        "enableServiceLinks": False,
        "automountServiceAccountToken": service_account is not None,
        "containers": [container],
    }
    if service_account is not None:
        spec["serviceAccountName"] = service_account
    if volumes:
        spec["volumes"] = volumes
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def python_pod(name: str, image: str, script: str, **options: Any) -> dict[str, Any]:
    """``python -c SCRIPT`` in a restricted pod of the project's image."""
    return restricted_pod(name, image, command=["python", "-c", script], **options)


# --- faults from the host: we are root on the node -------------------------------------------------

CGROUP_PIDS = Path("/sys/fs/cgroup/pids/kubepods")  # the kubelet's cgroupfs layout (cgroup v1)


def container_pids(pod: dict[str, Any]) -> list[int]:
    """The host PIDs of the processes in a pod's (first) container, from its cgroup."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    found = [p for p in CGROUP_PIDS.rglob(f"{container_id}/cgroup.procs")]
    assert len(found) == 1, f"no single cgroup for container {container_id}: {found}"
    return [int(line) for line in found[0].read_text().split()]


@contextmanager
def frozen(pod: dict[str, Any]) -> Iterator[list[int]]:
    """The pod's container processes stopped with SIGSTOP (a hung process: no socket closes, no
    probe answers), and sent SIGCONT at the end if they still exist."""
    pids = container_pids(pod)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


BROKER_PORTS = "5672,15672"  # AMQP and the management API (relayed on the node address)


@contextmanager
def broker_cut(node_ip: str, pod_ips: list[str]) -> Iterator[None]:
    """A broker outage as these pods see it: every packet between them and the broker's ports on
    the node address is answered by a TCP reset, both ways (open connections die at their next
    frame, new ones are refused, as when the broker is down), until the block exits.

    Not a stop of the host broker itself: other checkouts' tests share it."""
    rules = []
    for ip in pod_ips:
        rules.append(["INPUT", "-s", ip, "-d", node_ip, "-p", "tcp", "-m", "multiport", "--dports", BROKER_PORTS,
                      "-j", "REJECT", "--reject-with", "tcp-reset"])
        rules.append(["OUTPUT", "-s", node_ip, "-d", ip, "-p", "tcp", "-m", "multiport", "--sports", BROKER_PORTS,
                      "-j", "REJECT", "--reject-with", "tcp-reset"])
    added = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-w", "-I", rule[0], "1", *rule[1:]], check=True, capture_output=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-w", "-D", *rule], check=False, capture_output=True)

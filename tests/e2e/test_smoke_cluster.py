"""Smoke tests: the control plane from scripts/testenv is a real one.

Each test proves one piece the operator relies on: the API server evaluates CEL rules of a CRD,
serves its printer columns and status subresource, the controller-manager's deployment and
garbage-collector controllers run, Helm installs and uninstalls a chart, and the server reports
its real (pinned) version. Names are unique per run and everything is cleaned up.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import Tool
from tests.harness import wait_until

CHART = Path(__file__).resolve().parent / "smoke-chart"
RUN = uuid.uuid4().hex[:8]


@pytest.fixture
def smoke_namespace(k8s_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = f"smoke-{RUN}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as error:
        if error.status != 404:
            raise


# --- the server's version ------------------------------------------------------------------------


def test_server_reports_the_pinned_version(k8s_api: client.ApiClient, kubectl: Tool) -> None:
    info = client.VersionApi(k8s_api).get_code()
    assert info.git_version != "v0.0.0" and info.git_version.startswith("v1."), info
    assert info.major == "1"
    assert info.minor == info.git_version.split(".")[1], info
    pinned = os.environ.get("TESTENV_K8S_VERSION")
    if pinned:
        assert info.git_version == pinned
    versions = json.loads(kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == info.git_version
    assert versions["serverVersion"]["gitVersion"] == info.git_version


# --- a CRD: CEL validation, printer columns, status subresource ----------------------------------

GROUP = f"s{RUN}.smoke.trailingstop.dev"
PLURAL = "smokestops"
RESOURCE = f"{PLURAL}.{GROUP}"  # fully qualified: other runs' CRDs may share the plural
CEL_MESSAGE = "spec.stopPrice must be below spec.entryPrice"


def crd_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "smokestop", "kind": "SmokeStop"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Symbol", "type": "string", "jsonPath": ".spec.symbol"},
                        {"name": "Stop", "type": "string", "jsonPath": ".spec.stopPrice"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["symbol", "entryPrice", "stopPrice"],
                                    "properties": {
                                        "symbol": {"type": "string"},
                                        "entryPrice": {"type": "number"},
                                        "stopPrice": {"type": "number"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.stopPrice < self.entryPrice",
                                            "message": CEL_MESSAGE,
                                        }
                                    ],
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def smokestop(name: str, namespace: str, entry: float, stop: float) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "SmokeStop",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"symbol": "XRPETH", "entryPrice": entry, "stopPrice": stop},
        }
    )


@pytest.fixture(scope="module")
def smoke_crd(kubectl: Tool) -> Iterator[str]:
    name = f"{PLURAL}.{GROUP}"
    kubectl("apply", "-f", "-", input=json.dumps(crd_manifest()))
    kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    # discovery can lag the Established condition by a moment
    wait_until(
        lambda: kubectl("get", RESOURCE, "-A", check=False).returncode == 0,
        what=f"{PLURAL} served",
    )
    yield name
    kubectl("delete", "crd", name, "--wait=false", check=False)


def test_cel_rule_rejects_a_bad_object_at_the_server(
    smoke_crd: str, smoke_namespace: str, kubectl: Tool
) -> None:
    namespace = smoke_namespace
    bad = kubectl(
        "apply", "-f", "-", input=smokestop("bad", namespace, entry=1.0, stop=2.0), check=False
    )
    assert bad.returncode != 0, bad.stdout
    assert CEL_MESSAGE in bad.stderr, bad.stderr
    assert "Invalid value" in bad.stderr, bad.stderr
    # the server, not the client, said no: nothing was stored
    assert kubectl("get", RESOURCE, "bad", "-n", namespace, check=False).returncode != 0

    good = kubectl("apply", "-f", "-", input=smokestop("good", namespace, entry=2.0, stop=1.0))
    assert "created" in good.stdout


def test_printer_columns_and_status_subresource(
    smoke_crd: str, smoke_namespace: str, kubectl: Tool, k8s_api: client.ApiClient
) -> None:
    namespace = smoke_namespace
    kubectl("apply", "-f", "-", input=smokestop("cols", namespace, entry=2.0, stop=1.5))
    custom = client.CustomObjectsApi(k8s_api)
    # a write to the main resource ignores .status ...
    custom.patch_namespaced_custom_object(
        GROUP, "v1", namespace, PLURAL, "cols", {"status": {"phase": "Ignored"}}
    )
    obj = custom.get_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "cols")
    assert "status" not in obj or obj["status"].get("phase") != "Ignored", obj
    # ... the status subresource takes it
    custom.patch_namespaced_custom_object_status(
        GROUP, "v1", namespace, PLURAL, "cols", {"status": {"phase": "Armed"}}
    )
    table = kubectl("get", RESOURCE, "cols", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SYMBOL", "STOP", "PHASE"], table
    assert table[1].split()[:4] == ["cols", "XRPETH", "1.5", "Armed"], table


# --- controller-manager: deployment controller and garbage collector ----------------------------


def test_deployment_owned_by_a_configmap_is_garbage_collected(
    k8s_api: client.ApiClient, smoke_namespace: str
) -> None:
    namespace = smoke_namespace
    core, apps = client.CoreV1Api(k8s_api), client.AppsV1Api(k8s_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"k": "v"})
    )
    labels = {"app": "smoke-gc"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(
            name="owned",
            owner_references=[
                client.V1OwnerReference(
                    api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
                )
            ],
        ),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="c", image="registry.invalid/smoke:1")]
                ),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)

    # the deployment controller runs: it makes a ReplicaSet owned by the Deployment
    def replicasets() -> list[client.V1ReplicaSet]:
        return [
            rs
            for rs in apps.list_namespaced_replica_set(namespace).items
            if any(ref.name == "owned" for ref in rs.metadata.owner_references or [])
        ]

    wait_until(replicasets, what="a ReplicaSet for the Deployment")
    # ... and the replicaset controller makes its Pod (Pending: there is no kubelet)
    wait_until(
        lambda: core.list_namespaced_pod(namespace, label_selector="app=smoke-gc").items,
        what="a Pod from the ReplicaSet",
    )

    core.delete_namespaced_config_map("owner", namespace)

    def deployment_gone() -> bool:
        try:
            apps.read_namespaced_deployment("owned", namespace)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_until(deployment_gone, what="the garbage collector to delete the owned Deployment")
    wait_until(lambda: not replicasets(), what="the garbage collector to delete the ReplicaSet")


# --- helm ------------------------------------------------------------------------------------------


def test_helm_install_and_uninstall(helm: Tool, kubectl: Tool, smoke_namespace: str) -> None:
    namespace = smoke_namespace
    release = f"smoke-{RUN}"
    helm(
        "install", release, str(CHART), "--namespace", namespace,
        "--set", f"message=run {RUN}", "--timeout", "60s",
    )
    releases = json.loads(helm("list", "--namespace", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [(release, "deployed")]
    config = json.loads(
        kubectl("get", "configmap", f"{release}-config", "-n", namespace, "-o", "json").stdout
    )
    assert config["data"]["message"] == f"run {RUN}"
    assert config["data"]["kubeVersion"].startswith("v1.")
    service = json.loads(
        kubectl("get", "service", f"{release}-svc", "-n", namespace, "-o", "json").stdout
    )
    assert service["spec"]["clusterIP"].startswith("10.0.0."), service["spec"]

    helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s")
    assert json.loads(helm("list", "--namespace", namespace, "-o", "json").stdout) == []
    for kind, name in (("configmap", f"{release}-config"), ("service", f"{release}-svc")):
        gone = kubectl("get", kind, name, "-n", namespace, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, (kind, gone.stdout)

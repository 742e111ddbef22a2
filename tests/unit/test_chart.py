"""The Helm chart, rendered: `helm lint --strict`, `helm template` with default and non-default
values, the values schema, the CRD copy and manifests/ against their sources.

Needs only the helm binary ($TESTENV_HELM or `helm` on PATH): skipped locally without it (with the
command that provides it), failed under CI=true. Cluster checks of the same chart are in
tests/e2e/test_install.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import trailingstop
from tests.conftest import missing
from trailingstop import telemetry
from trailingstop.operator.builders import WORKER_UID
from trailingstop.operator.config import HEALTH_PORT, OperatorConfig
from trailingstop.operator.crd import crd
from trailingstop.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trailingstop-operator"
CRD_SOURCE = REPO / "crds" / "trailingstops.trailingstop.dev.yaml"
CRD_COPY = CHART / "files" / "trailingstops.trailingstop.dev.yaml"
KUBE_VERSION = "1.34.4"
NS = "ts-chart"
RELEASE = "ts"
FULLNAME = "ts-trailingstop-operator"

# The rules the operator needs, and no more (see templates/rbac.yaml and the e2e RBAC test).
EXPECTED_RULES = [
    {"apiGroups": ["trailingstop.dev"], "resources": ["trailingstops"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["trailingstop.dev"], "resources": ["trailingstops/status"], "verbs": ["patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ts-amqp"],
     "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "create", "patch"]},
]
# The Lease of leader election, in the release namespace only.
LEADER_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [FULLNAME],
     "verbs": ["get", "update"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]
LEADER = f"{FULLNAME}-leader"

# Named value sets: each is rendered, linted and (in tests/e2e) dry-run on the API server.
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "cluster-wide": ["--set", "watch.allNamespaces=true"],
    "extra-namespaces": ["--set", "watch.namespaces={ts-a,ts-b}"],
    "existing-secret": ["--set", "rabbitmq.existingSecret=my-broker,rabbitmq.existingSecretKey=amqp-url"],
    "deploy-rabbitmq": ["--set", "rabbitmq.deploy=true,rabbitmq.auth.password=s3cretPassw0rd,"
                                 "rabbitmq.persistence.enabled=true"],
    "rabbitmq-cluster": ["--set", "rabbitmq.clusterOperator.enabled=true"],
    "service-monitor": ["--set", "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom"],
    "network-policy": ["--set", "networkPolicy.enabled=true"],
    "deploy-rabbitmq-network-policy": ["--set", "rabbitmq.deploy=true,networkPolicy.enabled=true"],
    "one-replica": ["--set", "operator.replicas=1"],
    "worker-placement": ["--set-json", 'workers.tolerations=[{"key":"trading","operator":"Exists"}]',
                         "--set", "workers.nodeSelector.pool=trading,workers.priorityClassName=trading,"
                                  "workers.imagePullSecrets={regcred},workers.podAnnotations.team=desk,"
                                  "workers.podDisruptionBudget.enabled=true"],
    "prometheus-rule": ["--set", "metrics.prometheusRule.enabled=true,metrics.prometheusRule.labels.release=prom"],
    "no-rbac": ["--set", "rbac.create=false,serviceAccount.create=false,serviceAccount.name=my-operator"],
    "tracing": ["--set", "tracing.enabled=true,tracing.endpoint=http://otel.observability.svc:4318"],
}


class Helm:
    def __init__(self, path: str, home: Path) -> None:
        self.path = path
        self.env = {**os.environ}
        for kind in ("CACHE", "CONFIG", "DATA"):
            self.env[f"HELM_{kind}_HOME"] = str(home / kind.lower())

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.path, *args], capture_output=True, text=True, env=self.env, timeout=120,
                              check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def template(self, *values: str, namespace: str = NS, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("template", RELEASE, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
                        *values, check=check)

    def render(self, *values: str, namespace: str = NS) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.template(*values, namespace=namespace).stdout) if d]


@pytest.fixture(scope="session")
def helm_bin(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    path = os.environ.get("TESTENV_HELM") or shutil.which("helm")
    if not path or not os.access(path, os.X_OK):
        missing("helm not found ($TESTENV_HELM unset and no helm on PATH)")
    return Helm(path, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def rendered(helm_bin: Helm) -> dict[str, list[dict[str, Any]]]:
    return {name: helm_bin.render(*values) for name, values in VARIANTS.items()}


def one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    present = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {present}"
    return found[0]


def kinds(documents: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in documents)


def operator_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(documents, "Deployment", FULLNAME)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    """The values the operator would read, for the variables that have a plain value."""
    return {name: e["value"] for name, e in env_of(container).items() if "value" in e}


def pod_specs(documents: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in documents:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


# --- chart metadata, lint, schema ------------------------------------------------------------------


def test_chart_versions_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"] == trailingstop.__version__
    assert chart["version"] == project["version"]
    assert chart["kubeVersion"] == ">=1.27.0-0"


def test_helm_lint_strict_passes_for_every_variant(helm_bin: Helm) -> None:
    for name, values in VARIANTS.items():
        done = helm_bin.run("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, "--namespace", NS,
                            *values, check=False)
        assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"
        assert "0 chart(s) failed" in done.stdout


def test_the_values_schema_is_strict(helm_bin: Helm) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    refused = {
        "rabbitmq.bogus=1": "additional properties 'bogus' not allowed",
        "operator.logFormat=xml": "logFormat",
        "watch.namespaces={Not_A_Namespace}": "does not match pattern",
        "image.pullPolicy=Sometimes": "pullPolicy",
        "image.digest=latest": "digest",
        "networkPolicy.apiServer.cidrs={not-a-cidr}": "cidrs",
        "workers.env.BAD-NAME=x": "BAD-NAME",
    }
    for setting, words in refused.items():
        done = helm_bin.template("--set", setting, check=False)
        assert done.returncode != 0, setting
        assert "schema" in done.stderr and words in done.stderr, (setting, done.stderr)


def test_impossible_broker_settings_fail_with_a_clear_message(helm_bin: Helm) -> None:
    both = helm_bin.template("--set", "rabbitmq.deploy=true,rabbitmq.clusterOperator.enabled=true", check=False)
    assert both.returncode != 0 and "exclusive" in both.stderr
    none = helm_bin.template("--set", "rabbitmq.existingSecret=", check=False)
    assert none.returncode != 0 and "the operator needs a broker" in none.stderr
    nameless = helm_bin.template("--set", "serviceAccount.create=false", check=False)
    assert nameless.returncode != 0 and "serviceAccount.name is required" in nameless.stderr


def test_kube_version_below_1_27_is_refused(helm_bin: Helm) -> None:
    done = helm_bin.run("template", RELEASE, str(CHART), "--kube-version", "1.26.9", check=False)
    assert done.returncode != 0 and "kubeVersion" in done.stderr


# --- the default install ---------------------------------------------------------------------------


def test_default_install_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documents = rendered["default"]
    assert kinds(documents) == sorted([
        "CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding", "Service", "Deployment",
        "Role", "RoleBinding",  # the leader election Lease
        "PodDisruptionBudget",  # one of the two replicas stays through a drain
        "ConfigMap",  # the Grafana dashboard
        # `helm test`: the hook Pod and its ServiceAccount
        "ServiceAccount", "Pod",
    ])
    for document in documents:
        labels = document["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "trailingstop-operator"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == trailingstop.__version__
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == f"trailingstop-operator-{trailingstop.__version__}"
        if document["kind"] != "CustomResourceDefinition":
            assert document["metadata"]["namespace"] == NS


def test_operator_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = one(rendered["default"], "Deployment", FULLNAME)
    spec = deployment["spec"]
    # one leads, one stands by; an update starts the new pod before the old one goes
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    container = operator_container(rendered["default"])
    assert container["image"] == f"ghcr.io/trailingstop/trailingstop:{trailingstop.__version__}"
    assert container["args"] == ["operator", "--standalone"]
    assert container["ports"] == [{"name": "http", "containerPort": HEALTH_PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    env = env_of(container)
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["WATCH_NAMESPACES"]["value"] == NS and "WATCH_ALL_NAMESPACES" not in env
    assert env["AMQP_URL"] == {"name": "AMQP_URL",
                               "valueFrom": {"secretKeyRef": {"name": "trailingstop-amqp", "key": "url"}}}
    assert env["TRAILINGSTOP_HEALTH_PORT"]["value"] == str(HEALTH_PORT)
    assert env["TRAILINGSTOP_LEASE_NAME"]["value"] == FULLNAME


def test_operator_disruption_budget_only_with_a_standby(rendered: dict[str, list[dict[str, Any]]]) -> None:
    budget = one(rendered["default"], "PodDisruptionBudget", FULLNAME)
    deployment = one(rendered["default"], "Deployment", FULLNAME)
    assert budget["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}
    assert "PodDisruptionBudget" not in kinds(rendered["one-replica"])  # minAvailable 1 of 1 blocks every drain


def test_the_operator_reads_the_charts_settings(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The Deployment's environment, through the operator's own parser."""
    env = plain_env(operator_container(rendered["default"]))
    config = OperatorConfig.from_env({**env, "POD_NAMESPACE": NS, "AMQP_URL": "amqp://u:p@broker:5672/"})
    assert config.namespaces == (NS,) and not config.clusterwide
    assert config.worker_image == f"ghcr.io/trailingstop/trailingstop:{trailingstop.__version__}"
    assert config.image_pull_policy == "IfNotPresent"
    assert config.worker_resources == {"requests": {"cpu": "50m", "memory": "96Mi"},
                                       "limits": {"cpu": "1", "memory": "256Mi"}}
    assert config.worker_env == {}
    assert config.status_interval == 5.0 and config.health_port == HEALTH_PORT
    assert config.worker_service_account == ""
    assert (config.worker_rollout_batch, config.worker_rollout_timeout) == (3, 180.0)



def test_worker_settings_reach_the_operator(helm_bin: Helm) -> None:
    documents = helm_bin.render(
        "--set", "workers.image.repository=registry.example/ts,workers.image.tag=dev,workers.pullPolicy=Always,"
        "workers.env.TRAILINGSTOP_SYNC_TIMEOUT=20,workers.serviceAccountName=ts-worker,operator.statusInterval=2.5,"
        "workers.resources.limits.memory=512Mi,operator.logFormat=text,image.digest=sha256:" + "a" * 64)
    container = operator_container(documents)
    assert container["image"] == "ghcr.io/trailingstop/trailingstop@sha256:" + "a" * 64
    config = OperatorConfig.from_env(plain_env(container))
    assert config.worker_image == "registry.example/ts:dev"
    assert config.image_pull_policy == "Always"
    assert config.worker_env == {"TRAILINGSTOP_SYNC_TIMEOUT": "20"}
    assert config.worker_service_account == "ts-worker"
    assert config.worker_resources["limits"] == {"cpu": "1", "memory": "512Mi"}
    assert config.status_interval == 2.5
    assert plain_env(container)["TRAILINGSTOP_LOG_FORMAT"] == "text"


def test_default_rbac_is_one_namespaced_role_without_wildcards(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documents = rendered["default"]
    role = one(documents, "Role", FULLNAME)
    assert role["metadata"]["namespace"] == NS
    assert role["rules"] == EXPECTED_RULES
    binding = one(documents, "RoleBinding", FULLNAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NS}]
    assert not [d for d in documents if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_leader_election_role_is_the_release_namespaces_lease_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant in ("default", "cluster-wide", "extra-namespaces"):
        role = one(rendered[variant], "Role", LEADER)
        assert role["metadata"]["namespace"] == NS and role["rules"] == LEADER_RULES, variant
        binding = one(rendered[variant], "RoleBinding", LEADER)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEADER}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NS}]


def test_no_variant_grants_a_wildcard(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, documents in rendered.items():
        for document in documents:
            for rule in document.get("rules", []):
                for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                    assert "*" not in rule.get(key, []), (name, document["kind"], rule)


def test_the_crd_is_the_generated_one_and_kept_on_uninstall(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert CRD_COPY.read_text() == CRD_SOURCE.read_text(), (
        "the chart's CRD copy differs from crds/: run scripts/render-manifests")
    template = one(rendered["default"], "CustomResourceDefinition")
    generated = crd()
    assert template["spec"] == generated["spec"]
    assert template["metadata"]["name"] == generated["metadata"]["name"]
    assert template["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert generated["metadata"]["labels"].items() <= template["metadata"]["labels"].items()


def test_crd_install_and_keep_can_be_turned_off(helm_bin: Helm) -> None:
    assert "CustomResourceDefinition" not in kinds(helm_bin.render("--set", "crds.install=false"))
    unkept = one(helm_bin.render("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in unkept["metadata"]


def test_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policy = one(rendered["network-policy"], "NetworkPolicy", FULLNAME)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    ports = [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in spec["egress"]]
    broker = [(5671, "TCP"), (5672, "TCP"), (15671, "TCP"), (15672, "TCP")]  # AMQP and the management API
    assert ports == [[(53, "TCP"), (53, "UDP")], [(443, "TCP"), (6443, "TCP")], broker]
    # off by default: the API server's address differs per cluster and CNIs differ on matching it
    assert not [d for d in rendered["default"] if d["kind"] == "NetworkPolicy"]


def test_helm_test_hook(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = one(rendered["default"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == operator_container(rendered["default"])["image"]
    script = container["args"][0]
    assert f"http://{FULLNAME}.{NS}.svc:{HEALTH_PORT}/healthz" in script
    assert "/apis/trailingstop.dev/v1" in script and "trailingstops" in script
    compile(script, "helm-test", "exec")  # the Python the Pod would run is valid
    account = one(rendered["default"], "ServiceAccount", f"{FULLNAME}-test")
    assert "annotations" not in account["metadata"]  # not a hook: it must outlive the Pod's start


def test_every_pod_meets_the_restricted_pod_security_standard(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant, documents in rendered.items():
        for where, pod in pod_specs(documents):
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for container in pod["containers"]:
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False, (variant, where)
                assert security["capabilities"] == {"drop": ["ALL"]}, (variant, where)
                assert security["readOnlyRootFilesystem"] is True, (variant, where)
                assert container["resources"]["limits"], (variant, where)
                for variable in container.get("env", []):
                    assert "PASS" not in variable["name"] or "valueFrom" in variable, (variant, where, variable)


# --- non-default values ------------------------------------------------------------------------------


def test_cluster_wide(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documents = rendered["cluster-wide"]
    role = one(documents, "ClusterRole")
    assert role["rules"] == EXPECTED_RULES
    binding = one(documents, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NS}]
    assert [d["metadata"]["name"] for d in documents if d["kind"] in ("Role", "RoleBinding")] == [LEADER, LEADER]
    env = env_of(operator_container(documents))
    assert env["WATCH_ALL_NAMESPACES"]["value"] == "true" and "WATCH_NAMESPACES" not in env
    assert OperatorConfig.from_env(plain_env(operator_container(documents))).clusterwide


def test_extra_namespaces(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documents = rendered["extra-namespaces"]
    granted = [d for d in documents if d["metadata"]["name"] != LEADER]
    roles = {d["metadata"]["namespace"]: d for d in granted if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in granted if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"ts-a", "ts-b"}
    for namespace in ("ts-a", "ts-b"):
        assert roles[namespace]["rules"] == EXPECTED_RULES
        assert bindings[namespace]["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NS}]
    config = OperatorConfig.from_env(plain_env(operator_container(documents)))
    assert config.namespaces == ("ts-a", "ts-b")
    assert one(documents, "Deployment")["metadata"]["namespace"] == NS  # the operator stays in its own


def test_existing_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = env_of(operator_container(rendered["existing-secret"]))
    assert env["AMQP_URL"]["valueFrom"] == {"secretKeyRef": {"name": "my-broker", "key": "amqp-url"}}
    assert "Secret" not in kinds(rendered["existing-secret"])


def test_deploy_rabbitmq(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documents = rendered["deploy-rabbitmq"]
    name = f"{FULLNAME}-rabbitmq"
    secret = one(documents, "Secret", name)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["username"] == "trailingstop" and data["password"] == "s3cretPassw0rd"
    url = urlsplit(data["url"])
    assert (url.scheme, url.hostname, url.port) == ("amqp", f"{name}.{NS}.svc", 5672)
    assert (url.username, url.password) == ("trailingstop", "s3cretPassw0rd")
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}  # persistence on
    env = env_of(operator_container(documents))
    assert env["AMQP_URL"]["valueFrom"] == {"secretKeyRef": {"name": name, "key": "url"}}
    statefulset = one(documents, "StatefulSet", name)
    assert statefulset["spec"]["replicas"] == 1
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("rabbitmq:")
    rabbit_env = env_of(container)
    assert rabbit_env["RABBITMQ_DEFAULT_PASS"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": "password"}
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    service = one(documents, "Service", name)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "amqp": 5672, "management": 15672, "prometheus": 15692}
    guarded = rendered["deploy-rabbitmq-network-policy"]
    policy = one(guarded, "NetworkPolicy", FULLNAME)
    broker_rule = policy["spec"]["egress"][2]
    assert broker_rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "rabbitmq"
    one(guarded, "NetworkPolicy", name)


def test_deploy_rabbitmq_generates_a_password(helm_bin: Helm) -> None:
    documents = helm_bin.render("--set", "rabbitmq.deploy=true")
    secret = one(documents, "Secret")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) == 32 and password.isalnum()
    assert "annotations" not in secret["metadata"]  # no persistence: nothing outlives the release
    statefulset = one(documents, "StatefulSet")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}} in statefulset["spec"]["template"]["spec"]["volumes"]


def test_rabbitmq_cluster_operator(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documents = rendered["rabbitmq-cluster"]
    cluster = one(documents, "RabbitmqCluster", f"{FULLNAME}-rabbitmq")
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1" and cluster["spec"]["replicas"] == 1
    env = operator_container(documents)["env"]
    names = [e["name"] for e in env]
    secret = f"{FULLNAME}-rabbitmq-default-user"
    for part, key in (("AMQP_USERNAME", "username"), ("AMQP_PASSWORD", "password"), ("AMQP_HOST", "host"),
                      ("AMQP_PORT", "port")):
        variable = env[names.index(part)]
        assert variable["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key}}
        assert names.index(part) < names.index("AMQP_URL")  # $(VAR) expands only earlier variables
    url = env[names.index("AMQP_URL")]["value"]
    assert url == "amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@$(AMQP_HOST):$(AMQP_PORT)/"


def test_service_monitor_and_worker_pod_monitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documents = rendered["service-monitor"]
    monitor = one(documents, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert monitor["spec"]["endpoints"][0]["port"] == "http" and monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    workers = one(documents, "PodMonitor")
    assert workers["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "trailingstop-operator"}}
    assert workers["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    assert workers["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert "ServiceMonitor" not in kinds(rendered["default"])


def test_rbac_create_false(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documents = rendered["no-rbac"]
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(kinds(documents))
    assert one(documents, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "my-operator"
    assert [d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"] == [f"{FULLNAME}-test"]


def test_tracing_reaches_operator_and_workers(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = plain_env(operator_container(rendered["tracing"]))
    assert env["TRAILINGSTOP_TRACING"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.observability.svc:4318"
    workers = json.loads(env["TRAILINGSTOP_WORKER_ENV"])
    assert workers["TRAILINGSTOP_TRACING"] == "otlp"
    assert workers["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.observability.svc:4318"
    assert "TRAILINGSTOP_TRACING" not in plain_env(operator_container(rendered["default"]))


# --- alerts ----------------------------------------------------------------------------------------------

ALERTS_TEST = Path(__file__).parent / "data" / "alerts-test.yaml"


@pytest.fixture(scope="session")
def promtool() -> str:
    done = subprocess.run([str(REPO / "scripts" / "promtool"), "build"], capture_output=True, text=True,
                          timeout=1800, check=False)
    if done.returncode != 0:
        missing(f"scripts/promtool build failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def alert_rules(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rule = one(rendered["prometheus-rule"], "PrometheusRule", FULLNAME)
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert "PrometheusRule" not in kinds(rendered["default"])
    return dict(rule["spec"])


def test_alert_rules_check_and_fire_under_promtool(rendered: dict[str, list[dict[str, Any]]], promtool: str,
                                                   tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(alert_rules(rendered)))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts-test.yaml")
    for command in (["check", "rules", "rules.yaml"], ["test", "rules", "alerts-test.yaml"]):
        done = subprocess.run([promtool, *command], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                              check=False)
        assert done.returncode == 0, f"promtool {' '.join(command)}:\n{done.stdout}{done.stderr}"
    tested = {test["alertname"] for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
              for test in group["alert_rule_test"]}
    assert tested == {rule["alert"] for group in alert_rules(rendered)["groups"] for rule in group["rules"]}


def test_alert_rules_use_only_metrics_the_code_exports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    exported = {name for metric in vars(telemetry).values() if isinstance(metric, MetricWrapperBase)
                for name in (metric._name, f"{metric._name}_total")}  # counters are scraped as _total
    for group in alert_rules(rendered)["groups"]:
        for rule in group["rules"]:
            used = set(re.findall(r"\btrailingstop_[a-z_]+", rule["expr"]))
            assert used and used <= exported, (rule["alert"], used - exported)


# --- manifests/ ----------------------------------------------------------------------------------------


def test_manifests_are_the_charts_rendering(helm_bin: Helm) -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "render-manifests"), "--check"],
                          capture_output=True, text=True, env={**helm_bin.env, "TESTENV_HELM": helm_bin.path},
                          check=False, timeout=120)
    assert done.returncode == 0, f"manifests/ drifted from the chart:\n{done.stdout}{done.stderr}"


def test_manifests_are_a_plain_install() -> None:
    documents = [d for path in sorted((REPO / "manifests").glob("*.yaml"))
                 for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents[0]["kind"] == "Namespace" and documents[0]["metadata"]["name"] == "trailingstop-system"
    assert documents[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "Pod" not in kinds(documents)  # no test hook
    for document in documents:
        labels = document["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/managed-by") != "Helm", document["metadata"]["name"]
        assert "helm.sh/hook" not in document["metadata"].get("annotations", {})


def test_tenancy_settings_of_the_operator(helm_bin: Helm) -> None:
    """The release names itself on the broker, and each way of making tenants sets exactly the
    settings the operator needs (the operator refuses a topology operator with two references)."""
    default = plain_env(operator_container(helm_bin.render()))
    assert default["TRAILINGSTOP_INSTANCE"] == f"{NS}.{RELEASE}"
    assert default["TRAILINGSTOP_BROKER_ADMIN"] == "management-api"
    managed = plain_env(operator_container(helm_bin.render(
        "--set", "rabbitmq.tenancy.managementUrl=https://rabbit.broker.svc:15671")))
    assert managed["TRAILINGSTOP_RABBITMQ_MANAGEMENT_URL"] == "https://rabbit.broker.svc:15671"
    for values, reference in [
        (["--set", "rabbitmq.tenancy.admin=topologyOperator,rabbitmq.tenancy.connectionSecret=rmq-conn"],
         ("TRAILINGSTOP_RABBITMQ_CONNECTION_SECRET", "rmq-conn")),
        (["--set", "rabbitmq.tenancy.admin=topologyOperator,rabbitmq.tenancy.clusterName=rabbit"],
         ("TRAILINGSTOP_RABBITMQ_CLUSTER", "rabbit")),
    ]:
        documents = helm_bin.render(*values)
        env = plain_env(operator_container(documents))
        assert env["TRAILINGSTOP_BROKER_ADMIN"] == "topology-operator"
        assert {k: v for k, v in env.items() if k.startswith("TRAILINGSTOP_RABBITMQ_")} == dict([reference])
        one(documents, "Role", f"{FULLNAME}-broker-tenants")
        load_settings(env)  # the operator accepts them


def test_worker_placement_reaches_the_operator(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documents = rendered["worker-placement"]
    config = OperatorConfig.from_env(plain_env(operator_container(documents)))
    assert config.worker_scheduling == {
        "tolerations": [{"key": "trading", "operator": "Exists"}], "affinity": {},
        "nodeSelector": {"pool": "trading"}, "priorityClassName": "trading",
        "imagePullSecrets": [{"name": "regcred"}],
    }
    assert config.worker_pod_annotations == {"team": "desk"}
    assert config.worker_disruption_budget
    pdb_rule = {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"],
                "verbs": ["get", "create", "patch", "delete"]}
    assert one(documents, "Role", FULLNAME)["rules"] == [*EXPECTED_RULES, pdb_rule]
    defaults = OperatorConfig.from_env(plain_env(operator_container(rendered["default"])))
    assert not any(defaults.worker_scheduling.values()) and not defaults.worker_disruption_budget


def test_executor_network_policy_settings_reach_the_operator(helm_bin: Helm) -> None:
    defaults = OperatorConfig.from_env(plain_env(operator_container(helm_bin.render())))
    assert defaults.executor_network_policy and defaults.executor_egress_ports == (443, 5671, 5672)
    documents = helm_bin.render("--set", "workers.executorNetworkPolicy.enabled=false")
    assert not OperatorConfig.from_env(plain_env(operator_container(documents))).executor_network_policy
    assert not [r for r in one(documents, "Role", FULLNAME)["rules"] if "networkpolicies" in r["resources"]]
    custom = helm_bin.render("--set", "workers.executorNetworkPolicy.egressPorts={443,5673}")
    assert OperatorConfig.from_env(plain_env(operator_container(custom))).executor_egress_ports == (443, 5673)

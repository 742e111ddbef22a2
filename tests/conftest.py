"""Root fixtures: the real test environment that ``scripts/testenv`` runs (docs/DEVELOPING.md).

Layers are marked by directory: tests/unit -> ``unit``, tests/integration -> ``integration``,
tests/e2e -> ``e2e``; a test in tests/unit that needs helm, a kubeconfig or the fake Binance is marked
``helm`` / ``kubeconfig`` / ``fakebinance`` instead of ``unit`` (NEEDS below), and a unit test that
touches the network fails.

The environment fixtures read what ``eval "$(scripts/testenv env)"`` exports. When a service is
missing, a test that needs it is skipped locally with the command that provides it, and FAILS
when ``CI=true``: CI never passes by skipping the real checks.

Fixtures (all session scoped):

- ``amqp_url -> str``: the broker's AMQP URL (``$AMQP_URL``), checked to answer.
- ``broker_restart -> Callable[[], float]``: restarts the broker (data kept), waits until it
  answers again, returns the seconds it took. Blocking: from async code use
  ``await asyncio.to_thread(broker_restart)``.
- ``kubeconfig -> pathlib.Path``: the admin kubeconfig (``$KUBECONFIG``), its API server ready.
- ``k8s_api -> kubernetes.client.ApiClient``: a sync client built from that kubeconfig.
- ``kubectl -> Tool``, ``helm -> Tool``: ``kubectl("get", "pods", "-o", "json")`` runs the
  testenv-built binary with that kubeconfig and returns ``subprocess.CompletedProcess[str]``;
  ``check=True`` (default) raises ``ToolError`` (stdout/stderr in the message) on a non-zero exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TESTENV = REPO / "scripts" / "testenv"
HOW_TO_START = 'run `scripts/testenv up`, then `eval "$(scripts/testenv env)"` (docs/DEVELOPING.md)'
LAYERS = ("unit", "integration", "e2e")


# --- markers by directory, and by what a test needs ----------------------------------------------
#
# tests/integration -> ``integration``, tests/e2e -> ``e2e``. A test in tests/unit is ``unit`` only if
# it needs nothing outside this process: a test that uses a fixture of NEEDS (directly or through
# another fixture) or is marked with one of its markers gets that marker instead, so that
# ``pytest -m unit`` (``make test-unit``) runs with no service, no tool build and no network fake.
# A unit test that opens a network socket fails (see ``_no_network_in_unit_tests``).

NEEDS = {
    "helm": {"helm", "helm_bin"},  # the helm binary scripts/testenv builds
    "promtool": {"promtool"},  # Prometheus's promtool, which scripts/promtool builds
    "kubeconfig": {"kubeconfig", "k8s_api", "kubectl"},  # a running Kubernetes API server
    "fakebinance": {"fake"},  # the fake Binance over loopback, in process or against a child
    "fakedata": {"data_host"},  # the fake of Binance's public-data host (tests/fakedata) over loopback
    "integration": {"amqp_url", "broker_restart", "vhost", "management_url"},  # RabbitMQ
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            relative = Path(item.path).resolve().relative_to(TESTS)
        except ValueError:
            continue
        layer = relative.parts[0] if len(relative.parts) > 1 else ""
        if layer == "unit":
            _mark_unit_test(item)
        elif layer in LAYERS and item.get_closest_marker(layer) is None:
            item.add_marker(getattr(pytest.mark, layer))


def _mark_unit_test(item: pytest.Item) -> None:
    fixtures = set(getattr(item, "fixturenames", ()))
    needs = {marker for marker, names in NEEDS.items() if fixtures & names or item.get_closest_marker(marker)}
    if not needs:
        item.add_marker(pytest.mark.unit)
        return
    if item.get_closest_marker("unit") is not None:
        raise pytest.UsageError(f"{item.nodeid} is marked unit but needs {', '.join(sorted(needs))}")
    for marker in needs:
        item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(autouse=True)
def _no_network_in_unit_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``unit`` test may not connect to or listen on an IP address: one that does needs a marker
    from NEEDS (or belongs in tests/integration)."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(original: Callable[..., object]) -> Callable[..., object]:
        def guarded(self: socket.socket, *args: object) -> object:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise AssertionError(f"{request.node.nodeid} is a unit test and uses the network "
                                     f"({original.__name__} {args[0] if args else ''}): give it the marker of "
                                     "what it needs (tests/conftest.py NEEDS)")
            return original(self, *args)

        return guarded

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(getattr(socket.socket, name)))


# --- missing services: skip locally, fail on CI ------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> NoReturn:
    """A service the test needs is not there: fail under CI=true, skip otherwise."""
    message = f"{what}: {HOW_TO_START}"
    if in_ci():
        pytest.fail(f"CI=true and the test environment is incomplete: {message}", pytrace=False)
    pytest.skip(message)


def tcp_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _amqp_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 5671 if parts.scheme == "amqps" else 5672
    return parts.hostname or "127.0.0.1", parts.port or default


# --- RabbitMQ ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The real broker's AMQP URL (``$AMQP_URL``); skip/fail when unset or not answering."""
    url = os.environ.get("AMQP_URL", "")
    if not url:
        missing("AMQP_URL is not set (RabbitMQ)")
    host, port = _amqp_host_port(url)
    if not tcp_answers(host, port):
        missing(f"RabbitMQ does not answer at {host}:{port} (AMQP_URL={url})")
    return url


@pytest.fixture(scope="session")
def broker_restart(amqp_url: str) -> Callable[[], float]:
    """A callable that restarts the broker (``scripts/testenv restart-rabbitmq``), waits until
    it accepts AMQP connections again and returns how long that took in seconds. Durable queues
    and persistent messages survive it; every open connection is cut."""
    host, port = _amqp_host_port(amqp_url)

    def restart(timeout: float = 180.0) -> float:
        started = time.monotonic()
        done = subprocess.run(
            [str(TESTENV), "restart-rabbitmq"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"scripts/testenv restart-rabbitmq failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        deadline = started + timeout
        while not tcp_answers(host, port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ at {host}:{port} did not come back in {timeout}s")
            time.sleep(0.2)
        return time.monotonic() - started

    return restart


# --- Kubernetes ----------------------------------------------------------------------------------


class ToolError(subprocess.CalledProcessError):
    """A kubectl/helm run that exited non-zero; the message carries its output."""

    def __str__(self) -> str:
        command = " ".join(map(str, self.cmd))
        return (
            f"{command!r} exited {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


class Tool:
    """Runs one command-line tool (kubectl, helm) against the test cluster."""

    def __init__(self, path: str, env: dict[str, str]) -> None:
        self.path = path
        self.env = env

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        command: Sequence[str] = [self.path, *map(str, args)]
        done = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise ToolError(done.returncode, command, done.stdout, done.stderr)
        return done

    def __repr__(self) -> str:
        return f"Tool({self.path!r})"


def _find_tool(name: str, env_var: str) -> str:
    path = os.environ.get(env_var) or shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        missing(f"{name} not found (${env_var} unset and no {name} on PATH)")
    return path


@pytest.fixture(scope="session")
def kubeconfig() -> Path:
    """The test cluster's admin kubeconfig (``$KUBECONFIG``); its API server answers."""
    value = os.environ.get("KUBECONFIG", "")
    if not value:
        missing("KUBECONFIG is not set (Kubernetes control plane)")
    path = Path(value.split(os.pathsep)[0])
    if not path.is_file():
        missing(f"KUBECONFIG={value} does not exist")
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    try:
        server = config["clusters"][0]["cluster"]["server"]
    except (KeyError, IndexError, TypeError):
        missing(f"KUBECONFIG={value} has no cluster server")
    parts = urlsplit(server)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    if not tcp_answers(host, port):
        missing(f"the Kubernetes API server does not answer at {server}")
    return path


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: Path) -> Iterator[ApiClient]:
    """A sync ``kubernetes.client.ApiClient`` for the test cluster (admin), after /readyz is ok."""
    import urllib3
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + 60
    while True:
        try:
            # needs authentication, authorization and etcd: more than /readyz says
            core.read_namespace("default", _request_timeout=5)
            break
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            problem = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        if time.monotonic() > deadline:
            api.close()
            missing(f"the Kubernetes API server does not serve the default namespace ({problem})")
        time.sleep(1)
    yield api
    api.close()


def _tool_env(kubeconfig: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig)
    return env


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Tool:
    """``kubectl(*args, input=None, check=True, timeout=120) -> CompletedProcess[str]``."""
    return Tool(_find_tool("kubectl", "TESTENV_KUBECTL"), _tool_env(kubeconfig))


@pytest.fixture(scope="session")
def helm(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Tool:
    """``helm(*args, input=None, check=True, timeout=120) -> CompletedProcess[str]``, with its own
    cache/config/data directories so no user setting leaks in."""
    env = _tool_env(kubeconfig)
    home = tmp_path_factory.mktemp("helm-home")
    for kind in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{kind}_HOME"] = str(home / kind.lower())
    return Tool(_find_tool("helm", "TESTENV_HELM"), env)
pytest_plugins = ["tests.fixtures"]

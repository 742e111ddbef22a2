"""Broker tenancy, the pure parts: names, URLs, permissions, routes, builders, the router's fences."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from decimal import Decimal
from typing import Any

import pytest

from trailingstop.bus import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EXCHANGES,
    MARKETDATA_EXCHANGE,
    OPERATOR_ORDER_EVENTS_QUEUE,
    OPERATOR_STOP_EVENTS_QUEUE,
    ORDER_COMMANDS_EXCHANGE,
    ORDER_EVENTS_EXCHANGE,
    STOP_COMMANDS_EXCHANGE,
    STOP_EVENTS_EXCHANGE,
    command_queue,
    executor_queue,
    tick_queue,
    worker_permissions,
)
from trailingstop.core.contracts import ROUTE_MAX, StopEvent, TrailingStopSpec, executor_route
from trailingstop.operator import builders
from trailingstop.operator.brokeradmin import TopologyOperator
from trailingstop.operator.builders import BROKER_CREDENTIALS_ANNOTATION, Owner
from trailingstop.operator.config import OperatorConfig
from trailingstop.operator.events import EventRouter, StatusWriter
from trailingstop.operator.legacy import legacy_route
from trailingstop.operator.stops import StopRecord, StopStore
from trailingstop.operator.tenancy import amqp_url, credentials_digest, password_in, tenant_name, with_heartbeat
from trailingstop.workers.executor import route_mode

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CONFIG = OperatorConfig(namespaces=("a", "b"), amqp_url="amqp://admin:pw@rabbit.broker.svc:5672/")
OWNERS = [Owner("stop", "uid-1")]


def allowed(kind: str, name: str) -> bool:
    return re.search(worker_permissions()[kind], name) is not None


# --- names and URLs -------------------------------------------------------------------------------------


def test_tenancy_names_differ_per_release_and_namespace() -> None:
    names = {tenant_name(instance, ns) for instance in ("ops.ts", "ops.ts2", "other.ts") for ns in ("a", "b")}
    assert len(names) == 6
    assert tenant_name("ops.trailingstop", "trading") == "ts.ops.trailingstop.trading"


def test_tenancy_url_swaps_vhost_and_credentials_and_keeps_the_rest() -> None:
    base = "amqps://admin:p%40ss@rabbit.example:5671/%2F?heartbeat=30"
    url = amqp_url(base, "ts.ops.rel.ns", "ts.ops.rel.ns", "s/cr@t:")
    assert url == "amqps://ts.ops.rel.ns:s%2Fcr%40t%3A@rabbit.example:5671/ts.ops.rel.ns?heartbeat=30"
    assert amqp_url(base, "v") == "amqps://admin:p%40ss@rabbit.example:5671/v?heartbeat=30"
    assert amqp_url("amqp://[::1]/", "v", "u", "p") == "amqp://u:p@[::1]/v"


def test_tenancy_password_is_read_back_only_from_its_own_url() -> None:
    url = amqp_url("amqp://admin:pw@rabbit:5672/", "ts.x.ns", "ts.x.ns", "secret+/=")
    assert password_in(url, "ts.x.ns", "ts.x.ns") == "secret+/="
    assert password_in(url, "ts.x.other", "ts.x.other") is None  # another release's tenant
    assert password_in("amqp://admin:pw@rabbit:5672/", "ts.x.ns", "ts.x.ns") is None  # the 0.1 Secret
    assert password_in(None, "u", "v") is None
    assert credentials_digest(url) != credentials_digest(url.replace("secret", "Secret"))


# --- what a worker's broker user may do ---------------------------------------------------------------


def test_tenancy_workers_may_declare_only_their_own_queues() -> None:
    own = [tick_queue("BTCUSDT").name, command_queue("BTCUSDT").name, executor_queue("live-keys.v2").name]
    assert all(allowed("configure", name) for name in own)
    refused = [*EXCHANGES, OPERATOR_STOP_EVENTS_QUEUE, OPERATOR_ORDER_EVENTS_QUEUE, DEAD_LETTER_QUEUE]
    assert not any(allowed("configure", name) for name in refused)


def test_tenancy_workers_may_publish_what_they_produce_but_no_stop_command() -> None:
    for exchange in (MARKETDATA_EXCHANGE, STOP_EVENTS_EXCHANGE, ORDER_COMMANDS_EXCHANGE, ORDER_EVENTS_EXCHANGE,
                     DEAD_LETTER_EXCHANGE):
        assert allowed("write", exchange), exchange
    assert allowed("write", tick_queue("XRPETH").name)  # binding needs write on the queue
    assert not allowed("write", STOP_COMMANDS_EXCHANGE)
    assert not allowed("write", OPERATOR_STOP_EVENTS_QUEUE)
    assert not allowed("write", "stop.commands.evil")


def test_tenancy_workers_may_read_their_queues_but_not_the_operators() -> None:
    assert allowed("read", command_queue("XRPETH").name) and allowed("read", executor_queue("simulate").name)
    for exchange in (MARKETDATA_EXCHANGE, STOP_COMMANDS_EXCHANGE, ORDER_COMMANDS_EXCHANGE):
        assert allowed("read", exchange), exchange  # binding needs read on the exchange
    for name in (OPERATOR_STOP_EVENTS_QUEUE, OPERATOR_ORDER_EVENTS_QUEUE, DEAD_LETTER_QUEUE, STOP_EVENTS_EXCHANGE,
                 ORDER_EVENTS_EXCHANGE):
        assert not allowed("read", name), name


# --- executor routes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 40, 44, 45, 55, 56, 63, 200, 253])
def test_isolation_routes_of_any_secret_name_fit_a_label_and_keep_their_mode(length: int) -> None:
    name = ("k" * length)[:length]
    for mode in ("Testnet", "Live"):
        route = executor_route(mode, name)
        assert len(route) <= ROUTE_MAX and LABEL_VALUE.match(route), route
        assert len(builders.executor_name(route)) <= 63
        assert route_mode(route) == mode
        assert executor_route(mode, name) == route  # stable


def test_isolation_long_secret_names_sharing_a_prefix_get_different_routes() -> None:
    a, b = "binance-" + "x" * 60 + "-alice", "binance-" + "x" * 60 + "-bob"
    assert executor_route("Live", a) != executor_route("Live", b)
    assert executor_route("Live", "binance-keys") == "live-binance-keys"  # short names unchanged
    dotted = executor_route("Live", "a." * 40 + "z")
    assert LABEL_VALUE.match(dotted) and "..-" not in dotted


def test_isolation_legacy_routes_are_the_uncut_names_of_0_1() -> None:
    spec = TrailingStopSpec.model_validate({"symbol": "BTCUSDT", "side": "SELL", "quantity": "1",
                                            "trailingPercent": "1", "mode": "Live",
                                            "credentialsSecretRef": {"name": "k" * 70}})
    assert legacy_route(spec) == "live-" + "k" * 70 != spec.route


# --- builders ------------------------------------------------------------------------------------------


def test_tenancy_amqp_secret_holds_the_tenant_url_not_the_operators() -> None:
    url = amqp_url(CONFIG.amqp_url, "ts.x.a", "ts.x.a", "worker-pw")
    secret = builders.amqp_secret(CONFIG, "a", url, OWNERS)
    stored = base64.b64decode(secret["data"]["url"]).decode()
    assert stored == url and "admin" not in stored and ":pw@" not in stored


def test_tenancy_new_credentials_roll_the_workers() -> None:
    one = builders.orchestrator_deployment(CONFIG, "a", "BTCUSDT", OWNERS, "digest-1")
    two = builders.orchestrator_deployment(CONFIG, "a", "BTCUSDT", OWNERS, "digest-2")
    assert one["spec"]["template"]["metadata"]["annotations"] == {BROKER_CREDENTIALS_ANNOTATION: "digest-1"}
    assert one["spec"]["template"] != two["spec"]["template"]
    executor = builders.executor_deployment(CONFIG, "a", "simulate", None, OWNERS, "digest-1")
    assert executor["spec"]["template"]["metadata"]["annotations"][BROKER_CREDENTIALS_ANNOTATION] == "digest-1"


def test_tenancy_topology_operator_objects_stay_in_the_operators_namespace() -> None:
    reference = builders.cluster_reference("rabbit", "")
    objects = builders.topology_objects("trailingstop-system", reference, "ts.x.a", "ts.x.a", "pw", "admin")
    assert [o["kind"] for o in objects] == ["Secret", "Vhost", "User", "Permission", "Permission"]
    assert {o["metadata"]["namespace"] for o in objects} == {"trailingstop-system"}
    secret, vhost, user, workers, operator = objects
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {"username": "ts.x.a",
                                                                                      "password": "pw"}
    assert vhost["spec"] == {"name": "ts.x.a", "rabbitmqClusterReference": {"name": "rabbit"}}
    assert user["spec"] == {"importCredentialsSecret": {"name": secret["metadata"]["name"]},
                            "rabbitmqClusterReference": {"name": "rabbit"}}  # no tags, like the API path's
    assert (workers["spec"]["user"], workers["spec"]["permissions"]) == ("ts.x.a", worker_permissions())
    assert (operator["spec"]["user"], operator["spec"]["vhost"]) == ("admin", "ts.x.a")
    names = [o["metadata"]["name"] for o in objects]
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == 5 and all(len(n) <= 63 for n in names)
    # the topology operator names the Secret it generates from the User: that must fit too
    assert len(user["metadata"]["name"] + builders.USER_CREDENTIALS_SUFFIX) <= 253
    other = builders.topology_objects("trailingstop-system", reference, "ts.x.b", "ts.x.b", "pw", "admin")
    assert not {o["metadata"]["name"] for o in objects} & {o["metadata"]["name"] for o in other}


def test_tenancy_topology_operator_objects_can_name_a_connection_secret_instead_of_a_cluster() -> None:
    reference = builders.cluster_reference("", "rabbitmq-admin")
    assert reference == {"connectionSecret": {"name": "rabbitmq-admin"}}
    objects = builders.topology_objects("ops", reference, "ts.x.a", "ts.x.a", "pw", "admin")
    assert all(o["spec"]["rabbitmqClusterReference"] == reference for o in objects if o["kind"] != "Secret")
    for cluster, secret in (("", ""), ("rabbit", "rabbitmq-admin")):
        with pytest.raises(ValueError, match="exactly one"):
            builders.cluster_reference(cluster, secret)


def test_tenancy_config_of_the_topology_operator_names_one_cluster_reference() -> None:
    base = {"TRAILINGSTOP_BROKER_ADMIN": "topology-operator"}
    by_secret = OperatorConfig.from_env({**base, "TRAILINGSTOP_RABBITMQ_CONNECTION_SECRET": "rabbitmq-admin"})
    assert (by_secret.rabbitmq_connection_secret, by_secret.rabbitmq_cluster) == ("rabbitmq-admin", "")
    by_cluster = OperatorConfig.from_env({**base, "TRAILINGSTOP_RABBITMQ_CLUSTER": "rabbit"})
    assert (by_cluster.rabbitmq_connection_secret, by_cluster.rabbitmq_cluster) == ("", "rabbit")
    both = {**base, "TRAILINGSTOP_RABBITMQ_CLUSTER": "rabbit", "TRAILINGSTOP_RABBITMQ_CONNECTION_SECRET": "s"}
    for env in (base, both):
        with pytest.raises(ValueError, match="exactly one of TRAILINGSTOP_RABBITMQ_CLUSTER"):
            OperatorConfig.from_env(env)
    assert OperatorConfig.from_env({}).broker_admin == "management-api"  # needs neither


def test_tenancy_config_names_the_release_and_refuses_an_unknown_admin() -> None:
    config = OperatorConfig.from_env({"POD_NAMESPACE": "ops", "AMQP_URL": "amqp://a:b@h/"})
    assert (config.instance, config.operator_namespace, config.namespaces) == ("ops.trailingstop", "ops", ("ops",))
    assert OperatorConfig.from_env({"TRAILINGSTOP_INSTANCE": "ops.rel2"}).instance == "ops.rel2"
    with pytest.raises(ValueError, match="TRAILINGSTOP_BROKER_ADMIN"):
        OperatorConfig.from_env({"TRAILINGSTOP_BROKER_ADMIN": "magic"})


def test_tenancy_operator_refuses_a_bad_broker_setting_in_one_line() -> None:
    """Before it touches Kubernetes or the broker: exit 2, one line naming the settings, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAILINGSTOP_")}
    env.update(TRAILINGSTOP_BROKER_ADMIN="topology-operator", KUBECONFIG="/nonexistent")
    done = subprocess.run([sys.executable, "-m", "trailingstop", "operator"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: TRAILINGSTOP_BROKER_ADMIN=topology-operator needs "
                                  "exactly one of TRAILINGSTOP_RABBITMQ_CLUSTER"), done.stderr


class TopologyOperatorStandIn:
    """A Kube holding objects in memory, with the messaging-topology-operator's behaviour that
    matters here: a User is declared at once (Ready) with the password of a ``<name>-user-credentials``
    Secret it generates from its import Secret, or adopts when one of that name is there already;
    deleting the User leaves that Secret to the garbage collector, which has not come yet."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

    async def read(self, desired: dict[str, Any]) -> dict[str, Any] | None:
        return self.objects.get((desired["kind"], desired["metadata"]["name"]))

    async def apply(self, desired: dict[str, Any]) -> bool:
        kind, name = desired["kind"], desired["metadata"]["name"]
        stored = {**desired, "metadata": {**desired["metadata"], "generation": 1}}
        if kind != "Secret":
            stored["status"] = {"conditions": [{"type": "Ready", "status": "True"}], "observedGeneration": 1}
        if kind == "User":
            generated = f"{name}-user-credentials"
            if ("Secret", generated) not in self.objects:  # else adopted as it is
                imported = self.objects[("Secret", desired["spec"]["importCredentialsSecret"]["name"])]
                self.objects[("Secret", generated)] = {"kind": "Secret", "metadata": {"name": generated},
                                                       "data": dict(imported["data"])}
            stored["status"]["credentials"] = {"name": generated}
        self.objects[(kind, name)] = stored
        return True

    async def delete(self, desired: dict[str, Any]) -> bool:
        return self.objects.pop((desired["kind"], desired["metadata"]["name"]), None) is not None

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        found = self.objects.get(("Secret", name))
        return base64.b64decode(found["data"][key]).decode() if found else None


async def test_tenancy_topology_operator_new_password_reaches_the_users_generated_secret() -> None:
    """A tenant's password changes (its ts-amqp was lost): the User is made again with the new one,
    and its generated Secret, which the garbage collector would remove only later, is deleted
    before that, so the new User does not adopt it with the old password."""
    kube = TopologyOperatorStandIn()
    admin = TopologyOperator(kube, "ops", {"connectionSecret": {"name": "rabbitmq-admin"}}, "admin",  # type: ignore[arg-type]
                             ready_timeout=5, poll_interval=0.01)
    await admin.put_tenant("ts.x.a", "ts.x.a", "old-password")
    user = next(o for (kind, _), o in kube.objects.items() if kind == "User")
    generated = user["status"]["credentials"]["name"]
    assert await kube.secret_value("ops", generated, "password") == "old-password"

    await admin.put_tenant("ts.x.a", "ts.x.a", "new-password")
    assert await kube.secret_value("ops", generated, "password") == "new-password"
    await admin.put_tenant("ts.x.a", "ts.x.a", "new-password")  # the same password: nothing is remade
    assert await kube.secret_value("ops", generated, "password") == "new-password"


# --- the router: a tenant's events touch only its namespace --------------------------------------------


def _stop(store: StopStore, uid: str, namespace: str) -> StopRecord:
    spec = TrailingStopSpec.model_validate({"symbol": "BTCUSDT", "side": "SELL", "quantity": "1",
                                            "trailingPercent": "1"})
    return store.put(StopRecord(uid, namespace, f"stop-{uid}", 1, spec))


async def test_isolation_a_tenants_events_touch_only_its_own_namespace() -> None:
    store = StopStore()
    mine, theirs = _stop(store, "uid-a", "a"), _stop(store, "uid-b", "b")
    router = EventRouter(store, StatusWriter(store, interval=0))
    armed = StopEvent(type="armed", symbol="BTCUSDT", uid="uid-b", at=1)
    await router.on_stop_event(armed, {}, "a")  # forged by namespace a about b's stop
    assert theirs.status.phase == "Pending"
    await router.on_stop_event(armed.model_copy(update={"uid": "uid-a"}), {}, "a")
    assert mine.status.phase == "Armed"
    price = StopEvent(type="price", symbol="BTCUSDT", price=Decimal("65000.5"), trade_id=7, trade_time=1, at=1)
    await router.on_stop_event(price, {}, "a")
    await router.writer.flush(force=True)
    assert (mine.status.last_price, theirs.status.last_price) == (Decimal("65000.5"), None)


def test_the_operators_own_connections_ask_for_heartbeats_and_keep_the_rest_of_the_url() -> None:
    assert with_heartbeat("amqp://u:p%2F@h:5672/ts.a.b", 5) == "amqp://u:p%2F@h:5672/ts.a.b?heartbeat=5"
    assert with_heartbeat("amqps://h/v?heartbeat=60&ssl=1", 5) == "amqps://h/v?ssl=1&heartbeat=5"
    assert with_heartbeat("amqp://h/v?heartbeat=60", 0) == "amqp://h/v?heartbeat=60"

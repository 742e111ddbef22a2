"""The operator's pure parts: child-object builders, compare/patch helpers, the status writer."""

from __future__ import annotations

import base64
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from trailingstop import telemetry
from trailingstop.core.contracts import (
    OrderResult,
    Phase,
    StopCommand,
    StopEvent,
    TrailingStopSpec,
    TrailingStopStatus,
)
from trailingstop.core.lifecycle import apply_order_result, apply_stop_event, triggered_by_order
from trailingstop.operator import builders
from trailingstop.operator.builders import Owner
from trailingstop.operator.config import OperatorConfig
from trailingstop.operator.events import StatusWriter
from trailingstop.operator.kube import contains, status_patch
from trailingstop.operator.reconcile import Reconciler, record_from_body
from trailingstop.operator.stops import StopRecord, StopStore

CONFIG = OperatorConfig(
    namespaces=("trading",),
    amqp_url="amqp://user:s3cret@rabbit:5672/",
    worker_image="registry.example/trailingstop:1.2.3",
    worker_env={"TRAILINGSTOP_FLUSH_INTERVAL": "0.5"},
)
OWNERS = [Owner("b-stop", "uid-b"), Owner("a-stop", "uid-a"), Owner("a-stop", "uid-a")]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_owner_references_are_sorted_unique_and_not_controllers() -> None:
    references = builders.owner_references(OWNERS)
    assert [r["uid"] for r in references] == ["uid-a", "uid-b"]
    assert all(r["kind"] == "TrailingStop" and r["apiVersion"] == "trailingstop.dev/v1" for r in references)
    assert all(r["controller"] is False and r["blockOwnerDeletion"] is False for r in references)


def test_orchestrator_deployment_is_one_replica_recreate_with_the_symbol() -> None:
    deployment = builders.orchestrator_deployment(CONFIG, "trading", "BTCUSDT", OWNERS)
    assert deployment["metadata"]["name"] == "ts-orchestrator-btcusdt"
    assert deployment["metadata"]["namespace"] == "trading"
    assert (deployment["spec"]["replicas"], deployment["spec"]["strategy"]) == (1, {"type": "Recreate"})
    assert container(deployment)["args"] == ["worker", "orchestrator", "--symbol", "BTCUSDT"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["trailingstop.dev/symbol"] == "BTCUSDT"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_worker_placement_and_annotations_reach_the_pod_template() -> None:
    placed = OperatorConfig(
        namespaces=("trading",), amqp_url=CONFIG.amqp_url, worker_image=CONFIG.worker_image,
        worker_scheduling={"tolerations": [{"key": "trading", "operator": "Exists"}], "affinity": {},
                           "nodeSelector": {"pool": "trading"}, "priorityClassName": "",
                           "imagePullSecrets": [{"name": "regcred"}]},
        worker_pod_annotations={"team": "desk"},
    )
    template = builders.executor_deployment(placed, "trading", "live-keys", "keys", OWNERS)["spec"]["template"]
    pod = template["spec"]
    assert pod["tolerations"] == [{"key": "trading", "operator": "Exists"}]
    assert pod["nodeSelector"] == {"pool": "trading"} and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert "affinity" not in pod and "priorityClassName" not in pod  # empty settings leave the pod alone
    assert template["metadata"]["annotations"]["team"] == "desk"
    assert builders.BROKER_CREDENTIALS_ANNOTATION in template["metadata"]["annotations"]
    plain = builders.executor_deployment(CONFIG, "trading", "live-keys", "keys", OWNERS)["spec"]["template"]["spec"]
    assert not {"tolerations", "nodeSelector", "imagePullSecrets"} & set(plain)


def test_executor_network_policy_guards_only_its_executor() -> None:
    executor = builders.executor_deployment(CONFIG, "trading", "live-keys", "keys", OWNERS)
    policy = builders.executor_network_policy(CONFIG, executor)
    assert policy["metadata"]["name"] == executor["metadata"]["name"] == "ts-executor-live-keys"
    assert policy["metadata"]["ownerReferences"] == executor["metadata"]["ownerReferences"]
    spec = policy["spec"]
    assert spec["podSelector"] == executor["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"port": builders.HEALTH_PORT, "protocol": "TCP"}]}]
    dns, allowed = spec["egress"]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert allowed == {"ports": [{"port": p, "protocol": "TCP"} for p in (443, 5671, 5672)]}
    assert all("to" not in rule for rule in spec["egress"])  # by port: no address to get wrong per CNI


def test_worker_disruption_budget_selects_its_deployment_and_is_owned_like_it() -> None:
    deployment = builders.orchestrator_deployment(CONFIG, "trading", "BTCUSDT", OWNERS)
    budget = builders.disruption_budget("trading", deployment)
    assert budget["metadata"]["name"] == deployment["metadata"]["name"] == "ts-orchestrator-btcusdt"
    assert budget["metadata"]["ownerReferences"] == deployment["metadata"]["ownerReferences"]
    assert budget["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}
    assert builders.disruption_budget_ref("trading", "ts-orchestrator-btcusdt")["kind"] == "PodDisruptionBudget"


def test_marketdata_deployment_reads_the_broker_url_from_the_namespace_secret() -> None:
    worker = container(builders.marketdata_deployment(CONFIG, "trading", "BTCUSDT", OWNERS))
    assert worker["image"] == "registry.example/trailingstop:1.2.3"
    assert worker["args"] == ["worker", "marketdata", "--symbol", "BTCUSDT"]
    env = {item["name"]: item for item in worker["env"]}
    assert env["AMQP_URL"] == {"name": "AMQP_URL", "valueFrom": {"secretKeyRef": {"name": "ts-amqp", "key": "url"}}}
    assert env["TRAILINGSTOP_FLUSH_INTERVAL"]["value"] == "0.5"
    assert "s3cret" not in str(worker), "the broker password is never in a pod spec"


def test_pod_template_meets_the_restricted_security_standard() -> None:
    deployment = builders.executor_deployment(CONFIG, "trading", "simulate", None, OWNERS)
    pod = deployment["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert worker["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
        "capabilities": {"drop": ["ALL"]}}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert worker["resources"]["limits"] and worker["resources"]["requests"]
    assert {"name": "tmp", "mountPath": "/tmp"} in worker["volumeMounts"]


def test_executor_takes_keys_only_by_reference_to_the_secret() -> None:
    worker = container(builders.executor_deployment(CONFIG, "trading", "live-my-keys", "my-keys", OWNERS))
    env = {item["name"]: item for item in worker["env"]}
    assert env["BINANCE_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "my-keys", "key": "apiKey"}}
    assert env["BINANCE_API_SECRET"]["valueFrom"] == {"secretKeyRef": {"name": "my-keys", "key": "apiSecret"}}
    assert worker["args"] == ["worker", "executor", "--route", "live-my-keys"]
    simulate = container(builders.executor_deployment(CONFIG, "trading", "simulate", None, OWNERS))
    assert not any(item["name"].startswith("BINANCE_") for item in simulate["env"])


def test_executor_mounts_its_credentials_secret_to_see_a_rotation() -> None:
    deployment = builders.executor_deployment(CONFIG, "trading", "live-my-keys", "my-keys", OWNERS)
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "credentials", "secret": {"secretName": "my-keys", "optional": True}} in pod["volumes"]
    worker = container(deployment)
    assert {"name": "credentials", "mountPath": builders.CREDENTIALS_DIR, "readOnly": True} in worker["volumeMounts"]
    env = {item["name"]: item for item in worker["env"]}
    assert env["TRAILINGSTOP_CREDENTIALS_DIR"]["value"] == builders.CREDENTIALS_DIR
    simulate = builders.executor_deployment(CONFIG, "trading", "simulate", None, OWNERS)["spec"]["template"]["spec"]
    assert [volume["name"] for volume in simulate["volumes"]] == ["tmp"]


def test_amqp_secret_holds_the_url_for_the_namespace() -> None:
    secret = builders.amqp_secret(CONFIG, "trading", CONFIG.amqp_url, OWNERS)
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("ts-amqp", "trading")
    assert base64.b64decode(secret["data"]["url"]).decode() == CONFIG.amqp_url
    assert len(secret["metadata"]["ownerReferences"]) == 2


def test_builders_are_pure_same_input_same_object() -> None:
    first = builders.orchestrator_deployment(CONFIG, "trading", "BTCUSDT", OWNERS)
    second = builders.orchestrator_deployment(CONFIG, "trading", "BTCUSDT", list(reversed(OWNERS)))
    assert first == second


def test_config_from_env_parses_json_settings_and_defaults_to_the_pod_namespace() -> None:
    config = OperatorConfig.from_env({
        "POD_NAMESPACE": "ops", "TRAILINGSTOP_WORKER_ENV": '{"A": "1"}', "AMQP_URL": "amqp://x",
        "TRAILINGSTOP_STATUS_INTERVAL": "2.5",
    })
    assert (config.namespaces, config.clusterwide, config.worker_env, config.status_interval) == (
        ("ops",), False, {"A": "1"}, 2.5)
    assert OperatorConfig.from_env({"WATCH_ALL_NAMESPACES": "true"}).clusterwide is True
    assert OperatorConfig.from_env({"WATCH_NAMESPACES": "a, b"}).namespaces == ("a", "b")
    with pytest.raises(ValueError, match="TRAILINGSTOP_WORKER_ENV must be a JSON object"):
        OperatorConfig.from_env({"TRAILINGSTOP_WORKER_ENV": "[1]"})
    assert "amqp" not in repr(OperatorConfig(amqp_url="amqp://u:p@h/"))


def test_contains_ignores_server_defaults_but_not_changes() -> None:
    desired = {"spec": {"replicas": 1, "template": {"containers": [{"name": "w", "args": ["a"]}]}}}
    existing = {"spec": {"replicas": 1, "revisionHistoryLimit": 10,
                         "template": {"containers": [{"name": "w", "args": ["a"], "terminationMessagePath": "/dev"}]}}}
    assert contains(existing, desired)
    changed = {"spec": {"replicas": 1, "template": {"containers": [{"name": "w", "args": ["b"]}]}}}
    assert not contains(existing, changed)
    assert not contains({"spec": {"replicas": 1, "template": {"containers": []}}}, desired)


def test_status_patch_sets_changes_and_nulls_what_went_away() -> None:
    before = {"phase": "Tracking", "message": "x", "referencePrice": "1"}
    after = {"phase": "Tracking", "referencePrice": "2", "stopPrice": "1.9"}
    assert status_patch(before, after) == {"referencePrice": "2", "stopPrice": "1.9", "message": None}
    assert status_patch(after, after) == {}


# --- the status writer --------------------------------------------------------------------------


class RecordingStore(StopStore):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[tuple[str, str | None, str | None]] = []
        self.statuses: list[TrailingStopStatus] = []

    async def write(self, record: StopRecord, status: TrailingStopStatus) -> None:
        self.statuses.append(status)
        self.written.append((status.phase, status.reference_price and str(status.reference_price),
                             status.last_price and str(status.last_price)))


def record() -> StopRecord:
    spec = TrailingStopSpec.model_validate(
        {"symbol": "BTCUSDT", "side": "SELL", "quantity": "1", "trailingPercent": "1"}
    )
    return StopRecord("uid-1", "trading", "s", 1, spec, TrailingStopStatus(phase="Tracking"))


def event(kind: str, price: str, reference: str | None = None, trade_id: int = 1) -> StopEvent:
    return StopEvent(type=kind, symbol="BTCUSDT", uid="uid-1", price=Decimal(price), trade_id=trade_id,
                     reference_price=Decimal(reference) if reference else None,
                     stop_price=Decimal(reference) * Decimal("0.99") if reference else None, at=0)


def filled_result() -> OrderResult:
    return OrderResult(client_order_id="ts-x", uid="uid-1", symbol="BTCUSDT", side="SELL", status="FILLED",
                       executed_qty=Decimal(1), avg_price=Decimal(99), at=0)


async def test_references_are_coalesced_but_transitions_are_written_at_once() -> None:
    store = RecordingStore()
    writer = StatusWriter(store, interval=3600)
    stop = store.put(record())
    for trade_id, price in enumerate(["100", "101", "102"], start=1):
        await writer.submit(stop, apply_stop_event(stop.status, event("reference", price, price, trade_id), "now"))
    assert store.written == [], "reference moves wait for the interval"
    await writer.flush(force=True)
    assert store.written == [("Tracking", "102", "102")], "one write, the newest"
    await writer.submit(stop, apply_stop_event(stop.status, event("triggered", "100.9", "102", 9), "now"))
    assert store.written[-1][0] == "Triggered"
    assert writer.writes == 2


async def test_an_early_order_result_is_written_as_triggered_then_filled() -> None:
    store = RecordingStore()
    writer = StatusWriter(store, interval=3600)
    transitions: list[tuple[str, str]] = []

    async def on_transition(stop: StopRecord, status: TrailingStopStatus, before: str) -> None:
        transitions.append((before, status.phase))

    writer.on_transition = on_transition
    stop = store.put(record())
    result = filled_result()
    step = triggered_by_order(stop.status, result, "now")
    assert step is not None
    await writer.submit(stop, step)
    await writer.submit(stop, apply_order_result(stop.status, result, "now"))
    assert transitions == [("Tracking", "Triggered"), ("Triggered", "Filled")]
    assert [phase for phase, _, _ in store.written] == ["Triggered", "Filled"]


class CommandLog:
    """The bus as the reconciler sees it: connected, keeping what it would publish."""

    connected = True

    def __init__(self) -> None:
        self.commands: list[StopCommand] = []

    async def publish_command(self, command: StopCommand) -> None:
        self.commands.append(command)


async def test_a_spec_change_after_the_trigger_is_refused_with_a_condition_and_sends_nothing() -> None:
    """The CRD's transition rule refuses this at the API server; this is the operator's own line
    behind it (a CRD from before the rule, or one edited by hand)."""
    store = RecordingStore()
    writer = StatusWriter(store, interval=3600)
    bus = CommandLog()
    tenants = SimpleNamespace(get=lambda namespace: SimpleNamespace(bus=bus))  # every namespace: this bus
    reconciler = Reconciler(CONFIG, None, store, writer, bus, tenants)  # type: ignore[arg-type]  # kube is not reached
    body = {
        "metadata": {"uid": "uid-1", "namespace": "trading", "name": "s", "generation": 3},
        "spec": {"symbol": "BTCUSDT", "side": "SELL", "quantity": "1", "trailingPercent": "2"},
        "status": {"phase": "Filled", "observedGeneration": 1, "triggerPrice": "99"},
    }
    await reconciler.spec_changed(body)
    await writer.flush(force=True)
    assert bus.commands == [], "a fired stop never goes back to the orchestrator"
    status = store.statuses[-1]
    refused = next(c for c in status.conditions if c.type == "SpecAccepted")
    assert (refused.status, refused.reason, refused.observed_generation) == ("False", "SpecChangeRefused", 3)
    assert "create a new TrailingStop" in refused.message
    assert (status.phase, str(status.trigger_price)) == ("Filled", "99")


async def test_a_default_the_api_server_adds_is_no_spec_change_of_a_fired_stop() -> None:
    """After an upgrade whose CRD defaults a new field (priceSource), kopf sees a stop that fired
    under the old version change (its last-handled spec lacks the field): the same stop, not a
    change to refuse. Found by the 0.1 upgrade test on the node ("spec change ... refused")."""
    store = RecordingStore()
    writer = StatusWriter(store, interval=3600)
    bus = CommandLog()
    tenants = SimpleNamespace(get=lambda namespace: SimpleNamespace(bus=bus))
    reconciler = Reconciler(CONFIG, None, store, writer, bus, tenants)  # type: ignore[arg-type]  # kube is not reached
    spec = {"symbol": "BTCUSDT", "side": "SELL", "quantity": "1", "trailingPercent": "2"}
    body = {
        "metadata": {"uid": "uid-1", "namespace": "trading", "name": "s", "generation": 1},
        "spec": spec,
        "status": {"phase": "Filled", "observedGeneration": 1, "triggerPrice": "99"},
    }
    store.put(record_from_body(body), body["status"])  # as load() reads it at start
    await reconciler.spec_changed({**body, "spec": {**spec, "priceSource": "LastTrade"}})
    await writer.flush(force=True)
    assert (bus.commands, store.statuses) == ([], []), "nothing to refuse, nothing to write"


# --- coalescing ---------------------------------------------------------------------------------


async def test_a_burst_of_requests_costs_few_runs_each_seeing_everything() -> None:
    import asyncio

    from trailingstop.operator.coalesce import Coalescer

    seen: list[int] = []
    state = {"owners": 0}

    async def run(key: str) -> None:
        await asyncio.sleep(0.01)
        seen.append(state["owners"])

    coalescer: Coalescer[str] = Coalescer(run)

    async def new_owner() -> None:
        state["owners"] += 1
        await coalescer.request("BTCUSDT")

    await asyncio.gather(*(new_owner() for _ in range(1000)))
    assert len(seen) <= 2, "a burst is coalesced"
    assert seen[-1] == 1000, "the last run sees every owner"


async def test_a_failed_run_reaches_every_requester_and_the_next_run_is_fresh() -> None:
    import asyncio

    from trailingstop.operator.coalesce import Coalescer

    calls = {"n": 0}

    async def run(key: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("API down")

    coalescer: Coalescer[str] = Coalescer(run)
    results = await asyncio.gather(coalescer.request("k"), coalescer.request("k"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    await coalescer.request("k")
    assert calls["n"] == 2


async def test_a_trigger_event_landing_between_the_two_steps_keeps_its_details() -> None:
    """The race that lost trigger details: the result's second step must start from the status
    as it is after the trigger event, not from a copy taken before it."""
    store = RecordingStore()
    writer = StatusWriter(store, interval=3600)
    stop = store.put(record())
    result = filled_result()
    step = triggered_by_order(stop.status, result, "now")
    assert step is not None
    await writer.submit(stop, step)
    await writer.submit(stop, apply_stop_event(stop.status, event("triggered", "100.9", "102", 9), "now"))
    await writer.submit(stop, apply_order_result(stop.status, result, "now"))
    status = stop.status
    assert (status.phase, status.trigger_trade_id, status.trigger_price) == ("Filled", 9, Decimal("100.9"))


# --- the store's indexes -------------------------------------------------------------------------


def _record(uid: str, namespace: str, symbol: str) -> StopRecord:
    spec = TrailingStopSpec.model_validate({"symbol": symbol, "side": "SELL", "quantity": "1", "trailingPercent": "1"})
    return StopRecord(uid, namespace, f"stop-{uid}", 1, spec)


def test_the_store_finds_stops_by_symbol_and_namespace_and_follows_changes() -> None:
    store = StopStore()
    for uid, namespace, symbol in [("1", "a", "BTCUSDT"), ("2", "a", "ETHUSDT"), ("3", "b", "BTCUSDT")]:
        store.put(_record(uid, namespace, symbol))
    assert {r.uid for r in store.for_symbol("BTCUSDT")} == {"1", "3"}
    assert [r.uid for r in store.for_symbol("BTCUSDT", "b")] == ["3"]
    assert {r.uid for r in store.in_namespace("a")} == {"1", "2"}
    store.put(_record("2", "a", "BTCUSDT"))  # a hand-made object changed its symbol
    assert {r.uid for r in store.for_symbol("BTCUSDT", "a")} == {"1", "2"} and store.for_symbol("ETHUSDT") == []
    store.remove("1")
    store.remove("2")
    assert store.in_namespace("a") == [] and [r.uid for r in store.for_symbol("BTCUSDT")] == ["3"]
    assert store.remove("missing") is None


async def test_the_phase_gauge_counts_every_phase_and_zeroes_the_empty_ones() -> None:
    store = RecordingStore()
    writer = StatusWriter(store, interval=3600)
    stop = store.put(record())
    await writer.submit(stop, apply_stop_event(stop.status, event("reference", "100", "100"), "now"))
    writer.count_phases()
    counts = {phase: telemetry.OPERATOR_STOPS.labels(phase=phase)._value.get() for phase in Phase}
    assert counts == {**dict.fromkeys(Phase, 0.0), Phase.TRACKING: 1.0}


def test_every_phase_a_stop_moves_to_after_pending_posts_an_event() -> None:
    # Each phase reached by a move of the lifecycle table (but Armed, the first step) is told to
    # kubectl describe; failures as warnings, the user's own end time as a normal event.
    from trailingstop.core.lifecycle import TRANSITIONS
    from trailingstop.operator.reconcile import TRANSITION_EVENTS

    reached = {target for targets in TRANSITIONS.values() for target in targets} - {Phase.ARMED}
    assert reached <= set(TRANSITION_EVENTS)
    assert TRANSITION_EVENTS[Phase.EXPIRED] == ("Expired", False)
    assert TRANSITION_EVENTS[Phase.PARTIALLY_FILLED] == ("PartiallyFilled", True)
    assert TRANSITION_EVENTS[Phase.UNFILLED] == ("Unfilled", True)

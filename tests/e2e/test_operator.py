"""The operator on the real node: kubectl apply in, status and children out.

The operator runs as a pod installed by ``helm install`` (its ServiceAccount and namespaced Role,
nothing more); the worker pods are the Deployments it creates, run by the kubelet; the API
server, controllers, scheduler, kubelet and RabbitMQ are real; Binance is the fake, on the node
address.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes_asyncio import client, watch

from tests.e2e.conftest import REPO, Cluster, Release, http_get
from tests.e2e.stops import FIRST_ID, SYMBOL, advance, keyed_stop, keys_secret, manifest, wait_phase, with_trigger
from tests.fakebinance import DEFAULT_API_SECRET
from tests.harness import eventually, metric_total
from trailingstop.core.contracts import client_order_id

pytestmark = pytest.mark.timeout(360)

EXAMPLE = REPO / "examples" / "trailingstop.yaml"
DEPLOYMENTS = ("ts-marketdata-xrpeth", "ts-orchestrator-xrpeth", "ts-executor-simulate")
# The example's status once the first 3,600 trades are in (the engine over the same trades).
MANAGER = "trailingstop-operator"  # the workers' app.kubernetes.io/managed-by
EXAMPLE_AT_3600 = {"lastTradeId": FIRST_ID + 3599, "referencePrice": "0.00145699", "stopPrice": "0.0014424201"}


async def record_phases(cluster: Cluster, name: str, into: list[str]) -> None:
    """Every phase the resource goes through, from a watch (no transition can slip between polls)."""
    custom = client.CustomObjectsApi(cluster.kube)
    while True:
        async with watch.Watch().stream(
            custom.list_namespaced_custom_object, "trailingstop.dev", "v1", cluster.namespace, "trailingstops",
            field_selector=f"metadata.name={name}", timeout_seconds=60,
        ) as stream:
            async for event in stream:
                current = event["object"].get("status", {}).get("phase")
                if current and (not into or into[-1] != current):
                    into.append(current)


async def deployments(cluster: Cluster) -> dict[str, Any]:
    """The workers' Deployments (the chart's operator Deployment left out)."""
    found = await cluster.deployments()
    return {name: d for name, d in found.items() if name.startswith("ts-") and "-trailingstop-operator" not in name
            and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "operator"}


async def test_apply_example_runs_the_stop_to_filled_and_kubectl_shows_every_column(cluster: Cluster) -> None:
    operator = await cluster.install("--set", "tracing.enabled=true", "--set", "tracing.mode=on")
    phases: list[str] = []
    result = cluster.apply(EXAMPLE)
    assert result.returncode == 0, result.stderr
    watcher = asyncio.create_task(record_phases(cluster, "xrp-take-profit", phases))
    try:
        resource = await cluster.stop_resource("xrp-take-profit")
        uid = resource["metadata"]["uid"]
        children = await eventually(lambda: _all_present(cluster), what="the three Deployments")
        for name in DEPLOYMENTS:
            owners = children[name]["metadata"]["ownerReferences"]
            assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [("TrailingStop", "xrp-take-profit", uid)]
        _assert_restricted_pod_template(children["ts-orchestrator-xrpeth"])
        await eventually(lambda: _pods_created(cluster), timeout=60, what="pods accepted under the restricted policy")

        await wait_phase(cluster, "xrp-take-profit", "Armed")
        # A stop that never triggers keeps the symbol's workers (a Filled stop's last ones are retired)
        # so the orchestrator's log can be read after the fill; its name sorts after the example's.
        assert cluster.apply(manifest("zz-keeper", trail="10", activation=None)).returncode == 0
        await wait_phase(cluster, "zz-keeper", "Armed")
        await advance(cluster, 5000)
        await wait_phase(cluster, "xrp-take-profit", "Filled")
        final = await eventually(lambda: with_trigger(cluster, "xrp-take-profit"), what="the trigger details")
    finally:
        watcher.cancel()
    assert phases == ["Pending", "Armed", "Tracking", "Triggered", "Filled"]
    status = final["status"]
    assert status["triggerTradeId"] == FIRST_ID + 4848 and status["triggerPrice"] == "0.0014772"
    assert (status["referencePrice"], status["stopPrice"]) == ("0.00149267", "0.0014777433")
    assert status["order"]["status"] == "SIMULATED" and status["order"]["clientOrderId"] == client_order_id(uid)
    assert status["observedGeneration"] == 1
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    # WorkersReady: written if the pods were seen before the stop fired (not after)
    assert conditions.pop("WorkersReady", "True") == "True"
    assert conditions == {"Ready": "True", "Activated": "True", "Triggered": "True", "Filled": "True"}

    table = cluster.kubectl("get", "trailingstops", "-n", cluster.namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SYMBOL", "SIDE", "TRAIL%", "TRAILAMOUNT", "PHASE", "REFERENCE", "STOP",
                                "LAST", "AGE"]
    cells = [cell for cell in table[1].split() if cell != "<none>"]  # TRAILAMOUNT: a percent stop has none
    assert cells[:8] == ["xrp-take-profit", "XRPETH", "SELL", "1", "Filled", "0.00149267",
                                    "0.0014777433", "0.0014772"]
    wide = cluster.kubectl("get", "ts", "-o", "wide", "-n", cluster.namespace).stdout.splitlines()
    assert wide[1].split()[-3:] == ["0.00145", "Simulate", "SIMULATED"]
    reasons = cluster.kubectl("get", "events", "-n", cluster.namespace, "--field-selector",
                              "involvedObject.kind=TrailingStop", "-o", "jsonpath={.items[*].reason}").stdout.split()
    assert {"Activated", "Triggered", "Filled"} <= set(reasons)

    orchestrator = await cluster.worker("ts-orchestrator-xrpeth")
    assert orchestrator["spec"]["nodeName"] == cluster.node.name
    trigger_traces = {r.get("trace_id") for r in cluster.pod_records(orchestrator) if "triggered at" in r["message"]}
    write_traces = {r.get("trace_id") for r in operator.log_records() if r["message"].startswith("order ts-")}
    assert len(trigger_traces) == 1 and trigger_traces == write_traces, "one trace: tick to status write"
    metrics = await operator.metrics()
    assert metric_total(metrics, 'trailingstop_operator_reconciles_total{handler="reconcile"}') >= 1
    assert metric_total(metrics, 'trailingstop_operator_status_writes_total{kind="transition"}') >= 4
    await eventually(lambda: _filled_gauge(operator), what="the stops-by-phase gauge")

    refused = cluster.kubectl("patch", "ts", "xrp-take-profit", "-n", cluster.namespace, "--type=merge",
                              "-p", '{"spec": {"trailingPercent": "2"}}', check=False)
    assert refused.returncode != 0
    assert "spec cannot change once the stop has triggered" in refused.stderr


async def test_invalid_specs_are_refused_at_apply_with_readable_messages(cluster: Cluster) -> None:
    cases = {
        '"trailingPercent": "0"': "trailingPercent must be > 0 and < 100",
        '"trailingPercent": "100"': "trailingPercent must be > 0 and < 100",
        '"quantity": "0"': 'quantity must be a decimal string > 0, like \\"0.001\\"',
        '"quantity": 0.5': "spec.quantity: Invalid value: \"number\"",
        '"mode": "Live"': "credentialsSecretRef is required unless mode is Simulate",
        '"symbol": "btc-usdt"': "symbol must be 2-20 upper-case letters or digits",
        '"side": "HOLD"': 'spec.side: Unsupported value: "HOLD"',
        '"activationPrice": "-1"': "activationPrice must be a decimal string > 0",
    }
    base = json.loads(manifest("bad", activation=None))
    for field, message in cases.items():
        body = json.loads(json.dumps(base))
        body["spec"].update(json.loads("{" + field + "}"))
        result = cluster.apply(json.dumps(body))
        assert result.returncode != 0, field
        assert message.replace('\\"', '"') in result.stderr, (field, result.stderr)
    assert cluster.kubectl("get", "ts", "-n", cluster.namespace).stdout == ""
    explained = cluster.kubectl("explain", "trailingstop.spec.activationPrice").stdout
    assert "Trailing starts only once a trade reaches this price" in explained


async def test_deleting_the_last_stop_of_a_symbol_garbage_collects_its_workers(cluster: Cluster) -> None:
    await cluster.install()
    assert cluster.apply(manifest("first")).returncode == 0
    assert cluster.apply(manifest("second", trail="2")).returncode == 0
    children = await eventually(lambda: _all_present(cluster), what="the Deployments")
    await eventually(lambda: _owners_are(cluster, {"first", "second"}), what="both stops as owners")

    cluster.kubectl("delete", "ts", "first", "-n", cluster.namespace)
    await asyncio.sleep(3)
    remaining = await deployments(cluster)
    assert set(DEPLOYMENTS) <= set(remaining), "a stop of the symbol is left: its workers stay"
    assert {d["metadata"]["uid"] for d in remaining.values()} >= {children[n]["metadata"]["uid"] for n in DEPLOYMENTS}

    cluster.kubectl("delete", "ts", "second", "-n", cluster.namespace)
    await eventually(lambda: _none_left(cluster), timeout=60, what="the garbage collector")
    await eventually(lambda: _no_worker_pods(cluster), timeout=90, what="the worker pods gone with them")


async def test_operator_restart_loses_nothing_and_writes_nothing_twice(cluster: Cluster) -> None:
    """`kubectl delete pod` of the operator mid-stop: its Deployment starts another, which finds
    every status and child up to date and writes nothing."""
    release = await cluster.install()
    assert cluster.apply(EXAMPLE).returncode == 0
    await wait_phase(cluster, "xrp-take-profit", "Armed")
    await advance(cluster, 3600)
    tracking = await wait_phase(cluster, "xrp-take-profit", "Tracking")
    # Every coalesced write of the trades so far has landed: nothing is left to write.
    before = await eventually(lambda: _status_has(cluster, "xrp-take-profit", EXAMPLE_AT_3600, workers=True),
                              what=f"status {EXAMPLE_AT_3600}")
    children_before = {n: d["metadata"]["resourceVersion"] for n, d in (await deployments(cluster)).items()}

    old = release.operator_pod()["metadata"]["name"]
    await asyncio.to_thread(cluster.kubectl, "delete", "pod", old, "-n", release.namespace, "--wait=true")
    restarted = await release.wait_operator_ready()
    assert restarted["metadata"]["name"] != old
    await asyncio.sleep(6)
    after = await cluster.stop_resource("xrp-take-profit")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], changed(before, after)
    children_after = {n: d["metadata"]["resourceVersion"] for n, d in (await deployments(cluster)).items()}
    assert children_after == children_before
    assert tracking["status"]["activatedTradeId"] == after["status"]["activatedTradeId"]

    await advance(cluster, 5000)
    await wait_phase(cluster, "xrp-take-profit", "Filled")
    final = await eventually(lambda: with_trigger(cluster, "xrp-take-profit"), what="the trigger details")
    assert final["status"]["triggerTradeId"] == FIRST_ID + 4848


async def test_editing_a_tracking_stop_keeps_its_reference_and_deleting_one_cancels_it(cluster: Cluster) -> None:
    """A trader tightens a live stop with kubectl patch and deletes another one mid-flight.

    Offline (the engine over the same trades): the example (SELL, 1 %, from 0.00145) activates at
    offset 3307; at offset 3600 its reference is 0.00145699. Tightened to 0.5 % there, it keeps
    that reference and triggers at offset 4054 instead of 4848. "doomed" (SELL, 0.5 %, from
    0.00145) would trigger at offset 3420; it is deleted while Tracking, before that.
    """
    await cluster.install()
    assert cluster.apply(EXAMPLE).returncode == 0
    assert cluster.apply(manifest("doomed", trail="0.5")).returncode == 0
    await wait_phase(cluster, "doomed", "Armed")
    await advance(cluster, 3350)
    await wait_phase(cluster, "doomed", "Tracking")
    cluster.kubectl("delete", "ts", "doomed", "-n", cluster.namespace)
    orchestrator = await cluster.worker("ts-orchestrator-xrpeth")
    await eventually(lambda: _active_stops(orchestrator, 1), what="the orchestrator dropping the deleted stop")

    await advance(cluster, 3600)
    # The last trade and the reference reach the status in separate coalesced events: wait for both.
    before = await eventually(lambda: _status_has(cluster, "xrp-take-profit", EXAMPLE_AT_3600),
                              what=f"status {EXAMPLE_AT_3600}")
    patched = cluster.kubectl("patch", "ts", "xrp-take-profit", "-n", cluster.namespace, "--type=merge",
                              "-p", '{"spec": {"trailingPercent": "0.5"}}')
    assert patched.returncode == 0, patched.stderr
    after = await eventually(lambda: _status_has(cluster, "xrp-take-profit", {"stopPrice": "0.00144970505"}),
                             what="the stop price of the new trail")
    status = after["status"]
    assert status["referencePrice"] == "0.00145699", "the reference survives the edit"
    assert status["phase"] == "Tracking" and status["activatedTradeId"] == before["status"]["activatedTradeId"]
    assert status["observedGeneration"] == 2
    accepted = next(c for c in status["conditions"] if c["type"] == "SpecAccepted")
    assert (accepted["status"], accepted["observedGeneration"]) == ("True", 2)

    await advance(cluster, 5000)
    await wait_phase(cluster, "xrp-take-profit", "Filled")
    final = await eventually(lambda: with_trigger(cluster, "xrp-take-profit"), what="the trigger details")
    assert (final["status"]["triggerTradeId"], final["status"]["triggerPrice"]) == (FIRST_ID + 4054, "0.00145965")
    triggered = [r["message"] for r in cluster.pod_records(orchestrator) if "triggered at" in r["message"]]
    assert len(triggered) == 1 and "/xrp-take-profit " in triggered[0], triggered
    gone = cluster.kubectl("get", "ts", "doomed", "-n", cluster.namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


async def test_testnet_stop_trades_with_keys_from_its_secret(cluster: Cluster) -> None:
    assert cluster.apply(keys_secret()).returncode == 0
    await cluster.install()
    body = keyed_stop("testnet", trail="0.5", activation=None)
    assert cluster.apply(body).returncode == 0
    children = await eventually(lambda: _present(cluster, "ts-executor-testnet-binance-testnet-keys"),
                                      what="the Testnet executor")
    env = children["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "BINANCE_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "binance-testnet-keys", "key": "apiKey"}}} in env
    assert not any(DEFAULT_API_SECRET in json.dumps(item) for item in env), "keys only by reference"

    await wait_phase(cluster, "testnet", "Armed")
    await advance(cluster, 400)
    final = await wait_phase(cluster, "testnet", "Filled")
    cid = client_order_id(final["metadata"]["uid"])
    assert final["status"]["order"]["status"] == "FILLED"
    assert final["status"]["order"]["orderId"] == cluster.fake.orders(cid)[0].order_id
    assert (cluster.fake.order_count(cid), cluster.fake.order_posts(cid)) == (1, 1)
    assert DEFAULT_API_SECRET not in json.dumps(final)


# --- helpers -----------------------------------------------------------------------------------------


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What differs between two versions of a resource (spec, status fields, conditions)."""
    diff: dict[str, Any] = {}
    if before["spec"] != after["spec"]:
        diff["spec"] = (before["spec"], after["spec"])
    old, new = before.get("status", {}), after.get("status", {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            diff[key] = (old.get(key), new.get(key))
    return diff


async def _active_stops(worker: dict[str, Any], count: int) -> bool:
    return metric_total(await http_get(worker, "/metrics"), "trailingstop_orchestrator_active_stops") == count


async def _status_has(cluster: Cluster, name: str, fields: dict[str, Any], workers: bool = False
                      ) -> dict[str, Any] | None:
    """The resource once its status has ``fields`` (and, with ``workers``, WorkersReady True: the
    pods' word arrives on its own schedule, and a status compared later must already have it)."""
    resource = await cluster.stop_resource(name)
    status = resource.get("status", {})
    ready = any(c["type"] == "WorkersReady" and c["status"] == "True" for c in status.get("conditions", []))
    if workers and not ready:
        return None
    return resource if all(status.get(key) == value for key, value in fields.items()) else None


async def _filled_gauge(operator: Release) -> bool:
    return metric_total(await operator.metrics(), 'trailingstop_operator_stops{phase="Filled"}') == 1


async def _all_present(cluster: Cluster) -> dict[str, Any] | None:
    found = await deployments(cluster)
    return found if set(DEPLOYMENTS) <= set(found) else None


async def _present(cluster: Cluster, name: str) -> dict[str, Any] | None:
    return (await deployments(cluster)).get(name)


async def _owners_are(cluster: Cluster, names: set[str]) -> bool:
    found = await deployments(cluster)
    return all({o["name"] for o in found.get(n, {}).get("metadata", {}).get("ownerReferences", [])} == names
               for n in ("ts-marketdata-xrpeth", "ts-orchestrator-xrpeth"))


async def _none_left(cluster: Cluster) -> bool:
    return not set(DEPLOYMENTS) & set(await deployments(cluster))


async def _no_worker_pods(cluster: Cluster) -> bool:
    pods = await client.CoreV1Api(cluster.kube).list_namespaced_pod(cluster.namespace)
    managed = [p for p in pods.items if p.metadata.labels.get("app.kubernetes.io/managed-by") == MANAGER]
    return not managed


async def _pods_created(cluster: Cluster) -> bool:
    pods = await client.CoreV1Api(cluster.kube).list_namespaced_pod(cluster.namespace)
    components = {p.metadata.labels.get("app.kubernetes.io/component") for p in pods.items}
    return {"marketdata", "orchestrator", "executor"} <= components


def _assert_restricted_pod_template(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert (spec["replicas"], spec["strategy"]["type"]) == (1, "Recreate")
    assert container["args"] == ["worker", "orchestrator", "--symbol", SYMBOL]
    assert container["env"][0] == {"name": "AMQP_URL", "valueFrom": {"secretKeyRef": {"name": "ts-amqp", "key": "url"}}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False

"""Issue 14 on the real control plane: trailingAmount, Limit execution with a slippage bound, expiresAt.

The API server (CRD schema and CEL rules), etcd and the controller-manager are real, RabbitMQ is
real, the worker pods run through the current ``cluster`` fixture's pod runner, Binance is the
fake (with a configured book for the partial fill). Self-contained: the helpers are here, so the
file can move with the e2e tests onto a real node.

Expected figures come from the engine over the same bundled XRPETH trades (computed offline with
``trailingstop.backtest``), so a wrong trigger shows as a wrong trade id or price, not a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest

from tests.conftest import Tool
from tests.e2e.conftest import CRD
from tests.e2e.podrunner import PodRunnerCluster as Cluster
from tests.e2e.podrunner import podrunner_cluster  # noqa: F401 (a fixture)
from tests.fakebinance import DEFAULT_API_KEY, DEFAULT_API_SECRET
from tests.harness import eventually
from trailingstop.core.contracts import client_order_id, ms_to_rfc3339
from trailingstop.tradefiles import demo_trades_path, load_trades


@pytest.fixture
def cluster(podrunner_cluster: Cluster) -> Cluster:  # noqa: F811 (the fixture imported above)
    """The workers as processes through the pod runner (like test_tenancy_topology.py): these
    tests drive the fake Binance's tape from the test process."""
    return podrunner_cluster


pytestmark = pytest.mark.timeout(240)

SYMBOL = "XRPETH"
FIRST_ID = load_trades(demo_trades_path())[0].trade_id


@pytest.fixture(autouse=True)
def this_branch_crd(kubectl: Tool) -> None:
    """This tree's CRD, applied again before each test: the control plane is shared, and a branch
    without these fields may have applied its own CRD since the session began."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trailingstops.trailingstop.dev")
    path = "{.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.trailingAmount.type}"
    assert kubectl("get", "crd", "trailingstops.trailingstop.dev", "-o", f"jsonpath={path}").stdout == "string"


def manifest(name: str, **spec: Any) -> str:
    body: dict[str, Any] = {"symbol": SYMBOL, "side": "SELL", "quantity": "100", **spec}
    return json.dumps({"apiVersion": "trailingstop.dev/v1", "kind": "TrailingStop", "metadata": {"name": name},
                       "spec": body})


async def advance(cluster: Cluster, upto: int, step: int = 100, pause: float = 0.02) -> None:
    """Trades happen up to offset ``upto``, once the marketdata "pod" is connected to hear them."""
    await cluster.fake.wait_for_stream_connections(1, timeout=30)
    tape = cluster.fake.tape(SYMBOL)
    while tape.position < upto:
        await cluster.fake.advance(SYMBOL, min(step, upto - tape.position))
        await asyncio.sleep(pause)


async def wait_phase(cluster: Cluster, name: str, wanted: str, timeout: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resource = await cluster.stop_resource(name)
        if resource.get("status", {}).get("phase") == wanted:
            return resource
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} not {wanted} after {timeout}s: {resource.get('status')}")
        await asyncio.sleep(0.1)


def event_reasons(cluster: Cluster, name: str) -> list[str]:
    return cluster.kubectl("get", "events", "-n", cluster.namespace, "--field-selector",
                           f"involvedObject.kind=TrailingStop,involvedObject.name={name}",
                           "-o", "jsonpath={.items[*].reason}").stdout.split()


async def with_trigger(cluster: Cluster, name: str) -> dict[str, Any] | None:
    resource = await cluster.stop_resource(name)
    return resource if "triggerTradeId" in resource.get("status", {}) else None


def table_rows(cluster: Cluster, *extra: str) -> list[dict[str, str]]:
    """``kubectl get`` as dicts, cut at the header's column starts (kubectl pads every column)."""
    lines = cluster.kubectl("get", "trailingstops", "-n", cluster.namespace, *extra).stdout.splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    ends = [*starts[1:], None]
    return [{n: line[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)} for line in lines[1:]]


async def test_an_amount_stop_runs_to_filled_and_kubectl_shows_its_amount(cluster: Cluster) -> None:
    # Offline: SELL 0.0000148 from 0.00145 activates at offset 3307; the high 0.00149267 puts the
    # stop at 0.00147787, which offset 4847 (0.00147777) passes.
    operator = cluster.start_operator()
    await operator.wait_healthy()
    body = manifest("amount", trailingAmount="0.0000148", activationPrice="0.00145")
    assert cluster.apply(body).returncode == 0
    await wait_phase(cluster, "amount", "Armed")
    await advance(cluster, 5000)
    await wait_phase(cluster, "amount", "Filled")
    final = await eventually(lambda: with_trigger(cluster, "amount"), what="the trigger details")
    status = final["status"]
    assert (status["triggerTradeId"], status["triggerPrice"]) == (FIRST_ID + 4847, "0.00147777")
    assert (status["referencePrice"], status["stopPrice"]) == ("0.00149267", "0.00147787")
    assert status["order"]["clientOrderId"] == client_order_id(final["metadata"]["uid"])
    (row,) = table_rows(cluster)
    assert row["TRAILAMOUNT"] == "0.0000148" and row["TRAIL%"] in ("", "<none>")
    assert (row["PHASE"], row["STOP"]) == ("Filled", "0.00147787")
    assert {"Activated", "Triggered", "Filled"} <= set(event_reasons(cluster, "amount"))


async def test_the_crd_refuses_bad_combinations_with_readable_messages(cluster: Cluster) -> None:
    big = "1" + "0" * 19  # 20 integer digits: a double cannot tell these apart, the rule can
    cases = {
        json.dumps({"trailingPercent": "1", "trailingAmount": "5"}):
            "exactly one of trailingPercent and trailingAmount must be set",
        json.dumps({}): "exactly one of trailingPercent and trailingAmount must be set",
        json.dumps({"trailingAmount": "0.00145", "activationPrice": "0.00145"}):
            "a SELL's activationPrice must be above its trailingAmount",
        json.dumps({"trailingAmount": big + ".00000000000000000001", "activationPrice": big}):
            "a SELL's activationPrice must be above its trailingAmount",
        json.dumps({"trailingAmount": "0"}): "trailingAmount must be a decimal string > 0",
        json.dumps({"trailingPercent": "1", "execution": {"type": "Limit"}}):
            "maxSlippagePercent is required with type Limit, and only with Limit",
        json.dumps({"trailingPercent": "1", "execution": {"type": "Market", "maxSlippagePercent": "1"}}):
            "maxSlippagePercent is required with type Limit, and only with Limit",
        json.dumps({"trailingPercent": "1", "execution": {"type": "Limit", "maxSlippagePercent": "100"}}):
            "maxSlippagePercent must be >= 0 and < 100",
        json.dumps({"trailingPercent": "1", "expiresAt": "2026-12-31"}): "expiresAt must be an RFC 3339 time",
        json.dumps({"trailingPercent": "1", "expiresAt": "2026-02-30T00:00:00Z"}): "expiresAt",
    }
    for spec, message in cases.items():
        result = cluster.apply(manifest("bad", **json.loads(spec)))
        assert result.returncode != 0, spec
        assert message in result.stderr, (spec, result.stderr)
    assert cluster.kubectl("get", "ts", "-n", cluster.namespace).stdout == ""
    # The exact rule in the other direction: one unit in the 20th decimal above the amount is enough,
    # and a BUY has no such rule (its stop is above the reference).
    fine = [manifest("sell-just-above", trailingAmount=big, activationPrice=big + ".00000000000000000001"),
            manifest("buy-any", side="BUY", trailingAmount="5", activationPrice="1"),
            manifest("limit-zero", trailingPercent="1", execution={"type": "Limit", "maxSlippagePercent": "0"},
                     expiresAt="2030-01-01T00:00:00.123456789+05:30")]
    for body in fine:
        result = cluster.apply(body)
        assert result.returncode == 0, (body, result.stderr)


async def test_a_quiet_stop_expires_by_its_deadline_with_no_order_and_an_event(cluster: Cluster) -> None:
    operator = cluster.start_operator()
    await operator.wait_healthy()
    assert cluster.apply(manifest("expiring", trailingPercent="1", expiresAt="2099-01-01T00:00:00Z")).returncode == 0
    await wait_phase(cluster, "expiring", "Armed")
    # Moved sooner while it has not fired: allowed (the frozen-spec rule only holds after a trigger).
    deadline = ms_to_rfc3339(int(time.time() * 1000) + 3000)
    moved = cluster.kubectl("patch", "ts", "expiring", "-n", cluster.namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"expiresAt": deadline}}), check=False)
    assert moved.returncode == 0, moved.stderr
    final = await wait_phase(cluster, "expiring", "Expired", timeout=60)
    status = final["status"]
    assert status["message"] == (f"expired at {deadline} (no trade reached the stop by then); "
                                 "no order was placed")
    assert "order" not in status
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Expired")
    assert cluster.fake.order_count(client_order_id(final["metadata"]["uid"])) == 0
    assert "Expired" in await eventually(lambda: _reasons_with(cluster, "expiring", "Expired"), what="the Event")
    refused = cluster.kubectl("patch", "ts", "expiring", "-n", cluster.namespace, "--type=merge",
                              "-p", '{"spec": {"expiresAt": "2099-01-01T00:00:00Z"}}', check=False)
    assert refused.returncode != 0
    assert "spec cannot change once the stop has triggered or expired" in refused.stderr
    (row,) = table_rows(cluster, "-o", "wide")
    assert (row["PHASE"], row["EXPIRES"]) == ("Expired", deadline)


async def test_a_limit_stop_on_a_thin_book_ends_partially_filled_with_one_order(cluster: Cluster) -> None:
    # Offline: SELL 0.5 % with no activation price triggers at offset 311, price 0.00141249; the
    # bound is 0.00141249 x 0.995 = 0.0014054275, up to the tick: 0.00140543. The book holds 40 XRP
    # at the trigger price and the rest below the bound: 40 fill, 60 expire, and nothing more.
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "binance-testnet-keys"},
        "data": {"apiKey": base64.b64encode(DEFAULT_API_KEY.encode()).decode(),
                 "apiSecret": base64.b64encode(DEFAULT_API_SECRET.encode()).decode()},
    }
    assert cluster.apply(json.dumps(secret)).returncode == 0
    cluster.fake.set_book(SYMBOL, bids=[["0.00141249", "40"], ["0.00140542", "100000"]])
    operator = cluster.start_operator()
    await operator.wait_healthy()
    body = manifest("limit", trailingPercent="0.5", mode="Testnet",
                    credentialsSecretRef={"name": "binance-testnet-keys"},
                    execution={"type": "Limit", "maxSlippagePercent": "0.5"})
    assert cluster.apply(body).returncode == 0
    await wait_phase(cluster, "limit", "Armed")
    await advance(cluster, 400)
    final = await wait_phase(cluster, "limit", "PartiallyFilled")
    cid = client_order_id(final["metadata"]["uid"])
    order = final["status"]["order"]
    assert (order["status"], order["type"], order["price"]) == ("EXPIRED", "LIMIT", "0.00140543")
    assert (order["origQty"], order["executedQty"], order["remainingQty"], order["avgPrice"]) == (
        "100", "40", "60", "0.00141249")
    placed = cluster.fake.orders(cid)
    assert [(o.type, o.time_in_force, str(o.price)) for o in placed] == [("LIMIT", "IOC", "0.00140543")]
    assert (cluster.fake.order_count(cid), cluster.fake.order_posts(cid)) == (1, 1)
    assert final["status"]["message"] == ("LIMIT order expired (limit 0.00140543) after filling SELL 40 XRPETH "
                                          "at 0.00141249; 60 remaining; no further order")
    assert "PartiallyFilled" in await eventually(lambda: _reasons_with(cluster, "limit", "PartiallyFilled"),
                                                 what="the Event")
    (row,) = table_rows(cluster, "-o", "wide")
    assert (row["PHASE"], row["EXECUTION"], row["ORDER"]) == ("PartiallyFilled", "Limit", "EXPIRED")
    # More trades change nothing: the stop is final, no second order for the 60 left.
    await advance(cluster, 600)
    await asyncio.sleep(1)
    assert (cluster.fake.order_count(cid), cluster.fake.order_posts(cid)) == (1, 1)
    assert (await cluster.stop_resource("limit"))["status"]["phase"] == "PartiallyFilled"


async def _reasons_with(cluster: Cluster, name: str, reason: str) -> list[str] | None:
    reasons = event_reasons(cluster, name)
    return reasons if reason in reasons else None

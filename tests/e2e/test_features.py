"""Issue 14 on the real node: trailingAmount, Limit execution with a slippage bound, expiresAt.

The operator is a pod installed by ``helm install`` (tests/e2e/conftest.py), the workers are the
pods it creates, run by the kubelet; the API server (CRD schema and CEL rules), the controllers and
RabbitMQ are real; Binance is the fake on the node address, its tape driven from the test, its
book and balances set for the limit orders and the refusal.

Expected figures come from the engine over the same bundled XRPETH trades (computed offline with
``trailingstop.backtest``), so a wrong trigger shows as a wrong trade id or price, not a timeout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.node import frozen
from tests.e2e.stops import (
    FIRST_ID,
    SYMBOL,
    advance,
    keyed_stop,
    keys_secret,
    manifest,
    table_rows,
    wait_event,
    wait_phase,
    with_trigger,
)
from tests.harness import eventually
from trailingstop.core.contracts import client_order_id, ms_to_rfc3339
from trailingstop.workers.orchestrator import EXPIRY_GRACE_MS

pytestmark = pytest.mark.timeout(420)

# Until the symbol's pods are up (each starts in 5-20 s on a loaded 2-core node, and a Recreate
# or a busy kubelet can add to that).
PODS_UP = 300
ORCHESTRATOR = "ts-orchestrator-xrpeth"


async def test_an_amount_stop_runs_to_filled_and_kubectl_shows_its_amount(cluster: Cluster) -> None:
    # Offline: SELL 0.0000148 from 0.00145 activates at offset 3307; the high 0.00149267 puts the
    # stop at 0.00147787, which offset 4847 (0.00147777) passes.
    await cluster.install()
    body = manifest("amount", trail=None, trailingAmount="0.0000148", activation="0.00145")
    assert cluster.apply(body).returncode == 0
    await wait_phase(cluster, "amount", "Armed", timeout=PODS_UP)
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
    reasons = await wait_event(cluster, "amount", "Filled")
    assert {"Activated", "Triggered", "Filled"} <= set(reasons)


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
        result = cluster.apply(manifest("bad", trail=None, activation=None, **json.loads(spec)))
        assert result.returncode != 0, spec
        assert message in result.stderr, (spec, result.stderr)
    assert cluster.kubectl("get", "ts", "-n", cluster.namespace).stdout == ""
    # The exact rule in the other direction: one unit in the 20th decimal above the amount is enough,
    # and a BUY has no such rule (its stop is above the reference).
    fine = [manifest("sell-just-above", trail=None, trailingAmount=big, activation=big + ".00000000000000000001"),
            manifest("buy-any", side="BUY", trail=None, trailingAmount="5", activation="1"),
            manifest("limit-zero", activation=None, execution={"type": "Limit", "maxSlippagePercent": "0"},
                     expiresAt="2030-01-01T00:00:00.123456789+05:30")]
    for body in fine:
        result = cluster.apply(body)
        assert result.returncode == 0, (body, result.stderr)


async def test_a_quiet_stop_expires_by_its_deadline_with_no_order_and_an_event(cluster: Cluster) -> None:
    await cluster.install()
    body = manifest("expiring", activation=None, expiresAt="2099-01-01T00:00:00Z")
    assert cluster.apply(body).returncode == 0
    await wait_phase(cluster, "expiring", "Armed", timeout=PODS_UP)
    # Moved sooner while it has not fired: allowed (the frozen-spec rule only holds after a trigger).
    deadline = ms_to_rfc3339(int(time.time() * 1000) + 3000)
    moved = cluster.kubectl("patch", "ts", "expiring", "-n", cluster.namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"expiresAt": deadline}}), check=False)
    assert moved.returncode == 0, moved.stderr
    final = await wait_phase(cluster, "expiring", "Expired")
    status = final["status"]
    assert status["message"] == (f"expired at {deadline} (no trade reached the stop by then); "
                                 "no order was placed")
    assert "order" not in status
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Expired")
    assert cluster.fake.order_count(client_order_id(final["metadata"]["uid"])) == 0
    await wait_event(cluster, "expiring", "Expired")
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
    assert cluster.apply(keys_secret()).returncode == 0
    cluster.fake.set_book(SYMBOL, bids=[["0.00141249", "40"], ["0.00140542", "100000"]])
    await cluster.install()
    body = keyed_stop("limit", trail="0.5", activation=None, execution={"type": "Limit", "maxSlippagePercent": "0.5"})
    assert cluster.apply(body).returncode == 0
    # A stop of the same symbol and keys that never triggers (10 % wide): the symbol's workers and
    # the executor stay after "limit" is final (its last workers would be retired), so the trades
    # after it reach a running orchestrator and executor that must still place nothing more.
    assert cluster.apply(keyed_stop("zz-keeper", trail="10", activation=None)).returncode == 0
    await wait_phase(cluster, "limit", "Armed", timeout=PODS_UP)
    await wait_phase(cluster, "zz-keeper", "Armed", timeout=PODS_UP)
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
    await wait_event(cluster, "limit", "PartiallyFilled")
    rows = {row["NAME"]: row for row in table_rows(cluster, "-o", "wide")}
    assert (rows["limit"]["PHASE"], rows["limit"]["EXECUTION"], rows["limit"]["ORDER"]) == (
        "PartiallyFilled", "Limit", "EXPIRED")
    # More trades change nothing: the stop is final, no second order for the 60 left. The keeper's
    # status at the last of them says the orchestrator has heard them all.
    await advance(cluster, 600)
    await eventually(lambda: _last_trade_is(cluster, "zz-keeper", FIRST_ID + 599), what="the trades up to 600 heard")
    assert (cluster.fake.order_count(cid), cluster.fake.order_posts(cid)) == (1, 1)
    assert (await cluster.stop_resource("limit"))["status"]["phase"] == "PartiallyFilled"
    assert (await cluster.stop_resource("zz-keeper"))["status"]["phase"] == "Tracking"


async def test_a_limit_stop_with_no_price_in_its_bound_ends_unfilled_and_a_refused_order_shows_binances_error(
    cluster: Cluster,
) -> None:
    # Offline: BUY 0.5 % with no activation price triggers at offset 110, price 0.00141866; the
    # bound is 0.00141866 x 1.005 = 0.0014257533, down to the tick (a BUY pays no more): 0.00142575.
    # The book's only ask is one tick above it, so the IOC fills nothing. SELL 0.5 % triggers at
    # offset 311, a market SELL of 100 XRP from an account holding 10: Binance refuses it.
    assert cluster.apply(keys_secret()).returncode == 0
    cluster.fake.account().set_balances({"XRP": "10", "ETH": "100"})
    cluster.fake.set_book(SYMBOL, bids=[["0.00140000", "100000"]], asks=[["0.00142576", "100000"]])
    await cluster.install()
    limit = {"type": "Limit", "maxSlippagePercent": "0.5"}
    stops = {"unfilled": keyed_stop("unfilled", side="BUY", trail="0.5", activation=None, execution=limit),
             "refused": keyed_stop("refused", trail="0.5", activation=None),
             "zz-keeper": keyed_stop("zz-keeper", trail="10", activation=None)}  # never triggers: see above
    for body in stops.values():
        assert cluster.apply(body).returncode == 0
    for name in stops:
        await wait_phase(cluster, name, "Armed", timeout=PODS_UP)
    await advance(cluster, 400)

    unfilled = await wait_phase(cluster, "unfilled", "Unfilled")
    cid = client_order_id(unfilled["metadata"]["uid"])
    order = unfilled["status"]["order"]
    assert (order["status"], order["type"], order["price"]) == ("EXPIRED", "LIMIT", "0.00142575")
    assert (order["origQty"], order["executedQty"], order["remainingQty"]) == ("100", "0", "100")
    assert unfilled["status"]["message"] == ("LIMIT order expired (limit 0.00142575) with nothing filled; "
                                             "no further order")
    ready = {c["type"]: c for c in unfilled["status"]["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Unfilled")
    placed = cluster.fake.orders(cid)
    assert [(o.side, o.type, o.time_in_force, str(o.price)) for o in placed] == [("BUY", "LIMIT", "IOC", "0.00142575")]
    await wait_event(cluster, "unfilled", "Unfilled")

    refused = await wait_phase(cluster, "refused", "Rejected")
    refused_cid = client_order_id(refused["metadata"]["uid"])
    error = refused["status"]["order"]["error"]
    assert (error["code"], error["message"]) == (-2010, "Account has insufficient balance for requested action.")
    assert refused["status"]["message"] == "Binance -2010: Account has insufficient balance for requested action."
    assert cluster.fake.order_count(refused_cid) == 0
    await wait_event(cluster, "refused", "Rejected")

    rows = {row["NAME"]: row for row in table_rows(cluster, "-o", "wide")}
    assert (rows["unfilled"]["PHASE"], rows["unfilled"]["EXECUTION"], rows["unfilled"]["ORDER"]) == (
        "Unfilled", "Limit", "EXPIRED")
    assert rows["refused"]["PHASE"] == "Rejected"
    # Neither tries again: more trades reach the running workers (the keeper's), and no order follows.
    await advance(cluster, 600)
    await eventually(lambda: _last_trade_is(cluster, "zz-keeper", FIRST_ID + 599), what="the trades up to 600 heard")
    assert (cluster.fake.order_count(cid), cluster.fake.order_posts(cid)) == (1, 1)
    assert cluster.fake.order_count(refused_cid) == 0
    phases = [(await cluster.stop_resource(name))["status"]["phase"] for name in stops]
    assert phases == ["Unfilled", "Rejected", "Tracking"]


async def test_an_expiry_reached_while_the_orchestrator_is_frozen_and_the_operator_restarts_still_ends_expired(
    cluster: Cluster,
) -> None:
    """The deadline lives in the spec, not in a timer: it passes while the symbol's orchestrator is
    frozen (SIGSTOP) and then deleted, and the operator's pod is deleted too; the new orchestrator
    expires the stop from its spec, the new operator writes the status and the Event."""
    release = await cluster.install()
    assert cluster.apply(manifest("expiring", activation=None, expiresAt="2099-01-01T00:00:00Z")).returncode == 0
    await wait_phase(cluster, "expiring", "Armed", timeout=PODS_UP)
    old = await cluster.worker(ORCHESTRATOR, timeout=PODS_UP)
    deadline_ms = int(time.time() * 1000) + 3000
    deadline = ms_to_rfc3339(deadline_ms)
    with frozen(old) as pids:
        moved = cluster.kubectl("patch", "ts", "expiring", "-n", cluster.namespace, "--type=merge",
                                "-p", json.dumps({"spec": {"expiresAt": deadline}}), check=False)
        assert moved.returncode == 0, moved.stderr
        # The deadline and the orchestrator's grace pass with nobody to act on them.
        await eventually(lambda: time.time() * 1000 > deadline_ms + EXPIRY_GRACE_MS + 1000, timeout=30,
                         interval=0.2, what="the deadline passed")
        operator = release.operator_pod()["metadata"]["name"]
        cluster.kubectl("delete", "pod", operator, "-n", release.namespace, "--wait=false")
        cluster.kubectl("delete", "pod", old["metadata"]["name"], "-n", cluster.namespace, "--grace-period=0",
                        "--force")
        # Killed while still stopped (SIGKILL needs no SIGCONT), so it never acts on the deadline.
        await eventually(lambda: not any(map(_alive, pids)), timeout=PODS_UP, interval=0.5,
                         what="the frozen orchestrator's processes gone")

    final = await wait_phase(cluster, "expiring", "Expired", timeout=PODS_UP)
    status = final["status"]
    assert status["message"] == (f"expired at {deadline} (no trade reached the stop by then); "
                                 "no order was placed")
    assert "order" not in status
    assert cluster.fake.order_count(client_order_id(final["metadata"]["uid"])) == 0
    await wait_event(cluster, "expiring", "Expired")
    assert release.operator_pod()["metadata"]["name"] != operator
    (row,) = table_rows(cluster, "-o", "wide")
    assert (row["PHASE"], row["EXPIRES"]) == ("Expired", deadline)


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (its state is the field after ``(comm)``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _last_trade_is(cluster: Cluster, name: str, trade_id: int) -> bool:
    return (await cluster.stop_resource(name)).get("status", {}).get("lastTradeId") == trade_id


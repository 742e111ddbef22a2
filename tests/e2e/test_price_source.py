"""priceSource BestBidAsk on the real node (issue 14, item 2): the CRD's rules, the operator giving
marketdata ``--book`` only while a stop needs the book, a SELL filled at the best bid with the
book's updateId in its status, SOURCE in ``kubectl get -o wide``, and a lost book stream as
status.lastGap and a PriceGap Warning Event.

The operator is a pod installed by ``helm install`` (tests/e2e/conftest.py); marketdata is a pod
the operator's Deployment runs, replaced (strategy Recreate) when its arguments change; its
sockets go to the fake Binance on the node address, whose quotes the test sends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.stops import SYMBOL, manifest, wait_event
from tests.harness import eventually

pytestmark = pytest.mark.timeout(420)

MARKETDATA = "ts-marketdata-xrpeth"
# Until a marketdata pod is up (5-20 s on a loaded 2-core node; a Recreate first waits for the old
# pod to stop).
PODS_UP = 300


def book_stop(name: str, trail: str = "1", **spec: Any) -> str:
    """A SELL of ``trail`` percent from the first price it hears."""
    return manifest(name, trail=trail, activation=None, **spec)


async def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict((await cluster.stop_resource(name)).get("status") or {})


async def wait_status(cluster: Cluster, name: str, check: Any, what: str, timeout: float = 120) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status = await status_of(cluster, name)
        return status if check(status) else None

    return await eventually(probe, timeout=timeout, what=what)


async def marketdata_args(cluster: Cluster) -> list[str] | None:
    found = (await cluster.deployments()).get(MARKETDATA)
    return list(found["spec"]["template"]["spec"]["containers"][0]["args"]) if found else None


async def args_are(cluster: Cluster, wanted: list[str]) -> bool:
    return await marketdata_args(cluster) == wanted


async def both_sockets(cluster: Cluster, timeout: float = PODS_UP) -> None:
    """The marketdata pod with --book has its trade socket and its book socket open (and no other
    pod has one); on failure, say what the Deployment, its pods and the fake looked like."""
    try:
        await cluster.fake.wait_for_stream_connections(2, timeout=timeout)
    except TimeoutError:
        args = await marketdata_args(cluster)
        pods = [(p["metadata"]["name"], p["status"].get("phase")) for p in await cluster.pods_of(MARKETDATA)]
        raise AssertionError(f"not 2 stream connections after {timeout}s: {cluster.fake.stream_connections} open, "
                             f"marketdata args {args}, its pods {pods}") from None


async def test_the_crd_refuses_a_bad_or_changed_price_source(cluster: Cluster) -> None:
    refused = cluster.apply(book_stop("bad", priceSource="BestBid"))
    assert refused.returncode != 0 and 'spec.priceSource: Unsupported value: "BestBid"' in refused.stderr, (
        refused.stderr)
    assert cluster.apply(book_stop("defaulted")).returncode == 0
    resource = await cluster.stop_resource("defaulted")
    assert resource["spec"]["priceSource"] == "LastTrade", "the default is written by the API server"
    changed = cluster.kubectl("patch", "ts", "defaulted", "-n", cluster.namespace, "--type=merge",
                              "-p", '{"spec": {"priceSource": "BestBidAsk"}}', check=False)
    assert changed.returncode != 0
    assert "priceSource is immutable: delete the TrailingStop and create a new one" in changed.stderr
    explained = " ".join(cluster.kubectl("explain", "trailingstop.spec.priceSource").stdout.split())  # unwrapped
    assert "a SELL tracks and triggers on the best bid" in explained


async def test_a_book_stop_streams_the_book_fills_at_the_bid_and_reports_a_gap(cluster: Cluster) -> None:
    await cluster.install()
    fake = cluster.fake
    assert cluster.apply(book_stop("on-trades", trail="50")).returncode == 0
    base = ["worker", "marketdata", "--symbol", SYMBOL]
    await eventually(lambda: args_are(cluster, base), timeout=120, what="marketdata without the book")

    assert cluster.apply(book_stop("on-bid", priceSource="BestBidAsk")).returncode == 0
    await eventually(lambda: args_are(cluster, [*base, "--book"]), timeout=120,
                     what="marketdata told to stream the book")
    await both_sockets(cluster)
    await wait_status(cluster, "on-bid", lambda s: s.get("phase") == "Armed" and s.get("priceSource") == "BestBid",
                      what="armed, following the best bid", timeout=PODS_UP)

    sent = fake.set_quotes(SYMBOL, [{"bid": "0.00145", "ask": "0.00146"}, {"bid": "0.00150", "ask": "0.00151"}])
    await wait_status(cluster, "on-bid", lambda s: s.get("lastUpdateId") == sent[-1]["u"], what="the last quote")

    # A lost book stream: a quote happens while no socket listens; the first fresh one is a gap.
    fake.drop_streams(refuse_seconds=1)
    await fake.wait_for_stream_connections(0, timeout=30)
    fake.set_quotes(SYMBOL, [{"bid": "0.0010", "ask": "0.0011"}])  # would trigger; nobody hears it
    await both_sockets(cluster)
    # Fresh quotes (all the same top) until one is heard: a reopened socket may still be replaced by
    # the feed's silence check, losing a quote sent meanwhile.
    fresh: list[dict[str, Any]] = []
    gapped: dict[str, Any] = {}
    deadline = asyncio.get_running_loop().time() + 120
    while not gapped.get("gapCount") and asyncio.get_running_loop().time() < deadline:
        fresh += fake.set_quotes(SYMBOL, [{"bid": "0.00149", "ask": "0.0015"}])
        await asyncio.sleep(1)
        gapped = await status_of(cluster, "on-bid")
    assert gapped.get("gapCount") == 1, gapped
    gap = gapped["lastGap"]
    assert gap["fromUpdateId"] == sent[-1]["u"] and gap["toUpdateId"] in {q["u"] for q in fresh}
    assert gapped["phase"] == "Tracking" and gapped["lastPrice"] == "0.00149", "the fresh quote, not the lost one"
    await wait_event(cluster, "on-bid", "PriceGap")

    # 0.0015 * 0.99 = 0.001485 exactly, inclusive.
    last = fake.set_quotes(SYMBOL, [{"bid": "0.001486", "ask": "0.0015"}, {"bid": "0.001485", "ask": "0.0015"}])
    filled = await wait_status(cluster, "on-bid", lambda s: s.get("phase") == "Filled" and s.get("triggerUpdateId"),
                               what="Filled at the bid")
    assert (filled["triggerPrice"], filled["triggerUpdateId"]) == ("0.001485", last[-1]["u"])
    assert (filled["referencePrice"], filled["stopPrice"]) == ("0.0015", "0.001485")
    assert "triggerTradeId" not in filled and filled["order"]["status"] == "SIMULATED"

    wide = cluster.kubectl("get", "ts", "on-bid", "-o", "wide", "-n", cluster.namespace).stdout.splitlines()
    header = wide[0].split()
    assert header[header.index("AGE") + 1:][:3] == ["EXECUTION", "EXPIRES", "SOURCE"]
    assert "BestBidAsk" in wide[1].split() and "0.001485" in wide[1].split()

    # The book stop has fired: only the LastTrade stop is left, so the book goes.
    await eventually(lambda: args_are(cluster, base), timeout=120, what="marketdata no longer streaming the book")
    on_trades = await status_of(cluster, "on-trades")
    assert on_trades.get("priceSource") == "LastTrade" and "lastGap" not in on_trades

"""What the e2e tests on the node share about stops: their manifests, the fake Binance's tape,
waiting for a phase, the Events of a stop and ``kubectl get``'s table.

Every stop is on XRPETH, the bundled demo trades the fake's tape plays; expected figures in the
tests come from the engine over the same trades (``trailingstop.backtest``), so a wrong trigger
shows as a wrong trade id or price, not a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from tests.e2e.conftest import Cluster
from tests.fakebinance import DEFAULT_API_KEY, DEFAULT_API_SECRET
from tests.harness import eventually
from trailingstop.tradefiles import demo_trades_path, load_trades

SYMBOL = "XRPETH"
FIRST_ID = load_trades(demo_trades_path())[0].trade_id
KEYS = "binance-testnet-keys"  # the Secret of keys_secret(), the fake's account


def manifest(name: str, side: str = "SELL", trail: str | None = "1", activation: str | None = "0.00145",
             **spec: Any) -> str:
    """A TrailingStop of 100 XRP: ``trail`` percent (None: no trailingPercent, for a
    trailingAmount in ``spec`` or a spec without either), from ``activation`` (None: from the
    first trade); ``spec`` adds or overrides fields."""
    body: dict[str, Any] = {"symbol": SYMBOL, "side": side, "quantity": "100"}
    if trail is not None:
        body["trailingPercent"] = trail
    if activation:
        body["activationPrice"] = activation
    body.update(spec)
    return json.dumps({"apiVersion": "trailingstop.dev/v1", "kind": "TrailingStop", "metadata": {"name": name},
                       "spec": body})


def keys_secret(name: str = KEYS) -> str:
    """A Secret with the fake's API key and secret, as a Testnet or Live stop refers to it."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "data": {"apiKey": base64.b64encode(DEFAULT_API_KEY.encode()).decode(),
                 "apiSecret": base64.b64encode(DEFAULT_API_SECRET.encode()).decode()},
    })


def keyed_stop(name: str, secret: str = KEYS, **options: Any) -> str:
    """A Testnet stop (its executor places real orders at the fake) with the keys of ``secret``."""
    return manifest(name, mode="Testnet", credentialsSecretRef={"name": secret}, **options)


async def advance(cluster: Cluster, upto: int, step: int = 100, pause: float = 0.02) -> None:
    """Trades happen up to offset ``upto``, once the marketdata pod is connected to hear them."""
    await cluster.fake.wait_for_stream_connections(1, timeout=180)
    tape = cluster.fake.tape(SYMBOL)
    while tape.position < upto:
        await cluster.fake.advance(SYMBOL, min(step, upto - tape.position))
        await asyncio.sleep(pause)


async def wait_phase(cluster: Cluster, name: str, wanted: str, timeout: float = 120) -> dict[str, Any]:
    """The resource once its status is in phase ``wanted``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resource = await cluster.stop_resource(name)
        if resource.get("status", {}).get("phase") == wanted:
            return resource
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} not {wanted} after {timeout}s: {resource.get('status')}")
        await asyncio.sleep(0.1)


async def with_trigger(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The resource once its trigger details are in (they may follow the order's result)."""
    resource = await cluster.stop_resource(name)
    return resource if "triggerTradeId" in resource.get("status", {}) else None


def event_reasons(cluster: Cluster, name: str) -> list[str]:
    """The reasons of the Events about the TrailingStop ``name`` in the test's namespace."""
    return cluster.kubectl("get", "events", "-n", cluster.namespace, "--field-selector",
                           f"involvedObject.kind=TrailingStop,involvedObject.name={name}",
                           "-o", "jsonpath={.items[*].reason}").stdout.split()


async def wait_event(cluster: Cluster, name: str, reason: str, timeout: float = 60) -> list[str]:
    """The stop's Event reasons, once one of them is ``reason`` (kubectl in a thread: the fake
    Binance serves the pods from this event loop)."""
    async def seen() -> list[str] | None:
        reasons = await asyncio.to_thread(event_reasons, cluster, name)
        return reasons if reason in reasons else None

    return list(await eventually(seen, timeout=timeout, interval=0.5, what=f"a {reason} Event about {name}"))


def table_rows(cluster: Cluster, *extra: str) -> list[dict[str, str]]:
    """``kubectl get trailingstops`` as dicts, cut at the header's column starts (kubectl pads
    every column, and an empty cell is blank or ``<none>``)."""
    lines = cluster.kubectl("get", "trailingstops", "-n", cluster.namespace, *extra).stdout.splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    ends = [*starts[1:], None]
    return [{n: line[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)} for line in lines[1:]]

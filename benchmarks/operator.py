"""Operator benchmark on the test control plane: 1,000 TrailingStops over 20 symbols at once.

    eval "$(scripts/testenv env)"
    python benchmarks/operator.py [--stops 1000] [--symbols 20] [--interval 5]

Measures (1) seconds from `kubectl apply` of all stops until every one is Armed or Tracking, and
(2) status writes per second while ticks flow, at two tick rates in the same run: the writes are
bounded by (stops / interval) whatever the tick rate, because reference and last-price updates are
coalesced per resource. The workers (20 marketdata, 20 orchestrators, 1 executor) run as local
processes through the e2e pod runner (there is no kubelet); Binance is the fake, every symbol
replaying the bundled XRPETH trades.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes_asyncio import client, config

from tests.e2e.podrunner import PodRunner
from tests.fakebinance import FakeBinance, xrpeth
from tests.harness import Vhost, WorkerProcess, metric_total, scrape, worker_env
from trailingstop.tradefiles import demo_trades_path, load_trades

REPO = Path(__file__).resolve().parents[1]


def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.environ.get("TESTENV_KUBECTL", "kubectl"), *args], input=stdin, text=True,
                          capture_output=True, check=True)


def manifests(count: int, symbols: list[str]) -> str:
    documents = []
    for index in range(count):
        documents.append(json.dumps({
            "apiVersion": "trailingstop.dev/v1", "kind": "TrailingStop",
            "metadata": {"name": f"stop-{index:04d}"},
            "spec": {"symbol": symbols[index % len(symbols)], "side": "SELL" if index % 2 == 0 else "BUY",
                     "quantity": "100", "trailingPercent": str(20 + index % 30)},
        }))
    return "\n---\n".join(documents)


def writes(port: int) -> float:
    return metric_total(scrape(port), "trailingstop_operator_status_writes_total")


async def phases(api: client.ApiClient, namespace: str) -> dict[str, int]:
    listed = await client.CustomObjectsApi(api).list_namespaced_custom_object(
        "trailingstop.dev", "v1", namespace, "trailingstops")
    counts: dict[str, int] = {}
    for item in listed["items"]:
        phase = item.get("status", {}).get("phase", "-")
        counts[phase] = counts.get(phase, 0) + 1
    return counts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stops", type=int, default=1000)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=30.0, help="seconds of ticks per rate")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}")

    symbols = [f"X{index:02d}ETH" for index in range(args.symbols)]
    specs = [dataclasses.replace(xrpeth(), symbol=symbol) for symbol in symbols]
    trades = load_trades(demo_trades_path())
    log_dir = Path(tempfile.mkdtemp(prefix="ts-bench-operator-"))
    namespace = f"ts-bench-{uuid.uuid4().hex[:6]}"
    crd = REPO / "crds" / "trailingstops.trailingstop.dev.yaml"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kubectl("create", "namespace", namespace)
    vhost = Vhost(os.environ["AMQP_URL"], os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672"))
    await vhost.create()
    api = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    fake = await FakeBinance(symbols=specs, trades={s: trades for s in symbols}).start()
    runner = None
    operator = None
    try:
        worker_settings = {
            "TRAILINGSTOP_BINANCE_API_URL": fake.api_url, "TRAILINGSTOP_BINANCE_STREAM_URL": fake.stream_url,
            "TRAILINGSTOP_SYNC_TIMEOUT": "3", "TRAILINGSTOP_FLUSH_INTERVAL": "1", "TRAILINGSTOP_LOG_LEVEL": "WARNING",
        }
        env = worker_env(vhost.url, KUBECONFIG=os.environ["KUBECONFIG"], WATCH_NAMESPACES=namespace,
                         TRAILINGSTOP_STATUS_INTERVAL=str(args.interval), TRAILINGSTOP_LOG_LEVEL="WARNING",
                         TRAILINGSTOP_WORKER_ENV=json.dumps(worker_settings))
        operator = WorkerProcess(["operator"], env, log_dir, "operator").start()
        await operator.wait_healthy(60)
        host_env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        runner = await PodRunner(api, namespace, log_dir, host_env).start()

        started = time.monotonic()
        kubectl("apply", "-n", namespace, "-f", "-", stdin=manifests(args.stops, symbols))
        applied = time.monotonic() - started
        while True:
            counts = await phases(api, namespace)
            ready = counts.get("Armed", 0) + counts.get("Tracking", 0)
            if ready >= args.stops:
                break
            await asyncio.sleep(0.5)
        armed = time.monotonic() - started
        print(f"\n1. {args.stops:,} TrailingStops over {args.symbols} symbols: kubectl apply took {applied:.1f}s; "
              f"all Armed or Tracking after {armed:.1f}s (target <= 60s)")

        await fake.wait_for_stream_connections(args.symbols, timeout=120)
        bound = args.stops / args.interval
        print(f"\n2. status writes while ticks flow (bound: {args.stops} stops / {args.interval:g}s = {bound:.0f}/s)")
        for rate in (5, 50):
            fake.set_speed(rate)
            await asyncio.sleep(args.interval * 2)  # settle into the coalescing rhythm
            before, t0 = writes(operator.port), time.monotonic()
            await asyncio.sleep(args.window)
            per_second = (writes(operator.port) - before) / (time.monotonic() - t0)
            print(f"   {rate:>3} trades/s per symbol ({rate * args.symbols:>5} ticks/s in all): "
                  f"{per_second:6.1f} status writes/s ({per_second / bound:.0%} of the bound)")
        fake.set_speed(0)
        print(json.dumps({"armed_seconds": armed, "apply_seconds": applied}))
    finally:
        if runner is not None:
            await runner.stop()
        if operator is not None:
            await operator.stop()
        names = kubectl("get", "trailingstops", "-n", namespace, "-o", "name").stdout.split()
        for name in names:  # the operator is stopped: let the namespace go
            kubectl("patch", name, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        kubectl("delete", "namespace", namespace, "--wait=false")
        await fake.stop()
        await api.close()
        await vhost.delete()


if __name__ == "__main__":
    asyncio.run(main())

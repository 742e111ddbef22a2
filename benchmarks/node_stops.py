"""Stops on the real node: `kubectl apply` to Tracking while the symbol's pods start, and 1,000 stops.

    scripts/testenv up && scripts/testenv images && eval "$(scripts/testenv env)"
    python benchmarks/node_stops.py [--part a|b|both] [--symbols 20] [--stops 1000] [--speed 2] [--json]

Each part installs the chart as a user does: ``helm install`` of ``charts/trailingstop-operator``
into a fresh namespace labelled for the restricted Pod Security Standard, the project's image from
``scripts/testenv images``, the host's RabbitMQ as an existing broker (``existingSecret``: a fresh
vhost), one operator replica, the chart's defaults otherwise (``statusInterval`` 5 s: phase
changes are written at once, only reference and price updates wait for it). Binance is the
project's fake, run in this process on the node address; its exchangeInfo has SYMBOLS symbols
X00ETH, X01ETH, ... (XRPETH's filters), each replaying the bundled XRPETH trades at SPEED trades/s.
The workers reach it through ``workers.env`` (TRAILINGSTOP_BINANCE_API_URL / _STREAM_URL), the
setting a user gives for a private endpoint.

(a) One stop per symbol, one symbol after the other: ``kubectl apply`` of a stop whose symbol has no
    pods yet, then wait for status.phase Tracking before the next. The stops have no
    activationPrice, so they track at the first trade: Tracking = the operator creates the
    symbol's Deployments, the kubelet starts the pods, the orchestrator takes the stop (Armed), the
    first trade arrives. Printed per stop, each from the apply: Pending seen, both pods Ready, the
    fake's first trade sent on the symbol's stream, Armed, Tracking; then p50/p95/max.
(b) STOPS stops over SYMBOLS symbols in one ``kubectl apply`` (a new namespace, so every pod must
    start), until all are Armed or Tracking; the same phases for the whole set, per-stop
    latencies, then the memory of every pod from the kubelet's summary API.

Times are taken when this process sees the change (a watch on the stops and the pods; the fake's
streams looked at every 0.05 s). Everything it made (namespaces, the vhost, the operator's broker
tenants) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes_asyncio import client, config, watch

from benchmarks.node import pod_memory
from tests.e2e.node import RESTRICTED_LABELS
from tests.fakebinance import FakeBinance, xrpeth
from tests.fakebinance.streams import agg_trade_stream
from tests.harness import Vhost
from trailingstop.tradefiles import demo_trades_path, load_trades

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "trailingstop-operator"
CRD = REPO / "crds" / "trailingstops.trailingstop.dev.yaml"
GROUP, VERSION, PLURAL = "trailingstop.dev", "v1", "trailingstops"
COMPONENTS = ("marketdata", "orchestrator")  # the pods each symbol needs (the executor is shared)
PHASES = ("Pending", "Armed", "Tracking")
FAILED = ("Invalid", "Triggered", "Filled", "Rejected", "Failed", "Expired")  # none may happen here


def tool(name: str, variable: str, *args: str, stdin: str | None = None, timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([os.environ.get(variable, name), *args], input=stdin, text=True, capture_output=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args[:4])} ... failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def kubectl(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    return tool("kubectl", "TESTENV_KUBECTL", *args, **options)


def helm(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    return tool("helm", "TESTENV_HELM", *args, **options)


def spread(values: Iterable[float]) -> dict[str, float]:
    """p50, p95 and max (seconds, 0.1 s), over at least two values."""
    data = sorted(values)
    cuts = statistics.quantiles(data, n=20, method="inclusive") if len(data) > 1 else data * 19
    return {"p50": round(statistics.median(data), 1), "p95": round(cuts[18], 1), "max": round(data[-1], 1)}


def stop_manifest(name: str, symbol: str, index: int) -> dict[str, Any]:
    """A stop that tracks at its symbol's first trade and never triggers on the XRPETH tape (it
    moves about 6 %; the trail is 20-49 %)."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrailingStop", "metadata": {"name": name},
            "spec": {"symbol": symbol, "side": "SELL" if index % 2 == 0 else "BUY", "quantity": "100",
                     "trailingPercent": str(20 + index % 30)}}


# --- what is seen, and when ---------------------------------------------------------------------------


@dataclasses.dataclass
class Seen:
    """Monotonic times at which this process first saw each thing happen in one namespace."""

    symbols: list[str]
    stops: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # name -> phase -> t
    symbol_of: dict[str, str] = dataclasses.field(default_factory=dict)  # stop name -> symbol
    pods: dict[tuple[str, str, str], float] = dataclasses.field(default_factory=dict)  # (symbol, component, state)
    subscribed: dict[str, float] = dataclasses.field(default_factory=dict)  # symbol -> its stream opened
    first_trade: dict[str, float] = dataclasses.field(default_factory=dict)  # symbol -> a trade sent on it
    wrong: list[str] = dataclasses.field(default_factory=list)
    unschedulable: set[str] = dataclasses.field(default_factory=set)  # pods the scheduler has no room for
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def note(self) -> None:
        self.changed.set()

    def on_stop(self, item: dict[str, Any], now: float) -> None:
        name = item["metadata"]["name"]
        self.symbol_of[name] = item["spec"]["symbol"]
        phases = self.stops.setdefault(name, {})
        phases.setdefault("seen", now)
        phase = (item.get("status") or {}).get("phase")
        if phase and phase not in phases:
            phases[phase] = now
            if phase in FAILED:
                self.wrong.append(f"{name}: {phase} {(item.get('status') or {}).get('message') or ''}")
            self.note()

    def on_pod(self, pod: Any, now: float) -> None:
        """A worker pod's container running ("started") and the pod Ready (its probe runs every 10 s,
        so Ready can come after the stop is already Tracking)."""
        statuses = (pod.status and pod.status.container_statuses) or []
        conditions = (pod.status and pod.status.conditions) or []
        states = {"started": bool(statuses) and all(s.state and s.state.running for s in statuses),
                  "ready": any(c.type == "Ready" and c.status == "True" for c in conditions)}
        key = self.pod_key(pod.metadata.name)
        if any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions):
            self.unschedulable.add(pod.metadata.name)
        elif pod.spec.node_name:
            self.unschedulable.discard(pod.metadata.name)
        for state, reached in states.items():
            if key is not None and reached and (*key, state) not in self.pods:
                self.pods[(*key, state)] = now
                self.note()

    def pod_key(self, name: str) -> tuple[str, str] | None:
        """(symbol, component) of a worker pod's name; ("", "executor") for the shared executor."""
        if name.startswith("ts-executor-"):
            return ("", "executor")
        for symbol in self.symbols:
            for component in COMPONENTS:
                if name.startswith(f"ts-{component}-{symbol.lower()}-"):
                    return (symbol, component)
        return None

    def symbol_pods(self, symbol: str, state: str) -> float | None:
        """When both of a symbol's pods were first in ``state`` (started or ready)."""
        times = [self.pods.get((symbol, component, state)) for component in COMPONENTS]
        return None if None in times else max(t for t in times if t is not None)

    def at(self, name: str, phase: str) -> float | None:
        return self.stops.get(name, {}).get(phase)

    def reached(self, name: str, phases: tuple[str, ...]) -> float | None:
        times = [t for p in phases if (t := self.at(name, p)) is not None]
        return min(times) if times else None

    async def until(self, done: Callable[[], bool], timeout: float, what: str, progress: Callable[[], str]) -> None:
        """Wait for ``done()``, printing ``progress()`` every 15 s; a stop in a phase it must not
        reach, or the timeout, ends the run."""
        deadline = time.monotonic() + timeout
        report = time.monotonic() + 15
        while not done():
            if self.wrong:
                raise RuntimeError(f"while waiting for {what}: {self.wrong[:5]}")
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{what}: not after {timeout:.0f} s ({progress()})")
            if now > report:
                waiting = f"; unschedulable: {sorted(self.unschedulable)}" if self.unschedulable else ""
                print(f"      ... {what}: {progress()}{waiting}", flush=True)
                report = now + 15
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=0.5)


async def watch_forever(list_call: Callable[..., Any], *args: Any, on_event: Callable[[Any], None]) -> None:
    """Every event of a watch, reopened when the server ends it (a reopened watch lists the
    current objects first, so nothing is missed, only seen a little later)."""
    while True:
        stream = watch.Watch()
        try:
            async for event in stream.stream(list_call, *args, timeout_seconds=240):
                on_event(event["object"])
        except client.ApiException as error:
            print(f"      (watch reopened after {error.status})", file=sys.stderr)
        finally:
            stream.stop()


async def watch_stops(api: client.ApiClient, namespace: str, seen: Seen) -> None:
    custom = client.CustomObjectsApi(api)
    await watch_forever(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                        on_event=lambda item: seen.on_stop(item, time.monotonic()))


async def watch_pods(api: client.ApiClient, namespace: str, seen: Seen) -> None:
    core = client.CoreV1Api(api)
    await watch_forever(core.list_namespaced_pod, namespace, on_event=lambda pod: seen.on_pod(pod, time.monotonic()))


async def watch_streams(fake: FakeBinance, seen: Seen) -> None:
    """When each symbol's trade stream is first open at the fake, and first carries a trade."""
    streams = {agg_trade_stream(symbol): symbol for symbol in seen.symbols}
    while True:
        now = time.monotonic()
        for connection in list(fake.hub.connections):
            for stream in connection.streams & streams.keys():
                symbol = streams[stream]
                if symbol not in seen.subscribed:
                    seen.subscribed[symbol] = now
                    seen.note()
                if connection.sent and symbol not in seen.first_trade:
                    seen.first_trade[symbol] = now
                    seen.note()
        await asyncio.sleep(0.05)


class OperatorPeak:
    """The operator pod's highest working set, from the kubelet's summary API every 5 s (its limit is
    what the OOM killer holds it to), and its container restarts."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.peak = 0.0

    async def sample(self) -> None:
        while True:
            rows = await asyncio.to_thread(pod_memory, self.namespace, os.environ["TESTENV_NODE_NAME"])
            operators = [r["working set (MiB)"] for r in rows if not r["pod"].startswith("ts-")
                         or "-operator-" in r["pod"]]
            self.peak = max([self.peak, *operators])
            await asyncio.sleep(5)


class LoadAverage:
    """The 1-minute load average, sampled every 5 s while a part runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def sample(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            await asyncio.sleep(5)

    def summary(self) -> str:
        if not self.samples:
            return "-"
        return f"{min(self.samples):.1f}-{max(self.samples):.1f} (mean {statistics.fmean(self.samples):.1f})"


# --- one install -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Install:
    """A namespace with the chart installed, the fake Binance and the watches feeding ``seen``."""

    api: client.ApiClient
    fake: FakeBinance
    seen: Seen
    namespace: str = dataclasses.field(default_factory=lambda: f"ts-bench-{uuid.uuid4().hex[:6]}")
    release: str = "ts-bench"
    worker_cpu: str = "10m"
    values: list[str] = dataclasses.field(default_factory=list)  # more helm arguments (--set ...)
    vhost: Vhost | None = None
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    async def start(self) -> float:
        """Namespace, vhost, Secret, ``helm install --wait``; returns the install's seconds."""
        await asyncio.to_thread(kubectl, "create", "namespace", self.namespace)
        await asyncio.to_thread(kubectl, "label", "namespace", self.namespace, *RESTRICTED_LABELS)
        self.vhost = Vhost(os.environ["TESTENV_POD_AMQP_URL"],
                           os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672"))
        await self.vhost.create()
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{self.release}-amqp"},
                  "stringData": {"url": self.vhost.url}}
        await asyncio.to_thread(kubectl, "apply", "-n", self.namespace, "-f", "-", stdin=json.dumps(secret))
        self.tasks = [asyncio.create_task(watch_stops(self.api, self.namespace, self.seen)),
                      asyncio.create_task(watch_pods(self.api, self.namespace, self.seen)),
                      asyncio.create_task(watch_streams(self.fake, self.seen))]
        repository, _, tag = os.environ["TESTENV_IMAGE"].rpartition(":")
        workers = {"TRAILINGSTOP_BINANCE_API_URL": self.fake.api_url,
                   "TRAILINGSTOP_BINANCE_STREAM_URL": self.fake.stream_url}
        started = time.monotonic()
        await asyncio.to_thread(
            helm, "install", self.release, str(CHART), "-n", self.namespace, "--set", "crds.install=false",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
            "--set", f"rabbitmq.existingSecret={self.release}-amqp",
            "--set-json", f"watch.namespaces={json.dumps([self.namespace])}",
            "--set-json", f"workers.env={json.dumps(workers)}", "--set", "operator.replicas=1",
            "--set", f"workers.resources.requests.cpu={self.worker_cpu}", *self.values,
            "--wait", "--timeout", "600s", timeout=900)
        return time.monotonic() - started

    async def apply(self, manifests: list[dict[str, Any]]) -> float:
        """``kubectl apply`` of the stops; returns when it started (the stops' clock)."""
        started = time.monotonic()
        await asyncio.to_thread(kubectl, "apply", "-n", self.namespace, "-f", "-",
                                stdin="\n---\n".join(json.dumps(m) for m in manifests), timeout=1200)
        return started

    async def restarts(self) -> int:
        listed = await client.CoreV1Api(self.api).list_namespaced_pod(self.namespace)
        return sum(s.restart_count for p in listed.items for s in (p.status.container_statuses or []))

    async def memory(self) -> list[dict[str, Any]]:
        """Every pod's memory, once the kubelet reports it for all of them (its stats lag a new pod)."""
        listed = await client.CoreV1Api(self.api).list_namespaced_pod(self.namespace)
        expected = {p.metadata.name for p in listed.items}
        rows: list[dict[str, Any]] = []
        for _ in range(40):
            rows = await asyncio.to_thread(pod_memory, self.namespace, os.environ["TESTENV_NODE_NAME"])
            if {r["pod"] for r in rows if r["working set (MiB)"] > 0} >= expected:
                break
            await asyncio.sleep(3)
        return rows

    async def remove(self) -> None:
        """The stops (their finalizers removed by the operator), the release, the namespace, the
        broker's vhost and the operator's tenants."""
        for task in self.tasks:
            task.cancel()
        # --wait=false: kubectl would wait for each of 1,000 stops in turn; the list says when all went
        await asyncio.to_thread(kubectl, "delete", PLURAL, "--all", "-n", self.namespace, "--wait=false", check=False)
        custom = client.CustomObjectsApi(self.api)
        deadline = time.monotonic() + 300
        while (left := (await custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL))["items"]):
            if time.monotonic() > deadline:  # the operator did not remove the finalizers: remove them here
                print(f"   {len(left)} stops not released by the operator; removing their finalizers", file=sys.stderr)
                unblock = {"metadata": {"finalizers": None}}
                for item in left:
                    await custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                                item["metadata"]["name"], unblock)
                break
            await asyncio.sleep(1)
        await asyncio.to_thread(helm, "uninstall", self.release, "-n", self.namespace, "--wait", "--timeout", "300s",
                                check=False, timeout=400)
        await asyncio.to_thread(kubectl, "delete", "namespace", self.namespace, "--timeout=300s", check=False,
                                timeout=400)
        if self.vhost is not None:
            await self.vhost.delete_tenants([self.namespace])
            await self.vhost.delete()


# --- the parts -------------------------------------------------------------------------------------------


def since(start: float, at: float | None) -> float | None:
    return None if at is None else round(at - start, 1)


COLUMNS = ("Pending", "pods started", "stream open", "first trade", "Armed", "Tracking", "pods Ready")


async def part_a(install: Install, timeout: float) -> dict[str, Any]:
    seen, rows = install.seen, []
    print(f"\n(a) kubectl apply -> Tracking, one new symbol at a time ({len(seen.symbols)} symbols); "
          "seconds from the apply")
    print(f"   {'symbol':8} " + " ".join(f"{c:>12}" for c in COLUMNS))
    for index, symbol in enumerate(seen.symbols):
        name = f"first-{symbol.lower()}"
        start = await install.apply([stop_manifest(name, symbol, index)])

        def progress(name: str = name, symbol: str = symbol) -> str:
            return (f"phases {sorted(seen.stops.get(name, {}))}, pods "
                    f"{sorted(f'{c} {state}' for (s, c, state) in seen.pods if s == symbol)}")

        await seen.until(lambda name=name: seen.at(name, "Tracking") is not None, timeout, f"{name} Tracking",
                         progress)
        # Ready follows the readiness probe's 10 s period: wait for it too, for the table
        await seen.until(lambda symbol=symbol: seen.symbol_pods(symbol, "ready") is not None, timeout,
                         f"{symbol}'s pods Ready", progress)
        row: dict[str, Any] = {"symbol": symbol, "Pending": seen.at(name, "Pending"),
               "pods started": seen.symbol_pods(symbol, "started"), "stream open": seen.subscribed.get(symbol),
               "first trade": seen.first_trade.get(symbol), "Armed": seen.at(name, "Armed"),
               "Tracking": seen.at(name, "Tracking"), "pods Ready": seen.symbol_pods(symbol, "ready")}
        row.update({column: since(start, row[column]) for column in COLUMNS})
        rows.append(row)
        print(f"   {symbol:8} " + " ".join(f"{_fmt(row[c]):>12}" for c in COLUMNS), flush=True)
    summary = {column: spread(values) for column in COLUMNS
               if len(values := [r[column] for r in rows if r[column] is not None]) > 1}
    for column, figures in summary.items():
        print(f"   {column:14} {figures}")
    return {"rows": rows, "summary": summary, "restarts": await install.restarts()}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def part_b(install: Install, count: int, timeout: float) -> dict[str, Any]:
    seen = install.seen
    names = [f"stop-{index:04d}" for index in range(count)]
    print(f"\n(b) {count:,} stops over {len(seen.symbols)} symbols in one kubectl apply, every pod to start",
          flush=True)
    start = await install.apply([stop_manifest(n, seen.symbols[i % len(seen.symbols)], i) for i, n in enumerate(names)])
    applied = time.monotonic() - start
    print(f"   kubectl apply returned after {applied:.1f} s", flush=True)

    def settled() -> int:
        return sum(seen.reached(n, ("Armed", "Tracking")) is not None for n in names)

    def progress() -> str:
        started = sum(seen.symbol_pods(s, "started") is not None for s in seen.symbols)
        ready = sum(seen.symbol_pods(s, "ready") is not None for s in seen.symbols)
        return (f"{settled()}/{count} Armed or Tracking; of {len(seen.symbols)} symbols, pods started {started}, "
                f"Ready {ready}")

    await seen.until(lambda: settled() == count, timeout, f"{count} stops Armed or Tracking", progress)
    all_settled = time.monotonic() - start
    with contextlib.suppress(TimeoutError):  # the last first trades, and the readiness probes
        await seen.until(lambda: all(seen.at(n, "Tracking") for n in names), 60, "all Tracking", progress)
        await seen.until(lambda: all(seen.symbol_pods(s, "ready") for s in seen.symbols), 120, "all Ready", progress)

    def last(times: Iterable[float | None]) -> float | None:
        known = [t for t in times if t is not None]
        return since(start, max(known)) if known else None

    def first(times: Iterable[float | None]) -> float | None:
        known = [t for t in times if t is not None]
        return since(start, min(known)) if known else None

    per_stop = {phase: [t - seen.stops[n]["seen"] for n in names if (t := seen.at(n, phase)) is not None]
                for phase in ("Armed", "Tracking")}
    figures = {
        "kubectl apply (s)": round(applied, 1),
        "all stops seen (s)": last(seen.at(n, "seen") for n in names),
        "executor Ready (s)": since(start, seen.pods.get(("", "executor", "ready"))),
        "first symbol's pods started (s)": first(seen.symbol_pods(s, "started") for s in seen.symbols),
        "all pods started (s)": last(seen.symbol_pods(s, "started") for s in seen.symbols),
        "all streams open (s)": last(seen.subscribed.get(s) for s in seen.symbols),
        "all streams' first trade (s)": last(seen.first_trade.get(s) for s in seen.symbols),
        "all Armed or Tracking (s)": round(all_settled, 1),
        "all Tracking (s)": last(seen.at(n, "Tracking") for n in names),
        "all pods Ready (s)": last(seen.symbol_pods(s, "ready") for s in seen.symbols),
        "per stop, seen -> Armed": spread(per_stop["Armed"]) if len(per_stop["Armed"]) > 1 else None,
        "per stop, seen -> Tracking": spread(per_stop["Tracking"]) if len(per_stop["Tracking"]) > 1 else None,
        "container restarts": await install.restarts(),
    }
    for key, value in figures.items():
        print(f"   {key:34} {value}")
    return figures


def print_memory(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind of pod: the working set (what the kubelet and the OOM killer count) and the CPU in
    use (the kubelet's last sample, millicores)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        kind = next((c for c in ("marketdata", "orchestrator", "executor") if row["pod"].startswith(f"ts-{c}-")),
                    "operator")
        groups.setdefault(kind, []).append(row)
    print("\n   after: working set (MiB) and CPU (millicores), kubelet summary API")
    summary = {}
    for kind, members in sorted(groups.items()):
        summary[kind] = {"pods": len(members)}
        line = f"   {kind:13} {len(members):3} pod(s):"
        for column, unit in (("working set (MiB)", "MiB"), ("cpu (millicores)", "m")):
            values = [m[column] for m in members]
            figures = {"min": min(values), "median": round(statistics.median(values), 1), "max": max(values)}
            summary[kind][column] = figures
            line += f"  {unit} min {figures['min']:6.1f} median {figures['median']:6.1f} max {figures['max']:6.1f}"
        print(line)
    total = {column: round(sum(r[column] for r in rows), 1) for column in ("working set (MiB)", "cpu (millicores)")}
    print(f"   all {len(rows)} pods: {total['working set (MiB)']} MiB, {total['cpu (millicores)']} millicores")
    return {"groups": summary, "total": total, "pods": rows}


# --- main --------------------------------------------------------------------------------------------------


async def run_part(name: str, api: client.ApiClient, fake: FakeBinance, symbols: list[str],
                   args: argparse.Namespace) -> dict[str, Any]:
    install = Install(api, fake, Seen(symbols), worker_cpu=args.worker_cpu,
                      values=[f"--set={value}" for value in args.set])
    load = LoadAverage()
    sampler = asyncio.create_task(load.sample())
    try:
        seconds = await install.start()
        print(f"\n[{name}] helm install --wait into {install.namespace} (restricted): {seconds:.1f} s", flush=True)
        if name == "a":
            result = await part_a(install, args.timeout)
        else:
            peak = OperatorPeak(install.namespace)
            sampling = asyncio.create_task(peak.sample())
            try:
                result = await part_b(install, args.stops, args.timeout * 3)
            finally:
                sampling.cancel()
            result["memory"] = print_memory(await install.memory())
            result["operator working set peak (MiB, 5 s samples)"] = peak.peak
            print(f"   operator working set, highest 5 s sample during (b): {peak.peak} MiB")
        result["load average"] = load.summary()
        print(f"   load average (1 min) during ({name}): {result['load average']}", flush=True)
        return result
    finally:
        sampler.cancel()
        await install.remove()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--stops", type=int, default=1000, help="stops of part (b)")
    parser.add_argument("--speed", type=float, default=2.0, help="trades per second per symbol")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for one stop of (a); (b) gets 3x")
    parser.add_argument("--worker-cpu", default="10m",
                        help="the workers' CPU request (the chart's 50m times 41 pods is more than 2 cores)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a chart value for helm install (repeatable), e.g. operator.resources.limits.memory=1Gi")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for name in ("KUBECONFIG", "TESTENV_NODE_IP", "TESTENV_NODE_NAME", "TESTENV_IMAGE", "TESTENV_POD_AMQP_URL"):
        if not os.environ.get(name):
            sys.exit(f"{name} is not set: scripts/testenv up && scripts/testenv images && "
                     'eval "$(scripts/testenv env)"')
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")

    symbols = [f"X{index:02d}ETH" for index in range(args.symbols)]
    trades = load_trades(demo_trades_path())
    specs = [dataclasses.replace(xrpeth(), symbol=symbol) for symbol in symbols]
    results: dict[str, Any] = {}
    api = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with FakeBinance(host=os.environ["TESTENV_NODE_IP"], symbols=specs, trades=dict.fromkeys(symbols, trades),
                           speed=args.speed) as fake:
        try:
            for part in ("a", "b") if args.part == "both" else (args.part,):
                results[part] = await run_part(part, api, fake, symbols, args)
        finally:
            await api.close()
    if "a" in results:
        print("\n(a) from kubectl apply, over", len(symbols), "symbols:",
              ", ".join(f"{k} {v}" for k, v in results["a"]["summary"].items()))
    if args.json:
        print(json.dumps(results, indent=2, default=str))


async def main_until_terminated() -> None:
    """``main``, cancelled by SIGTERM or SIGINT (a background job ignores SIGINT) so that its cleanup runs."""
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    await main()


if __name__ == "__main__":
    asyncio.run(main_until_terminated())

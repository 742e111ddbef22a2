"""Worker benchmarks on the real broker, each beside a bare aio-pika baseline measured in the same run.

    eval "$(scripts/testenv env)"
    python benchmarks/workers.py [--ticks 300000] [--stops 10000] [--latency-samples 500]

1. Sustained tick rate: a fresh vhost; 10,000 armed stops (waiting for activation prices the prices
   never reach, both sides, trails 1-30 %) and N ticks are queued first, then the
   orchestrator process starts and drains them (rate from its own ticks_processed counter). The
   baseline is a bare aio-pika consumer process (same prefetch, one ack per message, no parsing)
   draining N identical messages from an identical queue.
2. Latency from a tick's publish to its PlaceOrder reaching the executor's queue consumer, p50 and
   p99, one trigger at a time. The baseline is the broker's bare two hops: publish to a queue, a
   relay process consumes and republishes persistently with a publisher confirm (what the
   orchestrator does with a PlaceOrder), and the same consumer receives it.
3. The orchestrator's resident memory with the 10,000 stops loaded, after the ticks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import Vhost, WorkerProcess, metric_total, scrape, worker_env
from trailingstop.bus import (
    MARKETDATA_EXCHANGE,
    STOP_EVENTS_EXCHANGE,
    Bus,
    executor_queue,
    tick_queue,
)
from trailingstop.core.contracts import PriceTick, StopCommand, StopDefinition

SYMBOL = "BENCH"
PREFETCH = 1000


def tick(trade_id: int, price: str) -> PriceTick:
    return PriceTick(symbol=SYMBOL, price=Decimal(price), qty=Decimal(1), trade_id=trade_id,
                     trade_time=trade_id, received_at=time.time_ns() // 1_000_000, source="bench")


def stop(index: int, trail: str, activation: str | None = None, symbol: str = SYMBOL) -> StopDefinition:
    return StopDefinition(uid=f"bench-{index}", namespace="bench", name=f"s{index}", symbol=symbol,
                          side="SELL" if index % 2 == 0 else "BUY", quantity=Decimal(1),
                          trailing_percent=Decimal(trail), activation_price=Decimal(activation) if activation else None)


async def publish_bodies(url: str, exchange: str, key: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=False)
    target = await channel.get_exchange(exchange)
    for start in range(0, len(bodies), 2000):
        for body in bodies[start:start + 2000]:
            await target.publish(aio_pika.Message(body), key, mandatory=False)
        await asyncio.sleep(0)
    await connection.close()


async def wait_for_depth(url: str, name: str, depth: int, timeout: float = 120.0) -> None:
    """Until ``name`` holds ``depth`` messages: unconfirmed publishes are still being enqueued
    by the broker for a while after the publisher has sent them."""
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    deadline = time.monotonic() + timeout
    try:
        while (held := await _depth(channel, name)) != depth:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} holds {held} messages, not {depth}")
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


async def _depth(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    return queue.declaration_result.message_count or 0


def counter(port: int, name: str) -> float:
    return metric_total(scrape(port), name)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- 1 and 3: sustained rate and memory ----------------------------------------------------------


async def orchestrator_rate(vhost: Vhost, ticks: int, stops: int, log_dir: Path) -> dict[str, float]:
    bus = await Bus(vhost.url, "bench").connect()
    await bus.declare(tick_queue(SYMBOL, ticks + 10))
    for index in range(stops):  # armed: waiting for activation prices the walk never reaches
        activation = "1000" if index % 2 == 0 else "1"  # SELL activates at >= 1000, BUY at <= 1
        await bus.publish_command(StopCommand.upsert(stop(index, str(1 + index % 30), activation)))
    bodies = [tick(i, f"{100 + (i % 200) / 100:.2f}").to_json() for i in range(1, ticks + 1)]
    await publish_bodies(vhost.url, MARKETDATA_EXCHANGE, SYMBOL, bodies)
    await bus.close()
    await wait_for_depth(vhost.url, f"orchestrator.{SYMBOL}.ticks", ticks)

    env = worker_env(vhost.url, TRAILINGSTOP_TICK_QUEUE_MAX=str(ticks + 10), TRAILINGSTOP_SYNC_TIMEOUT="1",
                     TRAILINGSTOP_BINANCE_API_URL="http://127.0.0.1:9/api", TRAILINGSTOP_LOG_LEVEL="WARNING")
    process = WorkerProcess(["worker", "orchestrator", "--symbol", SYMBOL], env, log_dir, "bench-orchestrator").start()
    await process.wait_healthy(60)
    name = "trailingstop_orchestrator_ticks_processed_total"
    while counter(process.port, name) == 0:
        await asyncio.sleep(0.005)
    started = time.monotonic()
    first = counter(process.port, name)
    while (done := counter(process.port, name)) < ticks:
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    assert process.process is not None
    memory = rss_mb(process.process.pid)
    await process.stop()
    return {"rate": (done - first) / elapsed, "rss_mb": memory}


BARE_CONSUMER = """
import asyncio, sys, time, aio_pika
async def main(url, queue_name, count, prefetch):
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.declare_queue(queue_name, passive=True)
    done = asyncio.Event(); seen = 0; started = None
    async def on_message(message):
        nonlocal seen, started
        if started is None: started = time.monotonic()
        await message.ack()
        seen += 1
        if seen >= count: done.set()
    await queue.consume(on_message)
    await done.wait()
    print(count / (time.monotonic() - started), flush=True)
    await connection.close()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


async def bare_rate(vhost: Vhost, ticks: int) -> float:
    connection = await aio_pika.connect_robust(vhost.url)
    channel = await connection.channel()
    queue = await channel.declare_queue("bench.bare", durable=True)
    await queue.bind(MARKETDATA_EXCHANGE, "BARE")
    await connection.close()
    bodies = [tick(i, "100").to_json() for i in range(1, ticks + 1)]
    await publish_bodies(vhost.url, MARKETDATA_EXCHANGE, "BARE", bodies)
    await wait_for_depth(vhost.url, "bench.bare", ticks)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BARE_CONSUMER, vhost.url, "bench.bare", str(ticks), str(PREFETCH),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    return float(out.decode().strip())


# --- 2: latency ----------------------------------------------------------------------------------

RELAY = """
import asyncio, sys, aio_pika
async def main(url):
    connection = await aio_pika.connect_robust(url)
    inbound = await connection.channel()
    outbound = await connection.channel(publisher_confirms=True)
    await inbound.set_qos(prefetch_count=1000)
    exchange = await outbound.get_exchange("order.commands")
    queue = await inbound.declare_queue("bench.hop", passive=True)
    async def on_message(message):
        await exchange.publish(aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "relay")
        await message.ack()
    await queue.consume(on_message)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main(sys.argv[1]))
"""


class Receiver:
    """Consumes a queue and stamps each arrival."""

    def __init__(self) -> None:
        self.arrivals: asyncio.Queue[int] = asyncio.Queue()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.arrivals.put_nowait(time.perf_counter_ns())
        await message.ack()


async def orchestrator_latency(vhost: Vhost, samples: int, log_dir: Path) -> list[float]:
    env = worker_env(vhost.url, TRAILINGSTOP_SYNC_TIMEOUT="1", TRAILINGSTOP_BINANCE_API_URL="http://127.0.0.1:9/api",
                     TRAILINGSTOP_LOG_LEVEL="WARNING")
    bus = await Bus(vhost.url, "bench-latency").connect()
    connection = await aio_pika.connect_robust(vhost.url)
    channel = await connection.channel()
    receiver = Receiver()
    orders = await bus.declare(executor_queue("simulate"))
    await (await channel.get_queue(orders.name)).consume(receiver.on_message)
    armed = await channel.declare_queue(exclusive=True)
    await armed.bind(STOP_EVENTS_EXCHANGE, f"{SYMBOL}.armed")
    armed_events: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_armed(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        armed_events.put_nowait(message.body)
        await message.ack()

    await armed.consume(on_armed)
    args = ["worker", "orchestrator", "--symbol", SYMBOL]
    process = WorkerProcess(args, env, log_dir, "latency-orchestrator").start()
    await process.wait_healthy(60)
    await asyncio.sleep(1.5)  # past the sync wait
    fast = await connection.channel(publisher_confirms=False)
    ticks = await fast.get_exchange(MARKETDATA_EXCHANGE)
    latencies = []
    trade_id = 0
    for index in range(samples + 20):
        await bus.publish_command(StopCommand.upsert(stop(2 * index, "1")))  # even index: SELL
        await armed_events.get()
        trade_id += 1
        await ticks.publish(aio_pika.Message(tick(trade_id, "100").to_json()), SYMBOL, mandatory=False)
        await asyncio.sleep(0.002)
        trade_id += 1
        sent = time.perf_counter_ns()
        await ticks.publish(aio_pika.Message(tick(trade_id, "98").to_json()), SYMBOL, mandatory=False)
        arrived = await asyncio.wait_for(receiver.arrivals.get(), 10)
        if index >= 20:  # warm-up left out
            latencies.append((arrived - sent) / 1e6)
    await process.stop()
    await connection.close()
    await bus.close()
    return latencies


async def bare_latency(vhost: Vhost, samples: int) -> list[float]:
    connection = await aio_pika.connect_robust(vhost.url)
    channel = await connection.channel()
    hop = await channel.declare_queue("bench.hop", durable=True)
    await hop.bind(MARKETDATA_EXCHANGE, "HOP")
    out = await channel.declare_queue("bench.out", durable=True)
    await out.bind("order.commands", "relay")
    receiver = Receiver()
    await out.consume(receiver.on_message)
    relay = await asyncio.create_subprocess_exec(sys.executable, "-c", RELAY, vhost.url, stdout=asyncio.subprocess.PIPE)
    assert relay.stdout is not None
    await relay.stdout.readline()
    fast = await connection.channel(publisher_confirms=False)
    exchange = await fast.get_exchange(MARKETDATA_EXCHANGE)
    latencies = []
    for index in range(samples + 20):
        body = tick(index + 1, "100").to_json()
        sent = time.perf_counter_ns()
        await exchange.publish(aio_pika.Message(body), "HOP", mandatory=False)
        arrived = await asyncio.wait_for(receiver.arrivals.get(), 10)
        if index >= 20:
            latencies.append((arrived - sent) / 1e6)
        await asyncio.sleep(0.004)
    relay.terminate()
    await relay.wait()
    await connection.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=300_000)
    parser.add_argument("--stops", type=int, default=10_000)
    parser.add_argument("--latency-samples", type=int, default=500)
    args = parser.parse_args()
    amqp_url = os.environ["AMQP_URL"]
    management = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}")
    log_dir = Path(tempfile.mkdtemp(prefix="ts-bench-"))

    async def in_vhost(job: Any) -> Any:
        vhost = Vhost(amqp_url, management)
        await vhost.create()
        try:
            bus = await Bus(vhost.url, "bench-topology").connect()  # exchanges exist before anyone binds
            await bus.close()
            return await job(vhost)
        finally:
            await vhost.delete()

    rates = await in_vhost(lambda v: orchestrator_rate(v, args.ticks, args.stops, log_dir))
    bare = await in_vhost(lambda v: bare_rate(v, args.ticks))
    print(f"\n1. sustained tick rate, {args.ticks:,} queued ticks, {args.stops:,} stops:")
    print(f"   orchestrator  {rates['rate']:>10,.0f} ticks/s")
    print(f"   bare aio-pika {bare:>10,.0f} msgs/s   -> orchestrator = {rates['rate'] / bare:.0%} of bare")
    print(f"\n3. orchestrator resident memory with {args.stops:,} stops: {rates['rss_mb']:.0f} MB")

    ours = await in_vhost(lambda v: orchestrator_latency(v, args.latency_samples, log_dir))
    baseline = await in_vhost(lambda v: bare_latency(v, args.latency_samples))
    print(f"\n2. latency over {args.latency_samples} samples (ms):       p50      p99")
    print(f"   tick -> PlaceOrder at the executor   {percentile(ours, 50):7.2f}  {percentile(ours, 99):7.2f}")
    print(f"   bare two hops (confirmed relay)      {percentile(baseline, 50):7.2f}  {percentile(baseline, 99):7.2f}")
    print(f"   p99 ratio: {percentile(ours, 99) / percentile(baseline, 99):.2f} x bare")
    print(json.dumps({"rate": rates["rate"], "bare_rate": bare, "rss_mb": rates["rss_mb"],
                      "p50": percentile(ours, 50), "p99": percentile(ours, 99),
                      "bare_p50": percentile(baseline, 50), "bare_p99": percentile(baseline, 99)}))


if __name__ == "__main__":
    asyncio.run(main())

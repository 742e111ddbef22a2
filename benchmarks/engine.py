"""Engine throughput: 1,000,000 ticks of a seeded random walk, with 1 stop and with 10,000 stops.

    python benchmarks/engine.py [--ticks N] [--stops N] [--seed S]

Prints ticks/s for each case and the per-tick cost ratio (many stops : 1 stop). Both cases run
in this one process, one after the other, on the same price series, so the ratio is what to
compare across machines; absolute figures move with the machine's load.

The walk: BTCUSDT-like, starting at 65000.00 with a 0.01 tick; each trade moves the price by a
uniform -50..+50 ticks (about 0.0045 % per trade, 0.45 % over a million trades), the scale of
real per-trade moves; ``--step 500`` makes it ten times as wild, so more stops trigger and
references move more often. The 1-stop baseline is a SELL stop with a 50 % trail that tracks from
the first trade to the last. Stops: both sides, trails uniform in 0.05-5 % (two decimals), no activation
price, so every stop is tracking from the first trade; the ones a move reaches trigger and stay
final, as they would live.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import time
from decimal import Decimal

from trailingstop.core.engine import Engine


def random_walk(ticks: int, seed: int, step: int) -> list[Decimal]:
    rng = random.Random(seed)
    cents = 6_500_000
    prices = []
    for _ in range(ticks):
        cents = max(1, cents + rng.randint(-step, step))
        prices.append(Decimal(cents).scaleb(-2))
    return prices


def place_stops(engine: Engine, count: int, seed: int) -> None:
    if count == 1:
        # The baseline: one stop that keeps tracking for the whole walk, never idle.
        engine.upsert("stop-0", "SELL", Decimal("50"))
        return
    rng = random.Random(seed + 1)
    for index in range(count):
        side = "SELL" if index % 2 == 0 else "BUY"
        trail = Decimal(rng.randint(5, 500)).scaleb(-2)  # 0.05 .. 5.00 %
        engine.upsert(f"stop-{index}", side, trail)


def run(prices: list[Decimal], stops: int, seed: int) -> tuple[float, int, int]:
    """Seconds for all ticks, events emitted, stops still tracking at the end."""
    engine = Engine("BTCUSDT")
    place_stops(engine, stops, seed)
    on_trade = engine.on_trade
    events = 0
    gc.collect()
    start = time.perf_counter()
    for trade_id, price in enumerate(prices):
        happened = on_trade(price, trade_id)
        if happened:
            events += len(happened)
    elapsed = time.perf_counter() - start
    tracking = sum(1 for stop_id in engine.stop_ids() if engine.state(stop_id).phase == "tracking")
    return elapsed, events, tracking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--stops", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--step", type=int, default=50, help="max move per trade, in 0.01 ticks")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {_cpu_model()}, "
          f"Python {platform.python_version()}")
    prices = random_walk(args.ticks, args.seed, args.step)
    print(f"walk: {args.ticks:,} ticks, {min(prices)} .. {max(prices)}")
    results = {}
    for stops in (1, args.stops):
        elapsed, events, tracking = run(prices, stops, args.seed)
        results[stops] = elapsed
        print(f"{stops:>6,} stops: {args.ticks / elapsed:>12,.0f} ticks/s  "
              f"{elapsed / args.ticks * 1e6:6.2f} us/tick  ({events:,} events, {tracking:,} still tracking)")
    ratio = results[args.stops] / results[1]
    print(f"per-tick cost ratio {args.stops:,} stops : 1 stop = {ratio:.2f}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()

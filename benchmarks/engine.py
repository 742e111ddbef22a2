"""Engine throughput: 1,000,000 ticks of a seeded random walk, with 1 stop and with 10,000 stops.

    python benchmarks/engine.py [--ticks N] [--stops N] [--seed S] [--mix percent|mixed|both]

Prints ticks/s for each case and the per-tick cost ratio (many stops : 1 stop); ``mixed`` is the
same with half the stops trailing by an amount (issue 14; target ratio <= 2), ``both`` (the
default) runs the percent-only case, then the mixed one. Both cases run
in this one process, one after the other, on the same price series, so the ratio is what to
compare across machines; absolute figures move with the machine's load (each case runs ``--repeat``
times and the fastest run counts).

The walk: BTCUSDT-like, starting at 65000.00 with a 0.01 tick; each trade moves the price by a
uniform -50..+50 ticks (about 0.0045 % per trade, 0.45 % over a million trades), the scale of
real per-trade moves; ``--step 500`` makes it ten times as wild, so more stops trigger and
references move more often. The 1-stop baseline is a SELL stop with a 50 % trail that tracks from
the first trade to the last. Stops: both sides, trails uniform in 0.05-5 % (two decimals), no activation
price, so every stop is tracking from the first trade; the ones a move reaches trigger and stay
final, as they would live. In the mixed case every other stop of each side trails by an amount
uniform in 3.25-3250.00 USDT (the same 0.005-5 % of the start price, two decimals).
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


def place_stops(engine: Engine, count: int, seed: int, mixed: bool = False) -> None:
    if count == 1:
        # The baseline: one stop that keeps tracking for the whole walk, never idle.
        engine.upsert("stop-0", "SELL", Decimal("50"))
        return
    rng = random.Random(seed + 1)
    for index in range(count):
        side = "SELL" if index % 2 == 0 else "BUY"
        if mixed and index % 4 >= 2:  # every other stop of each side trails by an amount
            amount = Decimal(rng.randint(325, 325_000)).scaleb(-2)  # 3.25 .. 3250.00 USDT
            engine.upsert(f"stop-{index}", side, None, trailing_amount=amount)
        else:
            trail = Decimal(rng.randint(5, 500)).scaleb(-2)  # 0.05 .. 5.00 %
            engine.upsert(f"stop-{index}", side, trail)


def run(prices: list[Decimal], stops: int, seed: int, mixed: bool = False) -> tuple[float, int, int]:
    """Seconds for all ticks, events emitted, stops still tracking at the end."""
    engine = Engine("BTCUSDT")
    place_stops(engine, stops, seed, mixed)
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


def best_of(repeat: int, prices: list[Decimal], stops: int, seed: int, mixed: bool = False) -> tuple[float, int, int]:
    """The fastest of ``repeat`` runs (each from a fresh engine: same events every time)."""
    runs = [run(prices, stops, seed, mixed) for _ in range(max(1, repeat))]
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--stops", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--step", type=int, default=50, help="max move per trade, in 0.01 ticks")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each case; the fastest counts (a shared CPU's noise only slows runs down)")
    parser.add_argument("--mix", choices=["percent", "mixed", "both"], default="both",
                        help="percent stops only, half percent and half amount stops, or both cases")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {_cpu_model()}, "
          f"Python {platform.python_version()}")
    prices = random_walk(args.ticks, args.seed, args.step)
    print(f"walk: {args.ticks:,} ticks, {min(prices)} .. {max(prices)}")
    baseline, events, tracking = best_of(args.repeat, prices, 1, args.seed)
    _report("1", args.ticks, baseline, events, tracking)
    cases = {"percent": [False], "mixed": [True], "both": [False, True]}[args.mix]
    for mixed in cases:
        elapsed, events, tracking = best_of(args.repeat, prices, args.stops, args.seed, mixed)
        label = f"{args.stops:,} {'mixed' if mixed else 'percent'}"
        _report(label, args.ticks, elapsed, events, tracking)
        print(f"per-tick cost ratio {label} stops : 1 stop = {elapsed / baseline:.2f}")


def _report(label: str, ticks: int, elapsed: float, events: int, tracking: int) -> None:
    print(f"{label:>16} stops: {ticks / elapsed:>12,.0f} ticks/s  "
          f"{elapsed / ticks * 1e6:6.2f} us/tick  ({events:,} events, {tracking:,} still tracking)")


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

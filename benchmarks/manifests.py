"""Manifest loading: a file of 10,000 TrailingStops through ``load_manifests`` (what ``run`` does).

    python benchmarks/manifests.py [--stops N] [--repeat R]

Writes one multi-document YAML file of N stops (names, symbols, sides, 40-digit quantities,
trails and activation prices varied, every third stop with a Testnet secret), then times, in this
one process and on the same file:

* ``load_manifests``: libyaml (CSafeLoader), the duplicate-key and alias checks on the node
  graph, and the CRD's validation of every stop;
* ``yaml.load_all`` with libyaml's ``CSafeLoader`` alone (no checks, no validation): the floor;
* the pure-Python ``yaml.safe_load_all`` alone, the loader ``run`` used before.

Prints the median and best of R runs of each, wall and CPU time (the process's own, which moves
less with other load on the machine), and the ratio of the CPU medians: the ratio is what to
compare across machines.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from trailingstop.stopfiles import load_manifests


def stop_document(index: int) -> str:
    side = "SELL" if index % 2 == 0 else "BUY"
    symbol = ("BTCUSDT", "ETHBTC", "XRPETH", "BNBUSDT")[index % 4]
    secret = "\n  credentialsSecretRef: {name: binance-keys}" if index % 3 == 0 else ""
    mode = "Testnet" if index % 3 == 0 else "Simulate"
    return (
        "apiVersion: trailingstop.dev/v1\n"
        "kind: TrailingStop\n"
        f"metadata:\n  name: stop-{index:05d}\n  namespace: desk-{index % 7}\n"
        "spec:\n"
        f"  symbol: {symbol}\n"
        f"  side: {side}\n"
        f'  quantity: "{index + 1}.12345678901234567890"\n'
        f'  trailingPercent: "{index % 97 + 1}.{index % 10**8:08d}"\n'
        f'  activationPrice: "{65000 + index}.00000001"\n'
        f"  mode: {mode}{secret}\n"
    )


def timed(function: object, repeat: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (this process) of each of ``repeat`` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        function()  # type: ignore[operator]
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return wall, cpu


def line(label: str, wall: list[float], cpu: list[float]) -> str:
    return (f"{label}: wall median {statistics.median(wall):.3f} s (best {min(wall):.3f}), "
            f"CPU median {statistics.median(cpu):.3f} s (best {min(cpu):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stops", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stops.yaml"
        path.write_text("---\n".join(stop_document(i) for i in range(args.stops)), encoding="utf-8")
        size = path.stat().st_size
        manifests, _ = load_manifests(path)
        assert len(manifests) == args.stops
        ours = timed(lambda: load_manifests(path), args.repeat)
        text = path.read_text(encoding="utf-8")
        libyaml = timed(lambda: list(yaml.load_all(text, Loader=yaml.CSafeLoader)), args.repeat)
        pure = timed(lambda: list(yaml.safe_load_all(text)), max(1, args.repeat // 2))
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{args.stops:,} stops, {size / 1e6:.2f} MB")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(line("load_manifests (CSafeLoader + checks + validation)", *ours))
    print(line("yaml.load_all, CSafeLoader (libyaml, no checks)   ", *libyaml))
    print(line("yaml.safe_load_all (pure Python, no checks)       ", *pure))
    ours_cpu = statistics.median(ours[1])
    print(f"CPU ratios: load_manifests / CSafeLoader load_all {ours_cpu / statistics.median(libyaml[1]):.2f}, "
          f"load_manifests / pure-Python safe_load_all {ours_cpu / statistics.median(pure[1]):.2f}")


if __name__ == "__main__":
    main()

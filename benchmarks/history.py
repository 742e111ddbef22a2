"""The full month path: ``backtest --symbol S --month YYYY-MM`` from a local public-data host.

    python benchmarks/history.py [--per-day N] [--month 2024-02] [--combos N] [--no-plot]

Builds one monthly aggTrades archive in Binance's layout (a seeded BTCUSDT-like random walk,
``--per-day`` trades a day, prices and quantities with Binance's 8 decimals, cached under
``~/.cache/trailingstop/bench-history`` so a re-run skips this), serves it with the test fake of
data.binance.vision on 127.0.0.1, and runs the real command in a child process, measuring each
child's wall time and peak resident memory (``wait4``):

1. **cold**: empty cache: download, SHA-256 check, stream, engine (trails 0.5..5 %, SELL);
2. **warm**: the same again: nothing downloaded (checked), the cached file re-hashed, streamed;
3. **warm + --plot**: as 2, recording the chart's series (bounded) and drawing a PNG;
4. **parse only** (the baseline of the same run): the same cached zip through
   ``trailingstop.history.zip_trades`` (decompress + trades.py's CSV parser), no engine, no CLI.

Ratios within the run are what to compare across machines: full path / parse only for speed,
and peak memory against the month's uncompressed CSV size (streaming means it does not grow).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakedata import FakeDataServer, remote_path, write_checksum  # noqa: E402

SYMBOL = "BENCHUSDT"
DAY_MS = 86_400_000


def month_days(month: str) -> list[date]:
    first = date.fromisoformat(f"{month}-01")
    days, day = [], first
    while day.month == first.month:
        days.append(day)
        day += timedelta(days=1)
    return days


def build_month(root: Path, month: str, per_day: int, seed: int) -> tuple[Path, int, int]:
    """The monthly zip (+ .CHECKSUM) under ``root``; returns (path, trades, uncompressed bytes)."""
    path = root / remote_path("monthly", SYMBOL, month)
    marker = path.with_name(path.name + ".done")
    days = month_days(month)
    if marker.exists():
        trades, size = map(int, marker.read_text().split())
        return path, trades, size
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cents, trade_id, first_id, size = 6_500_000, 3_000_000_000, 4_000_000_000, 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open(path.name.removesuffix(".zip") + ".csv", "w", force_zip64=True) as out:
        for day in days:
            start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000
            rows = []
            for index in range(per_day):
                cents = max(100, cents + rng.randint(-50, 50))
                qty = rng.randint(1, 200_000)
                rows.append(f"{trade_id},{cents // 100}.{cents % 100:02d}000000,0.{qty:08d},{first_id},"
                            f"{first_id + 1},{start + index * DAY_MS // per_day},{rng.random() < 0.5},True\n")
                trade_id += 1
                first_id += 2
                if len(rows) == 50_000:
                    block = "".join(rows).encode()
                    size += len(block)
                    out.write(block)
                    rows.clear()
            block = "".join(rows).encode()
            size += len(block)
            out.write(block)
    write_checksum(path)
    marker.write_text(f"{per_day * len(days)} {size}")
    return path, per_day * len(days), size


# Each measured child reports its own peak memory: /proc's VmHWM belongs to the process image
# (ru_maxrss would also count the benchmark's pages that the child had before its exec).
_MEASURED = """
import atexit, sys
peak_file = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
atexit.register(peak)
"""
CLI = "from trailingstop.cli import main\nsys.exit(main(sys.argv[1:]))"
PARSE_ONLY = ("from pathlib import Path\nfrom trailingstop.history import zip_trades\n"
              "print(sum(1 for _ in zip_trades(Path(sys.argv[1]))))")


def run_child(code: str, args: list[str], env: dict[str, str], scratch: Path) -> tuple[float, int, str]:
    """(seconds, peak resident bytes, stdout) of ``python -c CODE ARGS``."""
    out_path, err_path, peak_path = scratch / "out.txt", scratch / "err.txt", scratch / "peak.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _MEASURED + code, str(peak_path), *args], env=env,
                              stdout=out, stderr=err, check=False)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{err_path.read_text()}")
    return seconds, int(peak_path.read_text()) * 1024, out_path.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-day", type=int, default=100_000, help="trades a day (default 100,000)")
    parser.add_argument("--month", default="2024-02")
    parser.add_argument("--combos", type=int, default=4, help="trailing percents swept (default 4)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-plot", action="store_true", help="skip run 3 (for the largest months)")
    args = parser.parse_args()

    data = Path.home() / ".cache" / "trailingstop" / "bench-history" / f"{args.month}-{args.per_day}-{args.seed}"
    started = time.perf_counter()
    path, trades, csv_bytes = build_month(data, args.month, args.per_day, args.seed)
    print(f"month {args.month}: {trades:,} trades, {csv_bytes / 2**20:,.0f} MiB of CSV, "
          f"{path.stat().st_size / 2**20:,.0f} MiB zipped (built or found in {time.perf_counter() - started:.0f} s)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")

    trails = ",".join(str(t) for t in [0.5, 1, 2, 5, 0.25, 3, 4, 1.5][: args.combos])
    scratch = Path(tempfile.mkdtemp(prefix="bench-history-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(scratch / "cache")}
    try:
        with FakeDataServer(data, chunk=1 << 20) as server:
            command = ["backtest", "--symbol", SYMBOL, "--month", args.month, "--data-url", server.url,
                       "--side", "SELL", "--trailing-percent", trails]
            rows = []
            runs = [("cold (download + verify + backtest)", []), ("warm (cache, verify + backtest)", [])]
            if not args.no_plot:
                runs.append(("warm + --plot PNG", ["--plot", str(scratch / "month.png")]))
            for label, extra in runs:
                server.clear()
                seconds, peak, out = run_child(CLI, [*command, *extra], env, scratch)
                assert f"{trades:,} trades" in out, out[-500:]
                downloaded = sum(r.sent for r in server.requests)
                rows.append((label, seconds, peak, downloaded))
            cached = next((scratch / "cache").rglob(path.name))
            seconds, peak, out = run_child(PARSE_ONLY, [str(cached)], env, scratch)
            assert int(out) == trades
            rows.append(("baseline: parse only (zip_trades)", seconds, peak, 0))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = rows[-1][1]
    print("\n| run | wall s | trades/s | vs parse only | peak RSS MiB | downloaded MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, seconds, peak, downloaded in rows:
        print(f"| {label} | {seconds:.1f} | {trades / seconds:,.0f} | {base / seconds:.2f} | "
              f"{peak / 2**20:,.0f} | {downloaded / 2**20:,.1f} |")
    print(f"\npeak RSS of the warm run / uncompressed CSV: {rows[1][2] / csv_bytes:.3f}")


if __name__ == "__main__":
    main()

"""Files in Binance's public-data layout, built from trades: zips, ``.CHECKSUM``s, whole months.

Binance's zips hold one CSV named like the zip (``ETHUSDT-aggTrades-2023-02-02.csv``), rows
``agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match``
with ``True``/``False``; since 2025 spot timestamps are microseconds and some files start with a
header row. A ``.CHECKSUM`` is ``sha256sum`` output: ``<64 hex>  <zip name>\\n``.
"""

from __future__ import annotations

import hashlib
import random
import zipfile
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from trailingstop.core.trade import Trade
from trailingstop.tradefiles import CSV_COLUMNS

DAY_MS = 86_400_000


def remote_path(kind: str, symbol: str, period: str) -> str:
    return f"data/spot/{kind}/aggTrades/{symbol}/{symbol}-aggTrades-{period}.zip"


def csv_lines(trades: Iterable[Trade], micro: bool = False, header: bool = False) -> Iterator[str]:
    """Rows as Binance writes them (``micro``: microsecond timestamps, as in 2025 files)."""
    if header:
        yield ",".join(CSV_COLUMNS) + "\n"
    for t in trades:
        time = t.time * 1000 if micro else t.time
        yield (f"{t.trade_id},{format(t.price, 'f')},{format(t.qty, 'f')},{t.first_trade_id},{t.last_trade_id},"
               f"{time},{t.buyer_maker},{t.best_match}\n")


def write_archive(root: Path, kind: str, symbol: str, period: str, trades: Iterable[Trade], *,
                  micro: bool = False, header: bool = False) -> Path:
    """``root/<remote path>.zip`` and its ``.CHECKSUM``; the zip is streamed (a month fits)."""
    path = root / remote_path(kind, symbol, period)
    path.parent.mkdir(parents=True, exist_ok=True)
    member = path.name.removesuffix(".zip") + ".csv"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open(member, "w", force_zip64=True) as out:
        batch: list[str] = []
        for line in csv_lines(trades, micro, header):
            batch.append(line)
            if len(batch) >= 10_000:
                out.write("".join(batch).encode())
                batch.clear()
        out.write("".join(batch).encode())
    write_checksum(path)
    return path


def write_checksum(path: Path, digest: str | None = None) -> Path:
    checksum = path.with_name(path.name + ".CHECKSUM")
    checksum.write_text(f"{digest or sha256(path)}  {path.name}\n")
    return checksum


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tamper(path: Path) -> None:
    """Change one byte of a published zip, leaving its ``.CHECKSUM`` as it was."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def day_of(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def by_day(trades: Iterable[Trade]) -> dict[date, list[Trade]]:
    days: dict[date, list[Trade]] = {}
    for trade in trades:
        days.setdefault(day_of(trade.time), []).append(trade)
    return days


def synthetic_day(day: date, count: int, first_id: int, price: Decimal, seed: int) -> list[Trade]:
    """``count`` trades spread over ``day`` (UTC), a seeded random walk in 0.01 ticks from ``price``."""
    rng = random.Random(seed)
    cents = int(price * 100)
    start = day_start_ms(day)
    trades = []
    for index in range(count):
        cents = max(100, cents + rng.randint(-25, 25))
        trade_id = first_id + index
        trades.append(Trade(trade_id, Decimal(cents).scaleb(-2), Decimal(rng.randint(1, 50_000)).scaleb(-5),
                            trade_id * 2, trade_id * 2 + 1, start + index * (DAY_MS - 1) // max(count, 1),
                            rng.random() < 0.5, True))
    return trades


def publish_days(root: Path, symbol: str, days: dict[date, list[Trade]], *, monthly: bool = True,
                 micro: bool = False, header: bool = False) -> None:
    """Daily archives of every day, and (``monthly``) each month's archive of the days it has."""
    months: dict[str, list[Trade]] = {}
    for day in sorted(days):
        write_archive(root, "daily", symbol, day.isoformat(), days[day], micro=micro, header=header)
        months.setdefault(day.strftime("%Y-%m"), []).extend(days[day])
    if monthly:
        for month, trades in months.items():
            write_archive(root, "monthly", symbol, month, trades, micro=micro, header=header)


def synthetic_days(first: date, last: date, per_day: int, seed: int = 7,
                   price: Decimal = Decimal("1500.00")) -> dict[date, list[Trade]]:
    """Consecutive days of synthetic trades, ids and prices continuing from day to day."""
    days: dict[date, list[Trade]] = {}
    next_id, day = 1_000_000, first
    while day <= last:
        trades = synthetic_day(day, per_day, next_id, price, seed + day.toordinal())
        days[day] = trades
        next_id += per_day
        price = trades[-1].price
        day += timedelta(days=1)
    return days

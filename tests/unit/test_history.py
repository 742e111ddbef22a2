"""Fetching Binance public aggTrades: layout, plan, checksums, cache, faults, streaming, and the CLI flags.

Every download goes to ``tests.fakedata.FakeDataServer``: Binance's layout on 127.0.0.1, serving
zips built from the bundled real XRPETH trades (split by UTC day, as Binance publishes them) or
from seeded synthetic days, with 404s, tampered files, slow, stalled and dropped answers.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.fakedata import FakeDataServer, by_day, publish_days, remote_path, synthetic_days, tamper, write_archive
from tests.fakedata.archives import sha256, write_checksum
from trailingstop.cli import main
from trailingstop.core.trade import Trade
from trailingstop.history import (
    DEFAULT_DATA_URL,
    Archive,
    DownloadFailed,
    HistoryCache,
    HistoryError,
    HistorySettings,
    Progress,
    Span,
    cache_root,
    fetch_history,
    parse_checksum,
    parse_date_span,
    parse_month_span,
    plan,
    zip_trades,
)
from trailingstop.tradefiles import demo_trades_path, load_trades

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "trailingstop.yaml"
D = date
SYNTH = "TESTUSDT"
SYNTH_FIRST, SYNTH_LAST = D(2023, 1, 30), D(2023, 3, 2)


# --- data and servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> list[Trade]:
    return load_trades(demo_trades_path())


@pytest.fixture(scope="module")
def synth_days() -> dict[date, list[Trade]]:
    return synthetic_days(SYNTH_FIRST, SYNTH_LAST, per_day=40)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, demo: list[Trade],
              synth_days: dict[date, list[Trade]]) -> Path:
    """Real XRPETH days 2019-10-11..13 (+ the 2019-10 monthly), synthetic TESTUSDT 2023-01-30..2023-03-02."""
    root = tmp_path_factory.mktemp("published")
    publish_days(root, "XRPETH", by_day(demo))
    publish_days(root, SYNTH, synth_days)
    return root


@pytest.fixture
def root(tmp_path: Path, published: Path) -> Path:
    """A copy of the published files that a test may change (delete, tamper)."""
    copy = tmp_path / "served"
    shutil.copytree(published, copy)
    return copy


@pytest.fixture
def data_host(root: Path) -> Iterator[FakeDataServer]:
    with FakeDataServer(root) as fake:
        yield fake


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never the user's cache; quick retries."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("TRAILINGSTOP_DATA_RETRY_DELAY", "0.01")
    monkeypatch.delenv("TRAILINGSTOP_DATA_URL", raising=False)
    return cache


def settings(data_host: FakeDataServer, **overrides: Any) -> HistorySettings:
    values: dict[str, Any] = {"data_url": data_host.url, "retry_delay": 0.01, "read_timeout": 5.0, **overrides}
    return HistorySettings(**values)


def fetch(data_host: FakeDataServer, span: str, symbol: str = SYNTH, **overrides: Any) -> list[Trade]:
    return list(fetch_history(symbol, parse_date_span(span), settings(data_host, **overrides)).trades())


def days_of(days: dict[date, list[Trade]], first: date, last: date) -> list[Trade]:
    return [t for day in sorted(days) if first <= day <= last for t in days[day]]


def zip_requests(data_host: FakeDataServer) -> list[str]:
    return [p.rsplit("/", 1)[1] for p in data_host.paths(".zip")]


def cached_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


# --- spans, plans, layout --------------------------------------------------------------------------


def test_date_spans() -> None:
    assert parse_date_span("2023-02-02") == Span(D(2023, 2, 2), D(2023, 2, 2), "2023-02-02")
    assert parse_date_span(" 2023-02-01..2023-02-07 ") == Span(D(2023, 2, 1), D(2023, 2, 7), "2023-02-01..2023-02-07")
    assert parse_month_span("2024-02") == Span(D(2024, 2, 1), D(2024, 2, 29), "2024-02")
    assert parse_month_span("2023-11..2024-01") == Span(D(2023, 11, 1), D(2024, 1, 31), "2023-11..2024-01")


@pytest.mark.parametrize(("text", "message"), [
    ("2023-02-30", "--date: '2023-02-30' is not a date (YYYY-MM-DD, or FIRST..LAST)"),
    ("2023-2-1", "--date: '2023-2-1' is not a date (YYYY-MM-DD, or FIRST..LAST)"),
    ("2023-02-01..", "--date: '2023-02-01..' is not a date (YYYY-MM-DD, or FIRST..LAST)"),
    ("", "--date: '' is not a date (YYYY-MM-DD, or FIRST..LAST)"),
    ("2023-02-07..2023-02-01", "--date: the range '2023-02-07..2023-02-01' ends before it starts"),
])
def test_bad_dates(text: str, message: str) -> None:
    with pytest.raises(HistoryError) as caught:
        parse_date_span(text)
    assert str(caught.value) == message


@pytest.mark.parametrize("text", ["2023-13", "2023-1", "23-01", "2023-03..2023-01", "2023-01-01"])
def test_bad_months(text: str) -> None:
    with pytest.raises(HistoryError, match=r"^--month: "):
        parse_month_span(text)


def test_archive_names_follow_binance_layout() -> None:
    day, month = Archive(D(2023, 2, 2), "daily", "ETHUSDT"), Archive(D(2023, 2, 1), "monthly", "ETHUSDT")
    assert day.remote_path == "data/spot/daily/aggTrades/ETHUSDT/ETHUSDT-aggTrades-2023-02-02.zip"
    assert month.remote_path == "data/spot/monthly/aggTrades/ETHUSDT/ETHUSDT-aggTrades-2023-02.zip"
    assert (month.first, month.last, len(month.daily_parts())) == (D(2023, 2, 1), D(2023, 2, 28), 28)


def periods(archives: list[Archive]) -> list[str]:
    return [a.period for a in archives]


def test_plan_takes_whole_months_as_monthly_archives() -> None:
    assert periods(plan("X", parse_date_span("2023-02-02"))) == ["2023-02-02"]
    assert periods(plan("X", parse_date_span("2023-02-01..2023-02-07"))) == [f"2023-02-0{d}" for d in range(1, 8)]
    assert periods(plan("X", parse_date_span("2023-02-01..2023-02-28"))) == ["2023-02"]
    assert periods(plan("X", parse_date_span("2023-01-30..2023-03-02"))) == [
        "2023-01-30", "2023-01-31", "2023-02", "2023-03-01", "2023-03-02"]
    assert periods(plan("X", parse_month_span("2023-11..2024-01"))) == ["2023-11", "2023-12", "2024-01"]


def test_plan_keeps_a_month_daily_when_its_days_are_cached() -> None:
    feb = parse_month_span("2023-02")
    days_cached = plan("X", feb, lambda a: a.kind == "daily")
    assert periods(days_cached) == [f"2023-02-{d:02d}" for d in range(1, 29)]
    assert periods(plan("X", feb, lambda a: True)) == ["2023-02"]  # both cached: the one file
    one_day_missing = plan("X", feb, lambda a: a.kind == "daily" and a.first != D(2023, 2, 5))
    assert periods(one_day_missing) == ["2023-02"]


def test_checksum_files() -> None:
    digest = "ab" * 32
    assert parse_checksum(f"{digest}  X-aggTrades-2023-02-02.zip\n", "X-aggTrades-2023-02-02.zip", "u") == digest
    assert parse_checksum(f"{digest.upper()} *X.zip", "X.zip", "u") == digest  # sha256sum's binary mark
    assert parse_checksum(digest, "X.zip", "u") == digest
    with pytest.raises(HistoryError, match=r"^u: the checksum is for 'Y.zip', not X.zip$"):
        parse_checksum(f"{digest}  Y.zip", "X.zip", "u")
    with pytest.raises(HistoryError, match=r"^u: not a SHA-256 checksum file"):
        parse_checksum("<html>Access denied</html>", "X.zip", "u")


def test_cache_location(tmp_path: Path) -> None:
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "trailingstop" / "history"
    assert cache_root({"XDG_CACHE_HOME": "relative/dir"}) == Path.home() / ".cache" / "trailingstop" / "history"
    assert cache_root({}) == Path.home() / ".cache" / "trailingstop" / "history"
    day = Archive(D(2023, 2, 2), "daily", "ETHUSDT")
    assert HistoryCache(tmp_path, DEFAULT_DATA_URL).path(day) == (
        tmp_path / "data.binance.vision/data/spot/daily/aggTrades/ETHUSDT/ETHUSDT-aggTrades-2023-02-02.zip")
    assert HistoryCache(tmp_path, "http://127.0.0.1:8080/mirror/../x").host_dir == tmp_path / "127.0.0.1_8080/mirror/x"


def test_settings_from_the_environment() -> None:
    env = {"TRAILINGSTOP_DATA_URL": "http://127.0.0.1:9/", "TRAILINGSTOP_DATA_PARALLEL": "2",
           "TRAILINGSTOP_DATA_TIMEOUT": "1.5", "TRAILINGSTOP_DATA_RETRIES": "0"}
    got = HistorySettings.from_env(env)
    assert (got.data_url, got.parallel, got.read_timeout, got.retries) == ("http://127.0.0.1:9", 2, 1.5, 0)
    assert HistorySettings.from_env(env, data_url="https://example.org/x/").data_url == "https://example.org/x"
    assert HistorySettings.from_env({}).data_url == DEFAULT_DATA_URL == "https://data.binance.vision"
    for name, value in [("TRAILINGSTOP_DATA_PARALLEL", "0"), ("TRAILINGSTOP_DATA_TIMEOUT", "nan"),
                        ("TRAILINGSTOP_DATA_RETRIES", "-1"), ("TRAILINGSTOP_DATA_TIMEOUT", "soon")]:
        with pytest.raises(HistoryError, match=f"^{name} must be "):
            HistorySettings.from_env({name: value})
    with pytest.raises(HistoryError, match=r"^--data-url must be an http\(s\) URL"):
        HistorySettings.from_env({}, data_url="ftp://data.binance.vision")


# --- fetching ----------------------------------------------------------------------------------------


def test_real_days_come_back_exactly(data_host: FakeDataServer, demo: list[Trade], private_cache: Path) -> None:
    history = fetch_history("xrpeth", parse_date_span("2019-10-11..2019-10-13"), settings(data_host))
    assert list(history.trades()) == demo
    assert sorted(zip_requests(data_host)) == [f"XRPETH-aggTrades-2019-10-1{d}.zip" for d in (1, 2, 3)]
    host = f"127.0.0.1_{data_host.url.rsplit(':', 1)[1]}"
    assert cached_files(private_cache) == sorted(
        f"trailingstop/history/{host}/{remote_path('daily', 'XRPETH', f'2019-10-1{d}')}{ext}"
        for d in (1, 2, 3) for ext in ("", ".CHECKSUM"))
    saved = private_cache / f"trailingstop/history/{host}/{remote_path('daily', 'XRPETH', '2019-10-12')}"
    assert (saved.parent / (saved.name + ".CHECKSUM")).read_text() == f"{sha256(saved)}  {saved.name}\n"


def test_a_range_mixes_months_and_days(data_host: FakeDataServer, synth_days: dict[date, list[Trade]]) -> None:
    got = fetch(data_host, "2023-01-30..2023-03-02")
    assert got == days_of(synth_days, SYNTH_FIRST, SYNTH_LAST)
    assert sorted(zip_requests(data_host)) == [f"{SYNTH}-aggTrades-{p}.zip" for p in
                                            ("2023-01-30", "2023-01-31", "2023-02", "2023-03-01", "2023-03-02")]
    assert [t.trade_id for t in got] == list(range(got[0].trade_id, got[0].trade_id + len(got)))  # in trade order


def test_a_second_run_downloads_nothing(data_host: FakeDataServer, synth_days: dict[date, list[Trade]]) -> None:
    first = fetch(data_host, "2023-01-30..2023-03-02")
    data_host.clear()
    assert fetch(data_host, "2023-01-30..2023-03-02") == first
    assert data_host.requests == []
    # A sub-range inside cached days needs nothing either.
    assert fetch(data_host, "2023-03-01") == synth_days[D(2023, 3, 1)]
    assert data_host.requests == []


def test_an_unpublished_month_falls_back_to_its_days(root: Path, data_host: FakeDataServer,
                                                     synth_days: dict[date, list[Trade]]) -> None:
    for suffix in ("", ".CHECKSUM"):
        (root / (remote_path("monthly", SYNTH, "2023-02") + suffix)).unlink()
    history = fetch_history(SYNTH, parse_month_span("2023-02"), settings(data_host))
    assert list(history.trades()) == days_of(synth_days, D(2023, 2, 1), D(2023, 2, 28))
    assert history.report.fallbacks == ["2023-02"]
    assert len(zip_requests(data_host)) == 28


def test_header_rows_and_microsecond_timestamps(root: Path, data_host: FakeDataServer,
                                                synth_days: dict[date, list[Trade]]) -> None:
    """Binance's 2025+ spot files: microsecond times, and some with a header row."""
    day = D(2023, 2, 10)
    write_archive(root, "daily", SYNTH, day.isoformat(), synth_days[day], micro=True, header=True)
    assert fetch(data_host, "2023-02-09..2023-02-11") == days_of(synth_days, D(2023, 2, 9), D(2023, 2, 11))


def test_a_tampered_zip_is_refused_and_not_kept(root: Path, data_host: FakeDataServer, private_cache: Path) -> None:
    tamper(root / remote_path("daily", SYNTH, "2023-02-03"))
    with pytest.raises(HistoryError) as caught:
        fetch(data_host, "2023-02-03")
    message = str(caught.value)
    assert message.startswith(f"checksum mismatch for {SYNTH}-aggTrades-2023-02-03.zip: its SHA-256 is ")
    assert message.endswith(f"{SYNTH}-aggTrades-2023-02-03.zip.CHECKSUM says "
                            f"{(root / (remote_path('daily', SYNTH, '2023-02-03') + '.CHECKSUM')).read_text()[:64]}; "
                            "the file was not used")
    assert "\n" not in message and caught.value.exit_code == 2
    assert cached_files(private_cache) == []  # no zip, no checksum, no .part


def test_a_wrong_checksum_file_is_refused(root: Path, data_host: FakeDataServer) -> None:
    write_checksum(root / remote_path("daily", SYNTH, "2023-02-03"), "0" * 64)
    with pytest.raises(HistoryError, match=r"checksum mismatch .* says 0{64}; the file was not used$"):
        fetch(data_host, "2023-02-03")


def test_a_missing_day_is_named(root: Path, data_host: FakeDataServer) -> None:
    (root / (remote_path("daily", SYNTH, "2023-03-01") + ".CHECKSUM")).unlink()
    with pytest.raises(HistoryError) as caught:
        fetch(data_host, "2023-02-27..2023-03-02")
    missing = f"{SYNTH}-aggTrades-2023-03-01.zip.CHECKSUM"
    assert str(caught.value) == (
        f"no {SYNTH} aggTrades for 2023-03-01 on {data_host.url} (HTTP 404 for {missing})"
        f": not published; {SYNTH} has daily files from 2023-01-30 to 2023-03-02")
    assert caught.value.exit_code == 2


def test_days_after_the_published_ones(data_host: FakeDataServer) -> None:
    today = datetime.now(UTC).date()
    with pytest.raises(HistoryError) as caught:
        fetch(data_host, f"2023-03-02..{today.isoformat()}")
    assert " and " in str(caught.value) and "more on " in str(caught.value)
    assert "not published yet (Binance publishes a day after it ends, UTC)" in str(caught.value)


def test_an_unknown_symbol(data_host: FakeDataServer) -> None:
    with pytest.raises(HistoryError) as caught:
        fetch(data_host, "2023-02-02", symbol="TESTUSDX")
    assert str(caught.value) == (f"unknown symbol TESTUSDX: {data_host.url} publishes no spot aggTrades for it "
                                 "(did you mean TESTUSDT?)")


@pytest.mark.fakedata
def test_an_unknown_symbol_from_an_s3_listing(root: Path) -> None:
    with FakeDataServer(root, listings=False, s3_listing=True) as bucket:
        with pytest.raises(HistoryError, match=f"^unknown symbol ETHUSDX: {bucket.url} publishes no spot aggTrades"):
            fetch(bucket, "2023-02-02", symbol="ETHUSDX")
        with pytest.raises(HistoryError, match=f"; {SYNTH} has daily files from 2023-01-30 to 2023-03-02$"):
            fetch(bucket, "2023-03-03", symbol=SYNTH)


@pytest.mark.fakedata
def test_a_host_that_cannot_tell_unknown_from_missing(root: Path) -> None:
    with FakeDataServer(root, listings=False) as plain, pytest.raises(HistoryError) as caught:
        url = plain.url
        fetch(plain, "2023-02-02", symbol="ETHUSDX")
    assert str(caught.value) == (
        f"no ETHUSDX aggTrades for 2023-02-02 on {url} (HTTP 404 for ETHUSDX-aggTrades-2023-02-02.zip.CHECKSUM)"
        ": either ETHUSDX is not a Binance spot symbol or it has no trades on those days")


# --- faults ------------------------------------------------------------------------------------------


def test_a_slow_server_is_waited_for(data_host: FakeDataServer, synth_days: dict[date, list[Trade]]) -> None:
    data_host.delay(0.4)  # every answer, under the 5 s read timeout
    assert fetch(data_host, "2023-02-01..2023-02-02") == days_of(synth_days, D(2023, 2, 1), D(2023, 2, 2))
    assert all(r.status == 200 for r in data_host.requests)


def test_a_stalled_transfer_is_retried_from_where_it_stopped(data_host: FakeDataServer,
                                                              synth_days: dict[date, list[Trade]]) -> None:
    data_host.stall(after_bytes=700, seconds=6)  # silent far longer than the 1 s read timeout
    assert fetch(data_host, "2023-02-01", read_timeout=1.0) == synth_days[D(2023, 2, 1)]
    zips = [r for r in data_host.requests if r.path.endswith(".zip")]
    assert [(r.range, r.status) for r in zips] == [(None, 200), ("bytes=700-", 206)]
    assert zips[0].sent == 700


def test_a_dropped_connection_resumes_with_a_range(data_host: FakeDataServer,
                                                   synth_days: dict[date, list[Trade]]) -> None:
    data_host.drop(after_bytes=500, times=2)
    assert fetch(data_host, "2023-02-01") == synth_days[D(2023, 2, 1)]
    zips = [r for r in data_host.requests if r.path.endswith(".zip")]
    assert [(r.range, r.status) for r in zips] == [(None, 200), ("bytes=500-", 206), ("bytes=1000-", 206)]


@pytest.mark.fakedata
def test_a_server_without_ranges_is_downloaded_again_from_the_start(
        root: Path, synth_days: dict[date, list[Trade]]) -> None:
    with FakeDataServer(root, ranges=False) as plain:
        plain.drop(after_bytes=500)
        assert fetch(plain, "2023-02-01") == synth_days[D(2023, 2, 1)]
        zips = [r for r in plain.requests if r.path.endswith(".zip")]
    assert [(r.range, r.status) for r in zips] == [(None, 200), ("bytes=500-", 200)]


def test_a_connection_that_keeps_dropping_fails_cleanly_and_resumes_later(
        data_host: FakeDataServer, private_cache: Path, synth_days: dict[date, list[Trade]]) -> None:
    data_host.drop(after_bytes=300, times=3)
    with pytest.raises(DownloadFailed) as caught:
        fetch(data_host, "2023-02-01", retries=2)
    assert str(caught.value) == (f"cannot download {data_host.url}/{remote_path('daily', SYNTH, '2023-02-01')}: "
                                 "the connection dropped before the file was complete (tried 3 times)")
    assert caught.value.exit_code == 1
    part = [p for p in private_cache.rglob("*.part")]
    assert [p.name for p in part] == [f"{SYNTH}-aggTrades-2023-02-01.zip.part"] and part[0].stat().st_size == 900
    assert not part[0].with_suffix("").exists()  # never the final name before it is complete and verified
    data_host.clear()
    assert fetch(data_host, "2023-02-01") == synth_days[D(2023, 2, 1)]
    assert [r.range for r in data_host.requests if r.path.endswith(".zip")] == ["bytes=900-"]
    assert list(private_cache.rglob("*.part")) == []


def test_a_stale_part_that_does_not_fit_is_downloaded_again_whole(
        data_host: FakeDataServer, private_cache: Path, synth_days: dict[date, list[Trade]]) -> None:
    host = f"127.0.0.1_{data_host.url.rsplit(':', 1)[1]}"
    stale = private_cache / "trailingstop/history" / host / (remote_path("daily", SYNTH, "2023-02-01") + ".part")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not the start of this zip" * 4)
    assert fetch(data_host, "2023-02-01") == synth_days[D(2023, 2, 1)]
    assert [(r.range, r.status) for r in data_host.requests if r.path.endswith(".zip")] == [
        ("bytes=100-", 206), (None, 200)]
    assert not stale.exists()


def test_server_errors_are_retried(data_host: FakeDataServer, synth_days: dict[date, list[Trade]]) -> None:
    data_host.fail(503, times=2)
    assert fetch(data_host, "2023-02-01") == synth_days[D(2023, 2, 1)]
    assert [r.status for r in data_host.requests][:3] == [503, 503, 200]


@pytest.mark.fakedata
def test_an_unreachable_host(tmp_path: Path) -> None:
    with FakeDataServer(tmp_path) as gone:
        url = gone.url
    port = url.rsplit(":", 1)[1]
    with pytest.raises(DownloadFailed, match=rf"^cannot download {url}/data/.*\.CHECKSUM: cannot connect to "
                                             rf"127\.0\.0\.1:{port} \(Connect call failed .*\) \(tried 2 times\)$"):
        list(fetch_history(SYNTH, parse_date_span("2023-02-01"),
                           HistorySettings(data_url=url, retries=1, retry_delay=0.01)).trades())


def test_one_connection_pool_with_a_small_parallel_limit(data_host: FakeDataServer) -> None:
    data_host.delay(0.2)  # keep each answer open long enough for downloads to overlap
    fetch(data_host, "2023-02-01..2023-02-07", parallel=2)
    assert data_host.peak_concurrency == 2
    assert len({r.client_port for r in data_host.requests}) == 2  # two kept-alive connections served all 14


@pytest.mark.fakedata
def test_two_runs_at_once_download_a_file_once(root: Path, synth_days: dict[date, list[Trade]]) -> None:
    with FakeDataServer(root, chunk=256, chunk_pause=0.002) as slow:
        results: list[list[Trade]] = []
        runs = [threading.Thread(target=lambda: results.append(fetch(slow, "2023-02-01"))) for _ in range(2)]
        for run in runs:
            run.start()
        for run in runs:
            run.join(60)
        assert results == [synth_days[D(2023, 2, 1)]] * 2
        assert len(zip_requests(slow)) == 1


def test_a_damaged_cache_file_is_fetched_again(data_host: FakeDataServer, private_cache: Path,
                                               synth_days: dict[date, list[Trade]],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fetch(data_host, "2023-02-01")
    (cached,) = private_cache.rglob("*.zip")
    cached.write_bytes(cached.read_bytes()[:-10])
    data_host.clear()
    assert fetch(data_host, "2023-02-01") == synth_days[D(2023, 2, 1)]
    assert zip_requests(data_host) == [f"{SYNTH}-aggTrades-2023-02-01.zip"]
    assert capsys.readouterr().err == f"note: {cached} no longer matches its checksum; downloading it again\n"


# --- streaming and progress --------------------------------------------------------------------------


def test_a_zip_is_streamed_not_loaded(tmp_path: Path) -> None:
    days = synthetic_days(D(2023, 2, 1), D(2023, 2, 1), per_day=150_000)
    path = write_archive(tmp_path, "daily", SYNTH, "2023-02-01", days[D(2023, 2, 1)])
    tracemalloc.start()
    try:
        count = sum(1 for _ in zip_trades(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 150_000
    assert peak < 2_000_000, f"peak {peak:,} bytes while streaming ~{150_000 * 70:,} bytes of CSV"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_on_a_terminal_only(data_host: FakeDataServer) -> None:
    screen, pipe = Terminal(), io.StringIO()
    history = fetch_history(SYNTH, parse_date_span("2023-02-01..2023-02-02"), settings(data_host),
                            progress_stream=screen)
    list(history.trades())
    assert f"downloading {SYNTH} 2023-02-01..2023-02-02" in screen.getvalue()
    assert f"reading {SYNTH} 2023-02-01..2023-02-02" in screen.getvalue()
    Progress("quiet", pipe).expect(10)
    history = fetch_history(SYNTH, parse_date_span("2023-02-03"), settings(data_host), progress_stream=pipe)
    list(history.trades())
    assert pipe.getvalue() == ""


# --- the command line --------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


SWEEP = ("--side", "SELL", "--trailing-percent", "0.5,1,2", "--activation-price", "none,0.00145", "--json")


def test_backtest_a_range_equals_backtest_of_the_file(data_host: FakeDataServer,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, from_file, err = cli(capsys, "backtest", *SWEEP)
    assert code == 0, err
    code, fetched, err = cli(capsys, "backtest", "--symbol", "XRPETH", "--date", "2019-10-11..2019-10-13",
                             "--data-url", data_host.url, *SWEEP)
    assert code == 0 and err == ""  # quiet: stderr is not a terminal
    assert json.loads(fetched) == json.loads(from_file)
    code, monthly, err = cli(capsys, "backtest", "--symbol", "XRPETH", "--month", "2019-10",
                             "--data-url", data_host.url, *SWEEP)
    assert code == 0, err
    assert json.loads(monthly) == json.loads(from_file)
    assert "XRPETH-aggTrades-2019-10.zip" in zip_requests(data_host)


def test_the_data_url_setting(data_host: FakeDataServer, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAILINGSTOP_DATA_URL", data_host.url)
    code, out, err = cli(capsys, "backtest", "--symbol", "XRPETH", "--date", "2019-10-11", *SWEEP)
    assert code == 0, err
    assert len(json.loads(out)) == 6
    assert zip_requests(data_host) == ["XRPETH-aggTrades-2019-10-11.zip"]


def test_run_on_fetched_days(data_host: FakeDataServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, from_file, _ = cli(capsys, "run", EXAMPLE)
    assert code == 0
    code, fetched, err = cli(capsys, "run", EXAMPLE, "--date", "2019-10-11..2019-10-13", "--data-url", data_host.url)
    assert code == 0, err
    assert fetched.splitlines()[0] == (f"1 stop(s) on XRPETH aggTrades of 2019-10-11..2019-10-13 from {data_host.url}; "
                                       "orders are simulated")
    assert fetched.splitlines()[1:] == from_file.splitlines()[1:]


@pytest.mark.parametrize(("args", "message"), [
    (["backtest", "--date", "2023-02-01"], "error: --date needs --symbol (e.g. --symbol ETHUSDT)\n"),
    (["backtest", "--month", "2023-02"], "error: --month needs --symbol (e.g. --symbol ETHUSDT)\n"),
    (["backtest", "--symbol", "X", "--date", "2023-02-01"],
     "error: --symbol must be 2-20 letters or digits like ETHUSDT, got 'X'\n"),
    (["backtest", "--symbol", "ETHUSDT", "--date", "2023-02-31"],
     "error: --date: '2023-02-31' is not a date (YYYY-MM-DD, or FIRST..LAST)\n"),
    (["backtest", "--data-url", "http://127.0.0.1:9"], "error: --data-url is only used with --date or --month\n"),
    (["backtest", "--symbol", "ETHUSDT", "--date", "2023-02-01", "--data-url", "data.binance.vision"],
     "error: --data-url must be an http(s) URL like https://data.binance.vision, got 'data.binance.vision'\n"),
    (["run", str(EXAMPLE), "--symbol", "BTCUSDT", "--date", "2023-02-01"],
     "error: --date 2023-02-01 holds BTCUSDT trades, but the manifests also have stops on XRPETH; run those with "
     "their own trade file or --live\n"),
])
def test_command_line_mistakes(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    extra = ["--side", "SELL", "--trailing-percent", "1"] if args[0] == "backtest" else []
    assert cli(capsys, *args, *extra) == (2, "", message)


def test_date_and_trades_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["backtest", "--trades", "x.csv", "--date", "2023-02-01", "--side", "SELL", "--trailing-percent", "1"])
    assert caught.value.code == 2
    assert "argument --date: not allowed with argument --trades" in capsys.readouterr().err


def test_download_failures_are_one_line(root: Path, data_host: FakeDataServer, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["backtest", "--side", "SELL", "--trailing-percent", "1", "--data-url", data_host.url, "--symbol"]
    tamper(root / remote_path("daily", SYNTH, "2023-02-03"))
    code, out, err = cli(capsys, *base, SYNTH, "--date", "2023-02-03")
    assert (code, out) == (2, "") and err.startswith("error: checksum mismatch for ") and err.count("\n") == 1
    code, out, err = cli(capsys, *base, "NOSUCHUSDT", "--date", "2023-02-03")
    assert (code, out) == (2, "") and err.startswith("error: unknown symbol NOSUCHUSDT: ") and err.count("\n") == 1
    monkeypatch.setenv("TRAILINGSTOP_DATA_RETRIES", "1")
    data_host.drop(after_bytes=100, times=10)
    code, out, err = cli(capsys, *base, SYNTH, "--date", "2023-02-04")
    assert (code, out) == (1, "")
    where = f"{data_host.url}/{remote_path('daily', SYNTH, '2023-02-04')}"
    assert err == (f"error: cannot download {where}: the connection "
                   "dropped before the file was complete (tried 2 times)\n")


def test_the_console_script_shows_progress_on_a_terminal_only(data_host: FakeDataServer, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "trailingstop"
    argv = [str(script), "backtest", "--symbol", SYNTH, "--date", "2023-02-05..2023-02-06", "--data-url", data_host.url,
            "--side", "SELL", "--trailing-percent", "1"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "pty-cache")}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 0x0 terminal shows no bar
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    screen = _read_all(leader, process)
    assert process.returncode == 0, screen
    assert f"downloading {SYNTH} 2023-02-05..2023-02-06" in screen
    env["XDG_CACHE_HOME"] = str(tmp_path / "pipe-cache")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert "2 combinations" not in done.stdout and done.stdout.rstrip().endswith(
        "1 combinations; reference/stop are at the trigger, else at the end of the data")


def _read_all(fd: int, process: subprocess.Popen[bytes], timeout: float = 120) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    process.wait(timeout=max(1.0, deadline - time.monotonic()))
    assert process.stdout is not None
    process.stdout.close()
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def test_outcome_figures_are_decimal_strings(data_host: FakeDataServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "backtest", "--symbol", "XRPETH", "--date", "2019-10-11..2019-10-13",
                       "--data-url", data_host.url, *SWEEP)
    assert code == 0
    for record in json.loads(out):
        for key in ("exitPrice", "changePercent", "outcomePercent"):
            assert record[key] is None or (isinstance(record[key], str) and Decimal(record[key]).is_finite())

"""Binance public market data: a symbol's aggTrades for some days or months, verified and cached.

Binance publishes every spot symbol's aggregate trades on its public-data host, in one layout::

    data/spot/daily/aggTrades/SYMBOL/SYMBOL-aggTrades-YYYY-MM-DD.zip     (+ .zip.CHECKSUM)
    data/spot/monthly/aggTrades/SYMBOL/SYMBOL-aggTrades-YYYY-MM.zip      (+ .zip.CHECKSUM)

Each zip holds one CSV named like it (read by :mod:`trailingstop.tradefiles`); each ``.CHECKSUM`` is
``sha256sum`` output (``<64 hex>  <file name>``). A day is published the day after it ends (UTC),
a month some days after it ends.

How a span of days becomes downloads (:func:`plan`): a calendar month the span covers whole is
one monthly archive (one file instead of up to 31, and no larger), the rest are daily files; a
month whose daily files are all cached already, and whose monthly archive is not, stays daily
(nothing to download beats one file). A monthly archive that is not published (yet) falls back to
its daily files.

How a file is fetched (:class:`Fetcher`): from the cache when it is there and still matches its
saved checksum; else its ``.CHECKSUM`` first, then the zip into ``NAME.zip.part`` (locked, so two
processes never write one file; resumed with a Range request after a dropped connection), hashed
while it arrives, and renamed to ``NAME.zip`` only when its SHA-256 matches. One aiohttp session
(one connection pool) serves every file, at most ``parallel`` at a time; every request has a
connect timeout and a read timeout (the longest silence allowed) and is retried with backoff on a
timeout, a dropped connection, HTTP 5xx or 429. The cache is ``$XDG_CACHE_HOME/trailingstop/history``
(``~/.cache`` without it), then the data host (``data.binance.vision``, or ``HOST_PORT`` of another
``--data-url``) and the remote path, so a second run downloads nothing and two hosts never mix.

Trades are then streamed file after file (:meth:`History.trades`), each zip member decompressed
and parsed as it is read: a month of BTCUSDT (tens of millions of trades) is never in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import difflib
import fcntl
import hashlib
import io
import os
import re
import sys
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp

from trailingstop.core.trade import Trade
from trailingstop.settings import DEFAULT_DATA_URL, SettingsError, load_settings
from trailingstop.tradefiles import SkippedTrades, TradeFileError, in_id_order, read_csv_stream

# The bucket behind data.binance.vision answers S3 listings here (its web page lists files this way).
BINANCE_LISTING_URL = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
DATA_URL_ENV = "TRAILINGSTOP_DATA_URL"

Kind = Literal["daily", "monthly"]
T = TypeVar("T")

_SYMBOL = re.compile(r"^[A-Z0-9]{2,20}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CHUNK = 1 << 16
_MAX_SMALL_BODY = 4 << 20  # a .CHECKSUM or a listing page; anything larger is not one
_MAX_BACKOFF = 8.0
_MAX_RETRY_AFTER = 60.0
_SHOWN_MISSING = 5


# --- errors --------------------------------------------------------------------------------------


class HistoryError(Exception):
    """A one-line, user-facing failure; ``exit_code`` 2 is bad input (what the CLI uses for it)."""

    exit_code = 2


class DownloadFailed(HistoryError):
    """The data host could not be reached or kept failing: not the user's input, so exit 1."""

    exit_code = 1


class _Missing(Exception):
    """HTTP 404 for these archives (explained to the user once every download has finished)."""

    def __init__(self, archives: Sequence[Archive], url: str) -> None:
        super().__init__(url)
        self.archives = list(archives)
        self.url = url


class _Retryable(Exception):
    def __init__(self, problem: str, delay: float | None = None) -> None:
        super().__init__(problem)
        self.delay = delay


_RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, _Retryable)


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistorySettings:
    """Where and how to download. Every field has a ``TRAILINGSTOP_DATA_*`` variable (README)."""

    data_url: str = DEFAULT_DATA_URL
    parallel: int = 4  # files downloaded at once (the host is shared: stay polite)
    connect_timeout: float = 10.0  # seconds
    read_timeout: float = 30.0  # seconds without a byte before the request is retried
    retries: int = 4  # after the first attempt
    retry_delay: float = 0.5  # seconds before the first retry; doubles each time, at most 8 s

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, data_url: str | None = None) -> HistorySettings:
        """From the ``TRAILINGSTOP_DATA_*`` settings (:mod:`trailingstop.settings`); ``data_url``
        (``--data-url``) wins over ``TRAILINGSTOP_DATA_URL``."""
        try:
            settings = load_settings(environ)
        except SettingsError as exc:
            raise HistoryError(str(exc)) from None
        return cls(
            data_url=check_data_url(data_url or settings.data_url),
            parallel=settings.data_parallel,
            connect_timeout=settings.data_connect_timeout,
            read_timeout=settings.data_timeout,
            retries=settings.data_retries,
            retry_delay=settings.data_retry_delay,
        )


def check_data_url(url: str) -> str:
    """The base URL without its trailing slash; refuses what is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise HistoryError(f"--data-url must be an http(s) URL like {DEFAULT_DATA_URL}, got {url[:80]!r}")
    return url.strip().rstrip("/")


def check_symbol(symbol: str) -> str:
    upper = symbol.strip().upper()
    if not _SYMBOL.match(upper):
        raise HistoryError(f"--symbol must be 2-20 letters or digits like ETHUSDT, got {symbol[:40]!r}")
    return upper


# --- what to fetch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Days from ``first`` to ``last`` inclusive; ``label`` is how the user wrote them."""

    first: date
    last: date
    label: str

    def days(self) -> Iterator[date]:
        day = self.first
        while day <= self.last:
            yield day
            day += timedelta(days=1)


def parse_date_span(text: str) -> Span:
    """``YYYY-MM-DD`` or ``YYYY-MM-DD..YYYY-MM-DD`` (inclusive)."""
    first, last = _parse_range(text, _parse_day, "--date", "a date (YYYY-MM-DD, or FIRST..LAST)")
    label = first.isoformat() if first == last else f"{first.isoformat()}..{last.isoformat()}"
    return Span(first, last, label)


def parse_month_span(text: str) -> Span:
    """``YYYY-MM`` or ``YYYY-MM..YYYY-MM`` (inclusive): every day of those months."""
    first, last_month = _parse_range(text, _parse_month, "--month", "a month (YYYY-MM, or FIRST..LAST)")
    label = first.strftime("%Y-%m") if first == last_month else f"{first:%Y-%m}..{last_month:%Y-%m}"
    return Span(first, _month_end(last_month), label)


def _parse_range(text: str, parse: Callable[[str], date | None], flag: str, what: str) -> tuple[date, date]:
    first_text, dots, last_text = text.strip().partition("..")
    first = parse(first_text)
    last = parse(last_text) if dots else first
    if first is None or last is None:
        raise HistoryError(f"{flag}: {text.strip()[:40]!r} is not {what}")
    if last < first:
        raise HistoryError(f"{flag}: the range {text.strip()!r} ends before it starts")
    return first, last


def _parse_day(text: str) -> date | None:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        with contextlib.suppress(ValueError):
            return date.fromisoformat(text.strip())
    return None


def _parse_month(text: str) -> date | None:
    match = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
    if match and 1 <= int(match.group(2)) <= 12 and int(match.group(1)) >= 1:
        return date(int(match.group(1)), int(match.group(2)), 1)
    return None


def _month_end(first: date) -> date:
    return first.replace(day=calendar.monthrange(first.year, first.month)[1])


@dataclass(frozen=True, order=True)
class Archive:
    """One published file: a day's or a month's aggTrades of one symbol."""

    first: date  # first day it holds (sorts archives in trade order)
    kind: Kind
    symbol: str

    @property
    def last(self) -> date:
        return self.first if self.kind == "daily" else _month_end(self.first)

    @property
    def period(self) -> str:
        return self.first.isoformat() if self.kind == "daily" else self.first.strftime("%Y-%m")

    @property
    def name(self) -> str:
        return f"{self.symbol}-aggTrades-{self.period}.zip"

    @property
    def remote_path(self) -> str:
        return f"data/spot/{self.kind}/aggTrades/{self.symbol}/{self.name}"

    def daily_parts(self) -> list[Archive]:
        return [Archive(day, "daily", self.symbol) for day in Span(self.first, self.last, "").days()]


def plan(symbol: str, span: Span, cached: Callable[[Archive], bool] = lambda _: False) -> list[Archive]:
    """The archives that hold ``span``, in trade order, downloading as little as possible."""
    archives: list[Archive] = []
    month = span.first.replace(day=1)
    while month <= span.last:
        first, last = max(span.first, month), min(span.last, _month_end(month))
        days = Span(first, last, "").days()
        dailies = [Archive(day, "daily", symbol) for day in days]
        monthly = Archive(month, "monthly", symbol)
        whole = first == month and last == _month_end(month)
        if whole and not (all(cached(d) for d in dailies) and not cached(monthly)):
            archives.append(monthly)
        else:
            archives.extend(dailies)
        month = _month_end(month) + timedelta(days=1)
    return archives


# --- the cache -----------------------------------------------------------------------------------


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/trailingstop/history`` (the spec ignores a relative XDG_CACHE_HOME)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "trailingstop" / "history"


@dataclass(frozen=True)
class HistoryCache:
    """Where archives of one data host live on disk: ``root/HOST[_PORT][/PATH]/REMOTE_PATH``."""

    root: Path
    data_url: str

    @property
    def host_dir(self) -> Path:
        parts = urlsplit(self.data_url)
        host = parts.hostname or "host"
        if parts.port is not None:
            host = f"{host}_{parts.port}"
        path = [re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in parts.path.split("/") if p not in ("", ".", "..")]
        return self.root.joinpath(host, *path)

    def path(self, archive: Archive) -> Path:
        return self.host_dir / archive.remote_path

    def checksum_path(self, archive: Archive) -> Path:
        return self.host_dir / (archive.remote_path + ".CHECKSUM")

    def has(self, archive: Archive) -> bool:
        return self.path(archive).is_file() and self.checksum_path(archive).is_file()


def parse_checksum(text: str, name: str, where: str) -> str:
    """The SHA-256 hex of a ``.CHECKSUM`` (``sha256sum`` output naming ``name``)."""
    fields = text.strip().split()
    if not fields or not _SHA256.match(fields[0]) or len(fields) > 2:
        raise HistoryError(f"{where}: not a SHA-256 checksum file (expected '<64 hex digits>  {name}')")
    if len(fields) == 2 and fields[1].lstrip("*") != name:
        raise HistoryError(f"{where}: the checksum is for {fields[1][:80]!r}, not {name}")
    return fields[0].lower()


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --- progress ------------------------------------------------------------------------------------


class Progress:
    """A byte-counting progress bar on a terminal (tqdm), nothing at all otherwise."""

    def __init__(self, description: str, stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = _is_terminal(stream)
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=None, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                             file=stream, leave=False, dynamic_ncols=True)

    def expect(self, size: int | None) -> None:
        if self._bar is not None and size:
            self._bar.total = (self._bar.total or 0) + size
            self._bar.refresh()

    def update(self, size: int) -> None:
        if self._bar is not None:
            self._bar.update(size)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


# --- fetching ------------------------------------------------------------------------------------


@dataclass
class FetchReport:
    """What a fetch did: files taken from the cache, files (and bytes) downloaded."""

    cached: int = 0
    downloaded: int = 0
    bytes: int = 0
    fallbacks: list[str] = field(default_factory=list)  # monthly archives replaced by daily files


class Fetcher:
    """Downloads archives into a :class:`HistoryCache` over one connection pool."""

    def __init__(self, settings: HistorySettings, cache: HistoryCache, progress: Progress | None = None,
                 notes: IO[str] | None = None) -> None:
        self.settings = settings
        self.cache = cache
        self.progress = progress or Progress("", enabled=False)
        self.notes = sys.stderr if notes is None else notes
        self.report = FetchReport()
        self._found_any = False
        self._slots = asyncio.Semaphore(settings.parallel)

    async def fetch(self, archives: Sequence[Archive]) -> list[Path]:
        """Local, verified paths holding ``archives`` in order (a missing month as its days)."""
        async with self._session() as session:
            outcomes = await asyncio.gather(*(self._resolve(session, a) for a in archives), return_exceptions=True)
            missing: list[Archive] = []
            first_url = ""
            for outcome in outcomes:
                if isinstance(outcome, _Missing):
                    missing.extend(outcome.archives)
                    first_url = first_url or outcome.url
                elif isinstance(outcome, BaseException):
                    raise outcome
            if missing:
                raise await self._explain_missing(session, missing, first_url)
        return [path for outcome in outcomes if isinstance(outcome, list) for path in outcome]

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[aiohttp.ClientSession]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout,
                                        sock_read=self.settings.read_timeout)
        connector = aiohttp.TCPConnector(limit=self.settings.parallel)
        # auto_decompress off: the bytes hashed must be the bytes published.
        headers = {"User-Agent": "trailingstop-history", "Accept-Encoding": "identity"}
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False,
                                         headers=headers) as session:
            yield session

    async def _resolve(self, session: aiohttp.ClientSession, archive: Archive) -> list[Path]:
        if archive.kind == "daily":
            return [await self._one(session, archive)]
        try:
            return [await self._one(session, archive)]
        except _Missing:
            self.report.fallbacks.append(archive.period)
        days = archive.daily_parts()
        outcomes = await asyncio.gather(*(self._one(session, d) for d in days), return_exceptions=True)
        missing = [a for o in outcomes if isinstance(o, _Missing) for a in o.archives]
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, _Missing):
                raise outcome
        if missing:
            first = next(o for o in outcomes if isinstance(o, _Missing))
            raise _Missing(missing, first.url)
        return [o for o in outcomes if isinstance(o, Path)]

    async def _one(self, session: aiohttp.ClientSession, archive: Archive) -> Path:
        async with self._slots:
            final = self.cache.path(archive)
            if await self._cached_and_sound(archive):
                self._found_any = True
                self.report.cached += 1
                return final
            url = self._url(archive.remote_path + ".CHECKSUM")
            text = await self._get_small(session, url)
            if text is None:
                raise _Missing([archive], url)
            self._found_any = True
            expected = parse_checksum(text.decode("utf-8", "replace"), archive.name, url)
            final.parent.mkdir(parents=True, exist_ok=True)
            await self._download(session, archive, expected)
            return final

    async def _cached_and_sound(self, archive: Archive) -> bool:
        if not self.cache.has(archive):
            return False
        final, saved = self.cache.path(archive), self.cache.checksum_path(archive)
        try:
            expected = parse_checksum(saved.read_text("utf-8", "replace"), archive.name, str(saved))
            actual = await asyncio.to_thread(sha256_of, final)
        except (HistoryError, OSError):
            actual, expected = "", "unreadable"
        if actual == expected:
            return True
        print(f"note: {final} no longer matches its checksum; downloading it again", file=self.notes)
        for stale in (final, saved):
            stale.unlink(missing_ok=True)
        return False

    async def _download(self, session: aiohttp.ClientSession, archive: Archive, expected: str) -> None:
        """The zip into ``NAME.part`` (locked), checked, then renamed; a damaged resume is redone once.

        A ``.part`` left by a failed run is resumed; one that cannot be right (a checksum mismatch)
        is removed, and so is an empty one.
        """
        final = self.cache.path(archive)
        part = final.with_name(final.name + ".part")
        url = self._url(archive.remote_path)
        with part.open("a+b") as handle:
            await _lock(handle)
            try:
                if final.exists():  # another process finished it while we waited for the lock
                    return
                partial = _Partial(handle)
                await self._fetch_body(session, url, partial, archive)
                if partial.hexdigest() != expected and partial.resumed:
                    partial.restart()
                    await self._fetch_body(session, url, partial, archive)
                actual = partial.hexdigest()
                if actual != expected:
                    partial.restart()
                    raise HistoryError(f"checksum mismatch for {archive.name}: its SHA-256 is {actual}, but "
                                       f"{url}.CHECKSUM says {expected}; the file was not used")
                os.fsync(handle.fileno())
                _write_atomically(self.cache.checksum_path(archive), f"{expected}  {archive.name}\n")
                os.replace(part, final)
                self.report.downloaded += 1
                self.report.bytes += partial.size
            finally:
                _remove_if_empty(part, handle)

    async def _fetch_body(self, session: aiohttp.ClientSession, url: str, partial: _Partial,
                          archive: Archive) -> None:
        async def attempt() -> None:
            headers = {"Range": f"bytes={partial.size}-"} if partial.size else {}
            async with session.get(url, headers=headers) as response:
                if response.status == 404:
                    raise _Missing([archive], url)
                if response.status == 416 and partial.size:
                    return  # everything is here already; the checksum decides
                _check_status(response, url)
                if not _continues_at(response, partial.size):
                    partial.restart()
                partial.resumed = partial.resumed or partial.size > 0
                self.progress.expect(response.content_length)
                async for chunk in response.content.iter_chunked(_CHUNK):
                    partial.write(chunk)
                    self.progress.update(len(chunk))

        await self._retrying(url, attempt)

    async def _get_small(self, session: aiohttp.ClientSession, url: str) -> bytes | None:
        """A small body (a checksum, a listing); None for HTTP 404."""

        async def attempt() -> bytes | None:
            async with session.get(url) as response:
                if response.status == 404:
                    return None
                _check_status(response, url)
                body = await response.content.read(_MAX_SMALL_BODY + 1)
                if len(body) > _MAX_SMALL_BODY or not response.content.at_eof():
                    raise HistoryError(f"{url}: larger than {_MAX_SMALL_BODY:,} bytes; not a checksum or listing")
                return body

        return await self._retrying(url, attempt)

    async def _retrying(self, url: str, attempt: Callable[[], Awaitable[T]]) -> T:
        retries = self.settings.retries
        problem = ""
        for number in range(retries + 1):
            try:
                return await attempt()
            except _RETRYABLE as exc:
                problem = _describe(exc, self.settings)
                wait = min(self.settings.retry_delay * 2 ** number, _MAX_BACKOFF)
                if isinstance(exc, _Retryable) and exc.delay is not None:  # the server's Retry-After
                    wait = min(exc.delay, _MAX_RETRY_AFTER)
            if number < retries:
                await asyncio.sleep(wait)
        raise DownloadFailed(f"cannot download {url}: {problem} (tried {retries + 1} times)")

    def _url(self, remote_path: str) -> str:
        return f"{self.settings.data_url}/{remote_path}"

    # --- why a file is missing ---------------------------------------------------------------

    async def _explain_missing(self, session: aiohttp.ClientSession, missing: list[Archive],
                               url: str) -> HistoryError:
        symbol = missing[0].symbol
        periods = sorted({a.period for a in missing})
        shown = ", ".join(periods[:_SHOWN_MISSING])
        if len(periods) > _SHOWN_MISSING:
            shown += f" and {len(periods) - _SHOWN_MISSING} more"
        known, published, similar = await self._symbol_known(session, symbol)
        if known is False and not self._found_any:
            hint = f" (did you mean {' or '.join(similar)}?)" if similar else ""
            return HistoryError(f"unknown symbol {symbol}: {self.settings.data_url} publishes no spot aggTrades "
                                f"for it{hint}")
        where = f"on {self.settings.data_url} (HTTP 404 for {url.rsplit('/', 1)[-1]})"
        if known is None and not self._found_any:
            return HistoryError(f"no {symbol} aggTrades for {shown} {where}: either {symbol} is not a Binance "
                                "spot symbol or it has no trades on those days")
        detail = "not published"
        if max(a.last for a in missing) >= datetime.now(UTC).date():
            detail += " yet (Binance publishes a day after it ends, UTC)"
        if published:
            detail += f"; {symbol} has daily files from {published[0]} to {published[-1]}"
        return HistoryError(f"no {symbol} aggTrades for {shown} {where}: {detail}")

    async def _symbol_known(self, session: aiohttp.ClientSession,
                            symbol: str) -> tuple[bool | None, list[str], list[str]]:
        """(known?, its published days, similar symbols) from whatever listing the host offers.

        Tried in turn: an S3 listing (Binance's bucket), then directory pages (a plain file server).
        None when neither answers in a way that decides.
        """
        for probe in (self._s3_listing, self._directory_listing):
            try:
                verdict = await probe(session, symbol)
            except (HistoryError, *_RETRYABLE):
                continue
            if verdict[0] is not None:
                return verdict
        return None, [], []

    async def _s3_listing(self, session: aiohttp.ClientSession,
                          symbol: str) -> tuple[bool | None, list[str], list[str]]:
        base = BINANCE_LISTING_URL if self.settings.data_url == DEFAULT_DATA_URL else self.settings.data_url
        prefix = f"data/spot/daily/aggTrades/{symbol}/"
        body = await self._get_small(session, f"{base}/?prefix={prefix}&delimiter=/")
        text = (body or b"").decode("utf-8", "replace")
        if "<ListBucketResult" not in text:
            return None, [], []
        known = f"<Key>{prefix}" in text
        # A truncated listing (1,000 keys) holds only the oldest days: no range to quote then.
        days = [] if "<IsTruncated>true" in text else _published_days(text, symbol)
        return known, days, []

    async def _directory_listing(self, session: aiohttp.ClientSession,
                                 symbol: str) -> tuple[bool | None, list[str], list[str]]:
        own = await self._get_small(session, self._url(f"data/spot/daily/aggTrades/{symbol}/"))
        days = _published_days((own or b"").decode("utf-8", "replace"), symbol)
        if days:
            return True, days, []
        parent = await self._get_small(session, self._url("data/spot/daily/aggTrades/"))
        listed = set(re.findall(r'href="(?:[^"]*/)?([A-Z0-9]{2,20})/"', (parent or b"").decode("utf-8", "replace")))
        if not listed:
            return None, [], []
        if symbol in listed:
            return True, [], []
        return False, [], difflib.get_close_matches(symbol, sorted(listed), n=2, cutoff=0.75)


def _published_days(listing: str, symbol: str) -> list[str]:
    return sorted(set(re.findall(rf"{symbol}-aggTrades-(\d{{4}}-\d{{2}}-\d{{2}})\.zip(?!\.)", listing)))


def _check_status(response: aiohttp.ClientResponse, url: str) -> None:
    if response.status in (200, 206):
        return
    if response.status == 429 or response.status >= 500:
        retry_after = response.headers.get("Retry-After", "")
        delay = float(retry_after) if retry_after.isdigit() else None
        raise _Retryable(f"HTTP {response.status} {response.reason or ''}".strip(), delay)
    raise DownloadFailed(f"cannot download {url}: HTTP {response.status} {response.reason or ''}".strip())


def _continues_at(response: aiohttp.ClientResponse, offset: int) -> bool:
    """Whether a response carries the bytes from ``offset`` on (a 206 for our Range)."""
    if offset == 0:
        return response.status == 200
    content_range = response.headers.get("Content-Range", "")
    return response.status == 206 and content_range.startswith(f"bytes {offset}-")


def _describe(exc: BaseException, settings: HistorySettings) -> str:
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError) and not str(exc):
        return f"no answer within {settings.read_timeout:g} s"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return f"timed out ({exc})"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection dropped before the file was complete"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


class _Partial:
    """The bytes of a download so far (a ``.part`` file) and their running SHA-256."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.resumed = False
        self._digest = hashlib.sha256()
        handle.seek(0)
        while block := handle.read(1 << 20):
            self._digest.update(block)
        self.size = handle.tell()

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self._digest = hashlib.sha256()
        self.size = 0

    def hexdigest(self) -> str:
        self.handle.flush()
        return self._digest.hexdigest()


async def _lock(handle: IO[bytes]) -> None:
    """An exclusive lock on a ``.part`` file, waited for without blocking the other downloads."""
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(0.1)


def _remove_if_empty(part: Path, handle: IO[bytes]) -> None:
    """Remove ``part`` if it is still the (empty) file ``handle`` holds; keep what it has otherwise."""
    handle.flush()
    ours = os.fstat(handle.fileno())
    with contextlib.suppress(FileNotFoundError):
        if ours.st_size == 0 and os.stat(part).st_ino == ours.st_ino:
            part.unlink()


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


# --- reading -------------------------------------------------------------------------------------


@dataclass
class History:
    """Fetched archives of one symbol over one span, ready to stream."""

    symbol: str
    span: Span
    files: list[Path]
    data_url: str = DEFAULT_DATA_URL
    report: FetchReport = field(default_factory=FetchReport)
    progress_stream: IO[str] | None = None

    def trades(self, show_progress: bool = True, skipped: SkippedTrades | None = None) -> Iterator[Trade]:
        """Every trade, file after file, parsed as it is decompressed (nothing held in memory).

        ``show_progress``: a reading bar on a terminal; off where the caller prints as it goes.
        ``skipped``: trades whose id is not above the previous one's (across files) are left out
        and counted there, as :func:`trailingstop.tradefiles.read_trades` does for one file.
        """
        sizes = [_uncompressed_size(path) for path in self.files]
        progress = Progress(f"reading {self.symbol} {self.span.label}", self.progress_stream,
                            enabled=None if show_progress else False)
        progress.expect(sum(sizes))
        try:
            for path in self.files:
                located = zip_trades(path, progress.update)
                if skipped is None:
                    yield from (trade for _, trade in located)
                else:
                    yield from in_id_order(located, skipped)
        finally:
            progress.close()


def zip_trades(path: Path, on_read: Callable[[int], None] = lambda _: None) -> Iterator[tuple[str, Trade]]:
    """``("FILE:LINE", trade)`` of a Binance aggTrades zip (one CSV inside), streamed."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) != 1:
                raise TradeFileError(path, None, f"expected one file in the zip, found {len(members)}")
            with archive.open(members[0]) as member:
                counted = io.BufferedReader(_CountingReader(cast(io.BufferedIOBase, member), on_read), _CHUNK)
                yield from read_csv_stream(path, counted)
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile, EOFError) as exc:
        raise TradeFileError(path, None, f"cannot read: {exc}") from None


def _uncompressed_size(path: Path) -> int:
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile) as exc:
        raise TradeFileError(path, None, f"cannot read: {exc}") from None


class _CountingReader(io.RawIOBase):
    """Passes reads through and reports how many bytes went by (for the reading progress bar)."""

    def __init__(self, inner: io.BufferedIOBase, on_read: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._inner.readinto(buffer)
        self._on_read(count)
        return count


# --- one call ------------------------------------------------------------------------------------


def fetch_history(symbol: str, span: Span, settings: HistorySettings, *, cache: HistoryCache | None = None,
                  progress_stream: IO[str] | None = None) -> History:
    """Download (or find in the cache) every archive of ``span`` and return them, verified."""
    symbol = check_symbol(symbol)
    cache = cache or HistoryCache(cache_root(), settings.data_url)
    archives = plan(symbol, span, cache.has)
    progress = Progress(f"downloading {symbol} {span.label}", progress_stream)
    fetcher = Fetcher(settings, cache, progress, notes=progress_stream)
    try:
        files = asyncio.run(fetcher.fetch(archives))
    finally:
        progress.close()
    return History(symbol, span, files, settings.data_url, fetcher.report, progress_stream)


# --- command-line flags --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, sources: argparse._MutuallyExclusiveGroup) -> None:
    """``--date``/``--month`` (alternatives to the command's other trade sources) and ``--data-url``."""
    sources.add_argument("--date", metavar="DAY[..DAY]",
                         help="fetch Binance aggTrades of --symbol for a day, or days FIRST..LAST (inclusive)")
    sources.add_argument("--month", metavar="YYYY-MM[..YYYY-MM]", help="fetch a month (or months) of aggTrades")
    parser.add_argument("--data-url", metavar="URL",
                        help=f"Binance public-data base URL (default: ${DATA_URL_ENV} or {DEFAULT_DATA_URL})")


def requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "date", None) or getattr(args, "month", None))


def span_of(args: argparse.Namespace) -> Span:
    return parse_date_span(args.date) if args.date else parse_month_span(args.month)


def fetch_for(args: argparse.Namespace, symbol: str) -> History:
    """What ``--date``/``--month``/``--data-url`` ask for, fetched."""
    span = span_of(args)
    settings = HistorySettings.from_env(data_url=args.data_url)
    return fetch_history(symbol, span, settings)

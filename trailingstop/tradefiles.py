"""Trade sources: Binance aggTrades from files (CSV or JSON) and the bundled demo data.

A trade here is one Binance *aggregate trade*. Files come in the layouts Binance itself produces:

* CSV from data.binance.vision: ``agg_trade_id,price,quantity,first_trade_id,last_trade_id,
  transact_time,is_buyer_maker[,is_best_match]``, with or without a header row, optionally inside
  a ``.zip`` or ``.gz`` (as downloaded). Newer files carry microsecond timestamps; they are read
  as milliseconds like everything else in this project.
* JSON: a list, or JSON lines, of REST aggTrade payloads ``{a,p,q,f,l,T,m,M}``, WebSocket events
  ``{"e": "aggTrade", ...}`` or combined-stream envelopes ``{"stream": ..., "data": {...}}``.

A malformed row raises :class:`TradeFileError` naming the file and line. Files are read as a
stream (a month of trades does not have to fit in memory) and within limits (line length, digits
of ids and times, JSON nesting, timestamps up to the year 9999); prices and quantities must be
plain decimals of at most 20 + 20 digits, the form the manifests accept.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import IO, Any, cast

from trailingstop.core.decimals import PRICE_PATTERN
from trailingstop.core.echo import cut, quoted, short_repr
from trailingstop.core.trade import Trade
from trailingstop.userfiles import UserFileError, decode_utf8, os_problem

DEMO_SYMBOL = "XRPETH"
DEMO_TRADES_NAME = "XRPETH-aggTrades-2019-10-11.csv"

CSV_COLUMNS = (
    "agg_trade_id",
    "price",
    "quantity",
    "first_trade_id",
    "last_trade_id",
    "transact_time",
    "is_buyer_maker",
    "is_best_match",
)
# Timestamps at or above this are microseconds (ms would be past the year 5000).
_MICROSECONDS_FLOOR = 100_000_000_000_000
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: what a date can show

# Limits of a trade file: a Binance row is under 100 bytes, its ids and times are 64-bit, and its
# JSON is an object in (at most) an envelope in an array.
MAX_LINE_BYTES = 4096
MAX_JSON_ARRAY_BYTES = 256 * 2**20
MAX_JSON_DEPTH = 8
MAX_INT_DIGITS = 19
MAX_INT = 2**63 - 1
_ASCII_INTEGER = re.compile(r"-?[0-9]+")
# Prices and quantities in the form the manifests accept (at most 20 + 20 digits), so everything
# computed from them stays exact (trailingstop.core.decimals).
_DECIMAL = re.compile(PRICE_PATTERN)
_POSITIVE_DECIMAL = re.compile(r"(?=[0-9.]*[1-9])" + PRICE_PATTERN.removeprefix("^"))
_BOOLEANS = {"true": True, "false": False}
_DECIMAL_FORM = "like 0.00145: ASCII digits, at most 20 before and 20 after the point, no sign or exponent"
_MAX_DECIMAL_CHARS = 64


class TradeFileError(ValueError):
    """A trade file could not be read; the message names the file and line."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


def demo_trades_path() -> Path:
    """Path of the bundled real Binance trades (XRPETH, 2019-10-11, 12,477 aggTrades)."""
    return Path(str(resources.files("trailingstop") / "data" / DEMO_TRADES_NAME))


@dataclass
class SkippedTrades:
    """Trades :func:`read_trades` left out because their id was not above the previous trade's.

    Aggregate trade ids rise by one per trade, so such a trade is a duplicate or out of order;
    applying it would move the stop backwards in time. ``first`` says where the first one was.
    """

    count: int = 0
    first: str | None = None  # "FILE:LINE: trade 7 after trade 9"
    last_id: int | None = None  # the last trade let through

    def note(self) -> str:
        return (f"skipped {self.count:,} trade(s) whose id was not above the previous trade's "
                f"(duplicates or out of order); the first at {self.first}")


def read_trades(path: str | Path, *, skipped: SkippedTrades | None = None) -> Iterator[Trade]:
    """Yield the trades of a CSV or JSON trade file in file order, reading it as a stream.

    With ``skipped``, a trade whose id is not above the previous one is left out and counted
    there (with where the first was); without it, every trade is yielded as the file has it.
    """
    located = _located_trades(Path(path))
    if skipped is None:
        for _, trade in located:
            yield trade
        return
    yield from in_id_order(located, skipped)


def in_id_order(located: Iterable[tuple[str, Trade]], skipped: SkippedTrades) -> Iterator[Trade]:
    """The trades whose id is above the previous one's; the others are counted in ``skipped``
    (which also carries the last id, so several files in a row are checked as one stream)."""
    for where, trade in located:
        last = skipped.last_id
        if last is not None and trade.trade_id <= last:
            skipped.count += 1
            if skipped.first is None:
                skipped.first = f"{where}: trade {trade.trade_id} after trade {last}"
            continue
        skipped.last_id = trade.trade_id
        yield trade


def read_csv_stream(path: str | Path, stream: IO[bytes]) -> Iterator[tuple[str, Trade]]:
    """``("FILE:LINE", trade)`` of a Binance aggTrades CSV read from a binary ``stream`` as it comes
    (``trailingstop.history`` streams a month's zip member this way), with the same limits and
    one-line errors as :func:`read_trades`."""
    return _parse_csv(Path(path), _lines(Path(path), stream))


def load_trades(path: str | Path) -> list[Trade]:
    """All trades of a file, as a list."""
    return list(read_trades(path))


def trade_from_payload(payload: Mapping[str, Any]) -> Trade:
    """A trade from a REST aggTrade payload or a WebSocket aggTrade event.

    Raises ValueError (with a readable message) when a field is missing or malformed.
    """
    if "data" in payload and isinstance(payload["data"], Mapping):
        payload = payload["data"]  # combined-stream envelope
    event = payload.get("e")
    if event is not None and event != "aggTrade":
        shown = quoted(event) if isinstance(event, str) else short_repr(event)
        raise ValueError(f"expected an aggTrade, got event type {shown}")
    try:
        return Trade(
            trade_id=_int(payload["a"], "a (aggregate trade id)"),
            price=_price(payload["p"], "p (price)"),
            qty=_quantity(payload["q"], "q (quantity)"),
            first_trade_id=_int(payload["f"], "f (first trade id)"),
            last_trade_id=_int(payload["l"], "l (last trade id)"),
            time=_millis(payload["T"], "T (trade time)"),
            buyer_maker=_bool(payload["m"], "m (is buyer maker)"),
            best_match=_bool(payload.get("M", True), "M (is best match)"),
        )
    except KeyError as missing:
        raise ValueError(f"missing field {short_repr(missing.args[0])}") from None


# --- reading: bounded, streamed, every failure a TradeFileError naming file and line ------------


def _located_trades(path: Path) -> Iterator[tuple[str, Trade]]:
    """``("FILE:LINE" or "FILE: item N", trade)`` for each trade of the file."""
    with _open_binary(path) as (stream, name):
        layout = _layout(name, _peek(path, stream))
        if layout == "json-array":
            yield from _parse_json_array(path, stream)
        elif layout == "json-lines":
            yield from _parse_json_lines(path, _lines(path, stream))
        else:
            yield from _parse_csv(path, _lines(path, stream))


def _layout(name: str, head: bytes) -> str:
    """csv, json-lines or json-array: by the file's name (without .gz; a zip's member), else by the
    first character."""
    name = name.removesuffix(".gz")
    first = head.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
    if name.endswith(".csv"):
        return "csv"
    if first == b"[":
        return "json-array"
    if name.endswith((".json", ".jsonl", ".ndjson")) or first == b"{":
        return "json-lines"
    return "csv"


def _peek(path: Path, stream: IO[bytes]) -> bytes:
    """The first bytes of the stream, left in it (every stream opened here is buffered)."""
    with _reading(path, 1):
        return cast(io.BufferedReader, stream).peek(MAX_LINE_BYTES)[:MAX_LINE_BYTES]


@contextlib.contextmanager
def _reading(path: Path, line: int | None) -> Iterator[None]:
    """Errors of reading (a truncated or corrupt archive, an I/O error) as a TradeFileError."""
    try:
        yield
    except EOFError:  # gzip: the stream ends before its end-of-stream marker
        raise TradeFileError(path, line, "the compressed file is truncated") from None
    except (OSError, zlib.error, zipfile.BadZipFile) as exc:
        raise TradeFileError(path, line, f"cannot read: {cut(str(exc) or type(exc).__name__)}") from None


@contextlib.contextmanager
def _open_binary(path: Path) -> Iterator[tuple[IO[bytes], str]]:
    """The file's bytes as a stream, through its archive when it is a ``.zip`` or ``.gz``, and the
    name of what is read (a zip's member)."""
    with contextlib.ExitStack() as stack:
        yield _open(path, stack)


def _open(path: Path, stack: contextlib.ExitStack) -> tuple[IO[bytes], str]:
    """Open ``path`` (and its one member, for a zip) on ``stack``; failures to open as TradeFileError.
    Failures while reading are _reading's."""
    try:
        if path.suffix == ".zip":
            archive = stack.enter_context(zipfile.ZipFile(path))
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) != 1:
                raise TradeFileError(path, None, f"expected one file in the zip, found {len(members)}")
            return stack.enter_context(archive.open(members[0])), Path(members[0].filename).name
        if path.suffix == ".gz":
            return cast(IO[bytes], stack.enter_context(gzip.open(path, "rb"))), path.name
        return stack.enter_context(path.open("rb")), path.name
    except OSError as exc:
        raise TradeFileError(path, None, os_problem(exc)) from None
    except zipfile.BadZipFile as exc:
        raise TradeFileError(path, None, f"cannot read: not a zip archive ({exc})") from None
    except (RuntimeError, NotImplementedError) as exc:  # an encrypted member, an unknown compression
        raise TradeFileError(path, None, f"cannot read the zip archive: {cut(str(exc))}") from None


def _lines(path: Path, stream: IO[bytes]) -> Iterator[tuple[int, str]]:
    """``(number, text)`` of each line, at most :data:`MAX_LINE_BYTES` long, decoded as UTF-8.

    Lines are read as bytes and decoded one by one, so a byte that is not UTF-8 is reported on
    its own line; a truncated or corrupt archive is reported where it stops making sense.
    """
    number = 0
    while True:
        number += 1
        with _reading(path, number):
            raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise TradeFileError(path, number, f"line longer than {MAX_LINE_BYTES:,} bytes; not a trade file?")
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = raw[exc.start]
            raise TradeFileError(path, number, f"not UTF-8 text: byte 0x{byte:02x} cannot be decoded") from None
        yield number, text.rstrip("\r\n")


def _parse_csv(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[str, Trade]]:
    for line, text in lines:
        if not text.strip():
            continue
        row = _csv_row(path, line, text)
        if line == 1 and row[0].strip().lower() == CSV_COLUMNS[0]:
            continue  # header row
        if len(row) not in (7, 8):
            raise TradeFileError(path, line, f"expected 7 or 8 columns ({','.join(CSV_COLUMNS)}), got {len(row)}")
        try:
            yield f"{path}:{line}", Trade(
                trade_id=_int(row[0], "agg_trade_id"),
                price=_price(row[1], "price"),
                qty=_quantity(row[2], "quantity"),
                first_trade_id=_int(row[3], "first_trade_id"),
                last_trade_id=_int(row[4], "last_trade_id"),
                time=_millis(row[5], "transact_time"),
                buyer_maker=_bool(row[6], "is_buyer_maker"),
                best_match=_bool(row[7], "is_best_match") if len(row) == 8 else True,
            )
        except ValueError as exc:
            raise TradeFileError(path, line, str(exc)) from None


def _csv_row(path: Path, line: int, text: str) -> list[str]:
    if '"' not in text:
        return text.split(",")  # Binance's files never quote: the fast path
    try:
        return next(csv.reader([text]))
    except csv.Error as exc:
        raise TradeFileError(path, line, f"not valid CSV: {exc}") from None


def _parse_json_array(path: Path, stream: IO[bytes]) -> Iterator[tuple[str, Trade]]:
    """A JSON array of trades (a REST answer saved to a file): parsed whole, within a size limit."""
    with _reading(path, None):
        data = stream.read(MAX_JSON_ARRAY_BYTES + 1)
    if len(data) > MAX_JSON_ARRAY_BYTES:
        raise TradeFileError(path, None, f"a JSON array larger than {MAX_JSON_ARRAY_BYTES // 2**20} MiB; "
                                         "write one trade per line (JSON lines) instead")
    try:
        text = decode_utf8(data)
    except UserFileError as exc:
        raise TradeFileError(path, exc.line, exc.problem) from None
    items = _json(path, 1, text)
    if not isinstance(items, list):
        raise TradeFileError(path, None, f"expected a JSON array of trades, got {type(items).__name__}")
    # A JSON array has no line per item; name the item's position instead.
    for index, item in enumerate(items):
        yield f"{path}: item {index}", _trade_from_json_item(path, None, item, f"item {index}")


def _parse_json_lines(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[str, Trade]]:
    for line, text in lines:
        if not text.strip():
            continue
        yield f"{path}:{line}", _trade_from_json_item(path, line, _json(path, line, text), None)


def _json(path: Path, line: int, text: str) -> Any:
    """``json.loads`` within limits: integers of at most 20 digits, nesting at most MAX_JSON_DEPTH."""
    try:
        value = json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise TradeFileError(path, line + exc.lineno - 1, f"invalid JSON: {exc.msg}") from None
    except _TooManyDigits as exc:
        raise TradeFileError(path, line, str(exc)) from None
    except RecursionError:
        raise TradeFileError(path, line, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise TradeFileError(path, line, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


class _TooManyDigits(ValueError):
    pass


def _json_int(text: str) -> int:
    # Python refuses to convert more than 4,300 digits (with a ValueError json.loads would not name);
    # a trade's ids and times are 64-bit.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _TooManyDigits(f"an integer of {len(text):,} digits; trade ids and times have at most {MAX_INT_DIGITS}")
    return int(text)


def _deeper_than(value: Any, depth: int) -> bool:
    if depth < 0:
        return True
    if isinstance(value, dict):
        return any(_deeper_than(item, depth - 1) for item in value.values())
    if isinstance(value, list):
        return any(_deeper_than(item, depth - 1) for item in value)
    return False


def _trade_from_json_item(path: Path, line: int | None, item: Any, label: str | None) -> Trade:
    prefix = f"{label}: " if label else ""
    if not isinstance(item, Mapping):
        raise TradeFileError(path, line, f"{prefix}expected an object, got {type(item).__name__}")
    try:
        return trade_from_payload(item)
    except ValueError as exc:
        raise TradeFileError(path, line, f"{prefix}{exc}") from None


# --- field conversion ----------------------------------------------------------------------
# Exactly the forms Binance writes and the manifests accept: ASCII digits, no exponent, no sign
# where none belongs; values within what the rest of the system carries exactly.


def _int(value: Any, field: str) -> int:
    if type(value) is str and len(value) < MAX_INT_DIGITS and value.isdigit() and value.isascii():
        return int(value)  # the usual case, fast: fewer than 19 ASCII digits always fit
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{field} must be an integer, got {short_repr(value)}")
    if isinstance(value, str):
        if not _ASCII_INTEGER.fullmatch(value):
            raise ValueError(f"{field} must be an integer, got {short_repr(value)}")
        if len(value.lstrip("-")) > MAX_INT_DIGITS:
            raise ValueError(f"{field} must have at most {MAX_INT_DIGITS} digits, got {short_repr(value)}")
        number = int(value)
    else:
        number = value
    if not 0 <= number <= MAX_INT:
        raise ValueError(f"{field} must be from 0 to {MAX_INT}, got {short_repr(value)}")
    return number


def _price(value: Any, field: str) -> Decimal:
    if type(value) is str and _POSITIVE_DECIMAL.fullmatch(value):
        return Decimal(value)  # the usual case, fast
    number = _decimal(value, field)
    if number <= 0:
        raise ValueError(f"{field} must be > 0, got {short_repr(value)}")
    raise ValueError(f"{field} must be a plain decimal {_DECIMAL_FORM}, got {short_repr(value)}")


def _quantity(value: Any, field: str) -> Decimal:
    if type(value) is str and _DECIMAL.fullmatch(value):
        return Decimal(value)
    number = _decimal(value, field)
    if number < 0:
        raise ValueError(f"{field} must be >= 0, got {short_repr(value)}")
    raise ValueError(f"{field} must be a plain decimal {_DECIMAL_FORM}, got {short_repr(value)}")


def _decimal(value: Any, field: str) -> Decimal:
    """What is wrong with a value that is not a plain decimal (the first of these that applies)."""
    # Floats are refused: a price that went through a float is no longer the exchange's price.
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a decimal string, got {short_repr(value)}")
    if len(value) > _MAX_DECIMAL_CHARS:
        raise ValueError(f"{field} must be a plain decimal {_DECIMAL_FORM}, got {short_repr(value)}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{field} must be a decimal number, got {short_repr(value)}") from None
    if not number.is_finite():
        raise ValueError(f"{field} must be a finite number, got {short_repr(value)}")
    return number


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and (known := _BOOLEANS.get(value.strip().lower())) is not None:
        return known
    raise ValueError(f"{field} must be true or false, got {short_repr(value)}")


def _millis(value: Any, field: str) -> int:
    """Epoch milliseconds; microseconds (newer Binance files) are read as milliseconds."""
    timestamp = _int(value, field)
    millis = timestamp // 1000 if timestamp >= _MICROSECONDS_FLOOR else timestamp
    if millis > MAX_TIME_MS:
        raise ValueError(f"{field} must be epoch milliseconds or microseconds before the year 10000, "
                         f"got {short_repr(value)}")
    return millis


def trades_to_jsonl(trades: Iterable[Trade]) -> str:
    """Trades as JSON lines of REST payloads (the inverse of reading a .jsonl file)."""
    return "".join(json.dumps(t.to_payload()) + "\n" for t in trades)

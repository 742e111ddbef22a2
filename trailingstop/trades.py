"""Trade sources: Binance aggTrades from files (CSV or JSON) and the bundled demo data.

A trade here is one Binance *aggregate trade*. Files come in the layouts Binance itself produces:

* CSV from data.binance.vision: ``agg_trade_id,price,quantity,first_trade_id,last_trade_id,
  transact_time,is_buyer_maker[,is_best_match]``, with or without a header row, optionally inside
  a ``.zip`` or ``.gz`` (as downloaded). Newer files carry microsecond timestamps; they are read
  as milliseconds like everything else in this project.
* JSON: a list, or JSON lines, of REST aggTrade payloads ``{a,p,q,f,l,T,m,M}``, WebSocket events
  ``{"e": "aggTrade", ...}`` or combined-stream envelopes ``{"stream": ..., "data": {...}}``.

A malformed row raises :class:`TradeFileError` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Trade:
    """One Binance aggregate trade. Prices and quantities are exact decimals."""

    trade_id: int
    price: Decimal
    qty: Decimal
    first_trade_id: int
    last_trade_id: int
    time: int  # epoch milliseconds
    buyer_maker: bool
    best_match: bool = True

    def to_payload(self) -> dict[str, Any]:
        """The REST ``aggTrades`` payload for this trade (strings for decimals, as Binance)."""
        return {
            "a": self.trade_id,
            "p": _plain(self.price),
            "q": _plain(self.qty),
            "f": self.first_trade_id,
            "l": self.last_trade_id,
            "T": self.time,
            "m": self.buyer_maker,
            "M": self.best_match,
        }

    def to_ws_event(self, symbol: str, event_time: int | None = None) -> dict[str, Any]:
        """The WebSocket ``<symbol>@aggTrade`` event for this trade."""
        return {
            "e": "aggTrade",
            "E": self.time if event_time is None else event_time,
            "s": symbol,
            **self.to_payload(),
        }


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


def read_trades(path: str | Path) -> Iterator[Trade]:
    """Yield the trades of a CSV or JSON trade file in file order."""
    path = Path(path)
    text = _read_text(path)
    if _looks_like_json(path, text):
        yield from _parse_json(path, text)
    else:
        yield from _parse_csv(path, text)


def read_csv_stream(path: str | Path, lines: Iterable[str]) -> Iterator[Trade]:
    """Yield the trades of Binance aggTrades CSV ``lines`` as they are read, never holding them all.

    ``lines`` is e.g. a zip member opened as text (``trailingstop.history`` streams a month this
    way); errors name ``path`` and the line like :func:`read_trades`.
    """
    return _parse_csv(Path(path), lines)


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
        raise ValueError(f'expected an aggTrade, got event type "{event}"')
    try:
        return Trade(
            trade_id=_int(payload["a"], "a (aggregate trade id)"),
            price=_price(payload["p"], "p (price)"),
            qty=_quantity(payload["q"], "q (quantity)"),
            first_trade_id=_int(payload["f"], "f (first trade id)"),
            last_trade_id=_int(payload["l"], "l (last trade id)"),
            time=_millis(_int(payload["T"], "T (trade time)")),
            buyer_maker=_bool(payload["m"], "m (is buyer maker)"),
            best_match=_bool(payload.get("M", True), "M (is best match)"),
        )
    except KeyError as missing:
        raise ValueError(f"missing field {missing.args[0]!r}") from None


# --- parsing -------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if not n.endswith("/")]
                if len(members) != 1:
                    raise TradeFileError(path, None, f"expected one file in the zip, found {len(members)}")
                return archive.read(members[0]).decode("utf-8")
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes()).decode("utf-8")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TradeFileError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise TradeFileError(path, None, f"cannot read: {exc}") from None


def _looks_like_json(path: Path, text: str) -> bool:
    name = path.name.removesuffix(".gz").removesuffix(".zip")
    if name.endswith((".json", ".jsonl", ".ndjson")):
        return True
    if name.endswith(".csv"):
        return False
    return text.lstrip()[:1] in ("[", "{")


def _parse_csv(path: Path, text: str | Iterable[str]) -> Iterator[Trade]:
    reader = csv.reader(io.StringIO(text) if isinstance(text, str) else text)
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if line == 1 and row[0].strip().lower() == CSV_COLUMNS[0]:
            continue  # header row
        if len(row) not in (7, 8):
            raise TradeFileError(path, line, f"expected 7 or 8 columns ({','.join(CSV_COLUMNS)}), got {len(row)}")
        try:
            yield Trade(
                trade_id=_int(row[0], "agg_trade_id"),
                price=_price(row[1], "price"),
                qty=_quantity(row[2], "quantity"),
                first_trade_id=_int(row[3], "first_trade_id"),
                last_trade_id=_int(row[4], "last_trade_id"),
                time=_millis(_int(row[5], "transact_time")),
                buyer_maker=_bool(row[6], "is_buyer_maker"),
                best_match=_bool(row[7], "is_best_match") if len(row) == 8 else True,
            )
        except ValueError as exc:
            raise TradeFileError(path, line, str(exc)) from None


def _parse_json(path: Path, text: str) -> Iterator[Trade]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TradeFileError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
        # A JSON array has no line per item; name the item's position instead.
        for index, item in enumerate(items):
            yield _trade_from_json_item(path, None, item, f"item {index}")
        return
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TradeFileError(path, number, f"invalid JSON: {exc.msg}") from None
        yield _trade_from_json_item(path, number, item, None)


def _trade_from_json_item(path: Path, line: int | None, item: Any, label: str | None) -> Trade:
    prefix = f"{label}: " if label else ""
    if not isinstance(item, Mapping):
        raise TradeFileError(path, line, f"{prefix}expected an object, got {type(item).__name__}")
    try:
        return trade_from_payload(item)
    except ValueError as exc:
        raise TradeFileError(path, line, f"{prefix}{exc}") from None


# --- field conversion ----------------------------------------------------------------------


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{field} must be an integer, got {value!r}")


def _decimal(value: Any, field: str) -> Decimal:
    # Floats are refused: a price that went through a float is no longer the exchange's price.
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a decimal string, got {value!r}")
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"{field} must be a decimal number, got {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    return number


def _price(value: Any, field: str) -> Decimal:
    number = _decimal(value, field)
    if number <= 0:
        raise ValueError(f"{field} must be > 0, got {value!r}")
    return number


def _quantity(value: Any, field: str) -> Decimal:
    number = _decimal(value, field)
    if number < 0:
        raise ValueError(f"{field} must be >= 0, got {value!r}")
    return number


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{field} must be true or false, got {value!r}")


def _millis(timestamp: int) -> int:
    return timestamp // 1000 if timestamp >= _MICROSECONDS_FLOOR else timestamp


def _plain(number: Decimal) -> str:
    """A decimal as Binance writes it: fixed-point, never exponent notation."""
    return format(number, "f")


def trades_to_jsonl(trades: Iterable[Trade]) -> str:
    """Trades as JSON lines of REST payloads (the inverse of reading a .jsonl file)."""
    return "".join(json.dumps(t.to_payload()) + "\n" for t in trades)

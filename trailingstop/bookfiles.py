"""Book files: recorded bookTicker quotes (JSON lines), the format ``trailingstop record --stream
bookTicker`` writes and ``trailingstop run --book`` replays.

One quote per line: Binance's ``<symbol>@bookTicker`` payload ``{"u", "s", "b", "B", "a", "A"}``
(a combined-stream envelope ``{"stream", "data"}`` is accepted too) plus what the payload lacks:

* ``receivedAt``: when it was received (epoch ms): the quote's time (Binance's has none);
* ``previousUpdateId`` (optional): the quote before it on the same unbroken stream, ``null`` for
  the first after a (re)connect, which is a gap. Absent: the line follows the line before.

Read like trade files: streamed, bounded (line length, digits, nesting), ``.gz`` accepted, and a
malformed line raises :class:`~trailingstop.tradefiles.TradeFileError` naming file, line and
field. Quotes must come in rising ``u`` order for one symbol.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from trailingstop.core.echo import quoted, short_repr
from trailingstop.core.quote import Quote
from trailingstop.tradefiles import (
    TradeFileError,
    _int,
    _json,
    _lines,
    _millis,
    _open_binary,
    _quantity,
)

_UNSET = object()


def quote_from_payload(payload: Mapping[str, Any], received_at: int, previous_update_id: int | None) -> Quote:
    """A quote from a bookTicker payload (ValueError with a readable message when malformed).
    An empty side of the book is a price of 0, which Binance sends as such."""
    if "data" in payload and isinstance(payload["data"], Mapping):
        payload = payload["data"]  # combined-stream envelope
    try:
        return Quote(
            update_id=_int(payload["u"], "u (order book updateId)"),
            bid=_quantity(payload["b"], "b (best bid price)"),
            bid_qty=_quantity(payload["B"], "B (best bid quantity)"),
            ask=_quantity(payload["a"], "a (best ask price)"),
            ask_qty=_quantity(payload["A"], "A (best ask quantity)"),
            time=received_at,
            previous_update_id=previous_update_id,
        )
    except KeyError as missing:
        raise ValueError(f"missing field {short_repr(missing.args[0])}") from None


def read_quotes(path: str | Path, symbol: str | None = None) -> Iterator[Quote]:
    """The quotes of a book file, in order; ``symbol``: refuse lines of another symbol."""
    path = Path(path)
    previous: int | None = None
    with _open_binary(path) as (stream, _name):
        for line, text in _lines(path, stream):
            if not text.strip():
                continue
            item = _json(path, line, text)
            try:
                quote = _quote_of_line(item, previous, symbol)
            except ValueError as exc:
                raise TradeFileError(path, line, str(exc)) from None
            if previous is not None and quote.update_id <= previous:
                raise TradeFileError(path, line, f"u (order book updateId) {quote.update_id} is not after the "
                                                 f"previous line's {previous}: quotes must be in recorded order")
            previous = quote.update_id
            yield quote


def _quote_of_line(item: Any, previous: int | None, symbol: str | None) -> Quote:
    if not isinstance(item, Mapping):
        raise ValueError(f"expected an object (a bookTicker quote), got {type(item).__name__}")
    data = item["data"] if isinstance(item.get("data"), Mapping) else item
    if symbol is not None and data.get("s") != symbol:
        raise ValueError(f"s (symbol) is {quoted(str(data.get('s')))}, expected {symbol}")
    if "receivedAt" not in item:
        raise ValueError("missing field 'receivedAt' (when the quote was received, epoch ms)")
    received_at = _millis(item["receivedAt"], "receivedAt")
    stated = item.get("previousUpdateId", _UNSET)
    follows = previous if stated is _UNSET else (None if stated is None else _int(stated, "previousUpdateId"))
    return quote_from_payload(item, received_at, follows)


def quote_line(symbol: str, quote: Quote) -> str:
    """One line of a book file (what ``record`` writes), newline included."""
    record = {**quote.to_payload(symbol), "receivedAt": quote.time, "previousUpdateId": quote.previous_update_id}
    return json.dumps(record, separators=(",", ":")) + "\n"

"""``trailingstop backtest``: every (trail, activation) combination over a trade file, in one pass.

All combinations are stops of one :class:`~trailingstop.engine.Engine`, so the file is read once
and each trade costs the same however many combinations there are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from trailingstop.contracts import ms_to_rfc3339, to_wire
from trailingstop.engine import Engine, Side, StopState
from trailingstop.trades import Trade

RESULT_KEYS = (
    "side",
    "trailingPercent",
    "activationPrice",
    "activated",
    "activatedAt",
    "activatedPrice",
    "activatedTradeId",
    "triggered",
    "triggeredAt",
    "triggerPrice",
    "triggerTradeId",
    "referencePrice",
    "stopPrice",
)


@dataclass(frozen=True)
class Combination:
    side: Side
    trailing_percent: Decimal
    activation_price: Decimal | None

    @property
    def key(self) -> str:
        activation = "none" if self.activation_price is None else to_wire(self.activation_price)
        return f"{self.side}/{to_wire(self.trailing_percent)}/{activation}"


@dataclass
class Track:
    """Reference and stop level over time of one combination, for the chart (step series)."""

    times: list[int] = field(default_factory=list)
    references: list[Decimal] = field(default_factory=list)
    stops: list[Decimal] = field(default_factory=list)


@dataclass
class BacktestResult:
    combinations: list[Combination]
    states: dict[str, StopState]
    trades: int
    first_time: int | None
    last_time: int | None
    prices: list[tuple[int, Decimal]] = field(default_factory=list)
    tracks: dict[str, Track] = field(default_factory=dict)

    def records(self) -> list[dict[str, Any]]:
        return [result_record(c, self.states[c.key]) for c in self.combinations]


def combinations(side: Side, trails: Iterable[Decimal], activations: Iterable[Decimal | None]) -> list[Combination]:
    unique: dict[str, Combination] = {}
    for trail in trails:
        for activation in activations:
            combo = Combination(side, trail, activation)
            unique.setdefault(combo.key, combo)
    return list(unique.values())


def run_backtest(trades: Iterable[Trade], combos: list[Combination], record: bool = False) -> BacktestResult:
    """One pass over ``trades``; with ``record``, keep the series the chart needs."""
    engine = Engine()
    for combo in combos:
        engine.upsert(combo.key, combo.side, combo.trailing_percent, combo.activation_price)
    tracks = {c.key: Track() for c in combos} if record else {}
    prices: list[tuple[int, Decimal]] = []
    count = 0
    first_time = last_time = None
    on_trade = engine.on_trade
    for trade in trades:
        count += 1
        if first_time is None:
            first_time = trade.time
        last_time = trade.time
        happened = on_trade(trade.price, trade.trade_id, trade.time)
        if record:
            prices.append((trade.time, trade.price))
            for event in (*happened, *engine.drain_reference_changes()):
                if event.reference is not None and event.stop_price is not None:
                    track = tracks[event.stop_id]
                    track.times.append(trade.time)
                    track.references.append(event.reference)
                    track.stops.append(event.stop_price)
    states = {c.key: engine.state(c.key) for c in combos}
    return BacktestResult(combos, states, count, first_time, last_time, prices, tracks)


def result_record(combo: Combination, state: StopState) -> dict[str, Any]:
    """The JSON object of one combination (exactly :data:`RESULT_KEYS`)."""
    activated = state.phase != "armed"
    triggered = state.phase == "triggered"
    record = {
        "side": combo.side,
        "trailingPercent": to_wire(combo.trailing_percent),
        "activationPrice": _text(combo.activation_price),
        "activated": activated,
        "activatedAt": state.activated_at,
        "activatedPrice": _text(state.activated_price),
        "activatedTradeId": state.activated_trade_id,
        "triggered": triggered,
        "triggeredAt": state.triggered_at,
        "triggerPrice": _text(state.trigger_price),
        "triggerTradeId": state.trigger_trade_id,
        "referencePrice": _text(state.reference) if activated else None,
        "stopPrice": _text(state.stop_price) if activated else None,
    }
    assert tuple(record) == RESULT_KEYS
    return record


def render_results(result: BacktestResult) -> str:
    """A readable table, one row per combination."""
    headers = ["SIDE", "TRAIL%", "ACTIVATION", "ACTIVATED AT", "ACTIVATED PRICE", "TRIGGERED AT",
               "TRIGGER PRICE", "REFERENCE", "STOP"]
    rows = []
    for record in result.records():
        rows.append([
            record["side"],
            record["trailingPercent"],
            record["activationPrice"] or "none",
            _when(record["activatedAt"]),
            record["activatedPrice"] or "-",
            _when(record["triggeredAt"]) if record["triggered"] else "not triggered",
            record["triggerPrice"] or "-",
            record["referencePrice"] or "-",
            record["stopPrice"] or "-",
        ])
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    span = ""
    if result.first_time is not None and result.last_time is not None:
        span = f" from {ms_to_rfc3339(result.first_time)} to {ms_to_rfc3339(result.last_time)}"
    lines.append(f"\n{result.trades:,} trades{span}; {len(rows)} combinations; "
                 "reference/stop are at the trigger, else at the end of the data")
    return "\n".join(lines)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else to_wire(value)


def _when(ms: int | None) -> str:
    return "-" if ms is None else ms_to_rfc3339(ms)

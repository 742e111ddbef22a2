"""``trailingstop backtest``: every (trail, activation) combination over a trade file, in one pass.

All combinations are stops of one :class:`~trailingstop.core.engine.Engine`, so the file is read once
and each trade costs the same however many combinations there are. With ``--expires-at`` every
combination has that deadline, judged as ``spec.expiresAt`` is (DESIGN §4): the first trade at or
after it ends a stop that has not triggered, before that trade is applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from trailingstop.core.contracts import ms_to_rfc3339, to_wire, trail_text
from trailingstop.core.engine import Engine, Side, StopState
from trailingstop.core.trade import Trade
from trailingstop.outcome import (
    JSON_PLACES,
    TABLE_PLACES,
    LastTrade,
    Outcome,
    best,
    outcome_name,
    outcome_of,
    percent,
    ranking,
)
from trailingstop.series import PriceSeries

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
# With --expires-at: the deadline after activationPrice, and whether and where it ended the stop
# after triggerTradeId (absent otherwise, so a sweep without a deadline prints exactly RESULT_KEYS).
EXPIRY_KEYS = ("expired", "expiredAt", "expiredTradeId")
# The outcome of each combination (trailingstop/outcome.py), after RESULT_KEYS in `--json`.
OUTCOME_KEYS = ("exit", "exitPrice", "exitAt", "exitTradeId", "changePercent", "outcomePercent", "best")
ORDERS = ("input", "outcome")  # --sort


TrailKind = Literal["percent", "amount"]


@dataclass(frozen=True)
class Combination:
    """One stop of the sweep: a trailing percent, or (``trailing_amount``, ``trailing_percent`` None)
    an amount in quote units: SELL stop = R - amount, BUY stop = R + amount (DESIGN §4)."""

    side: Side
    trailing_percent: Decimal | None
    activation_price: Decimal | None
    trailing_amount: Decimal | None = None
    expires_at: int | None = None  # epoch ms (rounded up, as the spec's deadline is), one for the sweep

    @property
    def key(self) -> str:
        activation = "none" if self.activation_price is None else to_wire(self.activation_price)
        return f"{self.side}/{self.trail_key}/{activation}"

    @property
    def trail_key(self) -> str:
        # An amount is prefixed so that a percent and an amount of the same digits never collide.
        if self.trailing_amount is not None:
            return f"amount:{to_wire(self.trailing_amount)}"
        assert self.trailing_percent is not None
        return to_wire(self.trailing_percent)

    # The two sweep axes, as labels: "1.5%" for a percent, the bare amount (quote units) otherwise.
    @property
    def trail_label(self) -> str:
        return trail_text(self.trailing_percent, self.trailing_amount)

    @property
    def activation_label(self) -> str:
        return "none" if self.activation_price is None else to_wire(self.activation_price)


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
    last: LastTrade | None = None
    # The trade that expired each expired combination (by key): the first at or after the deadline.
    expiries: dict[str, LastTrade] = field(default_factory=dict)
    symbol: str | None = None  # for titles: what the trades are of
    source: str | None = None  # and where they came from (a file name, dates)

    def records(self) -> list[dict[str, Any]]:
        return [self.record(c) for c in self.combinations]

    def record(self, combo: Combination) -> dict[str, Any]:
        return result_record(combo, self.states[combo.key], self.expiries.get(combo.key))

    def outcomes(self) -> list[Outcome | None]:
        """Each combination's outcome, in combination order."""
        return [outcome_of(self.states[c.key], self.last, self.expiries.get(c.key)) for c in self.combinations]

    def order(self, by: str = "input") -> list[int]:
        """Combination indices as listed (``input``) or best outcome first (``outcome``)."""
        if by not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {by!r}")
        return ranking(self.outcomes()) if by == "outcome" else list(range(len(self.combinations)))

    def report(self, by: str = "input") -> list[dict[str, Any]]:
        """The ``--json`` objects: :data:`RESULT_KEYS` then :data:`OUTCOME_KEYS`, in ``by`` order."""
        outcomes = self.outcomes()
        winners = best(outcomes)
        return [{**self.record(self.combinations[i]), **outcome_record(outcomes[i], i in winners)}
                for i in self.order(by)]

    def title(self) -> str:
        """``SYMBOL SOURCE: N trades`` (what the chart titles say)."""
        what = ", ".join(part for part in (self.symbol, self.source) if part)
        return f"{what + ': ' if what else ''}{self.trades:,} trades"


def combinations(
    side: Side, trails: Iterable[Decimal], activations: Iterable[Decimal | None], kind: TrailKind = "percent",
    expires_at: int | None = None,
) -> list[Combination]:
    """Every (trail, activation) pair once, in input order; ``trails`` are percents or, with
    ``kind="amount"``, amounts (one sweep never mixes them: the CLI refuses both flags). Every
    combination has the same deadline ``expires_at`` (epoch ms), if any."""
    unique: dict[str, Combination] = {}
    activations = list(activations)
    for trail in trails:
        for activation in activations:
            if kind == "amount":
                combo = Combination(side, None, activation, trailing_amount=trail, expires_at=expires_at)
            else:
                combo = Combination(side, trail, activation, expires_at=expires_at)
            unique.setdefault(combo.key, combo)
    return list(unique.values())


def run_backtest(trades: Iterable[Trade], combos: list[Combination], record: bool = False) -> BacktestResult:
    """One pass over ``trades``; with ``record``, keep the series the chart needs."""
    engine = Engine()
    for combo in combos:
        engine.upsert(combo.key, combo.side, combo.trailing_percent, combo.activation_price,
                      trailing_amount=combo.trailing_amount, expires_at=combo.expires_at)
    tracks = {c.key: Track() for c in combos} if record else {}
    expiries: dict[str, LastTrade] = {}
    prices = PriceSeries()  # bounded: a month of trades must not be kept for a chart
    count = 0
    first_time = last_time = None
    trade: Trade | None = None  # after the loop: the last trade, what open stops are valued at
    on_trade = engine.on_trade
    for trade in trades:
        count += 1
        if first_time is None:
            first_time = trade.time
        last_time = trade.time
        happened = on_trade(trade.price, trade.trade_id, trade.time)
        if happened:
            for event in happened:
                if event.kind == "expired":
                    expiries[event.stop_id] = LastTrade(trade.price, trade.time, trade.trade_id)
        if record:
            prices.add(trade.time, trade.price)
            for event in (*happened, *engine.drain_reference_changes()):
                if event.reference is not None and event.stop_price is not None:
                    track = tracks[event.stop_id]
                    track.times.append(trade.time)
                    track.references.append(event.reference)
                    track.stops.append(event.stop_price)
    states = {c.key: engine.state(c.key) for c in combos}
    end = None if trade is None else LastTrade(trade.price, trade.time, trade.trade_id)
    return BacktestResult(combos, states, count, first_time, last_time, prices.points(), tracks, end, expiries)


def result_record(combo: Combination, state: StopState, expiry: LastTrade | None = None) -> dict[str, Any]:
    """The JSON object of one combination: exactly :data:`RESULT_KEYS` for a percent; for an amount
    the same with ``trailingPercent`` null and ``trailingAmount`` right after it; with a deadline,
    ``expiresAt`` after ``activationPrice`` and :data:`EXPIRY_KEYS` after ``triggerTradeId``
    (``expiry``: the trade that expired the stop, if one did)."""
    activated = state.activated_price is not None  # an expired stop may never have activated
    triggered = state.phase == "triggered"
    record = {
        "side": combo.side,
        "trailingPercent": _text(combo.trailing_percent),
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
    if combo.trailing_amount is not None:
        record = _insert_after(record, "trailingPercent", {"trailingAmount": to_wire(combo.trailing_amount)})
    if combo.expires_at is not None:
        record = _insert_after(record, "activationPrice", {"expiresAt": ms_to_rfc3339(combo.expires_at)})
        record = _insert_after(record, "triggerTradeId", {
            "expired": expiry is not None,
            "expiredAt": None if expiry is None else expiry.time,
            "expiredTradeId": None if expiry is None else expiry.trade_id,
        })
    return record


def _insert_after(record: dict[str, Any], key: str, added: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``added``'s items right after ``key`` (the JSON's key order is its contract)."""
    out: dict[str, Any] = {}
    for name, value in record.items():
        out[name] = value
        if name == key:
            out.update(added)
    return out


def outcome_record(outcome: Outcome | None, is_best: bool) -> dict[str, Any]:
    """The :data:`OUTCOME_KEYS` of one combination (percents rounded half to even, JSON_PLACES)."""
    if outcome is None:
        return {"exit": None, "exitPrice": None, "exitAt": None, "exitTradeId": None, "changePercent": None,
                "outcomePercent": None, "best": False}
    return {
        "exit": outcome.exit,
        "exitPrice": to_wire(outcome.price),
        "exitAt": outcome.at,
        "exitTradeId": outcome.trade_id,
        "changePercent": to_wire(percent(outcome.change, JSON_PLACES)),
        "outcomePercent": to_wire(percent(outcome.value, JSON_PLACES)),
        "best": is_best,
    }


def render_results(result: BacktestResult, order: str = "input") -> str:
    """A readable table, one row per combination (in ``order``), the best outcome marked."""
    name = outcome_name({c.side for c in result.combinations})
    amounts = any(c.trailing_amount is not None for c in result.combinations)
    headers = ["SIDE", "TRAIL AMOUNT" if amounts else "TRAIL%", "ACTIVATION", "ACTIVATED AT", "ACTIVATED PRICE",
               "TRIGGERED AT", "TRIGGER PRICE", "REFERENCE", "STOP", "EXIT PRICE", f"{name.upper()}%", ""]
    outcomes = result.outcomes()
    winners = best(outcomes)
    rows = []
    for index in result.order(order):
        combo = result.combinations[index]
        rows.append(_row(result.record(combo), outcomes[index], index in winners))
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    span = ""
    if result.first_time is not None and result.last_time is not None:
        span = f" from {ms_to_rfc3339(result.first_time)} to {ms_to_rfc3339(result.last_time)}"
    lines.append("")
    lines.extend(_outcome_notes(result, name))
    deadline = next((c.expires_at for c in result.combinations if c.expires_at is not None), None)
    ends = "the trigger"
    if deadline is not None:
        lines.append(f"every stop expires at {ms_to_rfc3339(deadline)}: the first trade at or after it ends a stop "
                     "not yet triggered, with no order; its exit is that trade's price")
        ends = "the trigger or the expiry"
    lines.append(f"{result.trades:,} trades{span}; {len(rows)} combinations; "
                 f"reference/stop are at {ends}, else at the end of the data")
    return "\n".join(lines)


def _row(record: dict[str, Any], outcome: Outcome | None, is_best: bool) -> list[str]:
    exit_price = "-"
    if outcome is not None:
        exit_price = to_wire(outcome.price) + {"end": " (open)", "expired": " (expired)"}.get(outcome.exit, "")
    return [
        record["side"],
        record.get("trailingAmount") or record["trailingPercent"],
        record["activationPrice"] or "none",
        _when(record["activatedAt"]),
        record["activatedPrice"] or "-",
        _ending(record),
        record["triggerPrice"] or "-",
        record["referencePrice"] or "-",
        record["stopPrice"] or "-",
        exit_price,
        "-" if outcome is None else _signed(percent(outcome.value, TABLE_PLACES)),
        "<- best" if is_best else "",
    ]


def _ending(record: dict[str, Any]) -> str:
    """The TRIGGERED AT cell: when it triggered, or that it expired (and when), or neither."""
    if record["triggered"]:
        return _when(record["triggeredAt"])
    if record.get("expired"):
        return f"expired {_when(record['expiredAt'])}"
    return "not triggered"


def _signed(value: Decimal) -> str:
    return ("+" if value > 0 else "") + format(value, "f")


def _outcome_notes(result: BacktestResult, name: str) -> list[str]:
    meaning = {
        "kept": "KEPT% = (exit - activated price) / activated price: the share of the move kept by the SELL",
        "saved": "SAVED% = (activated price - exit) / activated price: what the BUY entry saved",
        "outcome": "OUTCOME% = SELL: (exit - activated) / activated; BUY: (activated - exit) / activated",
    }[name]
    notes = [f"{meaning}, rounded half to even to {TABLE_PLACES} decimals; exit: the trigger price, or "
             "the last price when the stop is still open"]
    outcomes = result.outcomes()
    ranked = [i for i in result.order("outcome") if i in best(outcomes)]
    for index in ranked:
        top, outcome = result.combinations[index], outcomes[index]
        assert outcome is not None
        value = _signed(percent(outcome.value, TABLE_PLACES))
        notes.append(f"best: {top.side} trail {top.trail_label}, activation {top.activation_label}: {name} {value}%")
    if not ranked:
        notes.append("best: none (no combination activated)")
    return notes


def _text(value: Decimal | None) -> str | None:
    return None if value is None else to_wire(value)


def _when(ms: int | None) -> str:
    return "-" if ms is None else ms_to_rfc3339(ms)

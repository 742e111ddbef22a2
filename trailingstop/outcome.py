"""What a backtested combination would have done for the trader: its exit, and the change to it.

Definitions (docs/DESIGN.md §8, README "Backtest outcome"):

* **start price** ``B``: the price of the trade that activated the stop (``activatedPrice``). With
  no activation price that is the first trade's price.
* **exit price** ``X``: the trigger price when the stop triggered (``exit: "trigger"``); the price
  of the trade that expired it when it expired (``exit: "expired"``, backtest ``--expires-at``: the
  first trade at or after the deadline, the position valued when the stop stopped guarding it);
  else the last trade's price, the position valued where the data ends (``exit: "end"``). A stop
  that never activated has no exit and no outcome.
* **change** ``(X - B) / B``: the move from the start to the exit.
* **outcome**, the figure combinations are ranked by (higher is better for either side):
  SELL: the change, the share of the move kept (positive: sold above where trailing began);
  BUY: minus the change, what the entry saved against buying at ``B`` (positive: bought below).

Every figure is an exact :class:`~fractions.Fraction`, ranked exactly; it is rounded only when
written, as a percent, half to even: :data:`JSON_PLACES` decimals in JSON, :data:`TABLE_PLACES`
in the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from trailingstop.core.engine import Side, StopState

Exit = Literal["trigger", "expired", "end"]
JSON_PLACES = 8
TABLE_PLACES = 4


@dataclass(frozen=True)
class LastTrade:
    price: Decimal
    time: int
    trade_id: int


@dataclass(frozen=True)
class Outcome:
    side: Side
    exit: Exit
    price: Decimal  # exit price
    at: int  # exit time, epoch ms
    trade_id: int
    start: Decimal  # the activating trade's price

    @property
    def change(self) -> Fraction:
        """``(exit - start) / start``, exact."""
        return (Fraction(self.price) - Fraction(self.start)) / Fraction(self.start)

    @property
    def value(self) -> Fraction:
        """The outcome: the change for a SELL (share kept), minus it for a BUY (share saved)."""
        return self.change if self.side == "SELL" else -self.change


def outcome_of(state: StopState, last: LastTrade | None, expiry: LastTrade | None = None) -> Outcome | None:
    """The outcome of a stop's final state over data that ended with ``last``; ``expiry``: the
    trade that expired the stop, if one did."""
    if state.activated_price is None:
        return None
    if state.trigger_price is not None and state.triggered_at is not None and state.trigger_trade_id is not None:
        return Outcome(state.side, "trigger", state.trigger_price, state.triggered_at, state.trigger_trade_id,
                       state.activated_price)
    if expiry is not None:
        return Outcome(state.side, "expired", expiry.price, expiry.time, expiry.trade_id, state.activated_price)
    if last is None:
        return None
    return Outcome(state.side, "end", last.price, last.time, last.trade_id, state.activated_price)


def percent(value: Fraction, places: int) -> Decimal:
    """``value`` as a percent with ``places`` decimals, rounded half to even (exact otherwise)."""
    return Decimal(round(value * 100 * 10**places)).scaleb(-places)


def ranking(outcomes: Sequence[Outcome | None]) -> list[int]:
    """Indices best first; ties keep their order; no outcome comes last."""
    return sorted(range(len(outcomes)), key=lambda i: _sort_key(outcomes[i]))


def best(outcomes: Sequence[Outcome | None]) -> set[int]:
    """Indices of the best outcome (several when tied exactly); empty when nothing activated."""
    values = [o.value for o in outcomes if o is not None]
    if not values:
        return set()
    top = max(values)
    return {i for i, o in enumerate(outcomes) if o is not None and o.value == top}


def _sort_key(outcome: Outcome | None) -> tuple[int, Fraction]:
    return (1, Fraction(0)) if outcome is None else (0, -outcome.value)


def outcome_name(sides: set[str]) -> str:
    """What the outcome means for these sides: "kept" (SELL), "saved" (BUY), else "outcome"."""
    if sides == {"SELL"}:
        return "kept"
    if sides == {"BUY"}:
        return "saved"
    return "outcome"

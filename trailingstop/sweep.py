"""What makes a sweep's chart readable: one visible line per distinct result, and a heatmap.

* :func:`lines`: combinations whose stop lines are identical (e.g. activation "none" and an
  activation price the first trade already reaches) are drawn once, with one legend entry naming
  them all; every drawn line gets its own colour (:func:`distinct_colours`, never reused); lines of
  the same trail, which can run together once their references meet, are drawn thickest first, so
  the later ones sit inside the earlier ones and every colour stays visible.
* :func:`references`: the reference (high since activation for a SELL, low for a BUY) is the same
  for every combination activated by the same trade, so it is drawn once per activation, and so is
  the activation marker (in the reference's colour, not in one line's).
* :func:`grid`: with two axes (at least two trailing values and two activation prices, one side)
  the outcome of every combination as a grid, best cell marked (:mod:`trailingstop.outcome`).

Rows and columns are labelled by :attr:`Combination.trail_label` / ``activation_label``, so another
trailing kind (an amount) becomes more rows without changes here.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from decimal import Decimal

from trailingstop.backtest import BacktestResult, Combination
from trailingstop.outcome import TABLE_PLACES, Outcome, best, outcome_name, percent

# Tableau 10 and 20 in their own order (neighbours contrast), without their greys: the price is grey.
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
_TAB20_LIGHT = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]
_THIN, _STEP, _THICKEST = 1.3, 1.5, 6.0  # line widths: the last of a trail's lines, the step, the cap


@dataclass
class Line:
    combos: list[Combination]  # identical results, drawn as one line
    colour: str
    width: float

    @property
    def lead(self) -> Combination:
        return self.combos[0]

    @property
    def label(self) -> str:
        first = self.lead
        label = f"{first.side} {first.trail_label} act {first.activation_label}"
        return " = ".join([label, *(c.activation_label for c in self.combos[1:])])


@dataclass
class Reference:
    times: list[int]
    values: list[Decimal]
    end: int  # ms: the last trigger of the combinations sharing it, else the end of the data
    activated_at: int  # the activating trade, shared by its combinations (one marker for all)
    activated_price: Decimal


def distinct_colours(count: int) -> list[str]:
    """``count`` different colours: Tableau's, then evenly spread hues in two lightnesses."""
    if count <= len(_TAB10):
        return _TAB10[:count]
    if count <= len(_TAB10) + len(_TAB20_LIGHT):
        return (_TAB10 + _TAB20_LIGHT)[:count]
    colours = []
    for index in range(count):
        hue = (index * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbours apart
        lightness = 0.38 if index % 2 == 0 else 0.58
        red, green, blue = colorsys.hls_to_rgb(hue, lightness, 0.75)
        colours.append(f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}")
    return _unique(colours)


def _unique(colours: list[str]) -> list[str]:
    """Nudge any repeat (possible after rounding) until every colour differs."""
    seen: set[str] = set()
    result = []
    for colour in colours:
        value = int(colour[1:], 16)
        while f"#{value:06x}" in seen:
            value = (value + 0x010101) % 0x1000000
        seen.add(f"#{value:06x}")
        result.append(f"#{value:06x}")
    return result


def lines(result: BacktestResult) -> list[Line]:
    """One line per distinct result that has something to draw, in combination order."""
    groups: dict[tuple[object, ...], list[Combination]] = {}
    for combo in result.combinations:
        state = result.states[combo.key]
        if state.activated_at is None:
            continue
        track = result.tracks.get(combo.key)
        signature = (combo.side, combo.trail_label, state.activated_at, state.activated_price, state.triggered_at,
                     state.trigger_price, None if track is None else (tuple(track.times), tuple(track.stops)))
        groups.setdefault(signature, []).append(combo)
    colours = distinct_colours(len(groups))
    drawn = [Line(combos, colour, _THIN) for combos, colour in zip(groups.values(), colours, strict=True)]
    for trail in {line.lead.trail_label for line in drawn}:
        same = [line for line in drawn if line.lead.trail_label == trail]
        step = min(_STEP, (_THICKEST - _THIN) / max(1, len(same) - 1))
        for rank, line in enumerate(same):
            line.width = round(_THIN + step * (len(same) - 1 - rank), 2)
    return drawn


def references(result: BacktestResult) -> list[Reference]:
    """The reference line of each activating trade, once, until the last of its stops ends."""
    end_of_data = result.last_time or 0
    by_activation: dict[tuple[str, int], Reference] = {}
    for combo in result.combinations:
        state, track = result.states[combo.key], result.tracks.get(combo.key)
        if state.activated_at is None or track is None or not track.times:
            continue
        end = state.triggered_at or end_of_data
        key = (combo.side, state.activated_at)
        known = by_activation.get(key)
        if known is None or end > known.end:  # the longest-lived stop has the whole reference
            assert state.activated_price is not None
            by_activation[key] = Reference(track.times, track.references, end, state.activated_at,
                                           state.activated_price)
    return list(by_activation.values())


# --- the outcome grid ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    combo: Combination
    outcome: Outcome | None
    best: bool

    @property
    def text(self) -> str:
        if self.outcome is None:
            return "not activated"
        value = percent(self.outcome.value, 2)
        return ("+" if value > 0 else "") + f"{value}%" + (" open" if self.outcome.exit == "end" else "")

    @property
    def value(self) -> float | None:
        """For the colour only (every figure shown comes from the exact outcome)."""
        return None if self.outcome is None else float(percent(self.outcome.value, TABLE_PLACES))


@dataclass(frozen=True)
class Grid:
    rows: list[str]  # trail labels, as given
    columns: list[str]  # activation labels, as given
    cells: dict[tuple[str, str], Cell]
    name: str  # "kept" (SELL) or "saved" (BUY)
    side: str

    @property
    def limit(self) -> float:
        values = [abs(c.value) for c in self.cells.values() if c.value is not None]
        return max([*values, 1e-9])

    @property
    def best_cells(self) -> list[tuple[int, int]]:
        return [(self.rows.index(r), self.columns.index(c)) for (r, c), cell in self.cells.items() if cell.best]

    @property
    def caption(self) -> str:
        what = "kept from activation to exit" if self.name == "kept" else "saved from activation to entry"
        return f"{self.side}: % {what} (exit at the trigger, or open at the last price); best outlined"


def grid(result: BacktestResult) -> Grid | None:
    """The outcome grid of a two-axis sweep of one side, else None."""
    sides = {c.side for c in result.combinations}
    rows = list(dict.fromkeys(c.trail_label for c in result.combinations))
    columns = list(dict.fromkeys(c.activation_label for c in result.combinations))
    if len(sides) != 1 or len(rows) < 2 or len(columns) < 2:
        return None
    outcomes = result.outcomes()
    winners = best(outcomes)
    cells = {(c.trail_label, c.activation_label): Cell(c, outcomes[i], i in winners)
             for i, c in enumerate(result.combinations)}
    side = sides.pop()
    return Grid(rows, columns, cells, outcome_name({side}), side)


def heat_colour(value: float | None, limit: float) -> str:
    """Red (worst) through pale yellow (0) to green (best), symmetric around 0; grey for none."""
    if value is None:
        return "#d9d9d9"
    position = max(-1.0, min(1.0, value / limit))
    low, mid, high = (0xD7, 0x30, 0x27), (0xFF, 0xFF, 0xBF), (0x1A, 0x98, 0x50)
    end = high if position >= 0 else low
    weight = abs(position)
    mixed = [round(m + (e - m) * weight) for m, e in zip(mid, end, strict=True)]
    return "#" + "".join(f"{channel:02x}" for channel in mixed)

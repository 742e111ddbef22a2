"""Backtest charts: the price, each combination's reference and stop lines, activation and trigger.

``.html`` and ``.svg`` are drawn here as SVG with no dependency; ``.png`` uses matplotlib (the
``plot`` extra). Floats appear only as pixel positions: every decision was made in decimals.
"""

from __future__ import annotations

import html
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

from trailingstop.backtest import BacktestResult
from trailingstop.core.contracts import ms_to_rfc3339
from trailingstop.sweep import Grid, Line, grid, heat_colour, lines, references

WIDTH, HEIGHT = 1200, 640
LEFT, RIGHT, TOP, BOTTOM = 110, 300, 50, 60
CELL_HEIGHT, HEATMAP_TOP = 34, 70  # the heatmap below the price chart (two-axis sweeps)
MAX_PRICE_POINTS = 4000


class PlotError(ValueError):
    pass


def check_target(path: Path) -> None:
    """Refuse a chart path that cannot be written, before any work is done for it."""
    if path.is_dir():
        raise PlotError(f"--plot {path}: is a directory")
    suffix = path.suffix.lower()
    if suffix not in (".png", ".html", ".htm", ".svg"):
        raise PlotError(f"--plot writes .png, .html or .svg, not {suffix or 'a file without extension'}")
    folder = path.parent
    if not folder.is_dir():
        raise PlotError(f"--plot {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PlotError(f"--plot {path}: permission denied")


def write_chart(result: BacktestResult, path: str | Path) -> Path:
    path = Path(path)
    check_target(path)
    suffix = path.suffix.lower()
    if not result.prices:
        raise PlotError("no trades to plot")
    if suffix == ".png":
        _write_png(result, path)
    elif suffix in (".html", ".htm"):
        path.write_text(_html_page(result), encoding="utf-8")
    else:
        path.write_text(_svg(result), encoding="utf-8")
    return path


def _thin(points: list[tuple[int, Decimal]]) -> list[tuple[int, Decimal]]:
    """At most MAX_PRICE_POINTS points, keeping each bucket's low and high so spikes survive."""
    if len(points) <= MAX_PRICE_POINTS:
        return points
    size = len(points) * 2 // MAX_PRICE_POINTS + 1
    thinned: list[tuple[int, Decimal]] = []
    for start in range(0, len(points), size):
        bucket = points[start:start + size]
        low = min(bucket, key=lambda p: p[1])
        high = max(bucket, key=lambda p: p[1])
        thinned.extend(sorted({low, high}))
    return thinned


class _Scale:
    def __init__(self, result: BacktestResult) -> None:
        values = [p for _, p in result.prices]
        for track in result.tracks.values():
            values.extend(track.stops)
            values.extend(track.references)
        self.low, self.high = float(min(values)), float(max(values))
        if self.high == self.low:
            self.high = self.low + 1
        pad = (self.high - self.low) * 0.04
        self.low, self.high = self.low - pad, self.high + pad
        self.t0 = result.prices[0][0]
        self.t1 = max(result.prices[-1][0], self.t0 + 1)

    def x(self, ms: int) -> float:
        return LEFT + (ms - self.t0) / (self.t1 - self.t0) * (WIDTH - LEFT - RIGHT)

    def y(self, price: Decimal) -> float:
        return TOP + (self.high - float(price)) / (self.high - self.low) * (HEIGHT - TOP - BOTTOM)


def _svg(result: BacktestResult) -> str:
    scale = _Scale(result)
    outcome_grid = grid(result)
    height = HEIGHT + (_heatmap_height(outcome_grid) if outcome_grid else 0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{html.escape(_title(result))}</text>',
    ]
    parts += _axes(scale)
    price_line = " ".join(f"{scale.x(t):.1f},{scale.y(p):.1f}" for t, p in _thin(result.prices))
    parts.append(f'<polyline points="{price_line}" fill="none" stroke="#555" stroke-width="1"/>')
    for reference in references(result):
        parts.append(_steps(scale, reference.times, reference.values, reference.end, "#333", dashed=True, width=1.2))
        x, y = scale.x(reference.activated_at), scale.y(reference.activated_price)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="none" stroke="#000" stroke-width="2">'
                     f'<title>activated at {reference.activated_price}</title></circle>')
    drawn = lines(result)
    for line in drawn:
        parts += _svg_line(result, scale, line)
    parts += _svg_legend(drawn, result)
    if outcome_grid is not None:
        parts += _svg_heatmap(outcome_grid, HEIGHT)
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_line(result: BacktestResult, scale: _Scale, line: Line) -> list[str]:
    state = result.states[line.lead.key]
    track = result.tracks.get(line.lead.key)
    parts = []
    if track and track.times:
        stop_end = state.triggered_at or result.prices[-1][0]
        parts.append(_steps(scale, track.times, track.stops, stop_end, line.colour, dashed=False, width=line.width))
    if state.triggered_at is not None and state.trigger_price is not None:
        x, y = scale.x(state.triggered_at), scale.y(state.trigger_price)
        parts.append(f'<path d="M{x - 6:.1f},{y - 6:.1f}L{x + 6:.1f},{y + 6:.1f}M{x - 6:.1f},{y + 6:.1f}'
                     f'L{x + 6:.1f},{y - 6:.1f}" stroke="{line.colour}" stroke-width="2.5"><title>triggered at '
                     f'{state.trigger_price}</title></path>')
    return parts


def _svg_legend(drawn: list[Line], result: BacktestResult) -> list[str]:
    x = WIDTH - RIGHT + 16
    parts = []
    entries = [(line.colour, min(line.width, 4.0), "", line.label) for line in drawn]
    entries.append(("#333", 1.2, ' stroke-dasharray="5,4"', _reference_label(result)))
    entries.append(("#555", 1.0, "", "price"))
    for index, (colour, width, dash, label) in enumerate(entries):
        y = TOP + 16 + index * 18
        parts.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 24}" y2="{y - 4}" stroke="{colour}" '
                     f'stroke-width="{width}"{dash}/>')
        parts.append(f'<text x="{x + 30}" y="{y}">{html.escape(label)}</text>')
    notes_y = TOP + 24 + len(entries) * 18
    parts.append(f'<text x="{x}" y="{notes_y}" fill="#555">solid: stop; o activated (black), x triggered</text>')
    return parts


def _svg_heatmap(outcome_grid: Grid, top: int) -> list[str]:
    label_width = 70
    cell_width = min(140.0, (WIDTH - LEFT - RIGHT - label_width) / len(outcome_grid.columns))
    left = LEFT + label_width
    y0 = top + HEATMAP_TOP
    parts = [f'<text x="{LEFT}" y="{top + 30}" font-size="14" font-weight="bold">'
             f'{html.escape(outcome_grid.caption)}</text>',
             f'<text x="{left}" y="{y0 - 26}" fill="#555">activation price</text>',
             f'<text x="{LEFT}" y="{y0 - 8}" fill="#555">trail</text>']
    for col, label in enumerate(outcome_grid.columns):
        parts.append(f'<text x="{left + (col + 0.5) * cell_width:.1f}" y="{y0 - 8}" text-anchor="middle">'
                     f'{html.escape(label)}</text>')
    for row, label in enumerate(outcome_grid.rows):
        y = y0 + row * CELL_HEIGHT
        parts.append(f'<text x="{left - 8}" y="{y + CELL_HEIGHT / 2 + 4:.1f}" text-anchor="end">'
                     f'{html.escape(label)}</text>')
        for col, column in enumerate(outcome_grid.columns):
            cell = outcome_grid.cells.get((label, column))
            x = left + col * cell_width
            fill = heat_colour(None if cell is None else cell.value, outcome_grid.limit)
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{cell_width:.1f}" height="{CELL_HEIGHT}" '
                         f'fill="{fill}" stroke="white"/>')
            if cell is not None:
                parts.append(f'<text x="{x + cell_width / 2:.1f}" y="{y + CELL_HEIGHT / 2 + 4:.1f}" '
                             f'text-anchor="middle">{html.escape(cell.text)}</text>')
    for row, col in outcome_grid.best_cells:
        parts.append(f'<rect class="best" x="{left + col * cell_width + 1.5:.1f}" y="{y0 + row * CELL_HEIGHT + 1.5}" '
                     f'width="{cell_width - 3:.1f}" height="{CELL_HEIGHT - 3}" fill="none" stroke="black" '
                     f'stroke-width="3"><title>best</title></rect>')
    return parts


def _heatmap_height(outcome_grid: Grid) -> int:
    return HEATMAP_TOP + CELL_HEIGHT * len(outcome_grid.rows) + 30


def _title(result: BacktestResult) -> str:
    sides = sorted({c.side for c in result.combinations})
    return f"{result.title()}; {len(result.combinations)} {'/'.join(sides)} combinations"


def _reference_label(result: BacktestResult) -> str:
    sides = {c.side for c in result.combinations}
    kind = "high" if sides == {"SELL"} else "low" if sides == {"BUY"} else "high/low"
    return f"reference ({kind} since activation)"


def _steps(scale: _Scale, times: list[int], values: list[Decimal], end: int, color: str, dashed: bool,
           width: float = 1.5) -> str:
    points = []
    for index, (t, v) in enumerate(zip(times, values, strict=True)):
        y = scale.y(v)
        points.append(f"{scale.x(t):.1f},{y:.1f}")
        following = times[index + 1] if index + 1 < len(times) else end
        points.append(f"{scale.x(following):.1f},{y:.1f}")
    dash = ' stroke-dasharray="5,4"' if dashed else ""
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="{width}"{dash}/>'


def _axes(scale: _Scale) -> list[str]:
    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
             'fill="none" stroke="#999"/>']
    for step in range(6):
        value = scale.low + (scale.high - scale.low) * step / 5
        y = scale.y(Decimal(repr(value)))
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.8g}</text>')
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#eee"/>')
    for step in range(5):
        ms = scale.t0 + (scale.t1 - scale.t0) * step // 4
        x = scale.x(ms)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">'
                     f'{ms_to_rfc3339(ms)[:16].replace("T", " ")}</text>')
    return parts


def _html_page(result: BacktestResult) -> str:
    title = f"trailingstop backtest: {_title(result)}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h3>{html.escape(title)}</h3>{_svg(result)}</body></html>\n")


def _write_png(result: BacktestResult, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("PNG charts need matplotlib: pip install 'trailingstop[plot]' (or use .html)") from None
    outcome_grid = grid(result)
    if outcome_grid is None:
        figure, axes = plt.subplots(figsize=(14, 6.5))
    else:
        rows = len(outcome_grid.rows)
        figure, (axes, heat_axes) = plt.subplots(
            2, 1, figsize=(14, 6.5 + 0.45 * rows + 1.6), height_ratios=[6.5, 0.45 * rows + 1.0])
        _png_heatmap(heat_axes, outcome_grid)
    _png_prices(axes, result)
    figure.suptitle(_title(result), fontsize=13, fontweight="bold")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _png_prices(axes: Any, result: BacktestResult) -> None:
    from datetime import UTC, datetime

    from matplotlib import dates

    def when(ms: int) -> float:
        return float(dates.date2num(datetime.fromtimestamp(ms / 1000, tz=UTC)))

    thinned = _thin(result.prices)
    axes.plot([when(t) for t, _ in thinned], [float(p) for _, p in thinned], color="#555", linewidth=0.8, label="price")
    for index, reference in enumerate(references(result)):
        times = [when(t) for t in (*reference.times, reference.end)]
        axes.step(times, [float(v) for v in [*reference.values, reference.values[-1]]], where="post", color="#333",
                  linestyle="--", linewidth=1, label=_reference_label(result) if index == 0 else None)
        axes.plot(when(reference.activated_at), float(reference.activated_price), "o", mfc="none", color="black",
                  markersize=9, mew=1.8, zorder=5)
    end = result.prices[-1][0]
    for line in lines(result):
        state = result.states[line.lead.key]
        track = result.tracks.get(line.lead.key)
        if track and track.times:
            times = [when(t) for t in (*track.times, state.triggered_at or end)]
            axes.step(times, [float(v) for v in [*track.stops, track.stops[-1]]], where="post",
                      color=line.colour, linewidth=line.width, label=line.label, solid_capstyle="butt")
        if state.triggered_at is not None and state.trigger_price is not None:
            axes.plot(when(state.triggered_at), float(state.trigger_price), "x", color=line.colour, markersize=10,
                      mew=2.5)
    axes.xaxis_date(tz="UTC")
    axes.set_xlabel("trade time (UTC)")
    axes.set_ylabel("price")
    axes.set_title("solid: stop level of each combination; o activated (black), x triggered", fontsize=10)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0,
                ncol=1 if len(result.combinations) <= 24 else 2)


def _png_heatmap(axes: Any, outcome_grid: Grid) -> None:
    from matplotlib.colors import ListedColormap, TwoSlopeNorm
    from matplotlib.patches import Rectangle

    values = [[_cell_value(outcome_grid, r, c) for c in outcome_grid.columns] for r in outcome_grid.rows]
    colours = [[heat_colour(v, outcome_grid.limit) for v in row] for row in values]
    rgb = [[tuple(int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)) for c in row] for row in colours]
    axes.imshow(rgb, aspect="auto")
    for row, label in enumerate(outcome_grid.rows):
        for col, column in enumerate(outcome_grid.columns):
            cell = outcome_grid.cells.get((label, column))
            if cell is not None:
                axes.text(col, row, cell.text, ha="center", va="center", fontsize=9)
    for row, col in outcome_grid.best_cells:
        axes.add_patch(Rectangle((col - 0.47, row - 0.47), 0.94, 0.94, fill=False, edgecolor="black", linewidth=3))
        axes.text(col + 0.45, row - 0.42, "best", ha="right", va="top", fontsize=8, fontweight="bold")
    axes.set_xticks(range(len(outcome_grid.columns)), outcome_grid.columns)
    axes.set_yticks(range(len(outcome_grid.rows)), outcome_grid.rows)
    axes.set_xlabel("activation price")
    axes.set_ylabel("trail")
    axes.set_title(outcome_grid.caption, fontsize=10)
    limit = outcome_grid.limit
    scale = ListedColormap([heat_colour(-limit + 2 * limit * i / 255, limit) for i in range(256)])
    bar = axes.figure.colorbar(
        matplotlib_mappable(scale, TwoSlopeNorm(0, -limit, limit)), ax=axes, fraction=0.03, pad=0.01)
    bar.set_label(f"% {outcome_grid.name}")


def matplotlib_mappable(colormap: Any, norm: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=colormap)


def _cell_value(outcome_grid: Grid, row: str, column: str) -> float | None:
    cell = outcome_grid.cells.get((row, column))
    return None if cell is None else cell.value

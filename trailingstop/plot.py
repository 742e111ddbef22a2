"""Backtest charts: the price, each combination's reference and stop lines, activation and trigger.

``.html`` and ``.svg`` are drawn here as SVG with no dependency; ``.png`` uses matplotlib (the
``plot`` extra). Floats appear only as pixel positions: every decision was made in decimals.
"""

from __future__ import annotations

import html
import os
from decimal import Decimal
from pathlib import Path

from trailingstop.backtest import BacktestResult, Combination
from trailingstop.contracts import ms_to_rfc3339, to_wire

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
WIDTH, HEIGHT = 1200, 620
LEFT, RIGHT, TOP, BOTTOM = 90, 260, 30, 60
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


def _label(combo: Combination) -> str:
    activation = "none" if combo.activation_price is None else to_wire(combo.activation_price)
    return f"{combo.side} {to_wire(combo.trailing_percent)}% act {activation}"


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
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>'
    ]
    parts += _axes(scale)
    price_line = " ".join(f"{scale.x(t):.1f},{scale.y(p):.1f}" for t, p in _thin(result.prices))
    parts.append(f'<polyline points="{price_line}" fill="none" stroke="#555" stroke-width="1"/>')
    end = result.prices[-1][0]
    for index, combo in enumerate(result.combinations):
        color = PALETTE[index % len(PALETTE)]
        state = result.states[combo.key]
        track = result.tracks.get(combo.key)
        if track and track.times:
            stop_end = state.triggered_at or end
            parts.append(_steps(scale, track.times, track.references, stop_end, color, dashed=True))
            parts.append(_steps(scale, track.times, track.stops, stop_end, color, dashed=False))
        if state.activated_at is not None and state.activated_price is not None:
            parts.append(f'<circle cx="{scale.x(state.activated_at):.1f}" cy="{scale.y(state.activated_price):.1f}" '
                         f'r="5" fill="none" stroke="{color}" stroke-width="2"><title>activated at '
                         f'{state.activated_price}</title></circle>')
        if state.triggered_at is not None and state.trigger_price is not None:
            x, y = scale.x(state.triggered_at), scale.y(state.trigger_price)
            parts.append(f'<path d="M{x - 6:.1f},{y - 6:.1f}L{x + 6:.1f},{y + 6:.1f}M{x - 6:.1f},{y + 6:.1f}'
                         f'L{x + 6:.1f},{y - 6:.1f}" stroke="{color}" stroke-width="2.5"><title>triggered at '
                         f'{state.trigger_price}</title></path>')
        legend_y = TOP + 16 + index * 18
        parts.append(f'<line x1="{WIDTH - RIGHT + 16}" y1="{legend_y - 4}" x2="{WIDTH - RIGHT + 40}" '
                     f'y2="{legend_y - 4}" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 46}" y="{legend_y}">{html.escape(_label(combo))}</text>')
    notes_y = TOP + 24 + len(result.combinations) * 18
    parts.append(f'<text x="{WIDTH - RIGHT + 16}" y="{notes_y}" fill="#555">solid: stop, dashed: reference</text>')
    parts.append(f'<text x="{WIDTH - RIGHT + 16}" y="{notes_y + 16}" fill="#555">o activated, x triggered</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _steps(scale: _Scale, times: list[int], values: list[Decimal], end: int, color: str, dashed: bool) -> str:
    points = []
    for index, (t, v) in enumerate(zip(times, values, strict=True)):
        y = scale.y(v)
        points.append(f"{scale.x(t):.1f},{y:.1f}")
        following = times[index + 1] if index + 1 < len(times) else end
        points.append(f"{scale.x(following):.1f},{y:.1f}")
    dash = ' stroke-dasharray="5,4"' if dashed else ""
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>'


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
    title = f"trailingstop backtest: {result.trades:,} trades, {len(result.combinations)} combinations"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h3>{html.escape(title)}</h3>{_svg(result)}</body></html>\n")


def _write_png(result: BacktestResult, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("PNG charts need matplotlib: pip install 'trailingstop[plot]' (or use .html)") from None
    from datetime import UTC, datetime

    from matplotlib import dates

    def when(ms: int) -> float:
        return float(dates.date2num(datetime.fromtimestamp(ms / 1000, tz=UTC)))

    figure, axes = plt.subplots(figsize=(13, 6.5))
    thinned = _thin(result.prices)
    axes.plot([when(t) for t, _ in thinned], [float(p) for _, p in thinned], color="#555", linewidth=0.8, label="price")
    end = result.prices[-1][0]
    for index, combo in enumerate(result.combinations):
        color = PALETTE[index % len(PALETTE)]
        state = result.states[combo.key]
        track = result.tracks.get(combo.key)
        if track and track.times:
            stop_end = state.triggered_at or end
            times = [when(t) for t in (*track.times, stop_end)]
            axes.step(times, [float(v) for v in [*track.references, track.references[-1]]], where="post",
                      color=color, linestyle="--", linewidth=1)
            axes.step(times, [float(v) for v in [*track.stops, track.stops[-1]]], where="post",
                      color=color, linewidth=1.3, label=_label(combo))
        if state.activated_at is not None and state.activated_price is not None:
            activated = (when(state.activated_at), float(state.activated_price))
            axes.plot(*activated, "o", mfc="none", color=color, markersize=8)
        if state.triggered_at is not None and state.trigger_price is not None:
            axes.plot(when(state.triggered_at), float(state.trigger_price), "x", color=color, markersize=10, mew=2.5)
    axes.xaxis_date(tz="UTC")
    axes.set_xlabel("trade time (UTC)")
    axes.set_ylabel("price")
    axes.set_title("solid: stop, dashed: reference, o activated, x triggered")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

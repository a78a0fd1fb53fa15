"""Small hand-made SVG charts for the run report: a histogram and a (stacked) bar chart.

Each function returns one `<svg>` element as a string, sized in CSS pixels, self-contained (no fonts,
scripts or links), with every label escaped. Values are plain numbers; empty input gives a chart that
says so.
"""
from __future__ import annotations

import math
from html import escape
from typing import Sequence

import numpy as np

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 26, 40          # plot margins
MAX_BAR = 48                                        # px: a few bars do not fill the whole plot
COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1")


def histogram(values: Sequence[float], title: str, x_label: str, *, bins: int | None = None,
              integer: bool = False) -> str:
    """Counts of `values` in equal bins (default: 2√n, 5 to 30; `integer`: one bin per whole number
    when they fit)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return _empty(title)
    bins = bins or int(np.clip(2 * math.sqrt(len(values)), 5, 30))
    edges, decimals = _edges(values, max(bins, 30) if integer else bins, integer)
    counts, _ = np.histogram(values, edges)
    labels = [_number(e) if decimals is None else f"{e:.{decimals}f}" for e in edges[:-1]]
    return _bars(title, x_label, "videos", labels, {"": counts.astype(float)}, gap=0.15 if integer else 0.0)


def bar_chart(labels: Sequence[str], series: dict[str, Sequence[float]], title: str, y_label: str) -> str:
    """One bar per label; several series stack, with a legend."""
    if not len(labels):
        return _empty(title)
    return _bars(title, "", y_label, [str(x) for x in labels],
                 {k: np.asarray(v, np.float64) for k, v in series.items()}, gap=0.2)


def _edges(values: np.ndarray, bins: int, integer: bool) -> tuple[np.ndarray, int | None]:
    """Bin edges, and the decimals their labels need (None: `_number`'s short form)."""
    low, high = float(values.min()), float(values.max())
    if integer and high - low + 1 <= bins:
        return np.arange(math.floor(low), math.floor(high) + 2, dtype=np.float64), None
    if high == low:
        return (np.array([low - 0.5, low + 0.5]) if integer else np.array([low, low + max(abs(low), 1.0) * 1e-3])), None
    return round_edges(low, high, bins)


def round_edges(low: float, high: float, most: int) -> tuple[np.ndarray, int | None]:
    """At most `most` bins of a round width (1, 2, 2.5 or 5 × 10^k) from a multiple of it, covering
    [low, high]; and the decimals that tell every edge apart (None when whole numbers do)."""
    for step in _round_steps((high - low) / most, high - low):
        start = math.floor(low / step + 1e-9) * step
        count = max(1, math.ceil((high - start) / step - 1e-9))
        if count <= most:
            decimals = next(d for d in range(16) if abs(round(step, d) - step) < 1e-9 * step)
            return start + step * np.arange(count + 1), decimals or None
    return np.linspace(low, high, most + 1), None


def _round_steps(smallest: float, largest: float):
    """Round widths (1, 2, 2.5, 5 × 10^k) from a tenth of `smallest` to ten times `largest`, ascending."""
    for power in range(math.floor(math.log10(smallest)) - 1, math.floor(math.log10(largest)) + 2):
        for base in (1, 2, 2.5, 5):
            yield base * 10.0 ** power


def _bars(title: str, x_label: str, y_label: str, labels: list[str], series: dict[str, np.ndarray],
          gap: float) -> str:
    """The shared drawing: axes, y ticks, stacked bars, every few x labels, a legend for named series."""
    stacks = np.vstack([np.nan_to_num(v) for v in series.values()])
    ticks = nice_ticks(float(stacks.sum(axis=0).max()))
    top = ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / len(labels)
    width = max(min(step * (1 - gap), MAX_BAR), 1.0)
    y = lambda v: TOP + plot_h * (1 - v / top)                         # noqa: E731
    parts = [_header(title), *_y_axis(ticks, y, y_label)]
    for i, label in enumerate(labels):
        base = 0.0
        for j, name in enumerate(series):
            value = float(stacks[j, i])
            if value > 0:
                parts.append(f'<rect x="{LEFT + (i + 0.5) * step - width / 2:.1f}" y="{y(base + value):.1f}" '
                             f'width="{width:.1f}" height="{y(base) - y(base + value):.1f}" '
                             f'fill="{COLOURS[j % len(COLOURS)]}"><title>{escape(label)}'
                             f'{" " + escape(name) if name else ""}: {_number(value)}</title></rect>')
            base += value
    every = max(1, math.ceil(len(labels) / 8))
    parts += [f'<text x="{LEFT + (i + 0.5) * step:.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="10" '
              f'text-anchor="middle">{escape(labels[i])}</text>' for i in range(0, len(labels), every)]
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" font-size="11" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    parts += _legend([n for n in series if n])
    return "".join(parts) + "</svg>"


def _header(title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" font-family="sans-serif">'
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>'
            f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>')


def nice_ticks(high: float, most: int = 6) -> list[float]:
    """Axis ticks from 0 at round steps (1, 2, 2.5 or 5 × 10^k), at most `most`, the last ≥ `high`."""
    if not high > 0 or not math.isfinite(high):
        return [0.0, 1.0]
    for step in _round_steps(high / most, high):
        count = math.ceil(high / step - 1e-9)
        if count + 1 <= most:
            return [round(i * step, 12) for i in range(count + 1)]
    return [0.0, high]


def _y_axis(ticks: list[float], y, label: str) -> list[str]:
    parts = [f'<line x1="{LEFT}" y1="{y(t):.1f}" x2="{WIDTH - RIGHT}" y2="{y(t):.1f}" stroke="#ddd"/>'
             f'<text x="{LEFT - 4}" y="{y(t) + 3:.1f}" font-size="10" text-anchor="end">{_number(t)}</text>'
             for t in ticks]
    parts.append(f'<text x="12" y="{TOP + (HEIGHT - TOP - BOTTOM) / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {TOP + (HEIGHT - TOP - BOTTOM) / 2})">{escape(label)}</text>')
    return parts


def _legend(names: list[str]) -> list[str]:
    parts = []
    for j, name in enumerate(names):
        x = WIDTH - RIGHT - 110 * (len(names) - j)
        parts.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{COLOURS[j % len(COLOURS)]}"/>'
                     f'<text x="{x + 14}" y="15" font-size="11">{escape(name)}</text>')
    return parts


def _empty(title: str) -> str:
    return _header(title) + (f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" font-size="12" text-anchor="middle" '
                             f'fill="#888">nothing to show</text></svg>')


def _number(value: float) -> str:
    """Short label: 1234 → '1234', 0.5 → '0.5', 12.345 → '12.3', 1.5e6 → '1.5M'."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}" if value != int(value) else str(int(value))

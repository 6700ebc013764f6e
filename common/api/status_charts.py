"""Chart geometry for the status page, drawn as inline SVG by the templates: no chart library.

Why on the server: the page must read with JavaScript off and work with no internet, and an SVG written into the
HTML needs neither a script nor a pinned package; Jinja's escaping covers its text like the rest of the page.
This module only computes coordinates and tick labels; `templates/_charts.html` turns them into markup.
Colour is never the only signal: each series also has its own dash pattern and marker shape, and a legend in text.
"""

from __future__ import annotations

import math
import time

WIDTH, HEIGHT = 720, 280
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 12, 36
MARKERS_UP_TO = 40
"""A series with at most this many points gets a marker on each (a single point would draw no line)."""
STYLES = ({"colour": "#0072b2", "dash": "", "marker": "circle"},
          {"colour": "#d55e00", "dash": "7 4", "marker": "square"},
          {"colour": "#009e73", "dash": "2 3", "marker": "diamond"})
"""Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), with dashes and markers."""


def style(index: int) -> dict:
    return STYLES[index % len(STYLES)]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def money(value: float) -> str:
    """A price for an axis or a table: more decimals for small prices."""
    if value == 0:
        return "0"
    digits = 2 if abs(value) >= 1 else min(8, 2 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{digits}f}"


def tick_label(value: float, ticks: list[float]) -> str:
    """An axis label with as many decimals as the tick step needs (105,000 not 105,000.00; 0.25 not 0)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1.0
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    scaled = step * 10 ** decimals
    decimals += 1 if step < 1 and abs(scaled - round(scaled)) > 1e-9 else 0
    return f"{value:,.{decimals}f}"


def _time_label(epoch: float, span: float) -> str:
    pattern = "%Y-%m-%d" if span > 2 * 86400 else "%m-%d %H:%M"
    return time.strftime(pattern, time.gmtime(epoch))


def line_chart(series: dict[str, list[tuple[float, float]]], styles: dict[str, dict] | None = None) -> dict | None:
    """Geometry of a time/price chart: per series an SVG path (and markers when few points), axes with ticks.
    `styles`: a series' colour, dash and marker by key (so a source looks the same on every chart)."""
    points = [p for values in series.values() for p in values]
    if not points:
        return None
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    if x_high == x_low:
        x_low, x_high = x_low - 3600, x_high + 3600
    y_ticks = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
    y_low, y_high = y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(value: float) -> float:
        return round(LEFT + (value - x_low) / (x_high - x_low) * plot_w, 1)

    def y_of(value: float) -> float:
        return round(TOP + plot_h - (value - y_low) / ((y_high - y_low) or 1) * plot_h, 1)

    drawn = []
    for index, (key, values) in enumerate(series.items()):
        coords = [(x_of(x), y_of(y)) for x, y in values]
        path = " ".join(f"{'M' if i == 0 else 'L'}{x},{y}" for i, (x, y) in enumerate(coords))
        drawn.append({"key": key, "path": path, "points": len(values), **(styles or {}).get(key, style(index)),
                      "markers": coords if len(coords) <= MARKERS_UP_TO else [],
                      "first": values[0] if values else None, "last": values[-1] if values else None,
                      "low": min((v[1] for v in values), default=None),
                      "high": max((v[1] for v in values), default=None)})
    span = x_high - x_low
    x_ticks = [(x_of(x_low + span * i / 4), _time_label(x_low + span * i / 4, span)) for i in range(5)]
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": HEIGHT - BOTTOM, "series": drawn, "x_ticks": x_ticks,
            "y_ticks": [(y_of(v), tick_label(v, y_ticks)) for v in y_ticks]}


def bar_chart(groups: list[tuple[str, str]], keys: list[str], values: dict[tuple[str, str], int]) -> dict | None:
    """Grouped bars: for each group (id, label), one bar per key; heights scaled to the largest value."""
    if not groups:
        return None
    top = max([1, *values.values()])
    y_ticks = [tick for tick in nice_ticks(0, top, 4) if tick >= 0]
    scale_top = y_ticks[-1] or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(groups)
    bar_w = max(2.0, min(24.0, slot * 0.8 / len(keys)))
    bars, labels = [], []
    for g, (group_id, label) in enumerate(groups):
        start = LEFT + g * slot + (slot - bar_w * len(keys)) / 2
        for k, key in enumerate(keys):
            value = values.get((group_id, key), 0)
            height = round(value / scale_top * plot_h, 1)
            bars.append({"group": group_id, "key": key, "value": value, "x": round(start + k * bar_w, 1),
                         "y": round(TOP + plot_h - height, 1), "width": round(bar_w - 1, 1), "height": height,
                         **style(k)})
        labels.append((round(LEFT + (g + 0.5) * slot, 1), label))
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": HEIGHT - BOTTOM, "bars": bars, "x_labels": labels,
            "y_ticks": [(round(TOP + plot_h - t / scale_top * plot_h, 1), f"{int(t):,}") for t in y_ticks]}

"""The report's histogram of slice noise scores, with the flagging threshold marked (inline SVG, numpy only)."""

from __future__ import annotations

import math

import numpy as np

BAR_COLOUR, FLAGGED_BAR_COLOUR = "#7A8FA6", "#D55E00"  # slate; Okabe-Ito vermillion for bars past the threshold


def _nice_top(value: float) -> float:
    """Round up to 0.05 steps below 0.5, else 0.1 steps; at most 1."""
    step = 0.05 if value < 0.5 else 0.1
    return min(1.0, max(step, math.ceil(value / step - 1e-9) * step))


def histogram_svg(scores: np.ndarray, threshold: float, bins: int = 40) -> str:
    """Inline SVG histogram of slice scores with the threshold marked; bars at or past it in vermillion."""
    scores = np.asarray(scores, dtype=float)
    top = _nice_top(max(float(scores.max()) if scores.size else 0.0, threshold) * 1.02)
    counts, edges = np.histogram(np.clip(scores, 0, top), bins=bins, range=(0.0, top))
    width, height, left, right, bottom, head = 440, 150, 34, 18, 30, 14
    plot_w, plot_h = width - left - right, height - bottom - head
    peak = max(1, int(counts.max()) if counts.size else 1)

    def x(v: float) -> float:
        return left + plot_w * v / top

    bars = []
    for count, lo, hi in zip(counts, edges[:-1], edges[1:]):
        if count == 0:
            continue
        bar_h = max(1.0, plot_h * count / peak)
        colour = FLAGGED_BAR_COLOUR if lo >= threshold - 1e-12 else BAR_COLOUR
        bars.append(f'<rect x="{x(lo) + 0.5:.1f}" y="{head + plot_h - bar_h:.1f}" width="{max(0.5, x(hi) - x(lo) - 1):.1f}"'
                    f' height="{bar_h:.1f}" fill="{colour}"><title>{lo:.3f}–{hi:.3f}: {count} slices</title></rect>')
    ticks = []
    step = 0.05 if top <= 0.3 else 0.1 if top <= 0.6 else 0.2
    for v in np.arange(0.0, top + 1e-9, step):
        ticks.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{head + plot_h}" y2="{head + plot_h + 4}"/>'
                     f'<text x="{x(v):.1f}" y="{head + plot_h + 16}" text-anchor="middle">{v:.2f}</text>')
    y_ticks = (f'<text x="{left - 6}" y="{head + 4}" text-anchor="end">{peak}</text>'
               f'<text x="{left - 6}" y="{head + plot_h}" text-anchor="end">0</text>')
    tx = x(threshold)
    anchor = "end" if tx > left + plot_w * 0.7 else "start"
    label_x = tx - 4 if anchor == "end" else tx + 4
    return (f'<svg class="histogram" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="Histogram of {scores.size} slice noise scores; flagging threshold {threshold:.3f}">'
            f'<g class="axis"><line x1="{left}" x2="{left + plot_w}" y1="{head + plot_h}" y2="{head + plot_h}"/>'
            f'{"".join(ticks)}{y_ticks}</g>{"".join(bars)}'
            f'<line class="threshold" x1="{tx:.1f}" x2="{tx:.1f}" y1="{head - 6}" y2="{head + plot_h}"/>'
            f'<text class="threshold-label" x="{label_x:.1f}" y="{head + 4}" text-anchor="{anchor}">'
            f'threshold {threshold:.3f}</text>'
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 1}" text-anchor="middle">slice noise score</text></svg>')

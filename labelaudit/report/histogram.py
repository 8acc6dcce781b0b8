"""The report's histogram of slice noise scores, with the flagging threshold marked (inline SVG, numpy only).

Counts are drawn on a log(1 + n) axis: most slices of an audit are clean and pile up in a bar or two near 0,
which on a linear axis squashes the few flagged slices of the tail to a pixel; on this axis one slice is still
a bar a reader sees, and the ticks (1, 2, 5, 10, ..., and the tallest bar's count) say what the heights mean.
"""

from __future__ import annotations

import math

import numpy as np

BAR_COLOUR, FLAGGED_BAR_COLOUR = "#7A8FA6", "#D55E00"  # slate; Okabe-Ito vermillion for bars past the threshold
#: Least distance between two labelled count ticks, in SVG units (the font is 11).
TICK_GAP = 12.0


def _nice_top(value: float) -> float:
    """Round up to 0.05 steps below 0.5, else 0.1 steps; at most 1."""
    step = 0.05 if value < 0.5 else 0.1
    return min(1.0, max(step, math.ceil(value / step - 1e-9) * step))


def _edges(top: float, bins: int, threshold: float) -> np.ndarray:
    """`bins` equal bins over [0, top], split at the threshold, so that no bar holds flagged and unflagged
    slices together."""
    edges = np.linspace(0.0, top, bins + 1)
    if 0.0 < threshold < top:
        near = int(np.argmin(np.abs(edges - threshold)))
        if abs(edges[near] - threshold) < 1e-9 * max(1.0, top):
            edges[near] = threshold
        else:
            edges = np.sort(np.append(edges, threshold))
    return edges


def count_ticks(peak: int, height: float, gap: float = TICK_GAP) -> list[int]:
    """The counts to label on a log(1 + n) axis `height` units tall whose top is `peak`: the peak, then from
    1, 2, 5, 10, 20, 50, ... those at least `gap` units from their neighbours and from 0, highest first."""
    if peak <= 0:
        return []

    def pos(n: int) -> float:
        return height * math.log1p(n) / math.log1p(peak)

    candidates = sorted({m * 10 ** k for k in range(int(math.log10(peak)) + 1) for m in (1, 2, 5)
                         if m * 10 ** k < peak}, reverse=True)
    ticks = [peak]
    for n in candidates:
        if pos(ticks[-1]) - pos(n) >= gap and pos(n) >= gap * 0.8:
            ticks.append(n)
    return ticks


def histogram_svg(scores: np.ndarray, threshold: float, bins: int = 40) -> str:
    """Inline SVG histogram of slice scores with the threshold marked; bars at or past it in vermillion."""
    scores = np.asarray(scores, dtype=float)
    top = _nice_top(max(float(scores.max()) if scores.size else 0.0, threshold) * 1.02)
    edges = _edges(top, bins, threshold)
    counts, _ = np.histogram(np.clip(scores, 0, top), bins=edges)
    width, height, left, right, bottom, head = 440, 176, 46, 18, 30, 30
    plot_w, plot_h = width - left - right, height - bottom - head
    base = head + plot_h
    peak = int(counts.max()) if counts.size else 0

    def x(v: float) -> float:
        return left + plot_w * v / top

    def y(n: float) -> float:
        return base - (plot_h * math.log1p(n) / math.log1p(peak) if peak else 0.0)

    bars = []
    for count, lo, hi in zip(counts, edges[:-1], edges[1:]):
        if count == 0:
            continue
        colour = FLAGGED_BAR_COLOUR if lo >= threshold - 1e-12 else BAR_COLOUR
        bars.append(f'<rect x="{x(lo) + 0.5:.1f}" y="{y(count):.1f}" width="{max(0.5, x(hi) - x(lo) - 1):.1f}"'
                    f' height="{base - y(count):.1f}" fill="{colour}"><title>{lo:.3f}–{hi:.3f}: {count} '
                    f'slice{"s" if count != 1 else ""}</title></rect>')
    ticks = []
    step = 0.05 if top <= 0.3 else 0.1 if top <= 0.6 else 0.2
    for v in np.arange(0.0, top + 1e-9, step):
        ticks.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{base}" y2="{base + 4}"/>'
                     f'<text x="{x(v):.1f}" y="{base + 16}" text-anchor="middle">{v:.2f}</text>')
    y_ticks = [f'<text x="{left - 6}" y="{base + 4}" text-anchor="end">0</text>']
    for n in count_ticks(peak, plot_h):
        y_ticks.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y(n):.1f}" y2="{y(n):.1f}"/>'
                       f'<text class="count-tick" x="{left - 6}" y="{y(n) + 4:.1f}" text-anchor="end">{n}</text>')
    tx = x(threshold)
    anchor = "end" if tx > left + plot_w * 0.7 else "start"
    label_x = tx - 4 if anchor == "end" else tx + 4
    flagged = int((scores >= threshold).sum())
    return (f'<svg class="histogram" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="Histogram of {scores.size} slice noise scores, counts on a log axis; flagging threshold '
            f'{threshold:.3f}, {flagged} slices at or above it">'
            f'<g class="axis">{"".join(y_ticks)}<line x1="{left}" x2="{left + plot_w}" y1="{base}" y2="{base}"/>'
            f'{"".join(ticks)}</g>{"".join(bars)}'
            f'<line class="threshold" x1="{tx:.1f}" x2="{tx:.1f}" y1="{head - 24}" y2="{base}"/>'
            f'<text class="threshold-label" x="{label_x:.1f}" y="{head - 14}" text-anchor="{anchor}">'
            f'threshold {threshold:.3f}</text>'
            f'<text class="flagged-label" x="{label_x:.1f}" y="{head - 2}" text-anchor="{anchor}">'
            f'{flagged} slice{"s" if flagged != 1 else ""} flagged →</text>'
            f'<text x="12" y="{head + plot_h / 2:.1f}" text-anchor="middle" transform="rotate(-90 12 '
            f'{head + plot_h / 2:.1f})">slices (log scale)</text>'
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 1}" text-anchor="middle">slice noise score</text></svg>')

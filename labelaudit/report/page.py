"""The HTML page: one self-contained file (inline CSS, JavaScript, PNG thumbnails and SVG), nothing fetched.

Every string that comes from the data (case ids, file names, dataset.json fields, run.json fields) goes
through `_e` (html.escape with quotes) before it reaches the page; the JavaScript reads data attributes and
sets textContent only, never innerHTML with data. A Content-Security-Policy forbids any fetch.
"""

from __future__ import annotations

import html
import math
import re
import shlex
from collections import defaultdict
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np

from .. import __version__
from ..diagnosis import KIND_HELP, ErrorKind
from .png import png_data_uri
from .views import CaseView, ReportConfig, SliceView

HEAT_RGB = (204, 121, 167)  # Okabe-Ito reddish purple: the noise map (alpha follows the score)
BAR_COLOUR, FLAGGED_BAR_COLOUR = "#7A8FA6", "#D55E00"


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _asset(name: str) -> str:
    return (resources.files(__package__) / name).read_text(encoding="utf-8")


def _kind(value) -> ErrorKind:
    try:
        return ErrorKind(value)
    except ValueError:
        return ErrorKind.NONE


# ----------------------------------------------------------------------------- images

def heat_rgba(noise: np.ndarray) -> np.ndarray:
    """uint8 noise (h, w) -> RGBA (h, w, 4): reddish purple, opacity rising with the score, clear below 0.1."""
    score = noise.astype(np.float32) / 255.0
    alpha = np.where(score < 0.1, 0.0, 0.25 + 0.65 * score)
    rgba = np.empty((*noise.shape, 4), dtype=np.uint8)
    rgba[..., :3] = HEAT_RGB
    rgba[..., 3] = np.round(alpha * 255).astype(np.uint8)
    return rgba


def _runs(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True along the last axis of bool (n, m): (line index, start, stop) arrays, row-major order."""
    step = np.diff(np.pad(edges.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    line, start = np.nonzero(step == 1)
    _, stop = np.nonzero(step == -1)
    return line, start, stop


def contour_path(labels: np.ndarray) -> str:
    """SVG path data of the pixel-exact outline of every foreground class region of labels (h, w).

    Pixel (r, c) covers [c, c+1] x [r, r+1]: the outline follows pixel edges, as the label is drawn in a
    viewer; runs of edges along a row or column are merged into one segment. Pure numpy.
    """
    parts = []
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = np.pad(labels == value, 1)
        rows, x0, x1 = _runs((mask[1:] != mask[:-1])[:, 1:-1])  # horizontal edges at y = row
        parts.extend(f"M{a} {y}H{b}" for y, a, b in zip(rows, x0, x1))
        cols, y0, y1 = _runs(((mask[:, 1:] != mask[:, :-1])[1:-1]).T)  # vertical edges at x = col
        parts.extend(f"M{x} {a}V{b}" for x, a, b in zip(cols, y0, y1))
    return "".join(parts)


def thumbnail_html(view: SliceView, alt: str) -> str:
    """The layered picture of one slice: image, heat overlay (hidden until toggled), label and prediction."""
    h, w = view.image.shape
    ratio = w / (h * view.pixel_aspect)
    return (f'<div class="view" style="aspect-ratio:{ratio:.4f}">'
            f'<img class="base" src="{png_data_uri(view.image)}" alt="{_e(alt)}">'
            f'<img class="heat" src="{png_data_uri(heat_rgba(view.noise))}" alt="">'
            f'<svg viewBox="0 0 {w} {h}" preserveAspectRatio="none" aria-hidden="true">'
            f'<path class="lab" d="{contour_path(view.label)}"/><path class="pred" d="{contour_path(view.pred)}"/>'
            f'</svg></div>')


# ----------------------------------------------------------------------------- the histogram

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


# ----------------------------------------------------------------------------- pieces of the page

def _rel(path: str, root: str | None) -> str:
    """`path` relative to `root` when inside it, else as given."""
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve())) if root else path
    except ValueError:
        return path


def _fmt_time(value: str) -> str:
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M %Z").strip()
    except (TypeError, ValueError):
        return value or "unknown"


def _badge(kind: ErrorKind) -> str:
    return f'<span class="badge k-{kind.value}" title="{_e(KIND_HELP[kind])}">{_e(kind.label)}</span>'


def _facts(audit, config: ReportConfig, views: dict[str, CaseView]) -> str:
    dataset, run, threshold = audit.dataset, audit.run, audit.threshold
    models = run.models
    trained_on = run.trained_on or "?"
    if run.trained_cases:
        trained_on += f" ({run.trained_cases} cases)"
    if dataset.fit_dataset:
        trained_on += " — this dataset"
    routing = sorted({c.routing for c in audit.cases})
    folds = (f"{len(models)} fold models" if len(models) > 1 else "1 model") + (
        f", cases scored {', '.join(routing)}" if routing else "")
    rows = [
        ("dataset", f"<b>{_e(dataset.name)}</b> <code>{_e(dataset.path)}</code> "
                    f"({_e(dataset.layout)} layout)"),
        ("model", f"<b>{_e(run.method)}</b>, trained {_e(_fmt_time(run.created))} on "
                  f"{_e(trained_on)}; {_e(folds)} <code>{_e(run.path)}</code>"),
        ("scoring", f"{_e(audit.pixel_score)} pixel score, {_e(audit.perturbations)} perturbed passes, ONNX Runtime "
                    f"{_e(audit.provider)}"),
        ("threshold", f"slice <b>{threshold.slice:.3f}</b>, case <b>{threshold.case:.3f}</b> "
                      f"({_e(threshold.source.value)})"),
        ("audit folder", f"<code>{_e(audit.out_dir) if audit.out_dir is not None else '(not written)'}</code>"),
    ]
    body = "".join(f"<tr><th scope=\"row\">{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table>{body}</table>'  # .about table in the CSS


def _counts(audit) -> str:
    items = [(len(audit.cases), "cases"), (len(audit.slices), "slices"),
             (len(audit.flagged_cases), "flagged cases"), (len(audit.flagged_slices), "flagged slices")]
    if audit.skipped:
        items.append((len(audit.skipped), "skipped cases"))
    cells = "".join(f'<div class="count{" hot" if "flagged" in name and n else ""}"><b>{n}</b><span>{name}</span></div>'
                    for n, name in items)
    return f'<div class="counts">{cells}</div>'


def _where(case, view: CaseView | None, audit, slice_list: list[int]) -> str:
    """The 'Open in 3D Slicer / ITK-SNAP' block: the four files, the axis and the slices to visit."""
    dataset_root = audit.dataset.path
    out_dir = str(audit.out_dir) if audit.out_dir is not None else None
    files = []
    images = list(view.images) if view else []
    label = view.label if view else ""
    for i, path in enumerate(images):
        files.append((f"image{f' (channel {i})' if len(images) > 1 else ''}", _rel(path, dataset_root), path))
    if label:
        files.append(("label", _rel(label, dataset_root), label))
    noise_abs = str(Path(out_dir) / case.noise_map) if out_dir and case.noise_map else (case.noise_map or "")
    pred_abs = str(Path(out_dir) / case.pred_map) if out_dir and case.pred_map else (case.pred_map or "")
    if case.noise_map:
        files.append(("noise map", case.noise_map, noise_abs))
    if case.pred_map:
        files.append(("suggested correction", case.pred_map, pred_abs))
    rows = "".join(f'<dt>{_e(k)}</dt><dd><code title="{_e(full)}">{_e(short)}</code></dd>' for k, short, full in files)
    if view is not None and view.orientation.itk_axis >= 0:
        o = view.orientation
        axis = (f"{o.plane} slices, voxel index {o.axis_name} (0-based, of {o.num_slices}): "
                f"{', '.join(str(i) for i in slice_list) or '—'}")
    else:
        axis = f"slice index: {', '.join(str(i) for i in slice_list) or '—'}"
    commands = ""
    if images and label:
        overlays = " ".join(shlex.quote(p) for p in (noise_abs, pred_abs) if p)
        itksnap = f"itksnap -g {shlex.quote(images[0])} -s {shlex.quote(label)}" + (f" -o {overlays}" if overlays else "")
        commands = f'<p class="cmd-label">ITK-SNAP:</p><pre class="cmd">{_e(itksnap)}</pre>'
    return (f'<details class="where"><summary>Open in 3D Slicer / ITK-SNAP</summary><dl>{rows}</dl>'
            f'<p class="axis">{_e(axis)}</p>{commands}</details>')


def _tile(s, view: SliceView | None, case_id: str, threshold: float, orientation_text: str) -> str:
    kind = _kind(getattr(s, "error_kind", "none"))
    doubt = f"{s.doubt_fraction:.0%} in doubt" if s.label_pixels else "nothing labelled"
    flagged = " flagged" if s.flagged else ""
    alt = f"case {case_id}, slice {s.slice_index}"
    picture = thumbnail_html(view, alt) if view is not None else '<div class="view none">no thumbnail</div>'
    return (f'<figure class="tile{flagged}" tabindex="0" role="button" data-slice="{s.slice_index}" '
            f'data-score="{s.noise_score:.6f}" data-kind="{kind.value}" data-doubt="{s.doubt_fraction:.6f}" '
            f'aria-label="{_e(alt)}, noise score {s.noise_score:.3f}, {_e(kind.label)}">'
            f'{picture}<figcaption><span class="slice">slice {s.slice_index}</span>'
            f'<span class="score" title="slice noise score (threshold {threshold:.3f})">{s.noise_score:.3f}</span>'
            f'<span class="doubt" title="share of the labelled pixels on this slice whose noise score is above 0.5">'
            f'{doubt}</span>{_badge(kind)}<span class="orient">{_e(orientation_text)}</span></figcaption></figure>')


def _case_section(rank: int, case, slices: list, view: CaseView | None, audit, config: ReportConfig) -> str:
    threshold = audit.threshold.slice
    shown = [s for s in slices if s.label_pixels or s.pred_pixels][:config.top_slices]
    more = [s.slice_index for s in slices if s.flagged and s not in shown]
    kind = _kind(getattr(case, "error_kind", "none"))
    if kind is ErrorKind.NONE and shown:
        kind = _kind(getattr(shown[0], "error_kind", "none"))
    orientation_text = ""
    if view is not None and view.orientation.itk_axis >= 0:
        orientation_text = f"{view.orientation.plane}, {view.orientation.axis_name} = "
    tiles = "".join(_tile(s, view.slices.get(s.slice_index) if view else None, case.case_id, threshold,
                          f"{orientation_text}{s.slice_index}" if orientation_text else "")
                    for s in shown)
    if not shown:
        tiles = '<p class="empty">no slice with labelled or predicted structure</p>'
    extra = ""
    if more:
        listed = ", ".join(str(i) for i in sorted(more)[:40]) + (" …" if len(more) > 40 else "")
        extra = f'<p class="more">{len(more)} more flagged slice{"s" if len(more) > 1 else ""}: {listed}</p>'
    worst = max((s.noise_score for s in slices), default=0.0)
    doubt = max((s.doubt_fraction for s in shown), default=0.0)
    kinds = " ".join(sorted({_kind(getattr(s, "error_kind", "none")).value for s in shown} | {kind.value}))
    flag = (f'<span class="flag">flagged · {case.n_flagged_slices} of {case.n_slices} slices</span>' if case.flagged
            else f'<span class="ok">not flagged · {case.n_slices} slices</span>')
    return (f'<section class="case{" flagged" if case.flagged else ""}" tabindex="-1" data-case="{_e(case.case_id)}" '
            f'data-rank="{rank}" data-score="{case.noise_score:.6f}" data-worst="{worst:.6f}" '
            f'data-doubt="{doubt:.6f}" data-nflagged="{case.n_flagged_slices}" data-kinds="{_e(kinds)}" '
            f'data-flagged="{int(case.flagged)}">'
            f'<header class="case-head"><span class="title"><span class="rank">#{rank}</span>'
            f'<h3 class="case-id">{_e(case.case_id)}</h3></span>'
            f'<span class="case-score" title="case noise score: mean of its worst slice scores">'
            f'<b>{case.noise_score:.3f}</b> noise score</span>{_badge(kind)}{flag}'
            f'<span class="dice" title="1 − Dice of the label against the robust prediction, whole case">'
            f'1 − Dice {case.disagreement:.2f}</span></header>'
            f'<div class="tiles">{tiles}</div>{extra}{_where(case, view, audit, [s.slice_index for s in shown])}'
            f'</section>')


def _legend(config: ReportConfig) -> str:
    kinds = "".join(f"<li>{_badge(k)} {_e(KIND_HELP[k])}</li>" for k in ErrorKind if k is not ErrorKind.NONE)
    return (f'<div class="legend"><p><span class="swatch lab"></span>given label '
            f'<span class="swatch pred"></span>robust prediction (the suggested correction) '
            f'<span class="swatch heat"></span>noise map (toggle with <kbd>o</kbd>)</p>'
            f'<p class="note">Every case is listed, worst first, with its {config.top_slices} worst slices; thumbnails '
            f'for the {config.top_slices} worst slices of the {config.top_cases} worst cases, cropped around the '
            f'structure, displayed with the patient\'s right on the left. Noise scores are in [0, 1]: the estimated '
            f'share of the structure that is mislabelled, higher is worse.</p>'
            f'<details><summary>Where to look in 3D Slicer / ITK-SNAP</summary><p class="note">Each case names '
            f'its image, label, noise map and suggested correction, and the slices (voxel index along the slicing '
            f'axis, 0-based). In 3D Slicer drag the files in, load the label and the suggested correction as '
            f'segmentations and show the noise map as foreground with a heat colour table (0 to 1); ITK-SNAP opens '
            f'them with the command shown.</p></details>'
            f'<details><summary>Kinds of error</summary><ul class="kinds">{kinds}</ul>'
            f'<p class="note">From comparing the label with the robust prediction on the slice; "none" when they '
            f'differ by less than a tenth of the structure.</p></details></div>')


def _skipped(audit) -> str:
    if not audit.skipped:
        return ""
    items = "".join(f"<li><b>{_e(case)}</b>: {_e('; '.join(why))}</li>" for case, why in sorted(audit.skipped.items()))
    return f'<section class="skipped"><h2>Skipped cases ({len(audit.skipped)})</h2><ul>{items}</ul></section>'


def _toolbar(kinds_present: list[ErrorKind]) -> str:
    options = "".join(f'<option value="{k.value}">{_e(k.label)}</option>' for k in kinds_present)
    return f'''<div class="toolbar" role="search">
<label>case <input id="f-case" type="search" placeholder="filter by id" autocomplete="off"></label>
<label>score ≥ <input id="f-score" type="number" min="0" max="1" step="0.01" value="0"></label>
<label>kind <select id="f-kind"><option value="">any</option>{options}</select></label>
<label class="check"><input id="f-flagged" type="checkbox"> flagged only</label>
<label>sort <select id="sort">
<option value="score">case score</option><option value="worst">worst slice</option>
<option value="doubt">share in doubt</option><option value="nflagged">flagged slices</option>
<option value="case">case id</option></select></label>
<button id="sort-dir" type="button" aria-label="reverse the order" title="reverse the order">↓</button>
<label class="check"><input id="heat" type="checkbox"> noise map</label>
<span id="shown" aria-live="polite"></span>
<button id="help" type="button" title="keyboard shortcuts">?</button>
</div>'''


# ----------------------------------------------------------------------------- the page

def render_report(audit, config: ReportConfig = ReportConfig()) -> str:
    """The report page for an Audit (scoring.Audit or anything with its fields) as one HTML string.

    Thumbnails come from `audit.views` (case id -> CaseView, gathered by ViewCollector while scoring);
    without them the page lists the same rows without pictures.
    """
    views: dict[str, CaseView] = getattr(audit, "views", None) or {}
    by_case: dict[str, list] = defaultdict(list)
    for s in audit.slices:
        by_case[s.case_id].append(s)
    for rows in by_case.values():
        rows.sort(key=lambda s: (-s.noise_score, s.slice_index))
    sections = [_case_section(rank, case, by_case.get(case.case_id, []), views.get(case.case_id), audit, config)
                for rank, case in enumerate(audit.cases, start=1)]
    structure_scores = np.array([s.noise_score for s in audit.slices if s.label_pixels or s.pred_pixels])
    empty = sum(1 for s in audit.slices if not (s.label_pixels or s.pred_pixels))
    present = {_kind(getattr(s, "error_kind", "none")) for s in audit.slices} | {
        _kind(getattr(c, "error_kind", "none")) for c in audit.cases}
    kinds_present = [k for k in ErrorKind if k in present] or [ErrorKind.NONE]
    name = audit.dataset.name
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    hist_note = (f"{structure_scores.size} slices with labelled or predicted structure"
                 + (f"; {empty} empty slices (score 0) not shown" if empty else ""))
    parts = {
        "title": f"labelaudit: {_e(name)}",
        "css": _asset("report.css"),
        "js": _asset("report.js"),
        "heading": f"Label audit of {_e(name)}",
        "facts": _facts(audit, config, views),
        "counts": _counts(audit),
        "histogram": histogram_svg(structure_scores, audit.threshold.slice, config.histogram_bins),
        "histnote": _e(hist_note),
        "legend": _legend(config),
        "toolbar": _toolbar(kinds_present),
        "cases": "".join(sections) or '<p class="empty">No case was scored.</p>',
        "skipped": _skipped(audit),
        "footer": f"labelaudit {_e(__version__)} · generated {_e(generated)}",
    }
    template = _asset("report.html")
    # one pass, so a marker-like string inside an inserted part is never expanded
    return re.sub(r"<!--@(\w+)-->|/\*@(\w+)\*/", lambda m: parts[m.group(1) or m.group(2)], template)


def write_report(audit, path: Path, config: ReportConfig = ReportConfig()) -> Path:
    """Render the report and write it to `path` (through a temp file); returns the path."""
    from ..io.atomic import write_text

    return write_text(path, render_report(audit, config))

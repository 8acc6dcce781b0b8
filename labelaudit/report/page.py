"""The HTML page: one self-contained file (inline CSS, JavaScript, PNG thumbnails and SVG), nothing fetched.

Every string that comes from the data (case ids, file names, dataset.json fields, run.json fields) goes
through `_e` (html.escape with quotes) before it reaches the page; the JavaScript reads data attributes and
sets textContent only, never innerHTML with data. A Content-Security-Policy forbids any fetch.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
from collections import defaultdict
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np

from .. import __version__
from ..diagnosis import KIND_HELP, ErrorKind
from .histogram import histogram_svg
from .picture import HEAT_RGB, class_palette, contour_path, heat_rgba, thumbnail_html  # noqa: F401 - re-exported
from .views import CaseView, ReportConfig, SliceView



def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _asset(name: str) -> str:
    return (resources.files(__package__) / name).read_text(encoding="utf-8")


def _kind(value) -> ErrorKind:
    try:
        return ErrorKind(value)
    except ValueError:
        return ErrorKind.NONE


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
        ("scoring", f"{_e(audit.pixel_score)} pixel score, {_e(audit.perturbations)} perturbed passes, "
                    + ("" if audit.run.source else "ONNX Runtime ") + f"{_e(audit.provider)}"),
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


def _abs(rel: str | None, out_dir: str | None) -> str:
    return str(Path(out_dir) / rel) if out_dir and rel else (rel or "")


def _where(case, view: CaseView | None, audit, slice_list: list[int]) -> str:
    """The 'Open in 3D Slicer / ITK-SNAP' block: the files, the axis and the slices to visit, two commands."""
    dataset_root = audit.dataset.path
    out_dir = str(audit.out_dir) if audit.out_dir is not None else None
    files = []
    images = list(view.images) if view else []
    label = view.label if view else ""
    for i, path in enumerate(images):
        files.append((f"image{f' (channel {i})' if len(images) > 1 else ''}", _rel(path, dataset_root), path))
    if label:
        files.append(("label", _rel(label, dataset_root), label))
    fixed = view.fixed_map if view else ""
    noise_abs, pred_abs, fixed_abs = (_abs(r, out_dir) for r in (case.noise_map, case.pred_map, fixed))
    for name, short, full in (("noise map", case.noise_map, noise_abs), ("robust prediction", case.pred_map, pred_abs),
                              ("fixed label", fixed, fixed_abs)):
        if short:
            files.append((name, short, full))
    rows = "".join(f'<dt>{_e(k)}</dt><dd><code title="{_e(full)}">{_e(short)}</code></dd>' for k, short, full in files)
    if view is not None and view.orientation.itk_axis >= 0:
        o = view.orientation
        axis = (f"{o.plane} slices, voxel index {o.axis_name} (0-based, of {o.num_slices}): "
                f"{', '.join(str(i) for i in slice_list) or '—'}")
    else:
        axis = f"slice index: {', '.join(str(i) for i in slice_list) or '—'}"
    commands = ""
    if images and label:
        image, label, noise_abs, fixed_abs = (os.path.abspath(p) if p else "" for p in (images[0], label, noise_abs,
                                                                                       fixed_abs))
        overlays = " ".join(shlex.quote(p) for p in (noise_abs, fixed_abs) if p)
        itksnap = f"itksnap -g {shlex.quote(image)} -s {shlex.quote(label)}" + (f" -o {overlays}" if overlays else "")
        loads = [f"slicer.util.loadVolume({json.dumps(image)})", f"slicer.util.loadLabelVolume({json.dumps(label)})"]
        loads += [f"slicer.util.loadLabelVolume({json.dumps(fixed_abs)})"] if fixed_abs else []
        slicer = "Slicer --python-code " + shlex.quote("; ".join(loads))
        commands = (f'<p class="cmd-label">ITK-SNAP (image, label; noise map and fixed label as overlays):</p>'
                    f'<pre class="cmd">{_e(itksnap)}</pre><p class="cmd-label">3D Slicer (image, label and fixed '
                    f'label):</p><pre class="cmd">{_e(slicer)}</pre>')
    return (f'<details class="where"><summary>Open in 3D Slicer / ITK-SNAP</summary><dl>{rows}</dl>'
            f'<p class="axis">{_e(axis)}</p>{commands}</details>')


def _slice_range(indices: list[int], limit: int = 6) -> str:
    """`slice 3`, `slices 3–5, 9`: the slices, runs of neighbours joined, at most `limit` pieces."""
    values = sorted(set(indices))
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    pieces = [str(a) if a == b else f"{a}–{b}" for a, b in runs]
    text = ", ".join(pieces[:limit]) + (" …" if len(pieces) > limit else "")
    return ("slice " if len(values) == 1 else "slices ") + text


def _fix_line(case, view: CaseView | None, names: dict[int, str], palette: dict[int, str]) -> str:
    """The case's one line "what to fix": the weightiest kind and class of its regions judged wrong, where,
    and the fixed label that corrects them."""
    regions = view.regions if view is not None else ()
    if not regions:
        if not case.flagged:
            return ""
        return ('<p class="fix none">What to fix: no region of its flagged slices is sure enough to fix '
                'automatically; compare label and prediction on the slices shown.</p>')
    groups: dict[tuple[str, int, int], list] = {}
    for r in regions:
        row = groups.setdefault((r.kind, r.label_class, r.pred_value if r.kind == "wrong_class" else 0), [0.0, 0, []])
        row[0] += r.pixels * r.score
        row[1] += r.pixels
        row[2].append(r.slice_index)

    def phrase(key) -> str:
        kind, value, seen = key
        name = f'<span class="cls" style="--c:{palette.get(value, "#000000")}">{_e(names.get(value, value))}</span>'
        if kind == ErrorKind.WRONG_CLASS.value:
            return (f'{_badge(ErrorKind(kind))} {name} where the model sees '
                    f'<span class="cls" style="--c:{palette.get(seen, "#000000")}">{_e(names.get(seen, seen))}</span>')
        return f"{_badge(_kind(kind))} of {name}"

    ranked = sorted(groups, key=lambda k: -groups[k][0])
    top = ranked[0]
    _, pixels, slices = groups[top]
    count = sum(1 for r in regions if (r.kind, r.label_class) == top[:2])
    more = "; also " + ", ".join(f"{phrase(k)} ({_e(_slice_range(groups[k][2]))})" for k in ranked[1:3]) \
        if len(ranked) > 1 else ""
    more += f" and {len(ranked) - 3} more" if len(ranked) > 3 else ""
    fixed = (f' · fixed label: <code>{_e(view.fixed_map)}</code>' if view is not None and view.fixed_map else "")
    return (f'<p class="fix"><b>What to fix:</b> {phrase(top)}, {_e(_slice_range(slices))} '
            f'({count} region{"s" if count > 1 else ""}, {pixels} px){more}{fixed}</p>')


def _tile(s, view: SliceView | None, case_id: str, threshold: float, orientation_text: str,
          palette: dict[int, str], heat: bool) -> str:
    kind = _kind(getattr(s, "error_kind", "none"))
    doubt = f"{s.doubt_fraction:.0%} in doubt" if s.label_pixels else "nothing labelled"
    flagged = " flagged" if s.flagged else ""
    alt = f"case {case_id}, slice {s.slice_index}"
    picture = thumbnail_html(view, alt, palette, heat) if view is not None else \
        '<div class="view none">no thumbnail</div>'
    return (f'<figure class="tile{flagged}" tabindex="0" role="button" data-slice="{s.slice_index}" '
            f'data-score="{s.noise_score:.6f}" data-kind="{kind.value}" data-doubt="{s.doubt_fraction:.6f}" '
            f'aria-label="{_e(alt)}, noise score {s.noise_score:.3f}, {_e(kind.label)}">'
            f'{picture}<figcaption><span class="slice">slice {s.slice_index}</span>'
            f'<span class="score" title="slice noise score (threshold {threshold:.3f})">{s.noise_score:.3f}</span>'
            f'<span class="doubt" title="share of the labelled pixels on this slice whose noise score is above 0.5">'
            f'{doubt}</span>{_badge(kind)}<span class="orient">{_e(orientation_text)}</span></figcaption></figure>')


def _case_section(rank: int, case, slices: list, view: CaseView | None, audit, config: ReportConfig,
                  names: dict[int, str], palette: dict[int, str]) -> str:
    threshold = audit.threshold.slice
    shown = [s for s in slices if s.label_pixels or s.pred_pixels][:config.top_slices]
    more = [s.slice_index for s in slices if s.flagged and s not in shown]
    kind = _kind(getattr(case, "error_kind", "none"))
    if kind is ErrorKind.NONE and shown:
        kind = _kind(getattr(shown[0], "error_kind", "none"))
    orientation_text = ""
    if view is not None and view.orientation.itk_axis >= 0:
        orientation_text = f"{view.orientation.plane}, {view.orientation.axis_name} = "
    # the noise overlay is on by default on the worst slices: the case's worst, and every flagged one
    tiles = "".join(_tile(s, view.slices.get(s.slice_index) if view else None, case.case_id, threshold,
                          f"{orientation_text}{s.slice_index}" if orientation_text else "", palette,
                          case.flagged and (i == 0 or s.flagged))
                    for i, s in enumerate(shown))
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
            f'<div class="tiles">{tiles}</div>{_fix_line(case, view, names, palette)}{extra}'
            f'{_where(case, view, audit, [s.slice_index for s in shown])}</section>')


def _classes(names: dict[int, str], palette: dict[int, str]) -> str:
    items = "".join(f'<span class="class-key" style="--c:{palette[v]}"><span class="swatch lab"></span>'
                    f'<span class="swatch pred"></span>{_e(names.get(v, f"label {v}"))} <small>({v})</small></span>'
                    for v in palette)
    return f'<p class="classes"><span class="key-title">classes:</span> {items}</p>' if items else ""


def _legend(config: ReportConfig, names: dict[int, str], palette: dict[int, str]) -> str:
    kinds = "".join(f"<li>{_badge(k)} {_e(KIND_HELP[k])}</li>" for k in ErrorKind if k is not ErrorKind.NONE)
    return (f'<div class="legend">{_classes(names, palette)}<p><span class="swatch lab mono"></span>given label '
            f'(solid) <span class="swatch pred mono"></span>robust prediction (dashed), each in its class\'s colour '
            f'<span class="swatch heat"></span>where the model disagrees with the label (1 − its probability of the '
            f'given class; on for each case\'s worst slices; <kbd>o</kbd>: all, none)</p>'
            f'<p class="note">Every case is listed, worst first, with its {config.top_slices} worst slices; thumbnails '
            f'for the {config.top_slices} worst slices of the {config.top_cases} worst cases, cropped around the '
            f'structure, displayed with the patient\'s right on the left; click one to enlarge it. Noise scores are '
            f'in [0, 1]: the estimated share of the structure that is mislabelled, higher is worse. '
            f'"What to fix" names the likely error of the regions judged wrong (a region of a flagged slice where '
            f'label and prediction disagree, the model being sure) and the <b>fixed label</b> '
            f'(<code>maps/&lt;case&gt;_fixed</code>): the label with those regions replaced by the robust '
            f'prediction (<code>maps/&lt;case&gt;_pred</code>, the prediction everywhere); '
            f'<code>labelaudit fix</code> writes the whole corrected dataset.</p>'
            f'<details><summary>Where to look in 3D Slicer / ITK-SNAP</summary><p class="note">Each case names '
            f'its image, label, noise map, robust prediction and fixed label, and the slices (voxel index along the '
            f'slicing axis, 0-based). The commands shown open image, label and fixed label together; in 3D Slicer '
            f'show the noise map as foreground with a heat colour table (0 to 1).</p></details>'
            f'<details><summary>Kinds of error</summary><ul class="kinds">{kinds}</ul>'
            f'<p class="note">From the regions where label and robust prediction disagree on the slice (the one the '
            f'model is surest of names it); "none" when they differ by less than a tenth of the structure.</p>'
            f'</details></div>')


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
<label>noise map <select id="heat" title="o cycles through these"><option value="worst">worst slices</option>
<option value="all">all slices</option><option value="off">off</option></select></label>
<span id="shown" aria-live="polite"></span>
<button id="help" type="button" title="keyboard shortcuts">?</button>
</div>'''


# ----------------------------------------------------------------------------- the page

def class_names(audit, views: dict[str, CaseView]) -> dict[int, str]:
    """{label value: name} of the foreground classes: `audit.class_names` (the dataset.json labels); values seen
    in the thumbnails but not declared are named "label N"."""
    names = dict(audit.class_names)
    seen: set[int] = set()
    for view in views.values():
        for s in view.slices.values():
            seen |= {int(v) for v in np.unique(s.label)} | {int(v) for v in np.unique(s.pred)}
        seen |= {r.label_class for r in view.regions} | {r.pred_value for r in view.regions}
    names.update({v: f"label {v}" for v in seen if v not in names})
    return {v: names[v] for v in sorted(names) if v != 0}


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
    names = class_names(audit, views)
    palette = class_palette(names)
    sections = [_case_section(rank, case, by_case.get(case.case_id, []), views.get(case.case_id), audit, config,
                              names, palette)
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
        "legend": _legend(config, names, palette),
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

"""The HTML page: one self-contained file (inline CSS, JavaScript, PNG thumbnails and SVG), nothing fetched.

Every string that comes from the data (case ids, file names, dataset.json fields, run.json fields) goes
through `_e` (html.escape with quotes) before it reaches the page; the JavaScript reads data attributes and
sets textContent only, never innerHTML with data. A Content-Security-Policy forbids any fetch.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np

from .. import __version__
from ..diagnosis import KIND_HELP, ErrorKind
from ..score.decide import has_case_threshold
from ..types import Routing
from .histogram import histogram_svg
from .picture import HEAT_RGB, class_palette, contour_path, heat_rgba, thumbnail_html  # noqa: F401 - re-exported
from .picture import escape as _e
from .views import CaseView, ReportConfig, SliceView
from .where import where_html



def _asset(name: str) -> str:
    return (resources.files(__package__) / name).read_text(encoding="utf-8")


def _kind(value) -> ErrorKind:
    try:
        return ErrorKind(value)
    except ValueError:
        return ErrorKind.NONE


# ----------------------------------------------------------------------------- pieces of the page

def _fmt_time(value: str) -> str:
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M %Z").strip()
    except (TypeError, ValueError):
        return value or "unknown"


def _badge(kind: ErrorKind) -> str:
    return f'<span class="badge k-{kind.value}" title="{_e(KIND_HELP[kind])}">{_e(kind.label)}</span>'


def _routing(routing: str, n_models: int, given: bool) -> str:
    """Which models scored a case (a Routing value), in words."""
    ensemble = "the ensemble of the fold models" if n_models > 1 else "the model"
    if given:
        words = {Routing.OUT_OF_FOLD.value: "the probabilities of the fold that held the case out (out-of-fold)",
                 Routing.NEW_DATA.value: "the given probabilities"}
    else:
        words = {Routing.OUT_OF_FOLD.value: "the fold model that held the case out of its training (out-of-fold)",
                 Routing.IN_SAMPLE.value: f"{ensemble} (cases it was trained on: in-sample)",
                 Routing.NEW_DATA.value: f"{ensemble} (cases not in the training set)"}
    return words.get(routing, routing)


def _scored_by(audit) -> str:
    """`all 12 cases by the ensemble …`, or the count of each when the cases were scored in different ways."""
    counts: dict[str, int] = defaultdict(int)
    for case in audit.cases:
        counts[case.routing] += 1
    words = [(n, _routing(r, len(audit.run.models), bool(audit.run.source))) for r, n in sorted(counts.items())]
    if len(words) == 1:
        n, text = words[0]
        return f"{'the case' if n == 1 else f'all {n} cases'} by {text}"
    return "; ".join(f"{n} case{'s' if n != 1 else ''} by {text}" for n, text in words)


def _threshold(threshold) -> str:
    case = (f"flagged at score <b>{threshold.case:.3f}</b> or worst slice" if has_case_threshold(threshold.case)
            else "flagged when its worst slice reaches")
    return (f"slice <b>{threshold.slice:.3f}</b> (flags a slice for review); case: {case} "
            f"<b>{threshold.worst_slice:.3f}</b> ({_e(threshold.source.value)})")


def _facts(audit, config: ReportConfig, views: dict[str, CaseView]) -> str:
    dataset, run, threshold = audit.dataset, audit.run, audit.threshold
    models = run.models
    trained_on = run.trained_on or "?"
    if run.trained_cases:
        trained_on += f" ({run.trained_cases} case{'s' if run.trained_cases != 1 else ''})"
    if dataset.fit_dataset:
        trained_on += " — this dataset"
    folds = f"{len(models)} fold models" if len(models) > 1 else "1 model"
    rows = [
        ("dataset", f"<b>{_e(dataset.name)}</b> <code>{_e(dataset.path)}</code> "
                    f"({_e(dataset.layout)} layout)"),
        ("model", f"<b>{_e(run.method)}</b>, trained {_e(_fmt_time(run.created))} on {_e(trained_on)}; "
                  f"{_e(folds)}"),
        ("probabilities", f"<code>{_e(run.source)}</code>") if run.source else
        ("run folder", f"<code>{_e(run.path)}</code>"),
        ("scored", _e(_scored_by(audit))) if audit.cases else None,
        ("scoring", f"{_e(audit.pixel_score)} pixel score, {_e(audit.perturbations)} perturbed passes, "
                    + ("" if audit.run.source else "ONNX Runtime ") + f"{_e(audit.provider)}"),
        ("thresholds", _threshold(threshold)),
        ("audit folder", f"<code>{_e(audit.out_dir) if audit.out_dir is not None else '(not written)'}</code>"),
    ]
    rows = [r for r in rows if r is not None]
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
    flagged = " flagged" if s.flagged else ""
    # no "share in doubt" here: it counts labelled pixels only, so a slice whose label misses a structure (the
    # error is in unlabelled pixels) would read "0% in doubt" under a flagged score
    state = '<span class="state">flagged</span>' if s.flagged else ""
    empty = "" if s.label_pixels else '<span class="state">nothing labelled</span>'
    alt = f"case {case_id}, slice {s.slice_index}"
    picture = thumbnail_html(view, alt, palette, heat) if view is not None else \
        '<div class="view none">no thumbnail</div>'
    return (f'<figure class="tile{flagged}" tabindex="0" role="button" data-slice="{s.slice_index}" '
            f'data-score="{s.noise_score:.6f}" data-kind="{kind.value}" '
            f'aria-label="{_e(alt)}, noise score {s.noise_score:.3f}{flagged and ", flagged"}, {_e(kind.label)}">'
            f'{picture}<figcaption><span class="slice">slice {s.slice_index}</span>'
            f'<span class="score" title="slice noise score (a slice is flagged at {threshold:.3f})">'
            f'{s.noise_score:.3f}</span>{state}{empty}{_badge(kind)}<span class="orient">{_e(orientation_text)}</span>'
            f'</figcaption></figure>')


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
    kinds = " ".join(sorted({_kind(getattr(s, "error_kind", "none")).value for s in shown} | {kind.value}))
    flag = (f'<span class="flag">flagged · {case.n_flagged_slices} of {case.n_slices} slices</span>' if case.flagged
            else f'<span class="ok">not flagged · {case.n_slices} slices</span>')
    return (f'<section class="case{" flagged" if case.flagged else ""}" tabindex="-1" data-case="{_e(case.case_id)}" '
            f'data-rank="{rank}" data-score="{case.noise_score:.6f}" data-worst="{worst:.6f}" '
            f'data-nflagged="{case.n_flagged_slices}" data-kinds="{_e(kinds)}" '
            f'data-flagged="{int(case.flagged)}">'
            f'<header class="case-head"><span class="title"><span class="rank">#{rank}</span>'
            f'<h3 class="case-id">{_e(case.case_id)}</h3></span>'
            f'<span class="case-score" '
            f'title="case noise score: the mean of its 3 worst slices’ expected mislabelled share">'
            f'<b>{case.noise_score:.3f}</b> noise score</span>{_badge(kind)}{flag}'
            f'<span class="dice" title="1 − Dice of the label against the robust prediction, whole case">'
            f'1 − Dice {case.disagreement:.2f}</span></header>'
            f'<div class="tiles">{tiles}</div>{_fix_line(case, view, names, palette)}{extra}'
            f'{where_html(case, view, audit, [s.slice_index for s in shown])}</section>')


def _classes(names: dict[int, str], palette: dict[int, str]) -> str:
    items = "".join(f'<span class="class-key" style="--c:{palette[v]}"><span class="swatch lab"></span>'
                    f'<span class="swatch pred"></span>{_e(names.get(v, f"label {v}"))} <small>({v})</small></span>'
                    for v in palette)
    return f'<p class="classes"><span class="key-title">classes:</span> {items}</p>' if items else ""


def _which_cases(n_cases: int, top_cases: int) -> str:
    """`all 12 cases` while the cap on thumbnails is not reached, else `the 50 worst cases`."""
    if n_cases > top_cases:
        return f"the {top_cases} worst cases"
    return "the one case" if n_cases == 1 else f"all {n_cases} cases"


def _legend(config: ReportConfig, names: dict[int, str], palette: dict[int, str], n_cases: int) -> str:
    kinds = "".join(f"<li>{_badge(k)} {_e(KIND_HELP[k])}</li>" for k in ErrorKind if k is not ErrorKind.NONE)
    return (f'<div class="legend">{_classes(names, palette)}<p class="keys-line"><span class="key">'
            f'<span class="swatch lab mono"></span>given label (solid)</span> <span class="key"><span class="swatch '
            f'pred mono"></span>robust prediction (dashed)</span>, each in its class\'s colour; <span class="key">'
            f'<span class="swatch heat"></span>noise map:</span> where the model\'s probability of the label\'s '
            f'class is below one half, deeper where it is surer the label is wrong. It is on for the flagged slices '
            f'of flagged cases; <span class="key">the <i>noise map</i> menu or the key <kbd>o</kbd></span> shows it '
            f'on all slices or none.</p>'
            f'<p class="note">Every case is listed, worst first, with its {config.top_slices} worst slices; thumbnails '
            f'for the {config.top_slices} worst slices of {_which_cases(n_cases, config.top_cases)}, cropped around '
            f'the structure, displayed with the patient\'s right on the left; click one to enlarge it. Noise scores are '
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
<option value="nflagged">flagged slices</option>
<option value="case">case id</option></select></label>
<button id="sort-dir" type="button" aria-label="reverse the order" title="reverse the order">↓</button>
<label>noise map <select id="heat" title="o cycles through these"><option value="worst">flagged slices</option>
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
        "legend": _legend(config, names, palette, len(audit.cases)),
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

"""Terminal renderings of results: each function returns a Rich renderable; the commands print it."""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..data import DatasetSummary
from ..gate.check import CheckResult
from ..gate.ci import describe_threshold, kind_label, slices_text
from ..score.decide import case_threshold_text
from ..types import Audit


def _fmt_tuple(values, digits: int = 3) -> str:
    return "×".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def _count(n: int) -> str:
    """A voxel count short enough for a table cell: exact below 100,000, else 3 significant digits."""
    if n < 100_000:
        return str(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _value_name(value: int, names: dict[int, str]) -> str:
    """`1 (liver)` when the dataset names its labels; `1 (undeclared)` for a value it does not; else `1`."""
    if not names:
        return str(value)
    return f"{value} ({names.get(value, 'undeclared')})"


def render_inspect(summary: DatasetSummary) -> Group:
    """The dataset summary (for stdout); its problems are `problem_lines`, for stderr."""
    dataset = summary.dataset
    parts: list = [Text.from_markup(f"[bold]{escape(dataset.name)}[/]  ({dataset.layout} layout, "
                                    f"{escape(str(dataset.root))})")]
    names = {v: k for k, v in (dataset.labels or {}).items()}
    skipped = f", {len(dataset.skipped)} skipped" if dataset.skipped else ""
    table = Table(title=f"{len(summary.cases)} cases read{skipped}", title_justify="left")
    for column in ("case", "size", "spacing mm", "ch", "slices", "intensity"):
        table.add_column(column, no_wrap=True)
    table.add_column("voxels per label value", overflow="fold")  # names are in the totals line below
    for info in summary.cases:
        counts = " ".join(f"{v}:{_count(n)}" for v, n in info.label_counts.items())
        table.add_row(escape(info.case_id), _fmt_tuple(info.size), _fmt_tuple(info.spacing), str(info.channels),
                      str(info.num_slices), f"{info.intensity_range[0]:g} … {info.intensity_range[1]:g}", counts)
    parts.append(table)
    totals = summary.label_counts
    if totals:
        parts.append(Text("label values: " + ", ".join(f"{_value_name(v, names)} {n} voxels"
                                                       for v, n in totals.items())))
    if dataset.skipped:
        parts.append(Text(f"skipped {len(dataset.skipped)} case(s) with problems: "
                          f"{', '.join(sorted(dataset.skipped))}"))
    return Group(*parts)


def problem_lines(dataset) -> list[str]:
    """Every problem found in a dataset, one line each (for stderr); empty when there are none."""
    if not dataset.problems:
        return []
    return [f"{len(dataset.problems)} problem(s):"] + [f"  - {problem}" for problem in dataset.problems]


def render_audit(audit: Audit, top: int = 10) -> Group:
    """What `score` shows on stdout: the provider, the counts, the top slices and where the outputs are."""
    threshold = audit.threshold
    parts: list = [Text(f"provider: {audit.provider} ({audit.device_reason})"),
                   Text(f"scored {len(audit.cases)} cases, {len(audit.slices)} slices; flagged "
                        f"{len(audit.flagged_cases)} cases, {len(audit.flagged_slices)} slices (thresholds: slice "
                        f"{threshold.slice:.3f}"
                        + (f", worst slice {threshold.gate:.3f}" if threshold.gate is not None else "")
                        + f", {case_threshold_text(threshold.case)}; {threshold.source.value})")]
    if audit.skipped:
        parts.append(Text(f"skipped {len(audit.skipped)} case(s): {', '.join(sorted(audit.skipped))} "
                          "(see summary.json)"))
    parts.extend(Text(f"note: {note}") for note in audit.notes)
    table = Table(title=f"top {min(top, len(audit.slices))} slices", title_justify="left")
    # the likely kind, not the doubt share: that counts labelled pixels only, so a missing structure reads 0 %
    for column in ("case", "slice", "noise score", "flagged", "1 - Dice", "likely error", "label px"):
        table.add_column(column, justify="left" if column in ("case", "likely error") else "right")
    for s in audit.slices[:top]:
        table.add_row(escape(s.case_id), str(s.slice_index), f"{s.noise_score:.3f}", "yes" if s.flagged else "",
                      f"{s.disagreement:.3f}", escape(kind_label(s.error_kind)), str(s.label_pixels))
    parts.append(table)
    if audit.out_dir is not None:
        parts.append(Text(f"audit: {audit.out_dir}  (cases.csv, slices.csv, maps/, summary.json)"))
        if audit.files.get("report"):  # a part of `score --shard` has none
            parts.append(Text(f"report: {audit.files['report']}"))
    return Group(*parts)


def summary_table(result: CheckResult, top: int = 20) -> Group:
    """A Rich renderable: the verdict line and a table of the flagged cases (or the top cases)."""
    shown = result.flagged[:top] or result.cases[: min(top, 5)]
    table = Table(title=f"{'flagged annotations' if result.flagged else 'highest noise scores'} of "
                        f"{result.dataset.name}", title_justify="left")
    for column in ("case", "noise score", "flagged", "worst slice(s)", "likely error", "label"):
        table.add_column(column, justify="right" if column == "noise score" else "left",
                         overflow="fold")
    for case in shown:
        table.add_row(case.case_id, f"{case.noise_score:.3f}", "FLAGGED" if case.flagged else "",
                      slices_text(case), kind_label(case.error_kind), case.label_path)
    head = Text(f"checked {len(result.cases)} annotation(s) of {result.dataset.path} with "
                f"{result.model.path} ({result.model.method}, trained on {result.model.trained_on}); "
                f"{result.scored} scored on {result.provider}, {result.cached} from the cache")
    thresh = Text(f"threshold: {describe_threshold(result.threshold)}")
    n = len(result.flagged)
    if result.passed:
        verdict = Text(f"PASS: {n} annotation(s) flagged (tolerance {result.max_flagged})", style="bold green")
    else:
        verdict = Text(f"FAIL: {n} annotation(s) flagged (tolerance {result.max_flagged})", style="bold red")
    return Group(head, thresh, table, verdict)


def _metric(value: float, digits: int = 3) -> str:
    return "–" if value != value else f"{value:.{digits}f}"  # NaN: undefined


def render_corruption(manifest, title: str) -> Group:
    """What `corrupt` shows on stdout: changes per kind, the achieved rate and the skipped cases.

    manifest: a formats.manifest.CorruptionManifest.
    """
    from ..config import Level
    from ..noise.corrupt import summarize

    table = Table(title=title, title_justify="left")
    for column in ("kind", "slices", "cases", "changed pixels"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    rows = summarize(manifest)
    for kind, row in rows.items():
        table.add_row(kind, str(row["slices"]), str(row["cases"]), str(row["changed_pixels"]))
    table.add_row("[bold]total[/]", str(sum(r["slices"] for r in rows.values())),
                  str(sum(c.corrupted for c in manifest.cases.values())),
                  str(sum(r["changed_pixels"] for r in rows.values())))
    unit = "slices" if manifest.level is Level.SLICE else "cases"
    parts: list = [table, Text(f"achieved rate: {manifest.corrupted_count}/{manifest.population_size} {unit} = "
                               f"{manifest.achieved_rate:.3f} (asked {manifest.rate:g}); population: "
                               f"{manifest.population}")]
    if manifest.skipped:
        parts.append(Text(f"skipped {len(manifest.skipped)} problem case(s) (copied unchanged): "
                          f"{', '.join(manifest.skipped)}"))
    return Group(*parts)


def render_evaluation(result) -> Group:
    """What `evaluate` shows on stdout: the ranking levels, then the segmentation metrics.

    result: an evaluate.EvaluationResult.
    """
    ranking = Table(title="audit vs manifest", title_justify="left")
    for column in ("level", "AP", "AUROC", "P@k", "positives/total", "chance AP"):
        ranking.add_column(column, justify="left" if column == "level" else "right")
    for row in result.ranking:
        s = row.scores
        counts = f"{row.population_positives}/{row.population_total}"
        if row.sampled:
            counts += f" (sample {s.positives}/{s.total})"
        ranking.add_row(row.level, _metric(s.ap), _metric(s.auroc), _metric(s.precision_at_k) + f" (k={s.k})",
                        counts, _metric(s.prevalence))
    tables = [ranking]
    if result.segmentation:
        seg = Table(title="segmentation vs clean labels (mean over cases; distances in mm)", title_justify="left")
        for column in ("labels", "class", "Dice", "IoU", "HD95", "ASSD", "ASD", "no distance"):
            seg.add_column(column, justify="left" if column in ("labels", "class") else "right")
        for source in result.segmentation:
            rows = list(source.classes.values())
            if len(rows) > 1:
                rows.append(source.foreground)
            for summary in rows:
                seg.add_row(source.source.replace("_", " "), escape(summary.name), _metric(summary.dice),
                            _metric(summary.iou), _metric(summary.hd95, 2), _metric(summary.assd, 2),
                            _metric(summary.asd, 2), f"{summary.undefined_distances}/{summary.cases}")
        tables.append(seg)
    if getattr(result, "kinds", None) is not None:
        tables.append(render_kind_confusion(result.kinds))
    return Group(*tables)


def render_fix(manifest) -> Group:
    """What `fix` shows on stdout: the regions changed per kind and class, and where the copy is.

    manifest: a fix.manifest.FixManifest.
    """
    from pathlib import Path

    table = Table(title=f"regions judged wrong ({manifest.mode.value}; mean noise score ≥ "
                        f"{manifest.params.region_score:g} on a flagged slice)", title_justify="left")
    for column in ("kind", "class", "regions", "cases", "pixels"):
        table.add_column(column, justify="left" if column in ("kind", "class") else "right")
    rows: dict[tuple[str, str], list] = {}
    for case_id, region in manifest.regions:
        row = rows.setdefault((region.kind.label, region.class_name), [0, set(), 0])
        row[0] += 1
        row[1].add(case_id)
        row[2] += region.pixels
    for (kind, name), (count, cases, pixels) in sorted(rows.items()):
        table.add_row(kind, escape(name), str(count), str(len(cases)), str(pixels))
    out = Path(manifest.path).parent if manifest.path is not None else None
    parts: list = [table, Text(f"{len(manifest.cases)} case(s) changed, {len(manifest.skipped)} not scored by the "
                               "audit (copied unchanged)")]
    if manifest.ignore_label is not None:
        parts.append(Text(f"ignore label: {manifest.ignore_label} (declared as \"ignore\" in dataset.json)"))
    if out is not None:
        parts.append(Text(f"fixed dataset: {out}\nmanifest: {manifest.path}"))
    return Group(*parts)


def render_kind_confusion(confusion) -> Table:
    """The kind accuracy of `evaluate`: rows the corruption of each slice, columns the error_kind named.

    confusion: an evaluate.kinds.KindConfusion.
    """
    from ..diagnosis import ErrorKind
    from ..evaluate.kinds import EXPECTED_KIND

    accuracy = confusion.accuracy()
    table = Table(title="error kind named per slice vs the corruption that made it (kind accuracy "
                        f"{_metric(accuracy if accuracy is not None else float('nan'), 2)})", title_justify="left")
    table.add_column("corruption", no_wrap=True)
    for kind in ErrorKind:
        table.add_column(kind.label.split("-")[0].split(" ")[0] if kind is not ErrorKind.WRONG_CLASS else "wrong",
                         justify="right")
    table.add_column("right", justify="right")
    for row, counts in confusion.counts.items():
        expected = EXPECTED_KIND.get(row)
        cells = [f"[bold]{counts[k.value]}[/]" if k is expected else str(counts[k.value]) for k in ErrorKind]
        share = confusion.row_accuracy(row)
        table.add_row(escape(row), *cells, "–" if share is None else f"{share:.0%}")
    return table

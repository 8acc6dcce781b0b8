"""Terminal rendering of results (Rich tables on stdout, problems on stderr)."""

from __future__ import annotations

from rich.table import Table

from .console import err, out
from .data import DatasetSummary


def _fmt_tuple(values, digits: int = 3) -> str:
    return "×".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def render_inspect(summary: DatasetSummary) -> None:
    """Print the dataset summary on stdout and every problem on stderr."""
    dataset = summary.dataset
    out.print(f"[bold]{dataset.name}[/]  ({dataset.layout} layout, {dataset.root})")
    names = {v: k for k, v in (dataset.labels or {}).items()}
    table = Table(title=f"{len(summary.cases)} cases", title_justify="left")
    for column in ("case", "size", "spacing (mm)", "channels", "slices", "intensity range", "label voxels"):
        table.add_column(column)
    for info in summary.cases:
        counts = ", ".join(f"{names.get(v, v)}:{n}" for v, n in info.label_counts.items())
        table.add_row(info.case_id, _fmt_tuple(info.size), _fmt_tuple(info.spacing), str(info.channels),
                      str(info.num_slices), f"{info.intensity_range[0]:g} … {info.intensity_range[1]:g}", counts)
    out.print(table)
    totals = summary.label_counts
    if totals:
        out.print("label values: " + ", ".join(f"{v} ({names.get(v, 'undeclared' if names else '')}) "
                                               f"{n} voxels" for v, n in totals.items()))
    if dataset.problems:
        err.print(f"[bold yellow]{len(dataset.problems)} problem(s):[/]")
        for problem in dataset.problems:
            err.print(f"  - {problem}", markup=False, soft_wrap=True)
    if dataset.skipped:
        out.print(f"skipped {len(dataset.skipped)} case(s): {', '.join(sorted(dataset.skipped))}")

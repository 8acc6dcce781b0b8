"""Terminal rendering of results (Rich tables on stdout, problems on stderr)."""

from __future__ import annotations

from rich.table import Table

from ..console import err, out
from ..data import DatasetSummary


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


def render_inspect(summary: DatasetSummary) -> None:
    """Print the dataset summary on stdout and every problem on stderr."""
    dataset = summary.dataset
    out.print(f"[bold]{dataset.name}[/]  ({dataset.layout} layout, {dataset.root})", soft_wrap=True)
    names = {v: k for k, v in (dataset.labels or {}).items()}
    skipped = f", {len(dataset.skipped)} skipped" if dataset.skipped else ""
    table = Table(title=f"{len(summary.cases)} cases read{skipped}", title_justify="left")
    for column in ("case", "size", "spacing mm", "ch", "slices", "intensity"):
        table.add_column(column, no_wrap=True)
    table.add_column("voxels per label value", overflow="fold")  # names are in the totals line below
    for info in summary.cases:
        counts = " ".join(f"{v}:{_count(n)}" for v, n in info.label_counts.items())
        table.add_row(info.case_id, _fmt_tuple(info.size), _fmt_tuple(info.spacing), str(info.channels),
                      str(info.num_slices), f"{info.intensity_range[0]:g} … {info.intensity_range[1]:g}", counts)
    out.print(table)
    totals = summary.label_counts
    if totals:
        out.print("label values: " + ", ".join(f"{_value_name(v, names)} {n} voxels" for v, n in totals.items()),
                  soft_wrap=True)
    if dataset.problems:
        err.print(f"[bold yellow]{len(dataset.problems)} problem(s):[/]")
        for problem in dataset.problems:
            err.print(f"  - {problem}", markup=False, soft_wrap=True)
    if dataset.skipped:
        out.print(f"skipped {len(dataset.skipped)} case(s) with problems: {', '.join(sorted(dataset.skipped))}",
                  soft_wrap=True)

"""Rich consoles: results on stdout, everything else (progress, warnings) on stderr."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def progress(transient: bool = True) -> Progress:
    """A progress display on stderr with count, bar, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=err, transient=transient,
    )


def track(items: Iterable[T], description: str = "") -> Iterator[T]:
    """The `track` callable that core loops accept: a Rich bar on stderr."""
    items = list(items)
    with progress() as bar:
        task = bar.add_task(description, total=len(items), status="")
        for item in items:
            yield item
            bar.advance(task)

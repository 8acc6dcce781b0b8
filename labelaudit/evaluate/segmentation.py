"""Segmentation metrics of a label source (the model's prediction, or the noisy labels) against the clean labels.

Arrays are label volumes (Z, Y, X) in numpy order; spacing is mm per numpy axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .metrics import SegmentationScores, segmentation_scores

SOURCES = ("prediction", "noisy_label")


@dataclass(frozen=True)
class ClassSummary:
    """Per-class means over cases; distance means skip the cases where they are undefined.

    For the foreground mean, the metrics are the mean of the class means and `cases` and
    `undefined_distances` count (case, class) pairs.
    """

    name: str
    dice: float
    iou: float
    hd95: float
    assd: float
    asd: float
    cases: int
    undefined_distances: int


@dataclass
class SegmentationResult:
    """Metrics of one label source (`prediction` or `noisy_label`) against the clean labels."""

    source: str
    classes: dict[int, ClassSummary]
    foreground: ClassSummary  # mean over the foreground classes' means
    per_case: dict[str, dict[int, SegmentationScores]]


def declared_classes(labels: dict[str, int] | None) -> dict[int, str] | None:
    """Foreground classes (value -> name) declared by the clean dataset, or None to use those observed."""
    if not labels:
        return None
    found = {int(v): str(k) for k, v in labels.items() if isinstance(v, int) and int(v) != 0}
    return dict(sorted(found.items())) or None


def class_scores(label: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...],
                 classes: dict[int, str] | None) -> dict[int, SegmentationScores]:
    """Scores of every class (declared, else present in either volume) of `label` against `reference`."""
    values = sorted(classes) if classes else sorted(
        {int(v) for v in np.unique(reference) if v != 0} | {int(v) for v in np.unique(label) if v != 0})
    label = np.rint(label) if np.issubdtype(label.dtype, np.floating) else label
    return {v: segmentation_scores(label == v, reference == v, spacing) for v in values}


def summarise(source: str, per_case: dict[str, dict[int, SegmentationScores]],
              names: dict[int, str]) -> SegmentationResult:
    """Per-class means over the cases and the foreground mean (the mean of the class means)."""
    summaries: dict[int, ClassSummary] = {}
    for value, name in names.items():
        # a case without the class in either mask has Dice 1 (both empty); cases list every class seen
        rows = [scores[value] if value in scores else SegmentationScores(1.0, 1.0, math.nan, math.nan, math.nan)
                for scores in per_case.values()]
        summaries[value] = _mean_summary(name, rows)
    fg = list(summaries.values())
    foreground = ClassSummary(
        "foreground mean", *(_nanmean([getattr(s, f) for s in fg]) for f in ("dice", "iou", "hd95", "assd", "asd")),
        len(per_case) * len(fg), sum(s.undefined_distances for s in fg))
    return SegmentationResult(source, summaries, foreground, per_case)


def _mean_summary(name: str, rows: list[SegmentationScores]) -> ClassSummary:
    undefined = sum(not r.distances_defined for r in rows)
    return ClassSummary(name, _nanmean([r.dice for r in rows]), _nanmean([r.iou for r in rows]),
                        _nanmean([r.hd95 for r in rows]), _nanmean([r.assd for r in rows]),
                        _nanmean([r.asd for r in rows]), len(rows), undefined)


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan

"""The kind of error of a slice (the slices.csv `error_kind`) and of a case, from its regions.

Array legend: H x W one slice; S slices of one case. Label and prediction hold label *values*; 0 is
background.

A slice (`classify_slice`) is `none` when

- the outline's mean displacement is small: differing pixels per outline pixel up to `tolerance_px`
  (unlike a share of the area, this does not grow with the structure), and
- no region is missing or spurious (no outline tolerance forgives a structure).

Otherwise its kind is the kind of the region that speaks most (regions.region_weight: the pixels the model is
sure are wrong, by how sure, given the noise map; else its size). A case's kind (`dominant_kind`) is the kind
with the largest total noise score over its worst slices.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..noise_map import map_disagreement
from .kinds import ErrorKind, ErrorKindParams, kind_from_masses, kind_masses
from .regions import find_regions, region_weight

#: What no outline tolerance forgives.
_STRUCTURE_KINDS = frozenset({ErrorKind.MISSING, ErrorKind.SPURIOUS})


def classify_slice(label: np.ndarray, pred: np.ndarray, params: ErrorKindParams = ErrorKindParams(),
                   noise: np.ndarray | None = None) -> ErrorKind:
    """The likely kind of error of one slice (see the module docstring).

    label, pred: integer (H, W) label values, 0 = background.
    noise: float (H, W), each pixel's disagreement 1 - p̄_y in [0, 1], or None (regions weigh by size).
    """
    masses, regions = kind_masses(label, pred, params), find_regions(label, pred, 0, params)
    if kind_from_masses(masses, params) is ErrorKind.NONE:  # the outlines agree: only a structure can name it
        regions = [r for r in regions if r.kind in _STRUCTURE_KINDS]
        if not regions:
            return ErrorKind.NONE
    elif not regions:  # differences scattered in pieces below min_pixels: the slice's masses decide
        return kind_from_masses(masses, params)
    weights = [region_weight(r, noise, params) for r in regions]
    if not any(weights):
        weights = [float(r.pixels) for r in regions]
    return regions[int(np.argmax(weights))].kind


def classify_slices(label: np.ndarray, pred: np.ndarray, params: ErrorKindParams = ErrorKindParams(),
                    noise: np.ndarray | None = None, scores: np.ndarray | None = None) -> list[ErrorKind]:
    """classify_slice over a stack: label, pred integer (S, H, W), noise float (S, H, W) or None -> S kinds.

    With `scores` (S,), the slice noise scores, `noise` is the noise map as `score` writes it,
    (1 - p̄_y) x the slice's score, and is divided by them as fix/rule.py does (noise_map.map_disagreement);
    a slice scored 0 is weighed by size.
    """
    if label.shape != pred.shape or (noise is not None and noise.shape != label.shape) or (
            scores is not None and (noise is None or len(scores) != label.shape[0])):
        raise ValueError(f"label {label.shape}, prediction {pred.shape}, noise map {getattr(noise, 'shape', None)}, "
                         f"{'no' if scores is None else len(scores)} scores: expected one shape (scores need a map, "
                         "one per slice)")
    kinds = []
    for i, (y, p) in enumerate(zip(label, pred)):
        weigh = None if noise is None or (scores is not None and scores[i] <= 0) else noise[i]
        if weigh is not None and scores is not None:
            weigh = map_disagreement(weigh, float(scores[i]))
        same = np.array_equal(y, p)  # the common case, settled by one comparison
        kinds.append(ErrorKind.NONE if same else classify_slice(y, p, params, weigh))
    return kinds


def dominant_kind(kinds: Iterable[ErrorKind | str], scores: Iterable[float]) -> ErrorKind:
    """The kind with the largest total noise score among `kinds` (ignoring none); none when all are none.

    Used per case over its worst slices (the ones that make the case score); ties go to the kind listed
    first in ErrorKind.
    """
    totals: dict[ErrorKind, float] = {}
    for kind, score in zip(kinds, scores):
        kind = ErrorKind(kind)
        if kind is not ErrorKind.NONE:
            totals[kind] = totals.get(kind, 0.0) + float(score)
    if not totals:
        return ErrorKind.NONE
    return max(totals, key=lambda k: (totals[k], -list(ErrorKind).index(k)))

"""Which regions of a case are judged wrong, and the label with them fixed: one rule for `score` and `fix`.

Array legend: S slices, H x W one slice, in the slice stack order of the case (types.to_slices). Label and
prediction hold label values; the noise map holds noise scores in [0, 1].

A region (diagnosis.find_regions: a connected piece of the disagreement between label and prediction, of one
class) is judged wrong when its slice is flagged and its own mean noise score reaches FixParams.region_score.
The noise map is a pixel's disagreement times its slice's score (labelaudit/noise_map.py), so a region's own
score is the mean of its pixels' disagreement, the map divided by its slice's score (noise_map.map_disagreement,
as the error kinds weigh regions).
`score` writes the label with those regions replaced by the prediction as maps/<case>_fixed<ending>; `fix
--mode replace` writes the same array, `fix --mode ignore` puts the ignore label there instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..config import FixMode, FixParams
from ..diagnosis import ErrorKindParams, Region, find_regions
from ..noise_map import map_disagreement


@dataclass(frozen=True, eq=False)
class JudgedRegion:
    """A region judged wrong, with its mean noise score."""

    region: Region
    score: float


def slice_flags(scores: np.ndarray, n_flagged: int) -> np.ndarray:
    """The flags of a case's slices (bool (S,)) from their scores (S,) and how many were flagged.

    Exact for the one flag rule (score/decide.py: a slice is flagged when its score reaches the threshold):
    the flagged slices are the `n_flagged` highest, and slices tied with one of them are flagged with it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if n_flagged <= 0 or scores.size == 0:
        return np.zeros(scores.shape, dtype=bool)
    cut = np.sort(scores)[::-1][min(n_flagged, scores.size) - 1]
    return scores >= cut


def agreement_counts(label: np.ndarray, pred: np.ndarray, counts: dict[int, list[int]],
                     values: Iterable[int] | None = None) -> None:
    """Add to `counts` (label value -> [2 |label ∩ pred|, |label| + |pred|]) one case's foreground classes.

    label, pred: integer arrays of one shape, label values (0 = background, not counted); values: every value
    they can hold (the label set), which spares sorting the volumes to find them."""
    for value in (np.union1d(np.unique(label), np.unique(pred)) if values is None else values):
        if value == 0:
            continue
        given, seen = label == value, pred == value
        n_given, n_seen = int(np.count_nonzero(given)), int(np.count_nonzero(seen))
        if n_given or n_seen:  # a class in neither is not counted
            entry = counts.setdefault(int(value), [0, 0])
            entry[0] += 2 * int(np.count_nonzero(given & seen))
            entry[1] += n_given + n_seen


def class_agreement(counts: dict[int, list[int]]) -> dict[int, float]:
    """Dice of the prediction against the labels per label value, from agreement_counts."""
    return {value: (both / total if total else 1.0) for value, (both, total) in sorted(counts.items())}


def untrusted_classes(agreement: dict[int, float] | None, params: FixParams = FixParams()) -> frozenset[int]:
    """The label values whose prediction is too far from the training labels to mend with (none when unknown)."""
    if not agreement:
        return frozenset()
    return frozenset(v for v, dice in agreement.items() if dice < params.min_agreement)


def judge_regions(label: np.ndarray, pred: np.ndarray, noise: np.ndarray, flags: np.ndarray, scores: np.ndarray,
                  params: FixParams = FixParams(), kinds: ErrorKindParams = ErrorKindParams(),
                  untrusted: frozenset[int] = frozenset()) -> list[JudgedRegion]:
    """The regions judged wrong: label, pred integer (S, H, W); noise float (S, H, W) the noise map; flags bool
    (S,); scores float (S,) the slice noise scores. A region that gives or takes a class of `untrusted`
    (untrusted_classes) is never judged wrong."""
    if not (label.shape == pred.shape == noise.shape) or not len(flags) == len(scores) == label.shape[0]:
        raise ValueError(f"label {label.shape}, prediction {pred.shape}, noise map {noise.shape}, "
                         f"{len(flags)} slice flags and {len(scores)} slice scores do not match")
    judged = []
    for s in np.flatnonzero(flags):
        if scores[s] <= 0:
            continue
        disagreement = map_disagreement(noise[s], float(scores[s]))
        for region in find_regions(label[s], pred[s], int(s), kinds):
            if region.label_value in untrusted or region.pred_value in untrusted:
                continue
            score = float(region.values(disagreement).mean())
            if score >= params.region_score:
                judged.append(JudgedRegion(region, score))
    return judged


def apply_fix(label: np.ndarray, pred: np.ndarray, judged: list[JudgedRegion], mode: FixMode = FixMode.REPLACE,
              ignore_value: int | None = None) -> np.ndarray:
    """A new label stack (S, H, W): the judged regions set to the prediction (replace) or to `ignore_value`.

    The result keeps label's dtype, widened only when `ignore_value` does not fit it.
    """
    dtype = label.dtype
    if mode is FixMode.IGNORE:
        if ignore_value is None:
            raise ValueError("mode ignore needs an ignore_value")
        if np.issubdtype(dtype, np.integer) and ignore_value > np.iinfo(dtype).max:
            dtype = np.promote_types(dtype, np.min_scalar_type(ignore_value))
    out = label.astype(dtype, copy=True)
    for item in judged:
        r = item.region
        r0, r1, c0, c1 = r.bbox
        target = out[r.slice_index, r0:r1, c0:c1]
        target[r.mask] = pred[r.slice_index, r0:r1, c0:c1][r.mask] if mode is FixMode.REPLACE else ignore_value
    return out


def fixed_label(label: np.ndarray, pred: np.ndarray, noise: np.ndarray, flags: np.ndarray, scores: np.ndarray,
                params: FixParams = FixParams()) -> np.ndarray:
    """The label with every region judged wrong replaced by the prediction (the `_fixed` map; fix --mode replace).

    label, pred integer (S, H, W); noise float (S, H, W); flags bool (S,); scores (S,). Keeps label's dtype.
    """
    return apply_fix(label, pred, judge_regions(label, pred, noise, flags, scores, params))


def fix_case(label: np.ndarray, pred: np.ndarray, noise: np.ndarray, scores: np.ndarray, n_flagged: int,
             params: FixParams = FixParams(), untrusted: frozenset[int] = frozenset()
             ) -> tuple[np.ndarray, list[JudgedRegion]]:
    """What `score` writes as a case's `_fixed` map, and the regions behind it.

    label, pred integer (S, H, W); noise float (S, H, W); scores (S,) the slice noise scores, `n_flagged`
    of them flagged; untrusted: classes never mended (untrusted_classes). Returns (fixed label (S, H, W), the
    regions judged wrong).
    """
    judged = judge_regions(label, pred, noise, slice_flags(scores, n_flagged), scores, params, untrusted=untrusted)
    return apply_fix(label, pred, judged), judged

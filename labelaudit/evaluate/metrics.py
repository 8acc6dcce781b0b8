"""Audit and segmentation metrics on plain numpy arrays (no scikit-learn, no SimpleITK).

Array legend:
- ranking metrics take `scores`, any float array of N items (flattened; higher = more likely
  positive), and `truth`, a boolean array of the same number of items (True = positive,
  i.e. the label really is wrong);
- segmentation metrics take two boolean masks of one shape, (Z, Y, X) or (Y, X) in numpy
  order, and `spacing`, the voxel size in mm per numpy axis (the reverse of ITK's order).

Conventions (research/algorithms.md §10):
- ranking metrics are NaN when undefined (no positives, or for AUROC no negatives);
- Dice and IoU are 1 when both masks are empty and 0 when exactly one is;
- surface distances (HD95, ASSD, ASD) are NaN when either mask is empty; callers count
  those cases separately instead of averaging them in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


# ----------------------------------------------------------------------------- ranking

def _as_ranking_input(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores).reshape(-1)
    truth = np.asarray(truth).reshape(-1)
    if scores.shape != truth.shape:
        raise ValueError(f"scores hold {scores.size} items but truth holds {truth.size}")
    if truth.dtype != bool:
        if not np.isin(truth, (0, 1)).all():
            raise ValueError("truth must be boolean or 0/1")
        truth = truth.astype(bool)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if scores.size and not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or Inf")
    return scores, truth


def subsample_indices(n: int, max_items: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted indices of a uniform sample of `max_items` out of `n` without replacement, or None
    when no sampling is needed (`max_items` is None or at least `n`)."""
    if max_items is None or max_items >= n:
        return None
    return np.sort(rng.choice(n, size=max_items, replace=False))


def _sample(scores: np.ndarray, truth: np.ndarray, max_items: int | None,
            seed: int) -> tuple[np.ndarray, np.ndarray]:
    index = subsample_indices(scores.size, max_items, np.random.default_rng(seed))
    return (scores, truth) if index is None else (scores[index], truth[index])


def _threshold_counts(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, highest score first."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_truth = scores[order], truth[order]
    # the last item of each run of equal scores: all tied items enter together
    ends = np.flatnonzero(np.diff(sorted_scores)) if sorted_scores.size > 1 else np.empty(0, dtype=np.intp)
    ends = np.append(ends, sorted_scores.size - 1)
    tps = np.cumsum(sorted_truth, dtype=np.int64)[ends]
    fps = (ends + 1) - tps
    return tps, fps


def average_precision(scores: np.ndarray, truth: np.ndarray, max_items: int | None = None,
                      seed: int = 0) -> float:
    """Average precision, step-wise as in scikit-learn: sum over thresholds of ΔRecall × Precision.

    scores: float array (N,) or any shape; truth: bool array of N items. Tied scores form one
    threshold. NaN when there is no positive. With `max_items`, a uniform sample of that many
    items (drawn with `seed`) is used. Reversed ranking with P positives of N gives
    (1/P) · Σ_{i=1..P} i / (N − P + i), the minimum for that prevalence.
    """
    scores, truth = _sample(*_as_ranking_input(scores, truth), max_items, seed)
    return _ap_from_counts(*_threshold_counts(scores, truth))


def auroc(scores: np.ndarray, truth: np.ndarray, max_items: int | None = None, seed: int = 0) -> float:
    """Area under the ROC curve, equal to the Mann-Whitney U statistic with tie-averaged ranks.

    Equals scikit-learn's roc_auc_score (a tie between a positive and a negative counts ½).
    NaN when either class is absent. `max_items`/`seed` as in `average_precision`.
    """
    scores, truth = _sample(*_as_ranking_input(scores, truth), max_items, seed)
    return _auroc_from_counts(*_threshold_counts(scores, truth))


def _ap_from_counts(tps: np.ndarray, fps: np.ndarray) -> float:
    positives = int(tps[-1]) if tps.size else 0
    if positives == 0:
        return math.nan
    precision = tps / (tps + fps)
    return float(np.sum(np.diff(tps, prepend=0) / positives * precision))


def _auroc_from_counts(tps: np.ndarray, fps: np.ndarray) -> float:
    positives, negatives = (int(tps[-1]), int(fps[-1])) if tps.size else (0, 0)
    if positives == 0 or negatives == 0:
        return math.nan
    new_tp, new_fp = np.diff(tps, prepend=0), np.diff(fps, prepend=0)
    # each negative beats the positives ranked above it and ties with those at its own score
    wins = np.sum(new_fp * ((tps - new_tp) + new_tp / 2.0))
    return float(wins / (positives * negatives))


def precision_at_k(scores: np.ndarray, truth: np.ndarray, k: int | None = None) -> float:
    """Fraction of positives among the k highest scores; k defaults to the number of positives.

    Ties at the cut are resolved by expectation (as if broken at random): the tied group
    contributes its positive fraction times the places left. NaN when k is 0.
    """
    scores, truth = _as_ranking_input(scores, truth)
    k = int(truth.sum()) if k is None else int(k)
    if k <= 0:
        return math.nan
    if k > scores.size:
        raise ValueError(f"k={k} exceeds the number of items ({scores.size})")
    cut = np.partition(scores, scores.size - k)[scores.size - k]  # the k-th highest score
    above = scores > cut
    tied = scores == cut
    hits = truth[above].sum() + (k - above.sum()) * truth[tied].sum() / tied.sum()
    return float(hits / k)


def minimum_average_precision(positives: int, total: int) -> float:
    """AP of the fully reversed ranking (every positive below every negative)."""
    if positives <= 0:
        return math.nan
    negatives = total - positives
    i = np.arange(1, positives + 1)
    return float(np.mean(i / (negatives + i)))


@dataclass(frozen=True)
class RankingScores:
    """AP, AUROC and P@k (k = positives) of one set of scores; NaN where undefined."""

    ap: float
    auroc: float
    precision_at_k: float
    k: int
    positives: int
    total: int

    @property
    def prevalence(self) -> float:
        """The AP of a random ranking, in expectation."""
        return self.positives / self.total if self.total else math.nan


def ranking_scores(scores: np.ndarray, truth: np.ndarray) -> RankingScores:
    """All ranking metrics of `scores` (N,) float against `truth` (N,) bool."""
    scores, truth = _as_ranking_input(scores, truth)
    positives = int(truth.sum())
    counts = _threshold_counts(scores, truth)  # one sort serves AP and AUROC
    return RankingScores(_ap_from_counts(*counts), _auroc_from_counts(*counts),
                         precision_at_k(scores, truth), positives, positives, int(truth.size))


# ----------------------------------------------------------------------------- segmentation

def _as_masks(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    return pred, truth


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩G| / (|P|+|G|) of two bool masks of one shape; 1 when both are empty."""
    pred, truth = _as_masks(pred, truth)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """|P∩G| / |P∪G| of two bool masks of one shape; 1 when both are empty."""
    pred, truth = _as_masks(pred, truth)
    union = int(np.logical_or(pred, truth).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(pred, truth).sum()) / union


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} does not fit a {ndim}D mask (one positive value per numpy axis)")
    return spacing


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with a face neighbour outside it (voxels on the array border count)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (from each surface voxel of a to the surface of b, and b to a).

    a, b: bool masks of one shape; spacing: mm per numpy axis. Both must be non-empty.
    The work is cropped to the masks' bounding box (plus one voxel), which gives the same
    distances as on the full grid because every surface voxel lies inside it.
    """
    a, b = _as_masks(a, b)
    spacing = _check_spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    both = a | b
    box = []
    for axis in range(a.ndim):
        present = np.flatnonzero(both.any(axis=tuple(i for i in range(a.ndim) if i != axis)))
        box.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
    a, b = a[tuple(box)], b[tuple(box)]
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    return to_b[surface_a], to_a[surface_b]


@dataclass(frozen=True)
class SegmentationScores:
    """Overlap and surface metrics of one prediction against one reference mask.

    hd95: the 95th percentile of both directed distance sets pooled (MedPy's hd95);
    assd: the mean of the two directed mean distances (MedPy's assd);
    asd: the directed mean distance from the prediction's surface to the reference's.
    Distances are in mm and NaN when either mask is empty.
    """

    dice: float
    iou: float
    hd95: float
    assd: float
    asd: float

    @property
    def distances_defined(self) -> bool:
        return not math.isnan(self.assd)


def segmentation_scores(pred: np.ndarray, truth: np.ndarray, spacing) -> SegmentationScores:
    """Dice, IoU, HD95, ASSD and ASD (mm) of bool mask `pred` against bool mask `truth`.

    pred, truth: bool arrays of one shape in numpy order; spacing: mm per numpy axis.
    """
    pred, truth = _as_masks(pred, truth)
    spacing = _check_spacing(spacing, pred.ndim)
    overlap_dice, overlap_iou = dice(pred, truth), iou(pred, truth)
    if not pred.any() or not truth.any():
        return SegmentationScores(overlap_dice, overlap_iou, math.nan, math.nan, math.nan)
    pred_to_truth, truth_to_pred = surface_distances(pred, truth, spacing)
    pooled = np.concatenate([pred_to_truth, truth_to_pred])
    asd_value = float(pred_to_truth.mean())
    return SegmentationScores(overlap_dice, overlap_iou, float(np.percentile(pooled, 95)),
                              (asd_value + float(truth_to_pred.mean())) / 2.0, asd_value)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing) -> float:
    """95th percentile Hausdorff distance in mm (pooled directed distances); NaN if a mask is empty."""
    return segmentation_scores(pred, truth, spacing).hd95


def assd(pred: np.ndarray, truth: np.ndarray, spacing) -> float:
    """Average symmetric surface distance in mm; NaN if a mask is empty."""
    return segmentation_scores(pred, truth, spacing).assd


def asd(pred: np.ndarray, truth: np.ndarray, spacing) -> float:
    """Directed average surface distance in mm, from `pred`'s surface to `truth`'s; NaN if a mask is empty."""
    return segmentation_scores(pred, truth, spacing).asd

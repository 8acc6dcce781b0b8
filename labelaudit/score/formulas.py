"""The noise-score formulas: per pixel, per slice, per case (pure numpy; no runtime, no I/O).

Array legend: b slices of one batch, C classes, H x W in-plane pixels. Class indices are int64 in 0..C-1
(LabelMap.encode); class 0 is background.

- pixel noise score s_v, the estimated probability that the given label y_v is wrong (`PixelScore`):
    confident_disagreement  s_v = (1 - p̄_{v,y_v}) · (1 - ũ_v)
    disagreement            s_v = 1 - p̄_{v,y_v}
  with p̄ the mean softmax over the K perturbed passes and ũ its normalised entropy; for MCPM runs also
    meta_disagreement       s_v = (1 - R_v) · (1 - p̄_{v,y_v})
    meta_weight             s_v = 1 - R_v
  with R the meta weight Theta gives the pixel from the image, the given label and p̄ (algorithms.md §6);
- slice score S_i = max(F_i, R_i), the larger of two ways a slice can be wrong:
    F_i = Σ_{v ∈ ROI} s_v / (|{y ≠ 0} ∪ {ŷ ≠ 0}| + A₀), clipped to [0, 1], 0 when the union is empty, where
      ŷ = argmax p̄ and ROI = the union dilated by `ROI_MARGIN_MM`: the expected mislabelled fraction of the
      structure and its neighbourhood (empty background would drown every error), shrunk for small structures
      by A₀ (`STRUCTURE_PRIOR` × the median labelled area of the training slices);
    R_i = max over regions r of Σ_{v ∈ r} s_v / (Σ_{v ∈ r} s_v + `REGION_SHARE` · A₀), the regions being the
      4-connected in-plane components of {v ∈ ROI: s_v > `REGION_LEVEL`}: one confidently wrong region (a missed
      lesion, a spurious blob) that is small beside a large structure, which F_i dilutes (see
      docs/decisions.md);
- softmin score Q_i = 1 − Σ_v p̄_{v,y_v} w_v / Σ_v w_v, w_v = exp(−p̄_{v,y_v} / `SOFTMIN_TEMPERATURE`) over every
  pixel of the slice: cleanlab's image label quality (method "softmin"), a second ranking of the same slices that
  finds a few confidently wrong pixels whatever the structure's size; score/ranking.py blends the two;
- case score = mean of the `CASE_TOP_SLICES` highest slice masses m_i = M_i / (M_i + `CASE_SHARE` · A₀), with
  M_i = Σ_{v ∈ ROI} s_v the slice's expected mislabelled area: the worst slices show at case level and a long
  volume is not diluted by its many clean slices; not divided by the structure's area, so that one
  annotator's bias over a large structure counts by the pixels it gets wrong. A mass is on another scale than
  a slice score, so only a case threshold calibrated on masses applies to it (score/decide.py);
- noise map m_v = (1 - p̄_{v,y_v}) · S_i (labelaudit/noise_map.py, below every reader of the map): how
  likely the pixel's label is wrong, given how wrong its slice is. Errors come in regions, so a disagreeing
  pixel on a slice the audit trusts is mostly boundary doubt, and one on a slice it flags is mostly error
  (see docs/decisions.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..config import PixelScore


#: The pixel formula `score`/`check` use unless a config overrides it: PINT's own signal (§6.2), which discounts
#: ambiguous boundaries. MCPM runs are scored the same way, not with their meta weight R (see docs/decisions.md).
PIXEL_SCORE = PixelScore.CONFIDENT_DISAGREEMENT
MCPM_PIXEL_SCORE = PixelScore.CONFIDENT_DISAGREEMENT
#: The ROI around the structure in mm, converted to pixels per in-plane axis and clamped to ROI_RADIUS_PX.
ROI_MARGIN_MM = 3.0
ROI_RADIUS_PX = (1, 8)
#: A₀ of the slice score = STRUCTURE_PRIOR × the median labelled area (mm²) of the training slices with
#: structure (calibrate_run measures it); runs calibrated without it fall back to SLICE_EPS pixels.
STRUCTURE_PRIOR = 0.5
SLICE_EPS = 1.0
#: A labelled pixel is "in doubt" when its noise score exceeds this (doubt_fraction column).
DOUBT_LEVEL = 0.5
#: The region term R_i of the slice score: components of pixels with s_v above REGION_LEVEL (confidently wrong
#: ones: a structure's uncertain boundary makes no region), each scored against REGION_SHARE × A₀ (a region of a
#: quarter of A₀'s area of certainly wrong pixels scores 0.5). See docs/decisions.md.
REGION_LEVEL = 0.7
REGION_SHARE = 0.25
#: The case score is the mean of this many worst slice masses, each M_i against CASE_SHARE × A₀.
CASE_TOP_SLICES = 3
CASE_SHARE = 0.5
#: cleanlab's default temperature of its softmin over a slice's pixels (the softmin score).
SOFTMIN_TEMPERATURE = 0.1
#: Stored with the calibrated thresholds (run.json `slice_rule`): the slice and case scores they were calibrated
#: on. Runs whose calibration names another rule were calibrated on earlier scores; score says so.
SLICE_RULE = (f"max(F, R): R over regions of s_v > {REGION_LEVEL} against {REGION_SHARE} x A0; case: mean of the "
              f"{CASE_TOP_SLICES} worst M/(M + {CASE_SHARE} x A0)")


def given_class_probability(prob: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """p̄ of the given class: prob float (b, C, H, W), classes int (b, H, W) -> float32 (b, H, W)."""
    return np.take_along_axis(prob, classes[:, np.newaxis].astype(np.int64), axis=1)[:, 0].astype(np.float32)


def softmin_noise(p_given: np.ndarray, temperature: float = SOFTMIN_TEMPERATURE) -> np.ndarray:
    """The softmin score Q_i per slice (module docstring): p_given float (b, H, W) -> float64 (b,) in [0, 1].

    cleanlab.segmentation.rank.get_label_quality_scores(method="softmin") computes 1 − Q_i; the weights are
    shifted by the slice's lowest p̄ first, so that no exponent underflows."""
    p = np.clip(p_given.reshape(len(p_given), -1).astype(np.float64), 0.0, 1.0)
    if p.shape[1] == 0:
        return np.zeros(len(p))
    weights = np.exp((p.min(axis=1, keepdims=True) - p) / temperature)
    return np.clip(1.0 - (p * weights).sum(axis=1) / weights.sum(axis=1), 0.0, 1.0)


def normalised_entropy(prob: np.ndarray) -> np.ndarray:
    """Entropy over axis 1 divided by log C: prob (b, C, H, W) -> float32 (b, H, W) in [0, 1]."""
    num_classes = prob.shape[1]
    p = np.clip(prob, 1e-8, 1.0)
    entropy = -(prob * np.log(p)).sum(axis=1)
    return np.clip(entropy / math.log(max(num_classes, 2)), 0.0, 1.0).astype(np.float32)


def pixel_noise_score(p_given: np.ndarray, uncertainty: np.ndarray,
                      formula: PixelScore = PIXEL_SCORE, weight: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel probability that the given label is wrong: float32 of the inputs' shape, in [0, 1].

    p_given: p̄ of the given class, any shape; uncertainty: ũ (normalised entropy), same shape; weight: MCPM's
    meta weight R, same shape, required by the meta_* formulas.
    """
    formula = PixelScore(formula)
    wrong = 1.0 - np.clip(p_given, 0.0, 1.0)
    if formula.needs_meta_weight:
        if weight is None:
            raise ValueError(f"pixel score {formula.value} needs the meta weight R (an MCPM run)")
        low_weight = 1.0 - np.clip(weight, 0.0, 1.0)
        wrong = low_weight * wrong if formula is PixelScore.META_DISAGREEMENT else low_weight
    elif formula is PixelScore.CONFIDENT_DISAGREEMENT:
        wrong = wrong * (1.0 - np.clip(uncertainty, 0.0, 1.0))
    return np.clip(wrong, 0.0, 1.0).astype(np.float32)


def roi_radius(in_plane_spacing: tuple[float, float], margin_mm: float = ROI_MARGIN_MM) -> tuple[int, int]:
    """ROI dilation radius in pixels (rows, columns) for a pixel spacing in mm, clamped to ROI_RADIUS_PX."""
    low, high = ROI_RADIUS_PX
    return tuple(int(min(high, max(low, round(margin_mm / max(s, 1e-6))))) for s in in_plane_spacing)


def _ellipse(radius: tuple[int, int]) -> np.ndarray:
    ry, rx = radius
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return (y / max(ry, 1e-6)) ** 2 + (x / max(rx, 1e-6)) ** 2 <= 1.0 + 1e-9


def region_of_interest(classes: np.ndarray, pred: np.ndarray, radius: tuple[int, int]) -> np.ndarray:
    """ROI per slice: ((classes != 0) | (pred != 0)) dilated in-plane by an ellipse of `radius`.

    classes, pred: int (b, H, W) -> bool (b, H, W). Slices are dilated independently.
    """
    union = (classes != 0) | (pred != 0)
    if not union.any():
        return union
    footprint = _ellipse(radius)[np.newaxis]
    return ndimage.binary_dilation(union, structure=footprint)


def class_counts(classes: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Per foreground class and slice: intersection, label and prediction pixel counts.

    classes, pred: int (b, H, W) -> int64 (3, C-1, b) = (|y=c ∧ ŷ=c|, |y=c|, |ŷ=c|) for c = 1..C-1.
    Summing over the last axis gives the counts of a whole case.
    """
    b = classes.shape[0]
    counts = np.zeros((3, max(num_classes - 1, 0), b), dtype=np.int64)
    flat_y = classes.reshape(b, -1)
    flat_p = pred.reshape(b, -1)
    for c in range(1, num_classes):
        in_y, in_p = flat_y == c, flat_p == c
        counts[0, c - 1] = (in_y & in_p).sum(axis=1)
        counts[1, c - 1] = in_y.sum(axis=1)
        counts[2, c - 1] = in_p.sum(axis=1)
    return counts


def dice_disagreement(counts: np.ndarray) -> np.ndarray:
    """1 - Dice(label, prediction), macro-averaged over the foreground classes present in either.

    counts: int (3, C-1, ...) from `class_counts` -> float (...) in [0, 1]; 0 where no class is present
    (both empty: they agree). For a binary label this is the plain 1 - Dice of the foreground.
    """
    inter, n_y, n_p = counts[0].astype(np.float64), counts[1], counts[2]
    denom = (n_y + n_p).astype(np.float64)
    present = denom > 0
    dice = np.where(present, 2.0 * inter / np.maximum(denom, 1.0), 0.0)
    n_present = present.sum(axis=0)
    mean_dice = np.where(n_present > 0, dice.sum(axis=0) / np.maximum(n_present, 1), 1.0)
    return 1.0 - mean_dice


@dataclass(frozen=True)
class SliceStats:
    """Per-slice results of one batch or case, each an array of shape (b,)."""

    noise_score: np.ndarray  # float64, [0, 1]: the slice score that flags and ranks (score/ranking.py)
    disagreement: np.ndarray  # float64, 1 - Dice(label, prediction)
    doubt_fraction: np.ndarray  # float64, fraction of labelled (non-background) pixels with s_v > DOUBT_LEVEL
    label_pixels: np.ndarray  # int64, non-background pixels of the label
    pred_pixels: np.ndarray  # int64, non-background pixels of the prediction
    counts: np.ndarray  # int64 (3, C-1, b), see class_counts
    mislabelled: np.ndarray  # float64, Σ_ROI s_v: the expected mislabelled area in pixels
    union: np.ndarray  # int64, |{y ≠ 0} ∪ {ŷ ≠ 0}|
    worst_region: np.ndarray  # float64, R_i: the score of the slice's most confidently wrong region
    mass: np.ndarray  # float64, m_i = M_i / (M_i + CASE_SHARE · A₀), what the case score is made of (S_i without A₀)
    structure_score: np.ndarray  # float64, S_i = max(F_i, R_i): what the thresholds are calibrated on
    softmin: np.ndarray  # float64, Q_i (0 where p̄ was not given)


def slice_stats(noise: np.ndarray, classes: np.ndarray, pred: np.ndarray, num_classes: int,
                radius: tuple[int, int], eps: float = SLICE_EPS,
                region_share: float | None = REGION_SHARE, p_given: np.ndarray | None = None) -> SliceStats:
    """Aggregate a batch of pixel noise scores into slice scores.

    noise: float (b, H, W) pixel noise scores; classes: int (b, H, W) the given label; pred: int (b, H, W)
    argmax of p̄; radius: ROI dilation (rows, columns) in pixels; eps: A₀ in pixels (see the module docstring);
    region_share: R_i's share of A₀ (None: no region term, S_i = F_i, and no A₀ to weigh a mass against: the
    case is then made of the slice scores themselves); p_given: float (b, H, W) p̄ of the given class, for the
    softmin score. noise_score is S_i until score/ranking.py ranks the slices.
    """
    label_fg, pred_fg = classes != 0, pred != 0
    union = (label_fg | pred_fg).reshape(len(noise), -1).sum(axis=1)
    roi = region_of_interest(classes, pred, radius)
    noise_in_roi = np.where(roi, noise, 0.0)
    in_roi = noise_in_roi.reshape(len(noise), -1).sum(axis=1, dtype=np.float64)
    fraction = np.where(union > 0, np.clip(in_roi / (union + eps), 0.0, 1.0), 0.0)
    region = (worst_region(noise_in_roi, region_share * eps) if region_share is not None
              else np.zeros(len(noise)))
    score = np.maximum(fraction, region)
    label_pixels = label_fg.reshape(len(noise), -1).sum(axis=1)
    doubtful = (label_fg & (noise > DOUBT_LEVEL)).reshape(len(noise), -1).sum(axis=1)
    doubt = np.where(label_pixels > 0, doubtful / np.maximum(label_pixels, 1), 0.0)
    counts = class_counts(classes, pred, num_classes)
    return SliceStats(score, dice_disagreement(counts), doubt, label_pixels.astype(np.int64),
                      pred_fg.reshape(len(noise), -1).sum(axis=1).astype(np.int64), counts, in_roi,
                      union.astype(np.int64), region,
                      slice_mass(in_roi, eps) if region_share is not None else score.astype(np.float64),
                      score.astype(np.float64),
                      softmin_noise(p_given) if p_given is not None else np.zeros(len(noise)))


def slice_mass(mislabelled: np.ndarray, eps: float) -> np.ndarray:
    """m_i = M_i / (M_i + CASE_SHARE · A₀): mislabelled float (b,) the expected mislabelled pixels, eps A₀ in
    pixels -> float64 (b,) in [0, 1)."""
    mislabelled = np.asarray(mislabelled, dtype=np.float64)
    return mislabelled / (mislabelled + max(CASE_SHARE * float(eps), 1e-12))


#: 4-connectivity within a slice, none across slices: one labelling call for a whole batch.
_IN_PLANE = np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                      [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], dtype=bool)


def worst_region(noise: np.ndarray, prior_pixels: float, level: float = REGION_LEVEL) -> np.ndarray:
    """R_i per slice (module docstring): noise float (b, H, W), prior_pixels = REGION_SHARE · A₀ in pixels
    -> float64 (b,) in [0, 1); 0 for a slice with no pixel above `level`."""
    found = np.zeros(len(noise), dtype=np.float64)
    regions, count = ndimage.label(noise > level, structure=_IN_PLANE)
    if count == 0:
        return found
    where = np.flatnonzero(regions)
    label = regions.reshape(-1)[where]
    mass = np.bincount(label, weights=noise.reshape(-1)[where].astype(np.float64), minlength=count + 1)
    slice_of = np.zeros(count + 1, dtype=np.int64)
    slice_of[label] = where // int(np.prod(noise.shape[1:]))  # a region lies in one slice
    np.maximum.at(found, slice_of[1:], mass[1:] / (mass[1:] + max(float(prior_pixels), 1e-12)))
    return found


def concat_stats(parts: list[SliceStats]) -> SliceStats:
    return SliceStats(*(np.concatenate([getattr(p, name) for p in parts], axis=-1)
                        for name in ("noise_score", "disagreement", "doubt_fraction", "label_pixels",
                                     "pred_pixels", "counts", "mislabelled", "union", "worst_region", "mass",
                                     "structure_score", "softmin")))


def case_noise_score(values: np.ndarray, top: int = CASE_TOP_SLICES) -> float:
    """Mean of the `top` highest of a case's per-slice `values` (all of them when fewer); 0 for no slices. The
    case score is that of its slice masses (SliceStats.mass)."""
    if len(values) == 0:
        return 0.0
    k = min(top, len(values))
    return float(np.mean(np.sort(np.asarray(values, dtype=np.float64))[-k:]))

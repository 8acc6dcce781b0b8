"""Candidate audit signals computed from one run's out-of-fold probabilities, and the suite's metrics.

Everything a signal needs is the mean softmax of each training case through the fold model that held it out
(labelaudit.score.inference.dataset_probabilities), so cleanlab and every labelaudit variant rank exactly the
same probabilities. Signals give a score per pixel, per slice and per case (higher = more likely wrong).

- labelaudit variants (`Variant`): pixel formula (conf = (1 - p̄_y)(1 - ũ), disagree = 1 - p̄_y) × slice
  aggregation (labelaudit.score.formulas.slice_stats: the structure fraction F with A₀ = f × the median
  labelled area, with or without the region term R) × case aggregation (mass: the mean of the 3 worst slice
  masses, as score/formulas.py; top3: of the 3 worst slice scores; max: the worst slice score) ×
  noise map (a pixel formula, times the slice's score or not);
- cleanlab: `get_label_quality_scores(method="softmin")` per slice, 1 - p_y per pixel, case = max over slices;
- 1 - Dice: the model's own disagreement per slice (case = max over slices; no pixel score).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from labelaudit.config import PixelScore
from labelaudit.evaluate.metrics import ranking_scores
from labelaudit.score.formulas import (REGION_SHARE, case_noise_score, given_class_probability, normalised_entropy,
                                       pixel_noise_score, roi_radius, slice_stats)


@dataclass
class Signal:
    """One signal's scores over a dataset, accumulated case by case."""

    name: str
    slices: dict[tuple[str, int], float] = field(default_factory=dict)
    cases: dict[str, float] = field(default_factory=dict)
    pixels: list[np.ndarray] = field(default_factory=list)  # float32 per case, flattened, in case order


@dataclass(frozen=True)
class Truth:
    """What is really wrong: per slice and case (from corruption.json) and per pixel (noisy != clean)."""

    slices: dict[tuple[str, int], bool]
    cases: dict[str, bool]
    pixels: list[np.ndarray]  # bool per case, flattened, in the same case order as the signals


@dataclass(frozen=True)
class CaseData:
    case_id: str
    classes: np.ndarray  # int64 (S, H, W) the noisy label's class indices
    prob: np.ndarray  # float32 (S, C, H, W) out-of-fold mean softmax
    spacing: tuple[float, float]  # in-plane mm


CONF, DISAGREE = PixelScore.CONFIDENT_DISAGREEMENT, PixelScore.DISAGREEMENT


@dataclass(frozen=True)
class Variant:
    """One candidate scoring of the same probabilities (the module docstring)."""

    name: str
    formula: PixelScore = CONF  # the pixel formula the slice score sums
    prior: float = 0.5  # A₀ = prior × the median labelled area
    region_share: float | None = REGION_SHARE  # the region term R of the slice score (None: S = F only)
    case_rule: str = "mass"  # the landed case score; or "top3", "max" (the module docstring)
    map_formula: PixelScore = DISAGREE  # the noise map's pixel formula
    map_times_slice: bool = True


#: The labelaudit variants compared on the development half (the first is the landed default).
VARIANTS = (
    Variant("max(F, R), map disagree×slice (landed)"),
    Variant("F only, map disagree×slice (before)", region_share=None),
    Variant("max(F, R), R share 0.5", region_share=0.5),
    Variant("max(F, R), R share 0.1", region_share=0.1),
    Variant("max(F, R), case max", case_rule="max"),
    Variant("max(F, R), case top3 of slice scores (before)", case_rule="top3"),
    Variant("max(F, R), f=0.25", prior=0.25),
    Variant("max(F, R), disagree", formula=DISAGREE),
    Variant("F only, map conf", region_share=None, map_formula=CONF, map_times_slice=False),
    Variant("F only, f=0", prior=0.0, region_share=None),
)


def median_area_mm2(cases: Iterable[CaseData]) -> float:
    areas = [float(n) * c.spacing[0] * c.spacing[1] for c in cases
             for n in (c.classes != 0).reshape(c.classes.shape[0], -1).sum(axis=1) if n > 0]
    return float(np.median(areas)) if areas else 1.0


def labelaudit_variants(cases: list[CaseData], variants: Iterable[Variant] = VARIANTS) -> list[Signal]:
    """Each variant's signal of the same probabilities (A₀ measured on these labels, as fit does)."""
    variants = tuple(variants)
    median = median_area_mm2(cases)
    signals = [Signal(v.name) for v in variants]
    for case in cases:
        p_given = given_class_probability(case.prob, case.classes)
        unc = normalised_entropy(case.prob)
        pred = case.prob.argmax(axis=1)
        radius = roi_radius(case.spacing)
        for signal, v in zip(signals, variants):
            noise = pixel_noise_score(p_given, unc, v.formula)
            eps = max(1.0, v.prior * median / (case.spacing[0] * case.spacing[1]))
            stats = slice_stats(noise, case.classes, pred, case.prob.shape[1], radius, eps, v.region_share)
            scores = stats.noise_score
            for index, value in enumerate(scores):
                signal.slices[(case.case_id, index)] = float(value)
            signal.cases[case.case_id] = (case_noise_score(stats.mass) if v.case_rule == "mass" else
                                          case_noise_score(scores) if v.case_rule == "top3" else float(scores.max()))
            pixel = pixel_noise_score(p_given, unc, v.map_formula)
            if v.map_times_slice:
                pixel = pixel * scores[:, None, None].astype(np.float32)
            signal.pixels.append(pixel.reshape(-1).astype(np.float32))
    return signals


def cleanlab_signal(cases: list[CaseData]) -> Signal:
    """cleanlab's segmentation label quality (softmin) on the same probabilities."""
    from cleanlab.segmentation.rank import get_label_quality_scores

    signal = Signal("cleanlab softmin")
    for case in cases:
        prob = case.prob / np.maximum(case.prob.sum(axis=1, keepdims=True), 1e-12)
        quality, pixel_quality = get_label_quality_scores(case.classes.astype(np.int64), prob.astype(np.float32),
                                                          method="softmin", verbose=False)
        scores = 1.0 - np.asarray(quality, dtype=np.float64)
        for index, value in enumerate(scores):
            signal.slices[(case.case_id, index)] = float(value)
        signal.cases[case.case_id] = float(scores.max()) if scores.size else 0.0
        signal.pixels.append((1.0 - np.asarray(pixel_quality, dtype=np.float32)).reshape(-1))
    return signal


def dice_signal(slice_disagreement: dict[tuple[str, int], float]) -> Signal:
    """The plain model's own 1 − Dice per slice (from its audit's slices.csv); case = max; no pixel score."""
    signal = Signal("plain 1−Dice", slices=dict(slice_disagreement))
    for (case_id, _), value in slice_disagreement.items():
        signal.cases[case_id] = max(signal.cases.get(case_id, 0.0), value)
    return signal


@dataclass(frozen=True)
class LevelScore:
    ap: float
    auroc: float
    positives: int
    total: int


def level_scores(signal: Signal, truth: Truth) -> dict[str, LevelScore]:
    """AP and AUROC per level (slice, case, pixel where the signal has pixel scores)."""
    found = {}
    for level, scores, labels in (("slice", signal.slices, truth.slices), ("case", signal.cases, truth.cases)):
        keys = sorted(labels)
        found[level] = _rank(np.array([scores[k] for k in keys]), np.array([labels[k] for k in keys], dtype=bool))
    if signal.pixels:
        found["pixel"] = _rank(np.concatenate(signal.pixels), np.concatenate(truth.pixels))
    return found


def _rank(scores: np.ndarray, truth: np.ndarray) -> LevelScore:
    if truth.all() or not truth.any():
        return LevelScore(float("nan"), float("nan"), int(truth.sum()), int(truth.size))
    r = ranking_scores(scores.astype(np.float64), truth)
    return LevelScore(float(r.ap), float(r.auroc), int(truth.sum()), int(truth.size))


def miss_ratio(ours: float, theirs: float) -> float:
    """(1 − AP ours) / (1 − AP theirs): below 1 labelaudit misses less; 0.5 is half cleanlab's miss rate."""
    if np.isnan(ours) or np.isnan(theirs):
        return float("nan")
    if 1.0 - theirs < 1e-9:  # cleanlab misses nothing: labelaudit ties it or misses infinitely more
        return 1.0 if 1.0 - ours < 1e-9 else float("inf")
    return (1.0 - ours) / (1.0 - theirs)


def dice_per_case(pred: np.ndarray, clean: np.ndarray, classes: int) -> float:
    """Mean over the foreground classes present in either of Dice(pred, clean) of one case (1 if none)."""
    values = []
    for c in range(1, classes + 1):
        p, t = pred == c, clean == c
        denominator = int(p.sum()) + int(t.sum())
        if denominator:
            values.append(2.0 * int((p & t).sum()) / denominator)
    return float(np.mean(values)) if values else 1.0

"""ONNX Runtime inference -> per-pixel noise maps, slice and case noise scores (no torch on this path).

Array legend: S slices of one case, b slices of one batch, C classes, C_in input channels, K perturbations,
H x W the case's native in-plane pixels, h x w the network's (after resampling), Hp x Wp padded to the
run's divisor. Class indices are int64 in 0..C-1 (LabelMap.encode); class 0 is background.

The formulas (research/algorithms.md §6.2):
- pixel noise score s_v, the estimated probability that the given label y_v is wrong, one of
  `PixelScore` (the choice lives in `PIXEL_SCORE`; the benchmark decides):
    confident_disagreement  s_v = (1 - p̄_{v,y_v}) · (1 - ũ_v)
    disagreement            s_v = 1 - p̄_{v,y_v}
  with p̄ the mean softmax over the K perturbed passes and ũ its normalised entropy; for runs that carry
  MCPM's meta_weight.onnx (the choice lives in `MCPM_PIXEL_SCORE`; §6.3):
    meta_disagreement       s_v = (1 - R_v) · (1 - p̄_{v,y_v})
    meta_weight             s_v = 1 - R_v
  with R the meta weight Theta gives the pixel from the image, the given label and p̄;
- slice score S_i = Σ_{v ∈ ROI} s_v / (|{y ≠ 0} ∪ {ŷ ≠ 0}| + A₀), clipped to [0, 1], 0 when the union is
  empty, where ŷ = argmax p̄ and ROI = the union dilated by `ROI_MARGIN_MM` (the annotated structure and its
  neighbourhood; empty background would drown every error). Σ s_v is the expected mislabelled area; divided
  by the union it is the expected mislabelled fraction, and A₀ (`STRUCTURE_PRIOR` × the median labelled area
  of the training slices with structure, fixed at calibration and stored in run.json) shrinks that fraction
  for small structures, whose few uncertain boundary pixels would otherwise score like a wrong label. On the
  corrupted demo (bench/score_formulas.py) this raised slice AP from 0.75 to 0.87 (plain) and from 0.53 to
  0.81 (PINT) against A₀ = 1 px; A₀ between ¼ and 1 × the median gave the same within 0.01;
- case score = mean of the `CASE_TOP_SLICES` highest slice scores: one badly wrong slice shows at case level,
  a single noisy slice among three does not dominate, and a long volume is not diluted by its many clean slices.

Flags: a slice is flagged when its score reaches the slice threshold; a case when its score reaches the case
threshold or any of its slices is flagged. Thresholds come from run.json (fit's calibration, `calibrate_run`),
an override, or DEFAULT_THRESHOLD.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..data import CaseInfo, Track, check_case, discover_dataset, fingerprint, no_track, raise_fatal
from ..diagnosis import ErrorKind, classify_slices, dominant_kind
from ..errors import InputError, ModelError
from ..preprocess import LabelMap, pad_to_multiple, prepare_case, resample_slices, restore_in_plane
from ..formats.run import FoldModel, RunInfo, load_run, perturbation_noise
from ..types import Case, CaseRef, Dataset, Problem


class PixelScore(str, Enum):
    """Candidate per-pixel noise scores (see the module docstring)."""

    CONFIDENT_DISAGREEMENT = "confident_disagreement"  # (1 - p̄_y)(1 - ũ)
    DISAGREEMENT = "disagreement"  # 1 - p̄_y
    META_DISAGREEMENT = "meta_disagreement"  # (1 - R)(1 - p̄_y), MCPM runs only (algorithms.md §6.3)
    META_WEIGHT = "meta_weight"  # 1 - R, MCPM runs only (for comparisons)

    @property
    def needs_meta_weight(self) -> bool:
        return self in (PixelScore.META_DISAGREEMENT, PixelScore.META_WEIGHT)


#: THE pixel formula used by `score`/`check` unless a config overrides it. Chosen by the benchmark
#: (bench/RESULTS.md); confident disagreement is PINT's own signal (§6.2) and discounts ambiguous boundaries.
PIXEL_SCORE = PixelScore.CONFIDENT_DISAGREEMENT
#: THE pixel formula for runs that carry MCPM's meta_weight.onnx. §6.3 proposes (1 - R)(1 - p̄_y): low meta weight
#: R where the prediction disagrees with the label. Measured on the corrupted demo (bench/RESULTS.md, r = 0.4),
#: R made the ranking worse: slice AP 0.772 with R vs 0.854 without it in-sample, 0.620 vs 0.810 out-of-fold
#: (R is low on much of the clean foreground too, as §9 item 7 warns). So MCPM runs are scored like the others,
#: with the MCPM-trained network's confident disagreement; the R-based scores stay selectable (`--pixel-score`).
MCPM_PIXEL_SCORE = PixelScore.CONFIDENT_DISAGREEMENT
#: The ROI around the structure, in mm (converted to pixels per in-plane axis, clamped to ROI_RADIUS_PX).
ROI_MARGIN_MM = 3.0
ROI_RADIUS_PX = (1, 8)
#: A₀ of the slice score = STRUCTURE_PRIOR × the median labelled area (mm²) of the training slices with
#: structure (calibrate_run measures it). Runs calibrated before it existed fall back to SLICE_EPS pixels.
STRUCTURE_PRIOR = 0.5
SLICE_EPS = 1.0
#: A labelled pixel is "in doubt" when its noise score exceeds this (doubt_fraction column).
DOUBT_LEVEL = 0.5
CASE_TOP_SLICES = 3
#: Flagging threshold when the run has none calibrated and none is given.
DEFAULT_THRESHOLD = 0.5
#: Calibration (calibrate_run): threshold = max(FLOOR, median + K · MAD_SCALE · MAD) of the scores of the
#: slices with a non-empty ROI. The median and MAD have a 50% breakdown point, so the noisy labels in the
#: training data (up to half) do not move the estimate of the clean bulk much; K = 3 robust standard
#: deviations flags about 0.1% of a normal clean bulk. The floor keeps a near-perfect model (MAD ≈ 0) from
#: flagging every slice with a few uncertain boundary pixels.
THRESHOLD_RULE = "median+k*mad"
THRESHOLD_K = 3.0
MAD_SCALE = 1.4826  # MAD -> standard deviation for a normal distribution
THRESHOLD_FLOOR = 0.05
#: Stored with the thresholds in run.json, so that a committed model says what its threshold means.
THRESHOLD_MEANING = ("a slice is flagged when its noise score reaches 'slice' = max(floor, median + k * mad_scale "
                     "* MAD) of the scores of the training slices with structure ('scored' says whether "
                     "out-of-fold or in-sample): k robust standard deviations above a typical training "
                     "annotation, robust to up to half of them being wrong; a case is flagged when any slice is, "
                     "or when its score (mean of its 3 worst slices) reaches 'case'")
#: Fewer cases than this: the case threshold is the slice threshold (a MAD of a handful of cases is noise).
MIN_CASES_FOR_CASE_RULE = 10
#: Upper bound on N·K·Hp·Wp pixels per ORT call, so a 512×512 CT with K=8 stays within a few GB.
MAX_PIXELS_PER_CALL = 1 << 22


# ----------------------------------------------------------------------------- pure scoring functions

def given_class_probability(prob: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """p̄ of the given class: prob float (b, C, H, W), classes int (b, H, W) -> float32 (b, H, W)."""
    return np.take_along_axis(prob, classes[:, np.newaxis].astype(np.int64), axis=1)[:, 0].astype(np.float32)


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

    noise_score: np.ndarray  # float64, [0, 1]
    disagreement: np.ndarray  # float64, 1 - Dice(label, prediction)
    doubt_fraction: np.ndarray  # float64, fraction of labelled (non-background) pixels with s_v > DOUBT_LEVEL
    label_pixels: np.ndarray  # int64, non-background pixels of the label
    pred_pixels: np.ndarray  # int64, non-background pixels of the prediction
    counts: np.ndarray  # int64 (3, C-1, b), see class_counts
    mislabelled: np.ndarray  # float64, Σ_ROI s_v: the expected mislabelled area in pixels
    union: np.ndarray  # int64, |{y ≠ 0} ∪ {ŷ ≠ 0}|


def slice_stats(noise: np.ndarray, classes: np.ndarray, pred: np.ndarray, num_classes: int,
                radius: tuple[int, int], eps: float = SLICE_EPS) -> SliceStats:
    """Aggregate a batch of pixel noise scores into slice scores.

    noise: float (b, H, W) pixel noise scores; classes: int (b, H, W) the given label; pred: int (b, H, W)
    argmax of p̄; radius: ROI dilation (rows, columns) in pixels; eps: A₀ in pixels (see the module docstring).
    """
    label_fg, pred_fg = classes != 0, pred != 0
    union = (label_fg | pred_fg).reshape(len(noise), -1).sum(axis=1)
    roi = region_of_interest(classes, pred, radius)
    in_roi = np.where(roi, noise, 0.0).reshape(len(noise), -1).sum(axis=1, dtype=np.float64)
    score = np.where(union > 0, np.clip(in_roi / (union + eps), 0.0, 1.0), 0.0)
    label_pixels = label_fg.reshape(len(noise), -1).sum(axis=1)
    doubtful = (label_fg & (noise > DOUBT_LEVEL)).reshape(len(noise), -1).sum(axis=1)
    doubt = np.where(label_pixels > 0, doubtful / np.maximum(label_pixels, 1), 0.0)
    counts = class_counts(classes, pred, num_classes)
    return SliceStats(score, dice_disagreement(counts), doubt, label_pixels.astype(np.int64),
                      pred_fg.reshape(len(noise), -1).sum(axis=1).astype(np.int64), counts, in_roi,
                      union.astype(np.int64))


def concat_stats(parts: list[SliceStats]) -> SliceStats:
    return SliceStats(*(np.concatenate([getattr(p, name) for p in parts], axis=-1)
                        for name in ("noise_score", "disagreement", "doubt_fraction", "label_pixels",
                                     "pred_pixels", "counts", "mislabelled", "union")))


def case_noise_score(slice_scores: np.ndarray, top: int = CASE_TOP_SLICES) -> float:
    """Mean of the `top` highest slice scores (all of them when fewer): float in [0, 1]; 0 for no slices."""
    if len(slice_scores) == 0:
        return 0.0
    k = min(top, len(slice_scores))
    return float(np.mean(np.sort(np.asarray(slice_scores, dtype=np.float64))[-k:]))


def robust_threshold(scores: np.ndarray, k: float = THRESHOLD_K, floor: float = THRESHOLD_FLOOR) -> float:
    """max(floor, median + k · 1.4826 · MAD) of `scores` (float, any shape); `floor` when empty. At most 1."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        return float(floor)
    median = float(np.median(scores))
    mad = float(np.median(np.abs(scores - median)))
    return float(min(1.0, max(floor, median + k * MAD_SCALE * mad)))


# ----------------------------------------------------------------------------- configuration and results

@dataclass(frozen=True)
class ScoreConfig:
    """What `score` (and `check`, and fit's calibration) asks for.

    run_dir: the run folder. dataset: None scores the dataset in run.json. out_dir: None writes to
    audits/<dataset-name> (relative to the working directory); ignored when `write` is False.
    perturbations: K override (None: the run's K). threshold: overrides the run's slice and case
    thresholds. out_of_fold: False scores every case with the ensemble of all models (in-sample on the
    fit dataset; for comparisons). report: the HTML page (None: out_dir/report.html when writing).
    """

    run_dir: Path
    dataset: Path | None = None
    out_dir: Path | None = None
    write: bool = True
    report: Path | None = None
    device: str = "auto"
    batch_size: int = 16
    perturbations: int | None = None
    threshold: float | None = None
    pixel_score: PixelScore | None = None  # None: the run's own, MCPM_PIXEL_SCORE or PIXEL_SCORE
    out_of_fold: bool = True
    strict: bool = False
    cases: tuple[str, ...] | None = None  # score only these case ids (check --cache: the new or changed ones)
    structure_prior_mm2: float | None = None  # A₀ of the slice score (None: the run's calibrated value)


@dataclass
class SliceScore:
    case_id: str
    slice_index: int
    noise_score: float
    flagged: bool
    disagreement: float
    doubt_fraction: float
    label_pixels: int
    pred_pixels: int
    error_kind: str = "none"  # errorkind.ErrorKind value: label vs robust prediction on this slice


@dataclass
class CaseScore:
    case_id: str
    noise_score: float
    flagged: bool
    worst_slice: int
    disagreement: float  # volume-level 1 - Dice(label, prediction)
    n_slices: int
    n_flagged_slices: int
    model: str  # "fold_2" or "ensemble(fold_0+fold_1+fold_2)"
    routing: str  # out-of-fold | in-sample | new-data
    noise_map: str | None = None  # path relative to the audit folder
    pred_map: str | None = None
    error_kind: str = "none"  # the dominant kind over the slices that make the case score


@dataclass
class Audit:
    """What score_dataset returns; `cases` and `slices` are sorted by noise score, highest first."""

    dataset: dict  # name, path, layout
    run: dict  # path, method, created
    provider: str
    device: str
    device_reason: str
    pixel_score: str
    threshold: dict  # slice, case, source, (rule …)
    cases: list[CaseScore] = field(default_factory=list)
    slices: list[SliceScore] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    perturbations: int = 1
    out_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    views: dict = field(default_factory=dict)  # case id -> report.CaseView (files, thumbnails), when writing

    @property
    def flagged_cases(self) -> list[CaseScore]:
        return [c for c in self.cases if c.flagged]

    @property
    def flagged_slices(self) -> list[SliceScore]:
        return [s for s in self.slices if s.flagged]


# ----------------------------------------------------------------------------- the run against the data

def resolve_threshold(info: RunInfo, override: float | None) -> dict:
    """The slice and case thresholds to flag with: the override, else the run's calibration, else the default."""
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise InputError(f"threshold {override}: expected a noise score in [0, 1]")
        return {"slice": float(override), "case": float(override), "source": "override"}
    calibrated = info.threshold or {}
    if "slice" in calibrated:
        return {**calibrated, "slice": float(calibrated["slice"]),
                "case": float(calibrated.get("case", calibrated["slice"])), "source": "run.json"}
    return {"slice": DEFAULT_THRESHOLD, "case": DEFAULT_THRESHOLD, "source": "default (the run has no calibrated "
            "threshold)"}


def check_run_matches(info: RunInfo, dataset: Dataset, run_dir: Path) -> None:
    """Refuse a run folder whose channels or label classes do not fit the dataset (ModelError, exit 4)."""
    run_name = info.dataset.get("name", "?")
    expected = len(info.preprocessing.channels)
    if dataset.cases and dataset.num_channels != expected:
        raise ModelError(f"{run_dir}: the run takes {expected} image channel(s) (fit on {run_name}), but "
                         f"{dataset.root} has {dataset.num_channels}",
                         hint="score with a run fit on data with the same channels (--model RUN_DIR)")
    if dataset.labels:
        extra = sorted(set(dataset.labels.values()) - set(info.label_map.values))
        if extra:
            raise ModelError(
                f"{run_dir}: the run's classes {list(info.label_map.values)} (fit on {run_name}) do not include "
                f"label values {extra} declared in {dataset.root / 'dataset.json'}",
                hint="this run folder was fit on another label set; pass --model with a run fit on this dataset")


def is_fit_dataset(info: RunInfo, dataset: Dataset) -> bool:
    """Whether `dataset` is the one the run was fit on: same resolved path, or same fingerprint."""
    recorded = info.dataset.get("path")
    if recorded and Path(recorded).resolve() == dataset.root.resolve():
        return True
    return bool(info.dataset.get("fingerprint")) and info.dataset.get("fingerprint") == fingerprint(dataset)


def route_case(case_id: str, models: list[FoldModel], fit_dataset: bool,
               out_of_fold: bool = True) -> tuple[list[int], str]:
    """Which models score a case: (indices into `models`, routing).

    On the fit dataset a case is scored by the model(s) that held it out ("out-of-fold"); a case no model held
    out ("in-sample") and any case of other data ("new-data") by the ensemble of all models.
    """
    if fit_dataset and out_of_fold:
        holding = [i for i, m in enumerate(models) if case_id in m.held_out]
        if holding:
            return holding, "out-of-fold"
    return list(range(len(models))), "in-sample" if fit_dataset else "new-data"


def _model_name(models: list[FoldModel], chosen: list[int]) -> str:
    names = [f"fold_{models[i].fold}" if models[i].fold >= 0 else "all" for i in chosen]
    return names[0] if len(names) == 1 else f"ensemble({'+'.join(names)})"


# ----------------------------------------------------------------------------- inference for one case

class CaseScorer:
    """Runs the fold models on one case at a time and turns their output into noise maps and slice stats."""

    def __init__(self, info: RunInfo, run_dir: Path, device: str = "auto", batch_size: int = 16,
                 perturbations: int | None = None, pixel_score: PixelScore | None = None,
                 structure_prior_mm2: float | None = None) -> None:
        from .providers import MetaWeighter, Segmenter, choose_device

        if structure_prior_mm2 is None:
            structure_prior_mm2 = (info.threshold or {}).get("structure_prior_mm2")
        self.structure_prior_mm2 = float(structure_prior_mm2) if structure_prior_mm2 else None

        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: expected at least 1")
        self.info = info
        self.label_map: LabelMap = info.label_map
        self.prep = info.preprocessing
        self.perturbations = info.perturbations if perturbations is None else replace(info.perturbations,
                                                                                      k=int(perturbations))
        if self.perturbations.k < 1:
            raise InputError(f"perturbations K={self.perturbations.k}: expected at least 1")
        self.batch_size = batch_size
        self.choice = choose_device(device)
        c_in = len(self.prep.channels)
        self.segmenters = [Segmenter(run_dir / m.segmenter, self.choice, c_in, self.label_map.num_classes, run_dir)
                           for m in info.models]
        # MCPM runs: every fold model carries its meta_weight.onnx (R from its own segmenter's prediction)
        with_meta = [m for m in info.models if m.meta_weight]
        if with_meta and len(with_meta) != len(info.models):
            raise ModelError(f"{run_dir / 'run.json'}: only some models have a meta_weight graph",
                             hint=f"re-create them with: labelaudit export {run_dir}")
        if pixel_score is None:
            pixel_score = MCPM_PIXEL_SCORE if with_meta else PIXEL_SCORE
        self.pixel_score = PixelScore(pixel_score)
        # Theta's graphs are opened only when the formula uses R (the MCPM default does not)
        self.meta_weighters = [MetaWeighter(run_dir / m.meta_weight, self.choice, c_in, self.label_map.num_classes,
                                            run_dir) for m in with_meta] if self.pixel_score.needs_meta_weight else []
        self.uses_meta_weight = bool(self.meta_weighters)
        if self.pixel_score.needs_meta_weight and not self.meta_weighters:
            raise ModelError(f"{run_dir}: pixel score {self.pixel_score.value} needs an MCPM run (meta_weight.onnx); "
                             f"this run's method is {info.method}", hint="use another pixel score, or an MCPM run")
        self.provider = self.segmenters[0].provider
        self.device = self.choice.label if self.provider == self.choice.provider else "cpu"
        self.reason = self.choice.reason if self.provider == self.choice.provider else (
            f"{self.choice.reason}, but ONNX Runtime could not start {self.choice.provider}")
        import onnxruntime

        self.versions = {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
        self._noise: dict[tuple[int, int], np.ndarray] = {}
        self.seconds = {"inference": 0.0, "scoring": 0.0}

    def noise_bank(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._noise:
            self._noise = {key: perturbation_noise(self.perturbations, len(self.prep.channels), height, width)}
        return self._noise[key]

    def predict(self, image: np.ndarray, chosen: list[int], label: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """image float32 (b, C_in, Hp, Wp) -> prob_mean (b, C, Hp, Wp), uncertainty (b, Hp, Wp), ensembled, and
        for MCPM runs with `label` (int64 class indices (b, Hp, Wp)) the meta weight R (b, Hp, Wp), else None.

        Each fold's R comes from its own Theta on its own segmenter's prob_mean; the ensemble's R is their mean.
        """
        noise = self.noise_bank(*image.shape[-2:])
        start = time.perf_counter()
        meta = self.uses_meta_weight and label is not None
        weight = None
        if len(chosen) == 1:
            prob, unc = self.segmenters[chosen[0]].run(image, noise)
            if meta:
                weight = self.meta_weighters[chosen[0]].run(image, label, prob)
        else:
            prob = None
            for i in chosen:
                p, _ = self.segmenters[i].run(image, noise)
                prob = p if prob is None else prob + p
                if meta:
                    r = self.meta_weighters[i].run(image, label, p)
                    weight = r if weight is None else weight + r
            prob = prob / len(chosen)
            weight = weight / len(chosen) if weight is not None else None
            unc = normalised_entropy(prob)  # the ensemble's own uncertainty, not the mean of the models'
        self.seconds["inference"] += time.perf_counter() - start
        return prob, unc, weight

    def prior_pixels(self, in_plane_spacing: tuple[float, float]) -> float:
        """A₀ in pixels of a slice with this spacing (mm); SLICE_EPS for runs calibrated without it."""
        if not self.structure_prior_mm2:
            return SLICE_EPS
        return max(SLICE_EPS, self.structure_prior_mm2 / max(in_plane_spacing[0] * in_plane_spacing[1], 1e-12))

    def score_case(self, case: Case, chosen: list[int]) -> tuple[SliceStats, np.ndarray, np.ndarray]:
        """Score one case: (slice stats over its S slices, noise (S, H, W) float32, pred (S, H, W) class indices).

        Raises InputError when the label holds values outside the run's classes.
        """
        labels = case.label_slices()  # (S, H, W) native label values, a view; encoded per batch (int64 is big)
        image, _ = prepare_case(case, self.prep)  # (S, C_in, h, w)
        num_slices, native = labels.shape[0], labels.shape[1:]
        h, w = image.shape[-2:]
        factor = self.prep.resample_factor(case)
        pixels_per_slice = self.perturbations.k * _ceil_to(h, self.prep.divisor) * _ceil_to(w, self.prep.divisor)
        step = max(1, min(self.batch_size, MAX_PIXELS_PER_CALL // pixels_per_slice))
        radius = roi_radius(case.geometry.in_plane_spacing())
        eps = self.prior_pixels(case.geometry.in_plane_spacing())
        noise_map = np.empty((num_slices, *native), dtype=np.float32)
        pred_map = np.empty((num_slices, *native), dtype=np.uint8 if self.label_map.num_classes <= 256 else np.int32)
        parts = []
        for start in range(0, num_slices, step):
            stop = min(num_slices, start + step)
            padded, _ = pad_to_multiple(np.ascontiguousarray(image[start:stop]), self.prep.divisor)
            given_net = None
            if self.uses_meta_weight:  # Theta sees the label on the network's grid, as in training
                given_net = resample_slices(self.label_map.encode(labels[start:stop]), factor, order=0)
                given_net, _ = pad_to_multiple(given_net, self.prep.divisor)
            prob, unc, weight = self.predict(padded, chosen, given_net)
            t0 = time.perf_counter()
            prob, unc = prob[..., :h, :w], unc[..., :h, :w]
            weight = weight[..., :h, :w] if weight is not None else None
            if (h, w) != tuple(native):
                b, c = prob.shape[:2]
                prob = restore_in_plane(prob.reshape(b * c, h, w), native, order=1).reshape(b, c, *native)
                unc = restore_in_plane(unc, native, order=1)
                weight = restore_in_plane(weight, native, order=1) if weight is not None else None
            pred = prob.argmax(axis=1)
            given = self.label_map.encode(labels[start:stop])
            noise = pixel_noise_score(given_class_probability(prob, given), unc, self.pixel_score, weight)
            noise_map[start:stop] = noise
            pred_map[start:stop] = pred
            parts.append(slice_stats(noise, given, pred, self.label_map.num_classes, radius, eps))
            self.seconds["scoring"] += time.perf_counter() - t0
        return concat_stats(parts), noise_map, pred_map


def _ceil_to(n: int, divisor: int) -> int:
    return -(-n // divisor) * divisor


# ----------------------------------------------------------------------------- the dataset loop

def _prefetched(refs: list[CaseRef], declared, track: Track, pool: ThreadPoolExecutor
                ) -> Iterator[tuple[CaseRef, Case | None, CaseInfo | None, list[Problem]]]:
    """Read case i+1 in the background while case i is scored (reading is I/O and decompression)."""
    pending: Future | None = pool.submit(check_case, refs[0], declared) if refs else None
    # the progress bar advances when the consumer asks for the next case, i.e. once this one is scored
    for i, ref in enumerate(track(refs, "scoring")):
        case, info, problems = pending.result()
        if i + 1 < len(refs):
            pending = pool.submit(check_case, refs[i + 1], declared)
        yield ref, case, info, problems


def score_dataset(config: ScoreConfig, track: Track = no_track) -> Audit:
    """Score every case of the dataset with the run's ONNX graphs; write the audit folder unless `write` is False.

    Streams one case at a time (the next one is read in the background); each case's maps are written as soon
    as it is done. Case-level problems skip the case (recorded in the audit), or are fatal with `strict`.
    """
    from ..formats import audit as audit_io

    started = time.perf_counter()
    run_dir = Path(config.run_dir)
    info = load_run(run_dir)
    dataset_root = Path(config.dataset) if config.dataset is not None else _fit_dataset_path(info, run_dir)
    dataset = discover_dataset(dataset_root)
    raise_fatal(dataset, config.strict)
    check_run_matches(info, dataset, run_dir)
    threshold = resolve_threshold(info, config.threshold)
    fit_dataset = is_fit_dataset(info, dataset)

    out_dir = None
    if config.write:
        out_dir = Path(config.out_dir) if config.out_dir is not None else Path("audits") / dataset.name
        audit_io.check_out_dir(out_dir, dataset)

    scorer = CaseScorer(info, run_dir, config.device, config.batch_size, config.perturbations, config.pixel_score,
                        config.structure_prior_mm2)
    audit = Audit(
        dataset={"name": dataset.name, "path": str(dataset.root.resolve()), "layout": dataset.layout,
                 "fit_dataset": fit_dataset},
        run={"path": str(run_dir.resolve()), "method": info.method, "created": info.created,
             "models": [_model_name(info.models, [i]) for i in range(len(info.models))],
             "trained_on": {"name": info.dataset.get("name"), "cases": len(info.dataset.get("cases") or [])}},
        provider=scorer.provider, device=scorer.device, device_reason=scorer.reason, versions=scorer.versions,
        pixel_score=scorer.pixel_score.value, threshold=threshold, perturbations=scorer.perturbations.k,
        out_dir=out_dir,
    )
    declared = dataset.labels.values() if dataset.labels else None
    views = None
    if out_dir is not None:
        from ..report import ViewCollector

        views = ViewCollector()  # thumbnails for the report, gathered while each case is in memory
    seconds = {"read": 0.0, "write": 0.0}
    label_set_failures = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelaudit-read") as pool:
        wait = time.perf_counter()
        refs = [r for r in dataset.cases if config.cases is None or r.case_id in config.cases]
        for ref, case, case_info, problems in _prefetched(refs, declared, track, pool):
            seconds["read"] += time.perf_counter() - wait
            unknown = sorted(set(case_info.label_counts) - set(info.label_map.values)) if case_info else []
            if unknown and not problems:
                label_set_failures += 1
                problems = [Problem(f"label values {unknown} are not among the run's classes "
                                    f"{list(info.label_map.values)} (run fit on {info.dataset.get('name', '?')})",
                                    ref.case_id, ref.label_path)]
            if not problems:
                chosen, routing = route_case(ref.case_id, info.models, fit_dataset, config.out_of_fold)
                stats, noise_map, pred_map = scorer.score_case(case, chosen)
            if problems:
                if config.strict:
                    raise InputError("\n".join(str(p) for p in problems),
                                     hint="without --strict, problem cases are skipped")
                audit.skipped[ref.case_id] = [str(p) for p in problems]
                audit.problems.extend(str(p) for p in problems)
                wait = time.perf_counter()
                continue
            pred_values = info.label_map.decode(pred_map)
            kinds = classify_slices(case.label_slices(), pred_values)
            result = _case_result(ref.case_id, stats, threshold, _model_name(info.models, chosen), routing, audit,
                                  kinds)
            if out_dir is not None:
                t0 = time.perf_counter()
                geometry = case.label.geometry
                result.noise_map, result.pred_map = audit_io.write_case_maps(
                    out_dir, ref, geometry, noise_map, pred_values)
                views.add(ref, case, noise_map, pred_values, stats.noise_score,
                          (stats.label_pixels + stats.pred_pixels) > 0, result.noise_score)
                seconds["write"] += time.perf_counter() - t0
            del case, noise_map, pred_map, pred_values
            wait = time.perf_counter()
    if label_set_failures and not audit.cases:
        raise ModelError(f"{run_dir}: no case of {dataset.root} could be scored: its labels hold values outside "
                         f"the run's classes {list(info.label_map.values)}",
                         hint="this run folder was fit on another label set; pass --model with a run fit on "
                              "this dataset")
    for ref_id, problems in dataset.skipped.items():  # discovery-time problems (missing label, duplicates …)
        audit.skipped.setdefault(ref_id, [str(p) for p in problems])
    audit.views = views.views if views is not None else {}
    audit.cases.sort(key=lambda c: (-c.noise_score, c.case_id))
    audit.slices.sort(key=lambda s: (-s.noise_score, s.case_id, s.slice_index))
    num_slices = sum(c.n_slices for c in audit.cases)
    audit.timings = {"total_s": 0.0, "read_s": seconds["read"], "inference_s": scorer.seconds["inference"],
                     "scoring_s": scorer.seconds["scoring"], "write_s": seconds["write"]}
    if out_dir is not None:
        t0 = time.perf_counter()
        audit.timings["total_s"] = time.perf_counter() - started
        audit_io.write_audit(audit, config.report)
        audit.timings["write_s"] += time.perf_counter() - t0
    audit.timings["total_s"] = time.perf_counter() - started
    audit.timings["slices_per_s"] = num_slices / audit.timings["total_s"] if audit.timings["total_s"] else 0.0
    if out_dir is not None:
        audit_io.write_summary(audit)  # once more, with the final timings
    return audit


def _fit_dataset_path(info: RunInfo, run_dir: Path) -> Path:
    recorded = info.dataset.get("path")
    if not recorded:
        raise ModelError(f"{run_dir / 'run.json'}: records no dataset path", hint="pass the DATASET argument")
    if not Path(recorded).is_dir():
        raise InputError(f"{recorded}: the dataset the run was fit on is no longer there",
                         hint="pass the DATASET argument")
    return Path(recorded)


def _case_result(case_id: str, stats: SliceStats, threshold: dict, model: str, routing: str,
                 audit: Audit, kinds: list[ErrorKind] | None = None) -> CaseScore:
    slice_flags = stats.noise_score >= threshold["slice"]
    kinds = kinds if kinds is not None else [ErrorKind.NONE] * len(stats.noise_score)
    for i in range(len(stats.noise_score)):
        audit.slices.append(SliceScore(case_id, i, float(stats.noise_score[i]), bool(slice_flags[i]),
                                       float(stats.disagreement[i]), float(stats.doubt_fraction[i]),
                                       int(stats.label_pixels[i]), int(stats.pred_pixels[i]), kinds[i].value))
    score = case_noise_score(stats.noise_score)
    # a case is flagged when its score passes the case threshold or any of its slices is flagged: one wrong
    # slice is enough to send the annotation back
    flagged = bool(score >= threshold["case"] or slice_flags.any())
    result = CaseScore(case_id, score, flagged, int(np.argmax(stats.noise_score)),
                       float(dice_disagreement(stats.counts.sum(axis=-1))), len(stats.noise_score),
                       int(slice_flags.sum()), model, routing)
    worst = np.argsort(-stats.noise_score, kind="stable")[:CASE_TOP_SLICES]  # the slices that make the case score
    result.error_kind = dominant_kind([kinds[i] for i in worst], stats.noise_score[worst]).value
    audit.cases.append(result)
    return result


# ----------------------------------------------------------------------------- calibration

QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)


def thresholds_from_audit(audit: Audit, k: float = THRESHOLD_K, floor: float = THRESHOLD_FLOOR) -> dict:
    """Slice and case thresholds from an audit of the (noisy) training data; see THRESHOLD_RULE.

    Only slices with a non-empty ROI (labelled or predicted structure) count: empty slices score 0 by
    definition and would pull the median to 0.
    """
    slice_scores = np.array([s.noise_score for s in audit.slices if s.label_pixels or s.pred_pixels], dtype=float)
    case_scores = np.array([c.noise_score for c in audit.cases], dtype=float)
    slice_threshold = robust_threshold(slice_scores, k, floor)
    if len(case_scores) >= MIN_CASES_FOR_CASE_RULE:
        case_threshold, case_rule = robust_threshold(case_scores, k, floor), THRESHOLD_RULE
    else:
        case_threshold, case_rule = slice_threshold, f"slice threshold (fewer than {MIN_CASES_FOR_CASE_RULE} cases)"

    worst: dict[str, float] = {}
    for s in audit.slices:
        worst[s.case_id] = max(worst.get(s.case_id, 0.0), s.noise_score)

    def quantiles(values: np.ndarray) -> dict:
        return {f"q{int(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES} if values.size else {}

    def spread(values: np.ndarray) -> dict:
        if not values.size:
            return {"median": None, "mad": None}
        median = float(np.median(values))
        return {"median": median, "mad": float(np.median(np.abs(values - median)))}

    return {
        "slice": slice_threshold, "case": case_threshold, "rule": THRESHOLD_RULE, "case_rule": case_rule,
        "meaning": THRESHOLD_MEANING,
        "k": k, "mad_scale": MAD_SCALE, "floor": floor, "pixel_score": audit.pixel_score,
        "perturbations": audit.perturbations,
        "scored": "out-of-fold" if any(c.routing == "out-of-fold" for c in audit.cases) else "in-sample",
        "n_slices": int(slice_scores.size), "n_cases": int(case_scores.size),
        "slice_stats": {**spread(slice_scores), **quantiles(slice_scores)},
        "case_stats": {**spread(case_scores), **quantiles(case_scores)},
        "flagged_slices": int((slice_scores >= slice_threshold).sum()),
        "flagged_cases": int(sum(1 for c in audit.cases if c.noise_score >= case_threshold
                                 or worst.get(c.case_id, 0.0) >= slice_threshold)),
    }


def calibrate_run(run_dir: Path | str, device: str = "auto", track: Track = no_track,
                  batch_size: int = 16) -> dict:
    """Score the run's own training dataset out-of-fold (nothing written) and derive its flagging thresholds.

    Returns the dict `fit` stores as run.json's "threshold": slice, case, rule, k, floor, quantiles …
    """
    info = load_run(run_dir)
    prior = structure_prior(discover_dataset(_fit_dataset_path(info, Path(run_dir))), info.label_map)
    audit = score_dataset(ScoreConfig(run_dir=Path(run_dir), write=False, device=device, batch_size=batch_size,
                                      structure_prior_mm2=prior), track=track)
    return {**thresholds_from_audit(audit), "structure_prior_mm2": prior, "structure_prior_rule":
            f"{STRUCTURE_PRIOR} x the median labelled area of the training slices with structure (A0 of the slice "
            "score)"}


def structure_prior(dataset: Dataset, label_map: LabelMap, prior: float = STRUCTURE_PRIOR) -> float | None:
    """A₀ in mm²: `prior` × the median labelled (non-background) area of the slices of `dataset` that have any.

    Reads labels only (no model); None when no slice has structure.
    """
    from ..errors import ImageReadError
    from ..io.image import read_volume

    areas = []
    for ref in dataset.cases:
        try:
            label = read_volume(ref.label_path)  # the label alone: the images are not needed
        except ImageReadError:
            continue  # scoring reports the case
        stack = label.to_slices()
        counts = (stack != 0).reshape(stack.shape[0], -1).sum(axis=1)
        spacing = label.geometry.in_plane_spacing()
        areas.extend(float(n) * spacing[0] * spacing[1] for n in counts if n > 0)
    return float(prior * np.median(areas)) if areas else None

"""One case's probabilities -> its noise map, prediction and slice stats, whatever produced the probabilities.

A *source* yields a case's mean softmax a few slices at a time, on the case's native grid: the run's ONNX
models (inference.OnnxSource) or probabilities the user brings (sources.GivenSource). The scorer applies the
formulas (formulas.py); everything after it (maps, CSVs, report, gate) does not know which source it was.

Array legend: S slices of one case, b slices of one batch, C classes, H x W the case's native in-plane pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import PixelScore
from ..preprocess import LabelMap
from ..types import AuditRun, Case, Dataset, Routing, Threshold
from .formulas import (REGION_SHARE, SLICE_EPS, SliceStats, concat_stats, given_class_probability, pixel_noise_score,
                       roi_radius, slice_stats)
from ..noise_map import noise_map as noise_map_of
from .ranking import SliceOrder, rank_stats


@dataclass(frozen=True)
class ProbabilityBatch:
    """Slices start:stop of one case: the given label's class indices int64 (b, H, W), the mean softmax float32
    (b, C, H, W), its uncertainty float32 (b, H, W) and, for MCPM runs scored with R, the meta weight (b, H, W)."""

    start: int
    stop: int
    classes: np.ndarray
    prob: np.ndarray
    uncertainty: np.ndarray
    weight: np.ndarray | None = None


@dataclass(frozen=True)
class Route:
    """Which of a source's models or files score one case, the name cases.csv shows, and why (routing).

    parts: the source's own keys (model indices for ONNX runs, probability files for given probabilities).
    """

    parts: tuple[Hashable, ...]
    name: str
    routing: Routing


class ProbabilitySource(Protocol):
    """Where cases' probabilities come from: the one interface of ONNX runs and given probability files."""

    label_map: LabelMap
    pixel_score: PixelScore  # the formula this source is scored with (resolved: the source knows what it has)
    perturbations: int  # passes per model: K for ONNX runs, 1 for a given softmax (uncertainty: its entropy)
    provider: str
    device: str
    reason: str  # why this provider and device
    versions: dict[str, str]
    notes: list[str]
    seconds: dict[str, float]  # "inference" and "scoring", added to as batches are made

    def route(self, case_id: str) -> Route: ...

    def batches(self, case: Case, route: Route) -> Iterator[ProbabilityBatch]: ...


@dataclass(frozen=True)
class ScoringPlan:
    """What one audit scores with, settled before any model is opened (so that a bad --out fails first).

    ranking: the training slices' tables that rank slices (score/ranking.py; None: by the structure score);
    model_path: the run folder or the first probability folder (named in messages, guarded as an input);
    classes / fit_on / label_hint: how messages about label values outside the classes name them.
    """

    dataset: Dataset
    threshold: Threshold
    run: AuditRun
    fit_dataset: bool
    label_map: LabelMap
    open_source: Callable[[], ProbabilitySource]
    structure_prior_mm2: float | None
    ranking: SliceOrder | None
    model_path: Path
    classes: str
    fit_on: str
    label_hint: str
    notes: list[str] = field(default_factory=list)


class CaseScorer:
    """Turns a source's probabilities for one case into its noise map, prediction and slice stats."""

    def __init__(self, source: ProbabilitySource, structure_prior_mm2: float | None = None,
                 ranking: SliceOrder | None = None) -> None:
        self.source = source
        self.ranking = ranking
        self.label_map = source.label_map
        self.pixel_score = source.pixel_score
        self.structure_prior_mm2 = float(structure_prior_mm2) if structure_prior_mm2 else None
        self.seconds = source.seconds

    def prior_pixels(self, in_plane_spacing: tuple[float, float]) -> float:
        """A₀ in pixels of a slice with this spacing (mm); SLICE_EPS for runs calibrated without it."""
        if not self.structure_prior_mm2:
            return SLICE_EPS
        return max(SLICE_EPS, self.structure_prior_mm2 / max(in_plane_spacing[0] * in_plane_spacing[1], 1e-12))

    def score_case(self, case: Case, route: Route) -> tuple[SliceStats, np.ndarray, np.ndarray]:
        """Score one case: (slice stats over its S slices, noise (S, H, W) float32, pred (S, H, W) class indices)."""
        labels = case.label_slices()
        num_slices, native = labels.shape[0], labels.shape[1:]
        radius = roi_radius(case.geometry.in_plane_spacing())
        eps = self.prior_pixels(case.geometry.in_plane_spacing())
        region_share = REGION_SHARE if self.structure_prior_mm2 else None  # R is scored against A₀
        noise_map = np.empty((num_slices, *native), dtype=np.float32)
        pred_map = np.empty((num_slices, *native), dtype=np.uint8 if self.label_map.num_classes <= 256 else np.int32)
        parts = []
        for batch in self.source.batches(case, route):
            t0 = time.perf_counter()
            pred = batch.prob.argmax(axis=1)
            p_given = given_class_probability(batch.prob, batch.classes)
            noise = pixel_noise_score(p_given, batch.uncertainty, self.pixel_score, batch.weight)
            stats = rank_stats(slice_stats(noise, batch.classes, pred, self.label_map.num_classes, radius, eps,
                                           region_share, p_given), self.ranking)
            noise_map[batch.start:batch.stop] = noise_map_of(p_given, stats.noise_score)
            pred_map[batch.start:batch.stop] = pred
            parts.append(stats)
            self.seconds["scoring"] += time.perf_counter() - t0
        return concat_stats(parts), noise_map, pred_map

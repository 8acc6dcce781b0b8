"""Ranking levels of an evaluation: case and slice from the audit's tables, pixel from a bounded sample.

Array legend: pixel inputs are flattened float32 noise scores (N,) and bool truth (N,) (True: the
noisy label differs from the clean one); the ROI is a bool slice stack (S, H, W).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..formats.manifest import Manifest
from ..types import Volume, to_slices
from .metrics import RankingScores, ranking_scores

LEVELS = ("case", "slice", "pixel", "pixel_roi")
LEVEL_HELP = {
    "case": "cases.csv noise_score vs the manifest's corrupted flag",
    "slice": "slices.csv noise_score vs each slice's corrupted flag",
    "pixel": "noise map vs (noisy label != clean label), every pixel",
    "pixel_roi": "as pixel, within the ROI: foreground of the noisy or clean label, "
                 "dilated in-plane by roi_band_px pixels (square neighbourhood)",
}


@dataclass(frozen=True)
class LevelResult:
    """Ranking metrics of one level; `population_*` count every item, `scores` the (sampled) ones used."""

    level: str
    scores: RankingScores
    population_positives: int
    population_total: int

    @property
    def sampled(self) -> bool:
        return self.scores.total < self.population_total


def name_ids(ids: Iterable, limit: int = 10) -> str:
    """Up to `limit` ids, sorted, then how many more."""
    ids = sorted(ids)
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def complete_level(level: str, scores: RankingScores) -> LevelResult:
    """A level scored on every item (no sampling)."""
    return LevelResult(level, scores, scores.positives, scores.total)


def case_level(manifest: Manifest, case_scores: dict[str, float]) -> LevelResult:
    """cases.csv's noise scores against each case's corrupted flag (the ids must match: see evaluate)."""
    case_ids = sorted(manifest.cases)
    return complete_level("case", ranking_scores(np.array([case_scores[c] for c in case_ids]),
                                                 np.array([manifest.cases[c].corrupted for c in case_ids])))


def slice_level(manifest: Manifest, slice_scores: dict[tuple[str, int], float], path: Path) -> LevelResult:
    """slices.csv's noise scores against each slice's corrupted flag; every slice of the manifest, no other."""
    expected = {(c, i): flag for c, truth in manifest.cases.items() for i, flag in truth.slices.items()}
    missing, extra = set(expected) - set(slice_scores), set(slice_scores) - set(expected)
    if missing:
        raise InputError(f"{path}: no score for {len(missing)} slice(s) of the manifest: "
                         + name_ids(f"{c} slice {i}" for c, i in missing),
                         hint="slices.csv needs one row per slice of every case")
    if extra:
        raise InputError(f"{path}: {len(extra)} slice(s) that the manifest does not list: "
                         + name_ids(f"{c} slice {i}" for c, i in extra),
                         hint="the audit and the manifest must slice the same volumes along the same axis")
    keys = sorted(expected)
    scores = ranking_scores(np.array([slice_scores[k] for k in keys]), np.array([expected[k] for k in keys]))
    return complete_level("slice", scores)


def roi_mask(noisy: Volume, clean: Volume, band: int) -> np.ndarray:
    """(S, H, W) bool: foreground of either label, dilated in-plane by `band` pixels (square)."""
    foreground = to_slices((noisy.array != 0) | (clean.array != 0), noisy.geometry)
    if band <= 0 or not foreground.any():
        return foreground
    structure = np.ones((1, 3, 3), dtype=bool)  # no growth across slices: the methods work per slice
    return ndimage.binary_dilation(foreground, structure=structure, iterations=band)


class PixelSample:
    """A uniform sample of at most `capacity` pixels streamed case by case (bottom-k sampling).

    Every pixel gets a random key; the sample is the pixels with the `capacity` smallest keys,
    so memory stays at ~2×capacity whatever the dataset size, and the result depends only on
    the seed and the case order.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.truth: list[np.ndarray] = []
        self.kept = 0
        self.cutoff = np.inf
        self.population_total = 0
        self.population_positives = 0

    def add(self, scores: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> None:
        """Offer pixels: float scores (N,) and bool truth (N,); `rng` draws their keys."""
        self.population_total += scores.size
        self.population_positives += int(truth.sum())
        keys = rng.random(scores.size)
        keep = keys < self.cutoff
        self.keys.append(keys[keep])
        self.scores.append(scores[keep].astype(np.float32, copy=False))
        self.truth.append(truth[keep])
        self.kept += int(keep.sum())
        if self.kept > 2 * self.capacity:
            self._trim()

    def _trim(self) -> None:
        keys, scores, truth = (np.concatenate(x) for x in (self.keys, self.scores, self.truth))
        if keys.size > self.capacity:
            index = np.argpartition(keys, self.capacity - 1)[: self.capacity]
            keys, scores, truth = keys[index], scores[index], truth[index]
            self.cutoff = float(keys.max())
        self.keys, self.scores, self.truth, self.kept = [keys], [scores], [truth], keys.size

    def result(self, level: str) -> LevelResult:
        self._trim()
        return LevelResult(level, ranking_scores(self.scores[0], self.truth[0]),
                           self.population_positives, self.population_total)

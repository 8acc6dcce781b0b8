"""THE flag rule, used by scoring, calibration and `check` alike (numpy only).

A slice is flagged when its noise score reaches the slice threshold; a case when its score reaches the case
threshold or any of its slices is flagged: one wrong slice is enough to send the annotation back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..types import Calibration, Threshold, ThresholdSource
from .formulas import SLICE_RULE

#: Flagging threshold when the run has none calibrated and none is given.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Decision:
    """One case's verdict: flagged, and which of its slices (bool (S,), in slice order)."""

    flagged: bool
    slice_flags: np.ndarray

    @property
    def n_flagged_slices(self) -> int:
        return int(self.slice_flags.sum())


def decide(case_score: float, slice_scores: Sequence[float] | np.ndarray, threshold: Threshold) -> Decision:
    """Apply `threshold` to a case's score and its slice scores (float, (S,))."""
    slice_flags = np.asarray(slice_scores, dtype=np.float64) >= threshold.slice
    return Decision(bool(case_score >= threshold.case or slice_flags.any()), slice_flags)


def resolve_threshold(calibration: Calibration | None, override: float | None) -> Threshold:
    """The thresholds to flag with: the override, else the run's calibration, else the default.

    The one place a threshold is built and validated: an override outside [0, 1] is bad usage (exit 2);
    run.json's calibration was validated when it was read (exit 4).
    """
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise UsageError(f"--threshold {override}: expected a noise score in [0, 1]")
        return Threshold(float(override), float(override), ThresholdSource.OVERRIDE)
    if calibration is not None:
        return Threshold(calibration.slice, calibration.case, ThresholdSource.RUN, calibration)
    return Threshold(DEFAULT_THRESHOLD, DEFAULT_THRESHOLD, ThresholdSource.DEFAULT)


def stale_calibration_note(threshold: Threshold, structure_prior_mm2: float | None) -> str | None:
    """A note for an audit flagged with thresholds calibrated on an earlier slice score, else None."""
    calibration = threshold.calibration
    if threshold.source is not ThresholdSource.RUN or calibration is None or not structure_prior_mm2:
        return None
    if calibration.slice_rule == SLICE_RULE:
        return None
    return ("this model's thresholds were calibrated on an earlier slice score (the structure fraction alone); "
            "today's adds the worst region, so it may flag more slices than calibrated: recalibrate it with "
            "`labelaudit calibrate RUN_DIR` (a calibration folder of --probabilities: score the training data "
            "with --probabilities again), or pass --threshold")

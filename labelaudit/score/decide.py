"""THE flag rule, used by scoring, calibration and `check` alike (numpy only).

A slice is flagged when its noise score reaches the slice threshold: it is worth a look, and `fix` may mend it.
A case is flagged when its score reaches the case threshold or its worst slice reaches the gate threshold: one
clearly wrong slice is enough to send the annotation back. The gate sits above the slice threshold because a
case has many slices, each a chance of a false alarm (score/calibrate.py); without one, it is the slice
threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..types import Calibration, Threshold, ThresholdSource
from .formulas import SLICE_RULE
from .ranking import MIN_SLICES

#: Flagging threshold when the run has none calibrated and none is given.
DEFAULT_THRESHOLD = 0.5
#: The case threshold where none was calibrated on case scores (--threshold, the default, fewer than 10 training
#: cases, a calibration of an earlier case score): a case score (a mean of slice masses, below 1) never reaches
#: it, so the worst slice alone flags the case. A slice-score threshold means nothing on the masses' scale.
NO_CASE_THRESHOLD = 1.0


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
    scores = np.asarray(slice_scores, dtype=np.float64)
    worst = bool(scores.size and scores.max() >= threshold.worst_slice)
    return Decision(bool(case_score >= threshold.case or worst), scores >= threshold.slice)


def has_case_threshold(case: float) -> bool:
    """Whether a case threshold (Threshold.case, Calibration.case) can flag a case by its score."""
    return case < NO_CASE_THRESHOLD


def case_threshold_text(case: float) -> str:
    """`case 0.812`, or the words for no case threshold: what every command prints of it."""
    return f"case {case:.3f}" if has_case_threshold(case) else "no case threshold"


def calibrated_on_today(calibration: Calibration) -> bool:
    """Whether the calibration's thresholds were derived from today's slice and case scores (formulas.SLICE_RULE).

    A calibration without a structure prior (A₀) is: without A₀ the slice score is the structure fraction alone
    and the case score the mean of the 3 worst slice scores, which no later rule changed."""
    return calibration.slice_rule == SLICE_RULE or not calibration.structure_prior_mm2


def resolve_threshold(calibration: Calibration | None, override: float | None) -> Threshold:
    """The thresholds to flag with: the override, else the run's calibration, else the default.

    The one place a threshold is built and validated: an override outside [0, 1] is bad usage (exit 2);
    run.json's calibration was validated when it was read (exit 4).
    """
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise UsageError(f"--threshold {override}: expected a noise score in [0, 1]")
        return Threshold(float(override), NO_CASE_THRESHOLD, ThresholdSource.OVERRIDE)
    if calibration is not None:
        case = calibration.case if calibrated_on_today(calibration) else NO_CASE_THRESHOLD
        return Threshold(calibration.slice, case, ThresholdSource.RUN, calibration, calibration.gate)
    return Threshold(DEFAULT_THRESHOLD, NO_CASE_THRESHOLD, ThresholdSource.DEFAULT)


def stale_calibration_note(threshold: Threshold, structure_prior_mm2: float | None) -> str | None:
    """A note for an audit flagged with thresholds calibrated on an earlier slice score, without a gate or without
    the slice ranking's tables, else None."""
    calibration = threshold.calibration
    if threshold.source is not ThresholdSource.RUN or calibration is None or not structure_prior_mm2:
        return None
    if calibrated_on_today(calibration):
        if calibration.gate is not None:
            if calibration.slice_ranking is None and calibration.n_slices >= MIN_SLICES:
                return ("this model's calibration has no slice ranking tables (it predates them): slices are "
                        "ranked by the structure score alone, not together with softmin; recalibrate it with "
                        "`labelaudit calibrate RUN_DIR` (a calibration folder of --probabilities: score the "
                        "training data with --probabilities again)")
            return None
        return ("this model's thresholds were calibrated before cases had a gate of their own: a case is flagged "
                "when any slice reaches the slice threshold, which flags more clean cases than today's rule; "
                "recalibrate it with `labelaudit calibrate RUN_DIR` (a calibration folder of --probabilities: "
                "score the training data with --probabilities again), or pass --threshold")
    earlier = calibration.slice_rule or "the structure fraction alone"
    return (f"this model's thresholds were calibrated on an earlier noise score ({earlier}); today's is "
            f"{SLICE_RULE}, so its flags may not match the calibrated rate and its case threshold is not used "
            "(the worst slice alone flags a case): recalibrate it with "
            "`labelaudit calibrate RUN_DIR` (a calibration folder of --probabilities: score the training data "
            "with --probabilities again), or pass --threshold")


def saturated_calibration_note(calibration: Calibration | None) -> str | None:
    """A warning when calibration put the slice threshold at its ceiling of 1, else None.

    The median + k·MAD rule needs a clean majority of training slices with low scores; when the model cannot
    segment the structure well (small or low-contrast structures, too short a fit), most slices score high and
    spread widely, the rule overshoots 1 and nothing is ever flagged: `check` would pass every case in silence.
    """
    if calibration is None or calibration.slice < 1.0:
        return None
    stats = calibration.slice_stats
    spread = f" (median {stats.median:.2f}, MAD {stats.mad:.2f})" if stats.known else ""
    return (f"the calibrated slice threshold is 1: the training slices' noise scores{spread} are too high and "
            "too spread for a clean majority to stand out, so no slice is flagged and `check` passes every case; "
            "the model does not segment this structure well enough to audit it. Bring a stronger model's "
            "out-of-fold probabilities (`--probabilities`, e.g. nnU-Net's cross-validation run with --npz), fit "
            "longer or wider only where this run's budget was short (more --epochs did not lift the ceiling on "
            "small lesions), or flag at an explicit --threshold chosen on cases you have verified")

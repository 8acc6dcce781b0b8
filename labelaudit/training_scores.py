"""What calibration keeps of the training slices' scores, as run.json stores it: their spread (the thresholds'
median and MAD, score/calibrate.py) and the tables that rank slices by two scores at once (score/ranking.py).
No labelaudit imports: the calibration that every stage reads holds them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SliceRanking:
    """The training slices' scores that rank new slices by two scores at once: run.json's "slice_ranking"
    (score/ranking.py). Each tuple is sorted ascending, in [0, 1], of one length (quantiles where the training
    data had more slices than score/ranking.py keeps)."""

    rule: str
    structure: tuple[float, ...]  # S_i, the slice score the thresholds are calibrated on
    softmin: tuple[float, ...]  # Q_i
    blended: tuple[float, ...]  # the mean of each training slice's two empirical CDF values

    def to_json(self) -> dict:
        return {"rule": self.rule, "structure": list(self.structure), "softmin": list(self.softmin),
                "blended": list(self.blended)}


@dataclass(frozen=True)
class ScoreSpread:
    """The spread of the training scores a threshold was calibrated on: run.json's "slice_stats" / "case_stats".

    median and mad are None when there were no scores; quantiles maps "q50" … "q99" to the score there."""

    median: float | None = None
    mad: float | None = None
    quantiles: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, values: np.ndarray, quantiles: tuple[float, ...] = ()) -> ScoreSpread:
        values = np.asarray(values, dtype=np.float64)
        if not values.size:
            return cls()
        median = float(np.median(values))
        return cls(median, float(np.median(np.abs(values - median))),
                   {f"q{int(q * 100)}": float(np.quantile(values, q)) for q in quantiles})

    @property
    def known(self) -> bool:
        """Whether the median and MAD were stored (runs calibrated before they were, or on no scores: not)."""
        return self.median is not None and self.mad is not None

    def to_json(self) -> dict:
        return {"median": self.median, "mad": self.mad, **self.quantiles}

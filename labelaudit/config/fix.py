"""`labelaudit fix` and the `_fixed` map of `score`: FixMode, FixParams, FixConfig (stdlib only)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import UsageError


class FixMode(str, Enum):
    """What `fix` puts in a region judged wrong."""

    REPLACE = "replace"  # the robust prediction
    IGNORE = "ignore"  # nnU-Net v2's ignore label (the highest label value + 1, declared as "ignore")


@dataclass(frozen=True)
class FixParams:
    """The rule that judges a region wrong (fix/rule.py): on a flagged slice, a region of the disagreement
    between label and prediction (diagnosis.find_regions) whose mean noise score reaches `region_score`.

    region_score: the mean disagreement (1 − p̄ of the given label) a region must reach; chosen on the
    suite's development half (docs/decisions.md).
    min_agreement: a class whose prediction agrees with the training labels less than this (Dice over the
    training audit, run.json's threshold.class_agreement) is never mended: the model does not segment it, so
    its prediction would only erase it (chosen on the suite's development half, docs/decisions.md).
    """

    region_score: float = 0.8
    min_agreement: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.region_score <= 1.0 or math.isnan(self.region_score):
            raise UsageError(f"--region-score {self.region_score}: expected a noise score in [0, 1]")
        if not 0.0 <= self.min_agreement <= 1.0 or math.isnan(self.min_agreement):
            raise UsageError(f"--min-agreement {self.min_agreement}: expected a Dice in [0, 1]")

    def to_json(self) -> dict:
        return {"region_score": self.region_score, "min_agreement": self.min_agreement}


@dataclass(frozen=True)
class FixConfig:
    """What `fix` does: a copy of the dataset that `audit_dir` scored, in `out`, its wrong regions changed."""

    audit_dir: Path
    out: Path
    mode: FixMode = FixMode.REPLACE
    params: FixParams = FixParams()

    def __post_init__(self) -> None:
        object.__setattr__(self, "audit_dir", Path(self.audit_dir))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "mode", FixMode(self.mode))

"""Scoring and the gate: the pixel-score formulas, ScoreConfig and CheckConfig (stdlib only)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class PixelScore(str, Enum):
    """Candidate per-pixel noise scores (score/formulas.py)."""

    CONFIDENT_DISAGREEMENT = "confident_disagreement"  # (1 - p̄_y)(1 - ũ)
    DISAGREEMENT = "disagreement"  # 1 - p̄_y
    META_DISAGREEMENT = "meta_disagreement"  # (1 - R)(1 - p̄_y), MCPM runs only (algorithms.md §6.3)
    META_WEIGHT = "meta_weight"  # 1 - R, MCPM runs only (for comparisons)

    @property
    def needs_meta_weight(self) -> bool:
        return self in (PixelScore.META_DISAGREEMENT, PixelScore.META_WEIGHT)

@dataclass(frozen=True)
class ScoreConfig:
    """What `score` (and `check`, and fit's calibration) asks for.

    run_dir: the run folder. dataset: None scores the dataset in run.json. out_dir: None writes to
    audits/<dataset-name> (relative to the working directory); ignored when `write` is False.
    perturbations: K override (None: the run's K). threshold: overrides the run's slice and case
    thresholds. pixel_score: None scores with the formula the run was calibrated with. out_of_fold: False
    scores every case with the ensemble of all models (in-sample on the fit dataset; for comparisons).
    report: the HTML page (None: out_dir/report.html when writing). probabilities: score with these folders
    of probabilities (score/sources.py) instead of a run's ONNX graphs; run_dir is then their calibration
    folder, or None.
    """

    run_dir: Path | None
    dataset: Path | None = None
    out_dir: Path | None = None
    write: bool = True
    report: Path | None = None
    device: str = "auto"
    batch_size: int = 16
    perturbations: int | None = None
    threshold: float | None = None
    pixel_score: PixelScore | None = None
    out_of_fold: bool = True
    strict: bool = False
    cases: tuple[str, ...] | None = None  # score only these case ids (check --cache: the new or changed ones)
    structure_prior_mm2: float | None = None  # A₀ of the slice score (None: the run's calibrated value)
    probabilities: tuple[Path, ...] = ()  # --probabilities SRC, once per folder

@dataclass(frozen=True)
class CheckConfig:
    """What `labelaudit check` asks for.

    threshold: overrides the run's calibrated slice and case thresholds (a noise score in [0, 1]).
    max_flagged: the gate still passes with up to this many flagged cases. cache_dir: reuse the scores of
    cases whose image, label and model are unchanged. probabilities: as ScoreConfig's (run_dir: their
    calibration folder, or None).
    """

    incoming: Path
    run_dir: Path | None
    threshold: float | None = None
    max_flagged: int = 0
    cache_dir: Path | None = None
    device: str = "auto"
    batch_size: int = 16
    probabilities: tuple[Path, ...] = ()

"""Typed values that cross module boundaries: geometry travels with voxels.

Array legend: arrays are in numpy order, i.e. the reverse of ITK's (x, y, z):
a 3D array has shape (Z, Y, X), a 2D one (Y, X). A multi-channel image is
a tuple of single-channel volumes on one grid. A *slice stack* moves the
through-plane axis to the front: (S, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from .training_scores import ScoreSpread, SliceRanking

#: Default tolerances for comparing grids: a NIfTI round trip moves the origin by ~4e-7 mm.
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class Geometry:
    """Where the voxels sit in patient space, as SimpleITK reports it (ITK axis order)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major ndim x ndim matrix

    @property
    def ndim(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy array shape of a volume on this grid."""
        return tuple(reversed(self.size))

    def differences(
        self,
        other: Geometry,
        spacing_rtol: float = SPACING_RTOL,
        origin_atol: float = ORIGIN_ATOL_MM,
        direction_atol: float = DIRECTION_ATOL,
    ) -> list[str]:
        """Describe how `other` differs from this grid beyond tolerance; empty when they match."""
        if self.ndim != other.ndim:
            return [f"dimension {self.ndim}D vs {other.ndim}D"]
        found = []
        if self.size != other.size:
            found.append(f"size {_fmt(self.size)} vs {_fmt(other.size)}")
        if not all(math.isclose(a, b, rel_tol=spacing_rtol) for a, b in zip(self.spacing, other.spacing)):
            found.append(f"spacing {_fmt_pair(self.spacing, other.spacing)} mm")
        if not all(abs(a - b) <= origin_atol for a, b in zip(self.origin, other.origin)):
            found.append(f"origin {_fmt_pair(self.origin, other.origin)} mm")
        if not all(abs(a - b) <= direction_atol for a, b in zip(self.direction, other.direction)):
            found.append(f"direction {_fmt_pair(self.direction, other.direction)}")
        return found

    def slicing_axis(self) -> int:
        """The numpy axis that 2D slices are taken along (interface.md).

        The ITK axis with the largest spacing; on a tie the last ITK axis, which is
        numpy axis 0. 2D grids have no through-plane axis and return -1.
        """
        if self.ndim < 3:
            return -1
        largest = max(self.spacing)
        itk_axis = max(i for i, s in enumerate(self.spacing) if math.isclose(s, largest, rel_tol=SPACING_RTOL))
        return self.ndim - 1 - itk_axis

    def in_plane_spacing(self) -> tuple[float, float]:
        """Pixel spacing (rows, columns) in mm of the slices taken along `slicing_axis`."""
        numpy_spacing = tuple(reversed(self.spacing))
        if self.ndim < 3:
            return (numpy_spacing[0], numpy_spacing[1])
        axis = self.slicing_axis()
        rest = [s for i, s in enumerate(numpy_spacing) if i != axis]
        return (rest[0], rest[1])

    def to_json(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_json(cls, data: dict) -> Geometry:
        return cls(tuple(int(v) for v in data["size"]), tuple(float(v) for v in data["spacing"]),
                   tuple(float(v) for v in data["origin"]), tuple(float(v) for v in data["direction"]))


def _fmt(values: tuple, digits: int = 6) -> str:
    return "×".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def _fmt_pair(a: tuple, b: tuple) -> str:
    """`a vs b` with just enough digits that the two differ on screen (1000 vs 1000.002, not 1000 vs 1000)."""
    for digits in range(6, 13):
        left, right = _fmt(a, digits), _fmt(b, digits)
        if left != right:
            break
    return f"{left} vs {right}"


@dataclass
class Volume:
    """An array in numpy order plus the grid it lives on."""

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(f"array shape {self.array.shape} does not match geometry {self.geometry.shape}")

    def to_slices(self) -> np.ndarray:
        """The volume as a slice stack (S, H, W) along the slicing axis (a view, not a copy)."""
        return to_slices(self.array, self.geometry)


def to_slices(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Move the slicing axis of `array` (numpy order, shape `geometry.shape`) to the front: (S, H, W)."""
    if geometry.ndim < 3:
        return array[np.newaxis]
    return np.moveaxis(array, geometry.slicing_axis(), 0)


def from_slices(stack: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Inverse of `to_slices`: a (S, H, W) stack back to the array shape of `geometry`."""
    if geometry.ndim < 3:
        return stack[0]
    return np.moveaxis(stack, 0, geometry.slicing_axis())


@dataclass(frozen=True)
class CaseRef:
    """The files of one case, before anything is read."""

    case_id: str
    image_paths: tuple[Path, ...]  # one per channel, in channel order
    label_path: Path | None

    @property
    def files(self) -> tuple[Path, ...]:
        return self.image_paths + ((self.label_path,) if self.label_path else ())


@dataclass
class Case:
    """One case read into memory: image channels and label on one grid."""

    case_id: str
    channels: tuple[Volume, ...]
    label: Volume | None

    @property
    def geometry(self) -> Geometry:
        return self.label.geometry if self.label is not None else self.channels[0].geometry

    def image_slices(self) -> np.ndarray:
        """float32 image as (S, C, H, W) along the slicing axis."""
        return np.stack([c.to_slices() for c in self.channels], axis=1).astype(np.float32, copy=False)

    def label_slices(self) -> np.ndarray:
        """The label as (S, H, W) along the slicing axis."""
        if self.label is None:
            raise ValueError(f"case {self.case_id} has no label")
        return self.label.to_slices()


@dataclass(frozen=True)
class Problem:
    """Something wrong with a dataset, a case or a file; `fatal` problems stop the dataset."""

    message: str
    case_id: str | None = None
    path: Path | None = None
    fatal: bool = False

    def __str__(self) -> str:
        where = f"case {self.case_id}: " if self.case_id else ""
        at = f"{self.path}: " if self.path else ""
        return f"{where}{at}{self.message}"


@dataclass
class Dataset:
    """A discovered dataset folder: its layout, declared labels and case references."""

    root: Path
    name: str
    layout: str  # "nnunet" or "paired"
    file_ending: str
    labels: dict[str, int] | None  # from dataset.json, name -> value
    channel_names: dict[str, str] | None
    cases: list[CaseRef] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: dict[str, list[Problem]] = field(default_factory=dict)  # case_id -> why

    @property
    def num_channels(self) -> int:
        return len(self.cases[0].image_paths) if self.cases else 1


# ----------------------------------------------------------------------------- audit results


class Routing(str, Enum):
    """Which models scored a case (score/routing.py)."""

    OUT_OF_FOLD = "out-of-fold"  # the fold model(s) that held the case out
    IN_SAMPLE = "in-sample"  # a case of the fit dataset that no model held out: the ensemble
    NEW_DATA = "new-data"  # any case of other data: the ensemble


@dataclass(frozen=True)
class Calibration:
    """How fit derived its thresholds from the training data's scores: run.json's "threshold" (score/calibrate.py)."""

    slice: float
    case: float
    rule: str = ""
    case_rule: str = ""
    meaning: str = ""
    k: float = 3.0
    mad_scale: float = 1.4826
    floor: float = 0.0
    pixel_score: str | None = None  # the PixelScore value the calibration scored with
    perturbations: int | None = None
    scored: str = ""  # out-of-fold or in-sample
    n_slices: int = 0
    n_cases: int = 0
    slice_stats: ScoreSpread = field(default_factory=ScoreSpread)
    case_stats: ScoreSpread = field(default_factory=ScoreSpread)
    flagged_slices: int = 0
    flagged_cases: int = 0
    structure_prior_mm2: float | None = None  # A₀ of the slice score
    structure_prior_rule: str | None = None
    slice_rule: str | None = None  # the slice score the thresholds were calibrated on (formulas.SLICE_RULE)
    gate: float | None = None  # the worst-slice score that flags a case; None (earlier runs): the slice threshold
    gate_rule: str | None = None
    gate_k: float | None = None  # the gate's MADs (None: earlier runs, whose gate_rule alone says it)
    # label value -> Dice of the prediction against the training labels, over the whole training audit
    class_agreement: dict[int, float] | None = None
    # how slices are ranked by S_i and Q_i together (None: earlier runs, ranked by S_i alone)
    slice_ranking: SliceRanking | None = None

    def to_json(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__
                if not (name in OPTIONAL_CALIBRATION_FIELDS and getattr(self, name) is None)}
        data["slice_stats"], data["case_stats"] = self.slice_stats.to_json(), self.case_stats.to_json()
        if self.slice_ranking is not None:
            data["slice_ranking"] = self.slice_ranking.to_json()
        if self.class_agreement is not None:  # JSON keys are text
            data["class_agreement"] = {str(v): d for v, d in sorted(self.class_agreement.items())}
        return data


OPTIONAL_CALIBRATION_FIELDS = ("structure_prior_mm2", "structure_prior_rule", "slice_rule", "gate", "gate_rule",
                               "gate_k", "class_agreement", "slice_ranking")


class ThresholdSource(str, Enum):
    OVERRIDE = "override"
    RUN = "run.json"
    DEFAULT = "default (the run has no calibrated threshold)"


@dataclass(frozen=True)
class Threshold:
    """The noise scores at which annotations are flagged, and where they come from (score/decide.py).

    slice: a slice is flagged (to review, and for `fix`); case: a case is flagged by its score; gate: a case is
    flagged by its worst slice (None: at `slice`, as before gates were calibrated). Built once
    (score/decide.resolve_threshold), already validated: all in [0, 1].
    """

    slice: float
    case: float
    source: ThresholdSource
    calibration: Calibration | None = None
    gate: float | None = None

    @property
    def worst_slice(self) -> float:
        """The worst-slice score at which a case is flagged."""
        return self.slice if self.gate is None else self.gate

    def to_json(self) -> dict:
        base = self.calibration.to_json() if self.calibration is not None else {}
        ranking = base.pop("slice_ranking", None)  # its tables stay in run.json: summaries name its rule
        if ranking is not None:
            base["slice_ranking_rule"] = ranking["rule"]
        gate = {"gate": self.gate} if self.gate is not None else {}
        return {**base, "slice": self.slice, "case": self.case, **gate, "source": self.source.value}


@dataclass
class SliceScore:
    case_id: str
    slice_index: int  # along `axis`
    noise_score: float
    flagged: bool
    disagreement: float
    doubt_fraction: float
    label_pixels: int
    pred_pixels: int
    error_kind: str = "none"  # diagnosis.ErrorKind value: label vs robust prediction on this slice
    axis: int = 0  # the numpy axis of the case's array that slice_index counts along (interface.md)
    structure_score: float | None = None  # S_i (formulas.py); None when read back from an earlier audit
    softmin: float | None = None  # Q_i


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
    routing: str  # a Routing value
    noise_map: str | None = None  # path relative to the audit folder
    pred_map: str | None = None
    error_kind: str = "none"  # the dominant kind over the slices that make the case score
    axis: int = 0


@dataclass(frozen=True)
class AuditDataset:
    """The dataset an audit scored."""

    name: str
    path: str
    layout: str
    fit_dataset: bool

    def to_json(self) -> dict:
        return {"name": self.name, "path": self.path, "layout": self.layout, "fit_dataset": self.fit_dataset}


@dataclass(frozen=True)
class AuditRun:
    """The run folder an audit scored with (or the probabilities it was given: `source` describes them)."""

    path: str
    method: str
    created: str
    models: tuple[str, ...]
    trained_on: str  # the fit dataset's name
    trained_cases: int
    source: str = ""  # score --probabilities: where the probabilities came from and how they were combined

    def to_json(self) -> dict:
        given = {"source": self.source} if self.source else {}
        return {"path": self.path, "method": self.method, "created": self.created, "models": list(self.models),
                "trained_on": {"name": self.trained_on, "cases": self.trained_cases}, **given}


@dataclass
class Audit:
    """What score_dataset returns; `cases` and `slices` are sorted by noise score, highest first."""

    dataset: AuditDataset
    run: AuditRun
    provider: str
    device: str
    device_reason: str
    pixel_score: str
    threshold: Threshold
    cases: list[CaseScore] = field(default_factory=list)
    slices: list[SliceScore] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. an overridden formula)
    class_names: dict[int, str] = field(default_factory=dict)  # label value -> name, from dataset.json
    timings: dict[str, float] = field(default_factory=dict)
    perturbations: int = 1
    out_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    views: dict = field(default_factory=dict)  # case id -> report.CaseView (files, thumbnails), when writing
    # label value -> [2 |label ∩ prediction|, |label| + |prediction|] in pixels, summed over the scored cases
    class_counts: dict[int, list[int]] = field(default_factory=dict)

    @property
    def flagged_cases(self) -> list[CaseScore]:
        return [c for c in self.cases if c.flagged]

    @property
    def flagged_slices(self) -> list[SliceScore]:
        return [s for s in self.slices if s.flagged]

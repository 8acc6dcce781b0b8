"""The likely kind of error on a slice, from comparing the given label with the robust prediction.

Array legend: H x W one slice; S slices of one case. Label and prediction hold label *values* (the files'
integers, not class indices); 0 is background.

Every pixel where label and prediction differ is attributed to exactly one of five masses:

    missing   in a predicted component the label (almost) does not touch  -> the label lacks a structure
    spurious  in a labelled component the prediction (almost) does not touch -> the label has an extra one
    swapped   foreground in both but of another class, in a labelled component that the prediction gives
              mostly to other classes                                     -> wrong class (multi-class)
    border    foreground in both but of another class elsewhere: the border between two classes moved
    extra     other label-only foreground (the label reaches too far)
    lacking   other prediction-only foreground (the label stops short)

The largest of missing, spurious, swapped and the boundary mass (extra + lacking + border) names the kind;
within the last one, a one-sided boundary error is over- or under-segmentation and a two-sided one (a border
between classes counts half to each side) a shifted boundary. A slice whose
differences are small against the structure (`ErrorKindParams.tolerance`) is `none`.

numpy plus scipy.ndimage's connected components (scipy is a base dependency, used by scoring too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import ndimage


class ErrorKind(str, Enum):
    """What is likely wrong with a slice's label; the value is the slices.csv `error_kind` token."""

    NONE = "none"
    OVER = "over_segmentation"  # the label covers more than the structure
    UNDER = "under_segmentation"  # the label covers less than the structure
    MISSING = "missing_structure"  # the prediction finds a structure the label does not have
    SPURIOUS = "spurious_structure"  # the label has a structure the prediction does not support
    SHIFTED = "shifted_boundary"  # the boundary is displaced: too far on one side, short on the other
    WRONG_CLASS = "wrong_class"  # the right region with another class's value (multi-class)

    @property
    def label(self) -> str:
        """The words shown in the report."""
        return KIND_LABELS[self]


KIND_LABELS = {
    ErrorKind.NONE: "none",
    ErrorKind.OVER: "over-segmentation",
    ErrorKind.UNDER: "under-segmentation",
    ErrorKind.MISSING: "missing structure",
    ErrorKind.SPURIOUS: "spurious structure",
    ErrorKind.SHIFTED: "shifted boundary",
    ErrorKind.WRONG_CLASS: "wrong class",
}

#: One line per kind, for the report's legend and the docs.
KIND_HELP = {
    ErrorKind.OVER: "the label reaches beyond the structure the model sees",
    ErrorKind.UNDER: "the label stops short of the structure the model sees",
    ErrorKind.MISSING: "the model sees a structure the label does not have",
    ErrorKind.SPURIOUS: "the label has a structure the model does not support",
    ErrorKind.SHIFTED: "label and model outline the structure at displaced positions",
    ErrorKind.WRONG_CLASS: "the region is labelled with another class",
    ErrorKind.NONE: "label and model agree up to the tolerance",
}

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class ErrorKindParams:
    """Thresholds of the classification.

    tolerance: differences up to this fraction of the structure (label ∪ prediction foreground) are `none`.
    min_pixels: differences of fewer pixels are `none` (a boundary pixel or two is not an error).
    match_overlap: a component whose overlap with the other mask's foreground is below this fraction of its
        area counts as unmatched (missing or spurious).
    one_sided: extra/(extra + lacking) at or above this is over-segmentation, at or below 1 - this under-.
    swap_share: a labelled component of one class whose pixels the prediction gives to other classes at
        this fraction or more is a wrong-class component.
    """

    tolerance: float = 0.1
    min_pixels: int = 4
    match_overlap: float = 0.1
    one_sided: float = 0.75
    swap_share: float = 0.5


@dataclass(frozen=True)
class KindMasses:
    """Pixel counts behind a classification (see the module docstring)."""

    missing: int
    spurious: int
    swapped: int
    border: int
    extra: int
    lacking: int
    structure: int  # |label foreground ∪ prediction foreground|

    @property
    def differing(self) -> int:
        return self.missing + self.spurious + self.swapped + self.border + self.extra + self.lacking


def _unmatched(mask: np.ndarray, other: np.ndarray, match_overlap: float) -> np.ndarray:
    """Pixels of the components of `mask` whose overlap with `other` is below `match_overlap` of their area."""
    components, count = ndimage.label(mask, structure=_FOUR_CONNECTED)
    if count == 0:
        return np.zeros_like(mask)
    area = np.bincount(components.ravel(), minlength=count + 1)
    overlap = np.bincount(components.ravel(), weights=other.ravel(), minlength=count + 1)
    lonely = overlap < match_overlap * area
    lonely[0] = False
    return lonely[components]


def kind_masses(label: np.ndarray, pred: np.ndarray, params: ErrorKindParams = ErrorKindParams()) -> KindMasses:
    """Attribute every differing pixel of one slice: label, pred integer (H, W) label values -> KindMasses."""
    if label.shape != pred.shape:
        raise ValueError(f"label shape {label.shape} differs from prediction shape {pred.shape}")
    label_fg, pred_fg = label != 0, pred != 0
    missing = _unmatched(pred_fg, label_fg, params.match_overlap) & ~label_fg
    spurious = _unmatched(label_fg, pred_fg, params.match_overlap) & ~pred_fg
    other_class = label_fg & pred_fg & (label != pred)
    swapped = _swapped_components(label, other_class, params.swap_share) if other_class.any() else other_class
    extra = label_fg & ~pred_fg & ~spurious
    lacking = pred_fg & ~label_fg & ~missing
    border = other_class & ~swapped
    return KindMasses(int(missing.sum()), int(spurious.sum()), int(swapped.sum()), int(border.sum()),
                      int(extra.sum()), int(lacking.sum()), int((label_fg | pred_fg).sum()))


def _swapped_components(label: np.ndarray, other_class: np.ndarray, swap_share: float) -> np.ndarray:
    """Pixels of `other_class` in labelled components (per class) that are at least `swap_share` other-class."""
    swapped = np.zeros_like(other_class)
    for value in np.unique(label[other_class]):
        components, count = ndimage.label(label == value, structure=_FOUR_CONNECTED)
        area = np.bincount(components.ravel(), minlength=count + 1)
        changed = np.bincount(components.ravel(), weights=other_class.ravel(), minlength=count + 1)
        whole = changed >= swap_share * area
        whole[0] = False
        swapped |= whole[components] & other_class
    return swapped


def kind_from_masses(masses: KindMasses, params: ErrorKindParams = ErrorKindParams()) -> ErrorKind:
    """The kind that explains most of the differing pixels (see the module docstring)."""
    differing = masses.differing
    if differing < params.min_pixels or differing <= params.tolerance * masses.structure:
        return ErrorKind.NONE
    boundary = masses.extra + masses.lacking + masses.border
    # ties go to the more specific finding, in this order
    ranked = [(masses.missing, ErrorKind.MISSING), (masses.spurious, ErrorKind.SPURIOUS),
              (masses.swapped, ErrorKind.WRONG_CLASS), (boundary, None)]
    best, kind = max(ranked, key=lambda item: item[0])
    if kind is not None:
        return kind
    share = (masses.extra + masses.border / 2) / boundary
    if share >= params.one_sided:
        return ErrorKind.OVER
    if share <= 1.0 - params.one_sided:
        return ErrorKind.UNDER
    return ErrorKind.SHIFTED


def classify_slice(label: np.ndarray, pred: np.ndarray, params: ErrorKindParams = ErrorKindParams()) -> ErrorKind:
    """The likely kind of error of one slice: label, pred integer (H, W) label values, 0 = background."""
    return kind_from_masses(kind_masses(label, pred, params), params)


def classify_slices(label: np.ndarray, pred: np.ndarray,
                    params: ErrorKindParams = ErrorKindParams()) -> list[ErrorKind]:
    """classify_slice over a stack: label, pred integer (S, H, W) -> S kinds. Identical slices cost one compare."""
    if label.shape != pred.shape:
        raise ValueError(f"label shape {label.shape} differs from prediction shape {pred.shape}")
    kinds = []
    for y, p in zip(label, pred):
        kinds.append(ErrorKind.NONE if np.array_equal(y, p) else classify_slice(y, p, params))
    return kinds


def dominant_kind(kinds: Iterable[ErrorKind | str], scores: Iterable[float]) -> ErrorKind:
    """The kind with the largest total noise score among `kinds` (ignoring none); none when all are none.

    Used per case over its worst slices (the ones that make the case score).
    """
    totals: dict[ErrorKind, float] = {}
    for kind, score in zip(kinds, scores):
        kind = ErrorKind(kind)
        if kind is not ErrorKind.NONE:
            totals[kind] = totals.get(kind, 0.0) + float(score)
    if not totals:
        return ErrorKind.NONE
    return max(totals, key=lambda k: (totals[k], -list(ErrorKind).index(k)))

"""The kinds of label error, their parameters, and the pixel masses that name one.

Array legend: H x W one slice. Label and prediction hold label *values* (the files' integers, not class
indices); 0 is background.

Every pixel where label and prediction differ is attributed to one mass (`KindMasses`). For a region of class
c (regions.py says which class a region belongs to):

    missing   predicted c, in a predicted structure of c that the label does not touch
              (or almost: `match_overlap`)
    spurious  labelled c over background, in a labelled structure of c that the prediction does not touch
              (or almost)
    swapped   labelled c over another class, in a structure the prediction does not support as c, or over
              a whole predicted structure of the other class that the label gives to c: a wrong class
    border    labelled c over another class side by side: the border between the two classes moved
    extra     the other labelled-c pixels: the label reaches too far
    lacking   the other predicted-c pixels: the label stops short

`kind_masses` attributes a whole slice the same way, every class at once (there, every other-class pixel that
is not swapped is border).

`kind_from_masses` names the kind: the largest of missing, spurious, swapped and the boundary mass
(extra + lacking + border). Within the boundary mass, a one-sided boundary is over- or under-segmentation and
a two-sided one a shifted boundary; a border pixel counts half to each side.
"""

from __future__ import annotations

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


#: The words the report shows for each kind.
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

    tolerance_px: differences up to this many pixels per outline pixel (every border between two values
        counted once, label's and prediction's averaged) are `none` unless a region is missing or spurious;
        below 1 px.
    min_pixels: differences of fewer pixels are `none` (a boundary pixel or two is not an error), and regions
        of fewer pixels are left out.
    match_overlap: a component whose overlap with the other mask's foreground is below this fraction of its
        area counts as unmatched (missing or spurious); one that holds more has a wrong outline (an eroded
        thin structure keeps a few pixels of each piece).
    one_sided: extra / (extra + lacking) at or above this is over-segmentation, at or below 1 - this
        under-segmentation; the same bounds decide the sides of a structure's boundary regions (shifted) and
        of a class's (missing pieces), see regions.py.
    swap_share: a labelled component of one class whose pixels the prediction gives to other classes at
        this fraction or more is a wrong-class component.
    swap_keep: a predicted component of one class that the label gives to another class at swap_share or more
        and keeps below this fraction as its own is a wrong-class component too (regions.py; a few pixels of
        a neighbouring component of the class must not make it an over-segmentation of the other class).
    noise_floor: with a noise map, a region speaks for its slice's kind by its pixels' disagreement
        1 - p̄_y (the map divided by its slice's score) above this, summed (see docs/decisions.md).
    """

    tolerance_px: float = 0.75
    min_pixels: int = 4
    match_overlap: float = 0.01
    one_sided: float = 0.75
    swap_share: float = 0.5
    swap_keep: float = 0.1
    noise_floor: float = 0.8


@dataclass(frozen=True)
class KindMasses:
    """Pixel counts behind a classification (see the module docstring)."""

    missing: int
    spurious: int
    swapped: int
    border: int
    extra: int
    lacking: int
    outline: float  # border length between values (`_outline`), label's and prediction's averaged

    @property
    def differing(self) -> int:
        return self.missing + self.spurious + self.swapped + self.border + self.extra + self.lacking


def unmatched(mask: np.ndarray, other: np.ndarray, match_overlap: float) -> np.ndarray:
    """The pixels of the 4-connected components of `mask` whose overlap with `other` is below `match_overlap`
    of their area: mask, other bool (H, W) -> bool (H, W)."""
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
    missing = unmatched(pred_fg, label_fg, params.match_overlap) & ~label_fg
    spurious = unmatched(label_fg, pred_fg, params.match_overlap) & ~pred_fg
    other_class = label_fg & pred_fg & (label != pred)
    swapped = _swapped_components(label, other_class, params.swap_share) if other_class.any() else other_class
    extra = label_fg & ~pred_fg & ~spurious
    lacking = pred_fg & ~label_fg & ~missing
    border = other_class & ~swapped
    return KindMasses(
        missing=int(missing.sum()),
        spurious=int(spurious.sum()),
        swapped=int(swapped.sum()),
        border=int(border.sum()),
        extra=int(extra.sum()),
        lacking=int(lacking.sum()),
        outline=(_outline(label) + _outline(pred)) / 2,
    )


def _outline(values: np.ndarray) -> int:
    """The length in pixels of every border between two values of `values` (H, W), 0 included.

    Counts the pixels with a 4-neighbour of a smaller value: one side of each border (the foreground's side
    against background).
    """
    v = values.astype(np.int64)
    return int((v > ndimage.grey_erosion(v, footprint=_FOUR_CONNECTED, mode="nearest")).sum())


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
    if differing < params.min_pixels or differing <= params.tolerance_px * masses.outline:
        return ErrorKind.NONE
    boundary = masses.extra + masses.lacking + masses.border
    # ties go to the more specific finding, in this order
    ranked = [
        (masses.missing, ErrorKind.MISSING),
        (masses.spurious, ErrorKind.SPURIOUS),
        (masses.swapped, ErrorKind.WRONG_CLASS),
        (boundary, None),
    ]
    best, kind = max(ranked, key=lambda item: item[0])
    if kind is not None:
        return kind
    share = (masses.extra + masses.border / 2) / boundary
    if share >= params.one_sided:
        return ErrorKind.OVER
    if share <= 1.0 - params.one_sided:
        return ErrorKind.UNDER
    return ErrorKind.SHIFTED

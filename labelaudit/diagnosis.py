"""The likely kind of error in each region of a slice, and of the slice, from comparing label and robust prediction.

Array legend: H x W one slice; S slices of one case. Label and prediction hold label *values* (the files'
integers, not class indices); 0 is background.

Regions (`find_regions`; what `fix` changes): a region is one 8-connected component of the disagreement
that belongs to one class, the class whose outline is wrong: the label's where the prediction is background,
the prediction's where the label is. Where both are foreground, the prediction's when its class sits inside
the label's (the label painted the outer class over it, as when an enclosed structure is eroded or left
out); the label's when the label's class sits inside the prediction's (it grew into the class around it);
else a *border* pixel, the label's, between two classes side by side. Each pixel of a region of class c is
attributed to one mass:

    missing   predicted c, in a predicted structure of c the label (almost: `match_overlap`) does not touch
    spurious  labelled c over background, in a labelled structure of c the prediction (almost) does not touch
    swapped   labelled c over another class, in a structure the prediction does not support as c, or over
              a whole predicted structure of the other class that the label gives to c    -> wrong class
    border    labelled c over another class side by side: the border between the two moved
    extra     other labelled-c pixels (the label reaches too far)
    lacking   other predicted-c pixels (the label stops short)

The largest of missing, spurious, swapped and the boundary mass (extra + lacking + border) names the kind;
within the last one, a one-sided boundary is over- or under-segmentation and a two-sided one (a border
pixel counts half to each side) a shifted boundary. One-sided regions on a structure whose sides balance are
a shifted boundary too (a translation gains on one side what it loses on the other); missing regions of a
class whose boundary regions are one-sided under- are under-segmentation (an erosion removes the pieces
thinner than its diameter whole; a dilation creates none).

Slices (`classify_slice`, the slices.csv `error_kind`): `none` when the outline's mean displacement (differing
pixels per outline pixel: unlike a share of the area, not growing with the structure) is small and no region is
missing or spurious (no outline tolerance forgives a structure); else the kind of the region that speaks most
(`region_weight`: the pixels the model is sure are wrong, by how sure, given the noise map; else its size).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np
from scipy import ndimage

from .noise_map import map_disagreement


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


KIND_LABELS = {ErrorKind.NONE: "none", ErrorKind.OVER: "over-segmentation", ErrorKind.UNDER: "under-segmentation",
               ErrorKind.MISSING: "missing structure", ErrorKind.SPURIOUS: "spurious structure",
               ErrorKind.SHIFTED: "shifted boundary", ErrorKind.WRONG_CLASS: "wrong class"}

#: One line per kind, for the report's legend and the docs.
KIND_HELP = {ErrorKind.OVER: "the label reaches beyond the structure the model sees",
             ErrorKind.UNDER: "the label stops short of the structure the model sees",
             ErrorKind.MISSING: "the model sees a structure the label does not have",
             ErrorKind.SPURIOUS: "the label has a structure the model does not support",
             ErrorKind.SHIFTED: "label and model outline the structure at displaced positions",
             ErrorKind.WRONG_CLASS: "the region is labelled with another class",
             ErrorKind.NONE: "label and model agree up to the tolerance"}

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class ErrorKindParams:
    """Thresholds of the classification.

    tolerance_px: differences up to this many pixels per outline pixel (every border between two values once,
        label's and prediction's averaged) are `none` unless a region is missing or spurious; below 1 px.
    min_pixels: differences of fewer pixels are `none` (a boundary pixel or two is not an error), and regions.
    match_overlap: a component whose overlap with the other mask's foreground is below this fraction of its
        area counts as unmatched (missing or spurious); one held more has a wrong outline (an eroded thin
        structure keeps a few pixels of each piece).
    one_sided: extra/(extra + lacking) at or above this is over-segmentation, at or below 1 - this under-;
        also for the sides of a structure's (shifted) and a class's (missing pieces) boundary regions.
    swap_share: a labelled component of one class whose pixels the prediction gives to other classes at
        this fraction or more is a wrong-class component.
    noise_floor: with a noise map, a region speaks for its slice's kind by its pixels' disagreement
        1 - p̄_y (the map divided by its slice's score) above this, summed (see docs/decisions.md).
    """

    tolerance_px: float = 0.75
    min_pixels: int = 4
    match_overlap: float = 0.01
    one_sided: float = 0.75
    swap_share: float = 0.5
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
                      int(extra.sum()), int(lacking.sum()), (_outline(label) + _outline(pred)) / 2)


def _outline(values: np.ndarray) -> int:
    """The length in pixels of every border between two values of `values` (H, W), 0 included: the pixels with
    a 4-neighbour of a smaller value (one side of each border; the foreground's against background)."""
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
    ranked = [(masses.missing, ErrorKind.MISSING), (masses.spurious, ErrorKind.SPURIOUS),
              (masses.swapped, ErrorKind.WRONG_CLASS), (boundary, None)]
    best, kind = max(ranked, key=lambda item: item[0])
    if kind is not None:
        return kind
    share = (masses.extra + masses.border / 2) / boundary
    return (ErrorKind.OVER if share >= params.one_sided else ErrorKind.UNDER if share <= 1.0 - params.one_sided
            else ErrorKind.SHIFTED)


_STRUCTURE_KINDS = frozenset({ErrorKind.MISSING, ErrorKind.SPURIOUS})  # what no outline tolerance forgives


def classify_slice(label: np.ndarray, pred: np.ndarray, params: ErrorKindParams = ErrorKindParams(),
                   noise: np.ndarray | None = None) -> ErrorKind:
    """The likely kind of error of one slice (the module docstring): label, pred integer (H, W) label values,
    0 = background; noise: float (H, W), each pixel's disagreement 1 - p̄_y in [0, 1], or None (by size)."""
    masses, regions = kind_masses(label, pred, params), find_regions(label, pred, 0, params)
    if kind_from_masses(masses, params) is ErrorKind.NONE:  # the outlines agree: only a structure can name it
        regions = [r for r in regions if r.kind in _STRUCTURE_KINDS]
        if not regions:
            return ErrorKind.NONE
    elif not regions:  # differences scattered in pieces below min_pixels: the slice's masses decide
        return kind_from_masses(masses, params)
    weights = [region_weight(r, noise, params) for r in regions]
    if not any(weights):
        weights = [float(r.pixels) for r in regions]
    return regions[int(np.argmax(weights))].kind


def classify_slices(label: np.ndarray, pred: np.ndarray, params: ErrorKindParams = ErrorKindParams(),
                    noise: np.ndarray | None = None, scores: np.ndarray | None = None) -> list[ErrorKind]:
    """classify_slice over a stack: label, pred integer (S, H, W), noise float (S, H, W) or None -> S kinds.
    With `scores` (S,), the slice noise scores, `noise` is the noise map as `score` writes it, (1 - p̄_y) x the
    slice's score, and is divided by them as fix/rule.py does (a slice scored 0 is weighed by size)."""
    if label.shape != pred.shape or (noise is not None and noise.shape != label.shape) or (
            scores is not None and (noise is None or len(scores) != label.shape[0])):
        raise ValueError(f"label {label.shape}, prediction {pred.shape}, noise map {getattr(noise, 'shape', None)}, "
                         f"{'no' if scores is None else len(scores)} scores: expected one shape (scores need a map, "
                         "one per slice)")
    kinds = []
    for i, (y, p) in enumerate(zip(label, pred)):
        weigh = None if noise is None or (scores is not None and scores[i] <= 0) else noise[i]
        weigh = weigh if weigh is None or scores is None else map_disagreement(weigh, float(scores[i]))
        kinds.append(ErrorKind.NONE if np.array_equal(y, p) else classify_slice(y, p, params, weigh))  # 1 compare
    return kinds


def dominant_kind(kinds: Iterable[ErrorKind | str], scores: Iterable[float]) -> ErrorKind:
    """The kind with the largest total noise score among `kinds` (ignoring none); none when all are none.
    Used per case over its worst slices (the ones that make the case score)."""
    totals: dict[ErrorKind, float] = {}
    for kind, score in zip(kinds, scores):
        kind = ErrorKind(kind)
        if kind is not ErrorKind.NONE:
            totals[kind] = totals.get(kind, 0.0) + float(score)
    if not totals:
        return ErrorKind.NONE
    return max(totals, key=lambda k: (totals[k], -list(ErrorKind).index(k)))


# ----------------------------------------------------------------------------- regions

_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True, eq=False)
class Region:
    """One region of one slice that label and prediction disagree on, and its likely kind of error.

    bbox: row0, row1, col0, col1 (half-open) on the (H, W) slice; mask: bool (row1 - row0, col1 - col0) crop.
    label_class: the class whose outline is wrong; label_value / pred_value: the values label and prediction
    give most of its pixels (for a wrong class: the class given and the class seen).
    """

    slice_index: int
    label_class: int
    kind: ErrorKind
    pixels: int
    bbox: tuple[int, int, int, int]
    label_value: int
    pred_value: int
    mask: np.ndarray

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The region as a bool (H, W) mask of a slice of `shape`."""
        out = np.zeros(shape, dtype=bool)
        r0, r1, c0, c1 = self.bbox
        out[r0:r1, c0:c1] = self.mask
        return out

    def values(self, array: np.ndarray) -> np.ndarray:
        """The values of `array` (H, W) at the region's pixels."""
        r0, r1, c0, c1 = self.bbox
        return array[r0:r1, c0:c1][self.mask]


def _surrounded_by(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For each pixel of `mask` (H, W), the most common value of `values` just outside its filled component."""
    envelope = ndimage.binary_fill_holes(mask)
    around = np.zeros(values.shape, dtype=np.int64)
    components, _ = ndimage.label(envelope, structure=_FOUR_CONNECTED)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
        part = components[grown] == index
        ring = ndimage.binary_dilation(part, structure=_FOUR_CONNECTED) & ~envelope[grown]
        ring_values = values[grown][ring].astype(np.int64)
        if ring_values.size:
            uniq, counts = np.unique(ring_values, return_counts=True)
            around[grown][part] = uniq[np.argmax(counts)]  # ties: the smaller value (background first)
    return around


def _inside(pred: np.ndarray, values) -> dict[int, int]:
    """For each class value, the class its predicted structures mostly sit in (0: background, or none)."""
    found = {}
    for value in values:
        mask = pred == value
        found[int(value)] = _majority(_surrounded_by(pred, mask)[mask]) if mask.any() else 0
    return found


def _owner(label: np.ndarray, pred: np.ndarray, differ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class each differing pixel belongs to (0 elsewhere), and the border pixels (see the module docstring):
    foreground in both, neither class sitting in the other."""
    owner = np.where(label != 0, label, pred).astype(np.int64)
    both = differ & (label != 0) & (pred != 0)
    border = np.zeros_like(differ)
    if both.any():
        inside = _inside(pred, np.unique(np.concatenate([label[both], pred[both]])))
        for a, b in {(int(a), int(b)) for a, b in zip(label[both], pred[both])}:
            here = both & (label == a) & (pred == b)
            if inside[b] == a:
                owner[here] = b  # b sits in a: the label painted a over part of it
            elif inside[a] != b:
                border |= here  # side by side: the border between them moved
    return np.where(differ, owner, 0), border


def _covered(label: np.ndarray, pred: np.ndarray, value: int, by: int, params: ErrorKindParams) -> np.ndarray:
    """Pixels of the prediction's components of `value` that the label gives (almost) none of `value` and
    mostly `by`: a structure labelled as another class."""
    components, count = ndimage.label(pred == value, structure=_FOUR_CONNECTED)
    area = np.bincount(components.ravel(), minlength=count + 1)
    kept = np.bincount(components.ravel(), weights=(label == value).ravel(), minlength=count + 1)
    taken = np.bincount(components.ravel(), weights=(label == by).ravel(), minlength=count + 1)
    whole = (kept < params.match_overlap * area) & (taken >= params.swap_share * area)
    whole[0] = False
    return whole[components]


def _class_masks(label: np.ndarray, pred: np.ndarray, value: int, params: ErrorKindParams) -> tuple:
    """Whole-slice masks of class `value` that the regions' masses need, computed once per class:
    label, prediction, predicted structures the label lacks, labelled ones the prediction does not support,
    and the prediction's structures of other classes that the label gives to `value` whole."""
    lab, prd = label == value, pred == value
    covered = np.zeros_like(lab)
    for other in np.unique(pred[lab & (pred != 0)]):
        covered |= _covered(label, pred, int(other), value, params)
    return lab, prd, _unmatched(prd, lab, params.match_overlap), _unmatched(lab, prd, params.match_overlap), covered


def _region_masses(crop: np.ndarray, box: tuple, masks: tuple, pred: np.ndarray, border: np.ndarray) -> KindMasses:
    """KindMasses of one region (bool `crop` of the slice's `box`), from its class's `_class_masks`."""
    lab, prd, lacked, unsupported, covered = (m[box] for m in masks)
    pred, border = pred[box], border[box]
    extra, lacking = crop & lab, crop & prd
    missing = lacking & lacked
    spurious = extra & unsupported & (pred == 0)
    swapped = extra & (pred != 0) & (unsupported | covered)
    moved = extra & border & ~swapped
    return KindMasses(int(missing.sum()), int(spurious.sum()), int(swapped.sum()), int(moved.sum()),
                      int((extra & ~spurious & ~swapped & ~moved).sum()), int((lacking & ~missing).sum()), 0.0)


def _majority(values: np.ndarray) -> int:
    uniq, counts = np.unique(values.astype(np.int64), return_counts=True)
    return int(uniq[np.argmax(counts)]) if uniq.size else 0


def find_regions(label: np.ndarray, pred: np.ndarray, slice_index: int = 0,
                 params: ErrorKindParams = ErrorKindParams()) -> list[Region]:
    """Every region of one slice where label and prediction disagree (at least `min_pixels`), with its kind.

    label, pred: integer (H, W) label values, 0 = background. Regions come by class, then raster order.
    """
    if label.shape != pred.shape:
        raise ValueError(f"label shape {label.shape} differs from prediction shape {pred.shape}")
    differ = label != pred
    if not differ.any():
        return []
    owner, border = _owner(label, pred, differ)
    exact = replace(params, tolerance_px=0.0, min_pixels=1)  # a region is already an error worth naming
    found: list[tuple[Region, int]] = []  # region, and the structure it lies on
    for value in (int(v) for v in np.unique(owner[differ])):
        masks = _class_masks(label, pred, value, params)
        structures, _ = ndimage.label(masks[0] | masks[1], structure=_EIGHT_CONNECTED)
        components, _ = ndimage.label(owner == value, structure=_EIGHT_CONNECTED)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            crop = components[box] == index if box is not None else None
            if crop is None or int(crop.sum()) < params.min_pixels:
                continue
            masses = _region_masses(crop, box, masks, pred, border)
            bbox = (box[0].start, box[0].stop, box[1].start, box[1].stop)
            found.append((Region(slice_index, value, kind_from_masses(masses, exact), int(crop.sum()),
                                 bbox, _majority(label[box][crop]), _majority(pred[box][crop]), crop),
                          int(structures[box][crop][0])))
    return _settle_sides(found, params)


#: How a boundary region's pixels count to the over- and the under-segmented side.
_SIDES = {ErrorKind.OVER: (1.0, 0.0), ErrorKind.UNDER: (0.0, 1.0), ErrorKind.SHIFTED: (0.5, 0.5)}


def _side_shares(keyed: Iterable[tuple[object, Region]]) -> dict[object, float]:
    """over / (over + under) pixels of the boundary regions under each key, from (key, region) pairs."""
    sides: dict[object, np.ndarray] = {}
    for key, region in keyed:
        sides[key] = sides.get(key, 0.0) + np.array(_SIDES.get(region.kind, (0.0, 0.0))) * region.pixels
    return {key: float(over / (over + under)) for key, (over, under) in sides.items() if over + under}


def _settle_sides(found: list[tuple[Region, int]], params: ErrorKindParams) -> list[Region]:
    """OVER and UNDER regions of a structure whose sides balance (by `one_sided`) become SHIFTED; then MISSING
    regions of a class whose boundary regions on the slice are one-sided under-segmentation become UNDER."""
    shares = _side_shares(((r.label_class, structure), r) for r, structure in found)
    balanced = {key for key, share in shares.items() if 1.0 - params.one_sided < share < params.one_sided}
    regions = [replace(r, kind=ErrorKind.SHIFTED) if r.kind in (ErrorKind.OVER, ErrorKind.UNDER)
               and (r.label_class, structure) in balanced else r for r, structure in found]
    short = {c for c, share in _side_shares((r.label_class, r) for r in regions).items()
             if share <= 1.0 - params.one_sided}
    return [replace(r, kind=ErrorKind.UNDER) if r.kind is ErrorKind.MISSING and r.label_class in short else r
            for r in regions]


def region_weight(region: Region, noise: np.ndarray | None, params: ErrorKindParams = ErrorKindParams()) -> float:
    """How much a region speaks for its slice's kind: its pixels' disagreement (noise (H, W), 1 - p̄_y in
    [0, 1]) above `noise_floor`, summed; without it, its pixel count."""
    if noise is None:
        return float(region.pixels)
    return float(np.clip(region.values(noise) - params.noise_floor, 0.0, None).sum())

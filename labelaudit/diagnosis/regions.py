"""The regions of a slice where label and prediction disagree, each with its likely kind of error.

Array legend: H x W one slice. Label and prediction hold label *values* (the files' integers, not class
indices); 0 is background.

A region (`find_regions`; what `fix` changes) is one 8-connected component of the disagreement that belongs
to one class, the class whose outline is wrong:

    label foreground, prediction background      the label's class
    label background, prediction foreground      the prediction's class
    both foreground, the prediction's class      the prediction's class (the label painted the outer class
      sits inside the label's                    over it, as when an enclosed structure is eroded or left out)
    both foreground, the label's class sits      the label's class (the label grew into the class around it)
      inside the prediction's
    both foreground, neither inside the other    the label's class, and the pixel is a *border* pixel between
                                                 two classes side by side

Each pixel of a region is attributed to one of the masses of kinds.py, and `kind_from_masses` names the
region's kind, with no outline tolerance (a region is already an error worth naming). Then the sides are
settled across the slice's regions (`_settle_sides`):

- One-sided regions (over- or under-segmentation) on a structure whose sides balance become a shifted
  boundary: a translation gains on one side what it loses on the other.
- Missing regions of a class whose boundary regions are one-sided under-segmentation become
  under-segmentation: an erosion removes the pieces thinner than its diameter whole; a dilation creates none.

`region_weight` says how much a region speaks for its slice's kind: the pixels the model is sure are wrong,
by how sure, given the noise map; without one, its size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .kinds import ErrorKind, ErrorKindParams, KindMasses, kind_from_masses, unmatched

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True, eq=False)
class Region:
    """One region of one slice that label and prediction disagree on, and its likely kind of error.

    bbox: row0, row1, col0, col1 (half-open) on the (H, W) slice.
    mask: bool (row1 - row0, col1 - col0), the region's pixels in the bbox crop.
    label_class: the class whose outline is wrong.
    label_value, pred_value: the values label and prediction give most of its pixels (for a wrong class: the
        class given and the class seen).
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


def _majority(values: np.ndarray) -> int:
    """The most common value (ties: the smaller), 0 for no values."""
    uniq, counts = np.unique(values.astype(np.int64), return_counts=True)
    return int(uniq[np.argmax(counts)]) if uniq.size else 0


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
    """The class each differing pixel belongs to (0 elsewhere), and the border pixels: foreground in both,
    neither class sitting in the other (the table of the module docstring)."""
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
    """Pixels of the prediction's components of `value` that the label gives little of `value` (below
    `swap_keep`) and mostly `by` (`swap_share`): a structure labelled as another class."""
    components, count = ndimage.label(pred == value, structure=_FOUR_CONNECTED)
    area = np.bincount(components.ravel(), minlength=count + 1)
    kept = np.bincount(components.ravel(), weights=(label == value).ravel(), minlength=count + 1)
    taken = np.bincount(components.ravel(), weights=(label == by).ravel(), minlength=count + 1)
    whole = (kept < params.swap_keep * area) & (taken >= params.swap_share * area)
    whole[0] = False
    return whole[components]


@dataclass(frozen=True, eq=False)
class _ClassMasks:
    """Whole-slice bool (H, W) masks of one class that its regions' masses need, computed once per class."""

    label: np.ndarray  # labelled as the class
    pred: np.ndarray  # predicted as the class
    lacked: np.ndarray  # predicted structures of the class that the label lacks
    unsupported: np.ndarray  # labelled structures of the class that the prediction does not support
    covered: np.ndarray  # predicted structures of other classes that the label gives to the class whole

    def crop(self, box: tuple[slice, slice]) -> _ClassMasks:
        return _ClassMasks(self.label[box], self.pred[box], self.lacked[box], self.unsupported[box],
                           self.covered[box])


def _class_masks(label: np.ndarray, pred: np.ndarray, value: int, params: ErrorKindParams) -> _ClassMasks:
    """The `_ClassMasks` of class `value` on one slice."""
    lab, prd = label == value, pred == value
    covered = np.zeros_like(lab)
    for other in np.unique(pred[lab & (pred != 0)]):
        covered |= _covered(label, pred, int(other), value, params)
    return _ClassMasks(
        label=lab,
        pred=prd,
        lacked=unmatched(prd, lab, params.match_overlap),
        unsupported=unmatched(lab, prd, params.match_overlap),
        covered=covered,
    )


def _region_masses(crop: np.ndarray, box: tuple[slice, slice], masks: _ClassMasks, pred: np.ndarray,
                   border: np.ndarray) -> KindMasses:
    """KindMasses of one region (bool `crop` of the slice's `box`), from its class's `_ClassMasks`."""
    m = masks.crop(box)
    pred, border = pred[box], border[box]
    extra, lacking = crop & m.label, crop & m.pred
    missing = lacking & m.lacked
    spurious = extra & m.unsupported & (pred == 0)
    swapped = extra & (pred != 0) & (m.unsupported | m.covered)
    moved = extra & border & ~swapped
    return KindMasses(
        missing=int(missing.sum()),
        spurious=int(spurious.sum()),
        swapped=int(swapped.sum()),
        border=int(moved.sum()),
        extra=int((extra & ~spurious & ~swapped & ~moved).sum()),
        lacking=int((lacking & ~missing).sum()),
        outline=0.0,
    )


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
        structures, _ = ndimage.label(masks.label | masks.pred, structure=_EIGHT_CONNECTED)
        components, _ = ndimage.label(owner == value, structure=_EIGHT_CONNECTED)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None:
                continue
            crop = components[box] == index
            pixels = int(crop.sum())
            if pixels < params.min_pixels:
                continue
            masses = _region_masses(crop, box, masks, pred, border)
            region = Region(
                slice_index=slice_index,
                label_class=value,
                kind=kind_from_masses(masses, exact),
                pixels=pixels,
                bbox=(box[0].start, box[0].stop, box[1].start, box[1].stop),
                label_value=_majority(label[box][crop]),
                pred_value=_majority(pred[box][crop]),
                mask=crop,
            )
            found.append((region, int(structures[box][crop][0])))
    return _settle_sides(found, params)


#: How a boundary region's pixels count to the over- and the under-segmented side.
_SIDES = {
    ErrorKind.OVER: (1.0, 0.0),
    ErrorKind.UNDER: (0.0, 1.0),
    ErrorKind.SHIFTED: (0.5, 0.5),
}


def _side_shares(keyed: Iterable[tuple[object, Region]]) -> dict[object, float]:
    """over / (over + under) pixels of the boundary regions under each key, from (key, region) pairs."""
    sides: dict[object, np.ndarray] = {}
    for key, region in keyed:
        sides[key] = sides.get(key, 0.0) + np.array(_SIDES.get(region.kind, (0.0, 0.0))) * region.pixels
    return {key: float(over / (over + under)) for key, (over, under) in sides.items() if over + under}


def _settle_sides(found: list[tuple[Region, int]], params: ErrorKindParams) -> list[Region]:
    """The side rules of the module docstring, over a slice's (region, structure index) pairs.

    OVER and UNDER regions of a structure whose sides balance (by `one_sided`) become SHIFTED; then MISSING
    regions of a class whose boundary regions on the slice are one-sided under-segmentation become UNDER.
    """
    shares = _side_shares(((r.label_class, structure), r) for r, structure in found)
    balanced = {key for key, share in shares.items() if 1.0 - params.one_sided < share < params.one_sided}
    one_sided = (ErrorKind.OVER, ErrorKind.UNDER)
    regions = [replace(r, kind=ErrorKind.SHIFTED) if r.kind in one_sided and (r.label_class, structure) in balanced
               else r for r, structure in found]
    short = {c for c, share in _side_shares((r.label_class, r) for r in regions).items()
             if share <= 1.0 - params.one_sided}
    return [replace(r, kind=ErrorKind.UNDER) if r.kind is ErrorKind.MISSING and r.label_class in short else r
            for r in regions]


def region_weight(region: Region, noise: np.ndarray | None, params: ErrorKindParams = ErrorKindParams()) -> float:
    """How much a region speaks for its slice's kind.

    noise: float (H, W), each pixel's disagreement 1 - p̄_y in [0, 1], or None. Returns the region's
    disagreement above `noise_floor`, summed; without noise, its pixel count.
    """
    if noise is None:
        return float(region.pixels)
    return float(np.clip(region.values(noise) - params.noise_floor, 0.0, None).sum())

"""What the report shows of each case, gathered while scoring holds the case in memory.

Scoring streams one case at a time, so the report cannot go back to the voxels later. For every case the
collector keeps where to look (its files and slicing axis); for the slices worth showing — the
`ReportConfig.top_slices` worst slices of each of the `ReportConfig.top_cases` worst cases — it keeps a small
downsampled crop (image, label, prediction, noise map). Cases that fall out of the worst M drop their crops,
so memory stays bounded by M x N crops whatever the dataset's size.

Array legend: S slices, H x W one native slice; h x w one thumbnail (after orienting, cropping, downsampling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..noise_map import map_disagreement
from ..types import Case, CaseRef, Geometry

#: N: thumbnails for the worst slices of a case; M: for the worst cases of the audit.
TOP_SLICES = 3
TOP_CASES = 50
#: Longest side of a thumbnail, in pixels (larger crops are block-downsampled).
THUMB_SIZE = 160
#: The crop around the structure: margin as a fraction of its extent, at least MIN_MARGIN pixels; at least
#: MIN_CROP pixels a side (small structures keep some context).
CROP_MARGIN = 0.25
MIN_MARGIN = 6
MIN_CROP = 48
PLANES = ("sagittal", "coronal", "axial")  # by the LPS axis (x, y, z) the slicing axis points along most


@dataclass(frozen=True)
class ReportConfig:
    """How much the report shows: thumbnails for the `top_slices` worst slices of the `top_cases` worst cases
    (every case is listed, with its `top_slices` worst slices), at most `thumb_size` pixels a side."""

    top_cases: int = TOP_CASES
    top_slices: int = TOP_SLICES
    thumb_size: int = THUMB_SIZE
    histogram_bins: int = 40


@dataclass(frozen=True)
class Orientation:
    """How a slice (H, W) is turned for display: anatomical plane, transpose, then flips.

    Displayed like a radiologist's viewer: axial and coronal slices with the patient's right on the left,
    anterior (axial) or superior (coronal, sagittal) up, sagittal with anterior on the left.
    """

    plane: str  # axial | coronal | sagittal | 2D
    itk_axis: int  # ITK axis the slices are taken along (0 = i, 1 = j, 2 = k); -1 for 2D
    num_slices: int
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    spacing: tuple[float, float] = (1.0, 1.0)  # displayed (row, column) pixel spacing in mm

    @property
    def axis_name(self) -> str:
        return "ijk"[self.itk_axis] if 0 <= self.itk_axis < 3 else ""

    def apply(self, slice_2d: np.ndarray) -> np.ndarray:
        out = slice_2d.T if self.transpose else slice_2d
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return out


def orientation_of(geometry: Geometry) -> Orientation:
    """The display orientation of the slices of a volume on `geometry` (see Orientation)."""
    if geometry.ndim < 3:
        spacing = tuple(reversed(geometry.spacing))[:2]
        return Orientation("2D", -1, 1, spacing=(float(spacing[0]), float(spacing[1])))
    ndim = geometry.ndim
    direction = np.asarray(geometry.direction, dtype=float).reshape(ndim, ndim)  # column c: ITK axis c in LPS
    slice_numpy_axis = geometry.slicing_axis()
    in_plane = [a for a in range(ndim) if a != slice_numpy_axis]  # numpy axes of H, W
    itk = [ndim - 1 - a for a in (slice_numpy_axis, *in_plane)]
    dominant = [int(np.argmax(np.abs(direction[:, c]))) for c in itk]
    sign = [float(np.sign(direction[dominant[i], c])) or 1.0 for i, c in enumerate(itk)]
    spacing = [float(geometry.spacing[c]) for c in itk[1:]]
    rows, cols = 1, 2
    transpose = dominant[1] < dominant[2]  # the vertical axis is the more cranio-caudal one (z > y > x)
    if transpose:
        rows, cols = 2, 1
        spacing.reverse()
    # rows run toward P (y) or I (z, so superior is up); columns toward L (x) or P (y)
    flip_rows = sign[rows] != (-1.0 if dominant[rows] == 2 else 1.0)
    flip_cols = sign[cols] != (-1.0 if dominant[cols] == 2 else 1.0)
    return Orientation(PLANES[dominant[0]], itk[0], int(geometry.shape[slice_numpy_axis]), transpose,
                       flip_rows, flip_cols, (spacing[0], spacing[1]))


@dataclass
class SliceView:
    """One thumbnail's pixels: oriented, cropped, downsampled (h, w)."""

    slice_index: int
    image: np.ndarray  # uint8, the first image channel windowed to its 1st-99th percentile in the crop
    label: np.ndarray  # the given label's values (nearest-neighbour downsampled)
    pred: np.ndarray  # the robust prediction's label values
    noise: np.ndarray  # uint8, disagreement 1 - p̄_y x 255 (block maximum, so a small error stays visible)
    pixel_aspect: float  # displayed pixel height / width in mm
    crop: tuple[int, int, int, int]  # row0, row1, col0, col1 of the oriented native slice
    factor: int  # downsampling factor


@dataclass(frozen=True)
class RegionNote:
    """One region judged wrong (fix/rule.py), as the report's "what to fix" line needs it."""

    slice_index: int
    kind: str  # a diagnosis.ErrorKind value
    label_class: int
    label_value: int
    pred_value: int
    pixels: int
    score: float


@dataclass
class CaseView:
    """Where to look at one case, and the thumbnails of its worst slices (empty outside the worst cases).

    fixed_map: the `_fixed` map's path relative to the audit folder; regions: the regions judged wrong in it.
    """

    case_id: str
    images: tuple[str, ...]
    label: str
    orientation: Orientation
    slices: dict[int, SliceView] = field(default_factory=dict)
    fixed_map: str = ""
    regions: tuple[RegionNote, ...] = ()


def crop_box(mask: np.ndarray, min_crop: int = MIN_CROP, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """A square-ish box around the True pixels of mask (H, W) with a margin; the whole slice when none."""
    height, width = mask.shape
    if not mask.any():
        return 0, height, 0, width
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(r1 - r0, c1 - c0)
    side = max(min_crop, side + 2 * max(MIN_MARGIN, int(math.ceil(margin * side))))

    def span(lo: int, hi: int, size: int) -> tuple[int, int]:
        if side >= size:
            return 0, size
        start = min(max(0, (lo + hi - side) // 2), size - side)
        return start, start + side

    (r0, r1), (c0, c1) = span(r0, r1, height), span(c0, c1, width)
    return int(r0), int(r1), int(c0), int(c1)


def _blocks(array: np.ndarray, factor: int, reduce) -> np.ndarray:
    """Reduce (H, W) over factor x factor blocks (edge-padded to a multiple of factor)."""
    if factor == 1:
        return array
    h, w = array.shape
    pad = ((0, -h % factor), (0, -w % factor))
    padded = np.pad(array, pad, mode="edge")
    return reduce(padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor), axis=(1, 3))


def window(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """float (h, w) -> uint8, linearly from its `low` to its `high` percentile."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, [low, high]) if image.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.round(np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)


def make_slice_view(index: int, image: np.ndarray, label: np.ndarray, pred: np.ndarray, noise: np.ndarray,
                    orientation: Orientation, thumb_size: int = THUMB_SIZE) -> SliceView:
    """Orient, crop around the structure (label, prediction and noisy pixels) and downsample one slice.

    image float (H, W); label, pred integer label values (H, W); noise float (H, W) in [0, 1].
    """
    image, label, pred, noise = (orientation.apply(a) for a in (image, label, pred, noise))
    r0, r1, c0, c1 = crop_box((label != 0) | (pred != 0) | (noise > 0.5))
    image, label, pred, noise = (a[r0:r1, c0:c1] for a in (image, label, pred, noise))
    factor = max(1, int(math.ceil(max(image.shape) / thumb_size)))
    start = factor // 2
    return SliceView(
        slice_index=int(index),
        image=window(_blocks(image.astype(np.float32), factor, np.mean)),
        label=np.ascontiguousarray(label[start::factor, start::factor]),
        pred=np.ascontiguousarray(pred[start::factor, start::factor]),
        noise=np.round(np.clip(_blocks(noise.astype(np.float32), factor, np.max), 0, 1) * 255).astype(np.uint8),
        pixel_aspect=orientation.spacing[0] / orientation.spacing[1],
        crop=(r0, r1, c0, c1), factor=factor,
    )


def worst_slices(scores: np.ndarray, structure: np.ndarray, n: int) -> list[int]:
    """The indices of the n highest scores among slices with structure, highest first (ties: lower index)."""
    candidates = [i for i in range(len(scores)) if structure[i]]
    return sorted(candidates, key=lambda i: (-float(scores[i]), i))[:n]


class ViewCollector:
    """Gathers CaseViews while scoring streams cases; keeps thumbnails only for the worst `top_cases` cases."""

    def __init__(self, config: ReportConfig = ReportConfig()) -> None:
        self.config = config
        self.views: dict[str, CaseView] = {}
        self._kept: dict[str, float] = {}  # case id -> case score, of the cases that hold thumbnails

    def _rank_key(self, case_id: str, score: float) -> tuple[float, str]:
        return (-score, case_id)  # the audit's own order: score descending, then case id

    def _admits(self, case_id: str, score: float) -> bool:
        if len(self._kept) < self.config.top_cases:
            return True
        worst = max(self._kept, key=lambda c: self._rank_key(c, self._kept[c]))
        return self._rank_key(case_id, score) < self._rank_key(worst, self._kept[worst])

    def add(self, ref: CaseRef, case: Case, noise: np.ndarray, pred: np.ndarray, scores: np.ndarray,
            structure: np.ndarray, case_score: float, judged: Sequence = (), fixed_map: str = "") -> CaseView:
        """Record one scored case.

        noise float32 (S, H, W); pred (S, H, W) label values; scores float (S,) slice noise scores;
        structure bool (S,) whether the slice has labelled or predicted foreground; case_score its score;
        judged: its regions judged wrong (fix.rule.JudgedRegion); fixed_map: where its `_fixed` map is.
        """
        orientation = orientation_of(case.geometry)
        notes = tuple(RegionNote(j.region.slice_index, j.region.kind.value, j.region.label_class,
                                 j.region.label_value, j.region.pred_value, j.region.pixels, j.score) for j in judged)
        view = CaseView(ref.case_id, tuple(str(p) for p in ref.image_paths),
                        str(ref.label_path) if ref.label_path else "", orientation, fixed_map=fixed_map,
                        regions=notes)
        self.views[ref.case_id] = view
        if self.config.top_cases <= 0 or self.config.top_slices <= 0 or not self._admits(ref.case_id, case_score):
            return view
        chosen = worst_slices(scores, structure, self.config.top_slices)
        image = case.channels[0].to_slices()  # a view; only the chosen slices are copied
        label = case.label_slices()
        for i in chosen:
            # the overlay shows where on the slice the model disagrees (1 - p̄_y); how wrong the slice is, is its
            # score: the map's product of both would leave an unflagged slice's overlay too faint to see
            where = map_disagreement(noise[i], scores[i])
            view.slices[i] = make_slice_view(i, image[i], label[i], pred[i], where, orientation, self.config.thumb_size)
        self._kept[ref.case_id] = case_score
        if len(self._kept) > self.config.top_cases:
            worst = max(self._kept, key=lambda c: self._rank_key(c, self._kept[c]))
            del self._kept[worst]
            self.views[worst].slices.clear()
        return view

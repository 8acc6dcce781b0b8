"""Preprocessing fitted at training time, saved in run.json and applied identically at scoring.

Pure numpy (no torch): scoring and `check` use it too.
Array legend: S slices, C channels, H x W in-plane pixels (after the slicing axis is moved first).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .errors import InputError, ModelError
from .io.image import resample_slices
from .types import Case

#: Foreground percentiles for CT clipping, as nnU-Net's CTNormalization.
CT_PERCENTILES = (0.5, 99.5)
#: ChannelNorm kinds: `ct` (clip to foreground percentiles, global z-score) or `zscore` (per case).
CHANNEL_NORMS = ("ct", "zscore")
_SAMPLES_PER_CASE = 20_000


@dataclass(frozen=True)
class LabelMap:
    """Label values in the files <-> class indices 0..K-1 used by the networks."""

    values: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.values)

    @classmethod
    def from_declared(cls, declared: dict[str, int] | None, found: Iterable[int] = ()) -> LabelMap:
        """From dataset.json labels when given, else from the values found in the labels."""
        if declared:
            pairs = sorted((v, k) for k, v in declared.items())
        else:
            pairs = [(int(v), "background" if int(v) == 0 else f"label_{int(v)}") for v in sorted(set(found) | {0})]
        return cls(tuple(v for v, _ in pairs), tuple(n for _, n in pairs))

    @property
    def class_dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every class index (the preprocessed folder's)."""
        return np.dtype(np.uint8 if self.num_classes <= 256 else np.uint16 if self.num_classes <= 65536 else np.int64)

    def encode(self, label: np.ndarray, dtype: np.dtype | type = np.int64) -> np.ndarray:
        """Label values -> class indices (int64, or `dtype`). Unknown values raise InputError."""
        lut_size = max(self.values) + 1
        values = np.unique(label)
        unknown = sorted(int(v) for v in values if int(v) not in self.values)
        if unknown:
            raise InputError(f"label values {unknown} are not among the model's classes {list(self.values)}")
        if min(self.values) >= 0 and lut_size <= 65536:
            lut = np.zeros(lut_size, dtype=dtype)
            lut[list(self.values)] = np.arange(self.num_classes)
            # an integer label indexes the table as it is (every value is known, so none is negative)
            return lut[label if label.dtype.kind in "iu" else label.astype(np.int64)]
        out = np.zeros(label.shape, dtype=dtype)
        for index, value in enumerate(self.values):
            out[label == value] = index
        return out

    def decode(self, classes: np.ndarray) -> np.ndarray:
        """Class indices -> label values, in the smallest integer type that holds them."""
        dtype = np.uint8 if max(self.values) < 256 and min(self.values) >= 0 else np.int32
        return np.asarray(self.values, dtype=dtype)[classes]

    def to_json(self) -> dict:
        return {"values": list(self.values), "names": list(self.names)}

    @classmethod
    def from_json(cls, data: dict) -> LabelMap:
        return cls(tuple(int(v) for v in data["values"]), tuple(str(n) for n in data["names"]))


@dataclass(frozen=True)
class ChannelNorm:
    """How one channel is normalised: `ct` (clip to foreground percentiles, global z-score) or `zscore` (per case)."""

    kind: str
    clip_low: float = 0.0
    clip_high: float = 0.0
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Preprocessing:
    """Everything scoring needs to turn a case into network input exactly as in training."""

    channels: tuple[ChannelNorm, ...]
    target_spacing: tuple[float, float] | None = None  # in-plane (rows, columns) mm; None keeps native pixels
    divisor: int = 16  # network input H, W are padded to a multiple of this

    def to_json(self) -> dict:
        return {"channels": [asdict(c) for c in self.channels],
                "target_spacing": list(self.target_spacing) if self.target_spacing else None,
                "divisor": self.divisor}

    @classmethod
    def from_json(cls, data: dict) -> Preprocessing:
        try:
            return cls(tuple(ChannelNorm(**c) for c in data["channels"]),
                       tuple(data["target_spacing"]) if data.get("target_spacing") else None,
                       int(data.get("divisor", 16)))
        except (KeyError, TypeError) as exc:
            raise ModelError(f"run.json: invalid 'preprocessing' ({exc})") from exc

    def resample_factor(self, case: Case) -> tuple[float, float]:
        """Output pixels per input pixel along (rows, columns)."""
        if self.target_spacing is None:
            return (1.0, 1.0)
        spacing = case.geometry.in_plane_spacing()
        return (spacing[0] / self.target_spacing[0], spacing[1] / self.target_spacing[1])


def is_ct(channel_name: str) -> bool:
    return channel_name.strip().upper() in ("CT", "CT_HU", "HU")


class PreprocessingFit:
    """fit_preprocessing one case at a time: `add` each training case in order, then `result` (streaming).

    Only the sampled foreground voxels are kept (at most 20,000 float64 per CT channel and case), so the
    raw cases need not be held together; the same cases in the same order give bit-identical statistics.
    """

    def __init__(self, channel_names: list[str], target_spacing: tuple[float, float] | None = None,
                 seed: int = 0) -> None:
        self.channel_names = list(channel_names)
        self.target_spacing = target_spacing
        self.rng = np.random.default_rng(seed)
        self.samples: list[list[np.ndarray]] = [[] for _ in channel_names]

    def add(self, case: Case) -> None:
        if case.label is None:
            return
        foreground = case.label.array != 0
        if not foreground.any():
            return
        for c, name in enumerate(self.channel_names):
            if is_ct(name):
                voxels = case.channels[c].array[foreground]
                take = min(voxels.size, _SAMPLES_PER_CASE)
                self.samples[c].append(self.rng.choice(voxels, size=take, replace=False).astype(np.float64))

    def result(self) -> Preprocessing:
        norms = []
        for c, name in enumerate(self.channel_names):
            if is_ct(name) and self.samples[c]:
                pooled = np.concatenate(self.samples[c])
                low, high = np.percentile(pooled, CT_PERCENTILES)
                clipped = np.clip(pooled, low, high)
                norms.append(ChannelNorm("ct", float(low), float(high), float(clipped.mean()),
                                         float(max(clipped.std(), 1e-6))))
            else:
                norms.append(ChannelNorm("zscore"))
        return Preprocessing(tuple(norms), self.target_spacing)


def fit_preprocessing(cases: Iterable[Case], channel_names: list[str], label_map: LabelMap,
                      target_spacing: tuple[float, float] | None = None, seed: int = 0) -> Preprocessing:
    """Fit intensity normalisation on training cases (nnU-Net's rules).

    CT channels: clip to the 0.5/99.5 percentiles of foreground voxels over all cases, then subtract
    their mean and divide by their std. Other channels: z-score per case at application time.
    `cases` may be a generator: each case is sampled and released in turn (PreprocessingFit).
    """
    fit = PreprocessingFit(channel_names, target_spacing, seed)
    for case in cases:
        fit.add(case)
    return fit.result()


def normalise_image(image: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Normalise a (S, C, H, W) stack of one case; returns float32."""
    if image.shape[1] != len(prep.channels):
        raise ModelError(f"image has {image.shape[1]} channels, the model expects {len(prep.channels)}")
    out = np.empty(image.shape, dtype=np.float32)
    for c, norm in enumerate(prep.channels):
        channel = image[:, c].astype(np.float32)
        if norm.kind == "ct":
            out[:, c] = (np.clip(channel, norm.clip_low, norm.clip_high) - norm.mean) / norm.std
        else:
            mean, std = float(channel.mean()), float(channel.std())
            out[:, c] = (channel - mean) / max(std, 1e-6)
    return out


def prepare_case(case: Case, prep: Preprocessing, label_map: LabelMap | None = None,
                 class_dtype: np.dtype | type = np.int64) -> tuple[np.ndarray, np.ndarray | None]:
    """A case as network input: image (S, C, h, w) float32 and, with a label map, classes (S, h, w) int64
    (or `class_dtype`: the preprocessed folder keeps label_map.class_dtype, the same indices in fewer bytes).

    h, w are the in-plane sizes after resampling to `prep.target_spacing` (no padding here).
    """
    image = normalise_image(case.image_slices(), prep)
    factor = prep.resample_factor(case)
    image = resample_slices(image, factor, order=1)
    classes = None
    if label_map is not None and case.label is not None:
        classes = resample_slices(label_map.encode(case.label_slices(), class_dtype), factor, order=0)
    return image, classes


def pad_to_multiple(array: np.ndarray, divisor: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pad the last two axes up to a multiple of `divisor` (bottom/right). Returns (padded, (h, w))."""
    h, w = array.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return array, (h, w)
    pad = [(0, 0)] * (array.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(array, pad, mode="constant"), (h, w)


def restore_in_plane(stack: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """Resample a (S, h, w) stack back to the case's native in-plane `size` (H, W)."""
    h, w = stack.shape[-2:]
    if (h, w) == tuple(size):
        return stack
    return resample_slices(stack, (size[0] / h, size[1] / w), order=order)

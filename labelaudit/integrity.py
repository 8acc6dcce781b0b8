"""Integrity checks of one image or label file's voxels, as nnU-Net's verify_dataset_integrity (numpy only).

Each check returns the problems it found (a Problem names the case, the file, what was expected and found);
large arrays are reduced in chunks, so no check makes a float copy of a whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .types import Geometry, Problem, Volume


def header_only(volume: Volume) -> Volume:
    """The same grid with a zero-strided stand-in array, so that checked voxels can be freed."""
    return Volume(np.broadcast_to(np.zeros((), volume.array.dtype), volume.array.shape), volume.geometry)


def value_range(array: np.ndarray) -> tuple[float, float]:
    """(min, max) without a float copy: numpy reduces integer arrays in their own dtype."""
    if array.size == 0:
        return math.inf, -math.inf
    return float(np.min(array)), float(np.max(array))


def as_integer_label(array: np.ndarray, largest: int) -> np.ndarray:
    """Labels as a signed integer dtype that torch and numpy index with (int16 unless values need more)."""
    dtype = np.int16 if largest < 2**15 else np.int32
    if array.dtype == dtype:
        return array
    return array.astype(dtype)


_CHUNK = 1 << 22  # voxels per chunk: temporary masks and casts stay ~4-32 MB on a large CT


def _chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        yield flat[start:start + _CHUNK]


def _count_nonfinite(array: np.ndarray) -> int:
    return int(sum(int((~np.isfinite(chunk)).sum()) for chunk in _chunks(array)))


def value_counts(array: np.ndarray) -> dict[int, int]:
    """Voxel count of every value of an integer-valued label, chunked (np.unique would sort a full copy)."""
    if array.size == 0:
        return {}
    low, high = int(np.min(array)), int(np.max(array))
    if high - low < 1 << 16:
        total = np.zeros(high - low + 1, dtype=np.int64)
        for chunk in _chunks(array):
            total += np.bincount((chunk.astype(np.int64) - low), minlength=total.size)
        return {low + i: int(n) for i, n in enumerate(total) if n}
    counts: dict[int, int] = {}
    for chunk in _chunks(array):
        values, n = np.unique(chunk, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[int(v)] = counts.get(int(v), 0) + c
    return dict(sorted(counts.items()))


def vector_problem(components: int) -> str:
    """Why an image with several values per pixel (RGB, RGBA, a vector field) is refused.

    Its components could pass for channels, but no dataset.json declares them, so fit and score would disagree.
    """
    kind = {3: "RGB", 4: "RGBA"}.get(components, "vector")
    files = "/".join(f"_{i:04d}" for i in range(components))
    return (f"{kind} image ({components} values per pixel), expected one: convert it to greyscale or split "
            f"the channels into {files} files")


def check_image(case_id: str, path: Path, volume: Volume) -> list[Problem]:
    geometry = volume.geometry
    if geometry.ndim > 3:
        return [Problem(f"image is {geometry.ndim}D (size {_fmt(geometry.size)}), expected 2D or 3D",
                        case_id, path)]
    if volume.array.size == 0:
        return [Problem(f"image has no voxels (size {_fmt(geometry.size)})", case_id, path)]
    if np.issubdtype(volume.array.dtype, np.floating):
        bad = _count_nonfinite(volume.array)
        if bad:
            return [Problem(f"image holds {bad} NaN/Inf voxels, expected finite values", case_id, path)]
    return []


def check_label(case_id: str, path: Path, label: Volume, grid: Geometry | None,
                 declared: Iterable[int] | None) -> tuple[list[Problem], dict[int, int]]:
    """Problems of one label file and, when it has none, its voxel count per value."""
    geometry = label.geometry
    if geometry.ndim > 3:
        return [Problem(f"label is {geometry.ndim}D (size {_fmt(geometry.size)}), expected 2D or 3D",
                        case_id, path)], {}
    problems = []
    if grid is not None:
        diff = grid.differences(label.geometry)
        if diff:
            problems.append(Problem(f"label grid does not match the image (image vs label: {'; '.join(diff)})",
                                    case_id, path))
    array = label.array
    if array.size == 0:
        return problems + [Problem("label has no voxels", case_id, path)], {}
    if np.issubdtype(array.dtype, np.floating):
        bad = _count_nonfinite(array)
        if bad:
            return problems + [Problem(f"label holds {bad} NaN/Inf voxels, expected integer class values",
                                       case_id, path)], {}
        fractional, example = 0, 0.0
        for chunk in _chunks(array):
            mask = chunk != np.round(chunk)
            n = int(mask.sum())
            if n and not fractional:
                example = float(chunk[mask][0])
            fractional += n
        if fractional:
            return problems + [Problem(
                f"label holds non-integer values (e.g. {example:g} in {fractional} voxels), "
                "expected integer class values", case_id, path)], {}
    elif not np.issubdtype(array.dtype, np.integer):
        return problems + [Problem(f"label has voxel type {array.dtype}, expected integers", case_id, path)], {}
    counts = value_counts(array)
    if declared is not None:
        allowed = sorted(set(int(v) for v in declared))
        extra = [v for v in counts if v not in allowed]
        if extra:
            problems.append(Problem(
                f"label values {extra} are not declared in dataset.json (found in "
                f"{sum(counts[v] for v in extra)} voxels; declared: {allowed})", case_id, path))
    elif min(counts) < 0:
        problems.append(Problem(f"label holds negative values {[v for v in counts if v < 0]}, "
                                "expected class values >= 0", case_id, path))
    return problems, counts


def _fmt(values: tuple) -> str:
    return "×".join(str(v) for v in values)

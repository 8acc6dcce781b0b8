"""One file of given probabilities, read and checked against its case's label (numpy; images through io/).

A file holds one case's class probabilities on the label's grid, classes first: float (C, Z, Y, X) in numpy
order, as SimpleITK reads the label ((C, Y, X) for a 2D label, or nnU-Net's (C, 1, Y, X)). Accepted:
- CASE.npz with a 'probabilities' array, loaded with allow_pickle=False (an npz can hold pickled objects, and
  loading a pickle runs code); an npz has no geometry, so its shape must be the label's;
- an image with one component per class (vector NIfTI/NRRD/MHA, or a 4D image whose 4th axis is the class),
  whose grid must be the label's.
Anything wrong with a file is a ModelError (exit 4) naming it: the probabilities, not the data, are at fault.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .. import io
from ..errors import ImageReadError, ModelError
from ..preprocess import LabelMap
from ..types import Geometry, Volume

NPZ_KEY = "probabilities"
#: Largest |sum over classes - 1| accepted: float16 storage of a softmax stays well within it; logits do not.
SUM_TOLERANCE = 1e-3
_SHAPE_HINT = ("probabilities are classes first on the label's grid, numpy order (C, Z, Y, X), as nnU-Net writes "
               "them; check that SRC holds this dataset's cases")
_SOFTMAX_HINT = ("give the softmax over every class, background included (nnU-Net: --npz, or --save_probabilities); "
                 "logits and the sigmoids of region-based models are not supported")


def is_npz(path: Path) -> bool:
    return path.name.lower().endswith(".npz")


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _open_npz(path: Path) -> np.ndarray:
    """The 'probabilities' array of an npz, never unpickling anything."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if NPZ_KEY not in npz.files:
                raise ModelError(f"{path}: holds no '{NPZ_KEY}' array (found: {', '.join(npz.files) or 'none'})",
                                 hint="nnU-Net's validation and --save_probabilities files hold one")
            return npz[NPZ_KEY]
    except ModelError:
        raise
    except ValueError as exc:  # object arrays, or a pickle instead of an npz: both need allow_pickle
        raise ModelError(f"{path}: holds pickled Python objects, which labelaudit never loads ({exc})",
                         hint="save a plain float array: np.savez_compressed(path, probabilities=array)") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: not a readable .npz ({exc})") from exc


def _floating(array: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise ModelError(f"{path}: probabilities of type {array.dtype}, expected floating point (a softmax)",
                         hint=_SOFTMAX_HINT)
    return array.astype(np.float32, copy=False)


def _sub_grid(geometry: Geometry) -> Geometry:
    """The 3D grid of a 4D image (its first three ITK axes)."""
    n = geometry.ndim
    return Geometry(geometry.size[:3], geometry.spacing[:3], geometry.origin[:3],
                    tuple(geometry.direction[r * n + c] for r in range(3) for c in range(3)))


def _image_probabilities(path: Path, label: Volume) -> np.ndarray:
    """(C, *label.shape) from a multi-component image whose grid is the label's."""
    try:
        volumes = io.read_volumes(path)
    except ImageReadError as exc:
        raise ModelError(f"{path}: cannot read probabilities ({exc.reason})") from exc
    first = volumes[0]
    if len(volumes) == 1 and first.geometry.ndim == 4 and label.geometry.ndim == 3:
        grid, array = _sub_grid(first.geometry), first.array  # numpy (C, Z, Y, X): classes along ITK's 4th axis
    else:
        grid, array = first.geometry, np.stack([v.array for v in volumes])
    differences = label.geometry.differences(grid)
    if differences:
        raise ModelError(f"{path}: its grid does not match the case's label (label vs probabilities: "
                         f"{'; '.join(differences)})", hint=_SHAPE_HINT)
    return _floating(array, path)


def read_probabilities(path: Path, label: Volume, label_map: LabelMap, case_id: str,
                       tolerance: float = SUM_TOLERANCE) -> np.ndarray:
    """One case's probabilities, checked: float32 (C, *label.array.shape); ModelError naming `path` if not."""
    if is_npz(path):
        prob = _floating(_open_npz(path), path)
        want = label.array.shape
        if len(want) == 2 and prob.ndim == 4 and prob.shape[1] == 1:  # nnU-Net writes a 2D case as (C, 1, Y, X)
            prob = prob[:, 0]
        if prob.ndim != len(want) + 1 or prob.shape[1:] != want:
            raise ModelError(f"{path}: probabilities of shape {_shape(prob.shape)}, but case {case_id}'s label is "
                             f"{_shape(want)}: expected {_shape((label_map.num_classes, *want))}", hint=_SHAPE_HINT)
    else:
        prob = _image_probabilities(path, label)
    if prob.shape[0] != label_map.num_classes:
        raise ModelError(f"{path}: probabilities of {prob.shape[0]} classes, but the label set has "
                         f"{label_map.num_classes} ({', '.join(f'{v}={n}' for v, n in zip(label_map.values, label_map.names))})",
                         hint="one channel per class, in the order of the label values, background first")
    check_normalised(prob, path, tolerance)
    return prob


def check_normalised(prob: np.ndarray, path: Path, tolerance: float = SUM_TOLERANCE) -> None:
    """Refuse non-finite values, values outside [0, 1] and sums over the classes (axis 0) that are not 1."""
    finite = np.isfinite(prob)
    if not finite.all():
        bad = prob.size - int(np.count_nonzero(finite))
        raise ModelError(f"{path}: {bad} of {prob.size} probabilities are not finite (NaN or Inf)",
                         hint="re-export the probabilities; the model's output overflowed")
    if prob.size == 0:
        return
    low, high = float(prob.min()), float(prob.max())
    if low < -tolerance or high > 1.0 + tolerance:
        raise ModelError(f"{path}: values from {low:.4g} to {high:.4g}, expected probabilities in [0, 1]",
                         hint=_SOFTMAX_HINT)
    error = float(np.abs(prob.sum(axis=0, dtype=np.float64) - 1.0).max())
    if error > tolerance:
        raise ModelError(f"{path}: the probabilities do not sum to 1 over the classes (largest |sum - 1| = "
                         f"{error:.3g}, tolerance {tolerance:g})", hint=_SOFTMAX_HINT)


def count_classes(path: Path) -> int:
    """How many classes a file holds (an npz's header only), for sources that declare no labels."""
    if is_npz(path):
        try:
            with zipfile.ZipFile(path) as archive, archive.open(NPZ_KEY + ".npy") as member:
                version = np.lib.format.read_magic(member)
                shape = (np.lib.format.read_array_header_1_0(member) if version == (1, 0)
                         else np.lib.format.read_array_header_2_0(member))[0]
        except (KeyError, OSError, EOFError, ValueError, zipfile.BadZipFile):
            shape = _open_npz(path).shape  # says what is wrong with it
        return int(shape[0]) if shape else 0
    try:
        volumes = io.read_volumes(path)
    except ImageReadError as exc:
        raise ModelError(f"{path}: cannot read probabilities ({exc.reason})") from exc
    return volumes[0].geometry.size[3] if len(volumes) == 1 and volumes[0].geometry.ndim == 4 else len(volumes)

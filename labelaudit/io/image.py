"""SimpleITK <-> Volume: the only module that imports SimpleITK."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ImageReadError, InputError, OutputError
from ..types import Geometry, Volume
from . import nifti
from .atomic import TEMP_PREFIX, atomic_path, cannot_write
from .endings import FLOAT_ENDINGS, IMAGE_ENDINGS, split_ending

__all__ = ["FLOAT_ENDINGS", "IMAGE_ENDINGS", "split_ending", "is_image_path", "is_dicom_dir", "geometry_of",
           "read_volumes", "read_volume", "read_geometry", "to_sitk", "write_volume", "write_like",
           "resample_slices"]


def is_image_path(path: Path) -> bool:
    if path.is_dir():
        return is_dicom_dir(path)
    return split_ending(path)[1].lower() in IMAGE_ENDINGS


def is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def geometry_of(image: sitk.Image) -> Geometry:
    return Geometry(
        size=tuple(int(v) for v in image.GetSize()),
        spacing=tuple(float(v) for v in image.GetSpacing()),
        origin=tuple(float(v) for v in image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
    )


def _read_sitk(path: Path) -> tuple[sitk.Image, nifti.NiftiHeader | None]:
    """The image and, for a NIfTI file, its header (read by io: ITK zero-fills what it cannot read)."""
    if not path.exists():
        raise ImageReadError(path, "file not found")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise ImageReadError(path, "folder holds no DICOM series, expected one")
            if len(series) > 1:
                raise ImageReadError(path, f"folder holds {len(series)} DICOM series, expected one")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute(), None
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes), expected an image")
        header = nifti.read_header(path)
        nifti.check_complete(path, header)
        return sitk.ReadImage(str(path)), header
    except ImageReadError:
        raise
    except RuntimeError as exc:  # SimpleITK reports every reader failure as RuntimeError
        raise ImageReadError(path, _short_reason(str(exc), path)) from exc


_ITK_PREFIX = re.compile(r"^(?:sitk::|itk::|ITK )ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?")


def _short_reason(message: str, path: Path | None = None) -> str:
    """The useful part of a SimpleITK error: drop the C++ location line and class/address prefixes."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    lines = [_ITK_PREFIX.sub("", line) for line in lines if not line.startswith("Exception thrown")]
    # MetaIO appends a stale errno ("No such file or directory") even when the file exists
    if path is not None and path.exists():
        lines = [line for line in lines if line != "Reason: No such file or directory"]
    if not lines:
        return "unreadable"
    reason = lines[0]
    if len(lines) > 1:  # teem (NRRD) puts the actual cause on the last line
        reason += " … " + re.sub(r"^\[\w+\]\s*\w+:\s*", "", lines[-1])
    return reason[:300]


def read_volumes(path: Path | str) -> list[Volume]:
    """Read an image file or DICOM series folder; a vector (e.g. RGB) image gives one Volume per component."""
    path = Path(path)
    image, header = _read_sitk(path)
    geometry = geometry_of(image)
    array = sitk.GetArrayFromImage(image)
    del image
    if header is not None and array.ndim == geometry.ndim:
        nifti.restore_nonfinite(path, array, header)
    if array.ndim > geometry.ndim:  # a vector image: one Volume per component
        return [Volume(np.ascontiguousarray(array[..., i]), geometry) for i in range(array.shape[-1])]
    return [Volume(array, geometry)]


def read_volume(path: Path | str) -> Volume:
    """Read a single-component image or label; vector images are refused."""
    volumes = read_volumes(path)
    if len(volumes) != 1:
        raise ImageReadError(path, f"expected a single-component image, found {len(volumes)} components")
    return volumes[0]


def read_geometry(path: Path | str) -> Geometry:
    """Read only the header of an image file (cheap on large volumes)."""
    path = Path(path)
    if path.is_dir():
        return read_volume(path).geometry
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if not path.exists():
        raise ImageReadError(path, "file not found")
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(path, _short_reason(str(exc), path)) from exc
    return Geometry(tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing()),
                    tuple(float(v) for v in reader.GetOrigin()), tuple(float(v) for v in reader.GetDirection()))


def to_sitk(volume: Volume) -> sitk.Image:
    """A scalar SimpleITK image with `volume`'s geometry (a 4D array stays 4D, not a vector image)."""
    image = sitk.GetImageFromArray(volume.array, isVector=False)
    image.SetSpacing(volume.geometry.spacing)
    image.SetOrigin(volume.geometry.origin)
    image.SetDirection(volume.geometry.direction)
    return image


def write_volume(volume: Volume, path: Path | str, compress: bool = True) -> Path:
    """Write `volume` with its exact geometry, atomically (a temp file renamed into place).

    What was written is checked before the rename (SimpleITK returns normally when the disk is full), so a
    file under its final name is always complete; an incomplete or failed write is an OutputError.
    """
    path = Path(path)
    ending = split_ending(path)[1]
    array = volume.array
    if ending.lower() in (".png",) and array.dtype not in (np.uint8, np.uint16):
        if array.min() < 0 or array.max() > 65535 or not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{path}: PNG holds only unsigned 8/16-bit integers, got {array.dtype}")
        volume = Volume(array.astype(np.uint16 if array.max() > 255 else np.uint8), volume.geometry)
    if ending.lower() == ".mhd":
        _write_mhd(volume, path)
        return path
    with atomic_path(path, suffix=ending) as tmp:
        _write_checked(volume, tmp, path, compress)
    return path


def _write_checked(volume: Volume, tmp: Path, target: Path, compress: bool) -> None:
    """Write `volume` to `tmp` and read back what reached the disk; errors name `target`."""
    try:
        sitk.WriteImage(to_sitk(volume), str(tmp), compress)
    except RuntimeError as exc:
        raise OutputError(f"{target}: cannot write image ({_short_reason(str(exc))})") from exc
    size = volume.geometry.size
    if nifti.is_nifti(tmp):
        problem = nifti.written_problem(tmp, math.prod(size))
    else:  # a full read: the NRRD, MetaImage, PNG and TIFF readers all refuse a truncated file
        try:
            found = tuple(sitk.ReadImage(str(tmp)).GetSize())
            problem = None if found == size else f"read back with size {found}, expected {size}"
        except RuntimeError as exc:
            problem = "cannot read it back: " + _short_reason(str(exc), tmp)
    if problem is not None:
        raise OutputError(f"{target}: cannot write image: the written file is incomplete ({problem}); "
                          f"disk full? ({_free_space(target.parent)})",
                          hint="free some space or write elsewhere, then run the command again")


def _free_space(folder: Path) -> str:
    """`12.3 MB free on /mount` for the disk that holds `folder`."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    mount = folder.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return f"{free / 1e6:.1f} MB free on {mount}"


def _write_mhd(volume: Volume, path: Path) -> None:
    """MetaImage header + raw pair: written and checked under their final names in a temp folder, then moved.

    The header names its data file, so the pair cannot be written under temporary names.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=path.parent))
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    try:
        _write_checked(volume, tmp / path.name, path, False)
        for written in sorted(tmp.iterdir(), key=lambda p: p.suffix.lower() == ".mhd"):  # header last
            os.replace(written, path.parent / written.name)
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_like(array: np.ndarray, reference: Geometry, path: Path | str) -> Path:
    """Write `array` (numpy order) on exactly the grid of `reference`."""
    return write_volume(Volume(np.ascontiguousarray(array), reference), path)


def resample_slices(stack: np.ndarray, factor: tuple[float, float], order: int) -> np.ndarray:
    """Resample a (S, H, W) or (S, C, H, W) stack in-plane by `factor` (output/input pixels).

    order 0 is nearest neighbour (labels), 1 linear (images and probabilities).
    """
    if factor == (1.0, 1.0):
        return stack
    lead = stack.shape[:-2]
    h, w = stack.shape[-2:]
    out_h, out_w = max(1, round(h * factor[0])), max(1, round(w * factor[1]))
    flat = stack.reshape(-1, h, w)
    out = np.empty((flat.shape[0], out_h, out_w), dtype=np.float32 if order else stack.dtype)
    interpolator = sitk.sitkNearestNeighbor if order == 0 else sitk.sitkLinear
    for i, plane in enumerate(flat):
        image = sitk.GetImageFromArray(plane.astype(np.float32) if order else plane)
        resampler = sitk.ResampleImageFilter()
        resampler.SetSize((out_w, out_h))
        resampler.SetOutputSpacing((w / out_w, h / out_h))
        resampler.SetOutputOrigin((-(0.5 - 0.5 * w / out_w), -(0.5 - 0.5 * h / out_h)))
        resampler.SetInterpolator(interpolator)
        resampler.SetDefaultPixelValue(0)
        resampler.SetUseNearestNeighborExtrapolator(True)
        out[i] = sitk.GetArrayFromImage(resampler.Execute(image))
    return out.reshape(*lead, out_h, out_w)

"""SimpleITK <-> Volume: the only module that imports SimpleITK."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ImageReadError, InputError
from .types import Geometry, Volume

#: File endings read as images, longest first so that ".nii.gz" wins over ".gz".
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff", ".dcm")
#: Endings that can hold float32 voxels with full geometry.
FLOAT_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def split_ending(path: Path | str) -> tuple[str, str]:
    """Split a file name into (stem, ending), knowing multi-dot endings such as `.nii.gz`."""
    name = Path(path).name
    lower = name.lower()
    for ending in IMAGE_ENDINGS:
        if lower.endswith(ending):
            return name[: -len(ending)], name[-len(ending):]
    return Path(name).stem, Path(name).suffix


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


def _read_sitk(path: Path) -> sitk.Image:
    if not path.exists():
        raise ImageReadError(path, "file not found")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise ImageReadError(path, "folder holds no DICOM series")
            if len(series) > 1:
                raise ImageReadError(path, f"folder holds {len(series)} DICOM series, expected one")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        return sitk.ReadImage(str(path))
    except ImageReadError:
        raise
    except RuntimeError as exc:  # SimpleITK reports every reader failure as RuntimeError
        reason = str(exc).strip().splitlines()
        raise ImageReadError(path, _short_reason(reason)) from exc


def _short_reason(lines: list[str]) -> str:
    for line in lines:
        if "Exception" in line or "Unable" in line or "error" in line.lower():
            return line.split(":", 1)[-1].strip()[:200] or "unreadable"
    return (lines[-1][:200] if lines else "unreadable")


def read_volumes(path: Path | str) -> list[Volume]:
    """Read an image file or DICOM series folder; a vector (e.g. RGB) image gives one Volume per component."""
    path = Path(path)
    image = _read_sitk(path)
    geometry = geometry_of(image)
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
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
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(path, _short_reason(str(exc).splitlines())) from exc
    return Geometry(tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing()),
                    tuple(float(v) for v in reader.GetOrigin()), tuple(float(v) for v in reader.GetDirection()))


def to_sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.geometry.spacing)
    image.SetOrigin(volume.geometry.origin)
    image.SetDirection(volume.geometry.direction)
    return image


def write_volume(volume: Volume, path: Path | str, compress: bool = True) -> Path:
    """Write `volume` with its exact geometry, atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, ending = split_ending(path)
    array = volume.array
    if ending.lower() in (".png",) and array.dtype not in (np.uint8, np.uint16):
        if array.min() < 0 or array.max() > 65535 or not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{path}: PNG holds only unsigned 8/16-bit integers, got {array.dtype}")
        volume = Volume(array.astype(np.uint16 if array.max() > 255 else np.uint8), volume.geometry)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=ending, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(to_sitk(volume), tmp, compress and ending.lower() != ".mhd")
        os.replace(tmp, path)
    except RuntimeError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write image ({_short_reason(str(exc).splitlines())})") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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

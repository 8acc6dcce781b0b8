"""SimpleITK <-> Volume: the only module that imports SimpleITK."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ImageReadError, InputError
from ..types import Geometry, Volume

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
                raise ImageReadError(path, "folder holds no DICOM series, expected one")
            if len(series) > 1:
                raise ImageReadError(path, f"folder holds {len(series)} DICOM series, expected one")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes), expected an image")
        _check_nifti_complete(path, _read_nifti_header(path))
        return sitk.ReadImage(str(path))
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


def _nifti_header(header: bytes) -> dict | None:
    """The fields of a NIfTI-1/2 header that io checks; None if `header` is not NIfTI."""
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    if not 0 < dims[0] <= 7 or bitpix <= 0:
        return None
    voxels = 1
    for n in dims[1:dims[0] + 1]:
        voxels *= max(int(n), 1)
    offset = max(offset, 348)
    return {"endian": endian, "datatype": datatype, "bitpix": bitpix, "offset": offset, "voxels": voxels,
            "expected_bytes": offset + voxels * bitpix // 8}


def _open_nifti(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_nifti_header(path: Path) -> dict | None:
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        with _open_nifti(path) as handle:
            return _nifti_header(handle.read(544))
    except (OSError, EOFError, zlib.error):
        return None  # not gzip/NIfTI after all: let ITK say what is wrong


#: NIfTI datatype codes of real floating-point voxels -> numpy type code.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _restore_nifti_nonfinite(path: Path, array: np.ndarray, header: dict) -> None:
    """Put back the NaN/Inf voxels that ITK's NIfTI reader silently turns into 0.

    Streams the voxel data in chunks (no second full copy); NIfTI's x-fastest order is numpy's C order.
    """
    code = _NIFTI_FLOATS.get(header["datatype"])
    if code is None or not np.issubdtype(array.dtype, np.floating) or array.size != header["voxels"]:
        return
    dtype = np.dtype(header["endian"] + code)
    flat = array.reshape(-1)
    if not np.shares_memory(flat, array):
        return
    chunk_voxels = 1 << 20
    with _open_nifti(path) as handle:
        handle.seek(header["offset"])
        start = 0
        while start < flat.size:
            raw = handle.read(min(chunk_voxels, flat.size - start) * dtype.itemsize)
            values = np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype)
            if values.size == 0:
                break
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                flat[start + bad] = values[bad]
            start += values.size


def _check_nifti_complete(path: Path, header: dict | None) -> None:
    """Refuse a truncated NIfTI file: ITK reads one silently, filling the missing voxels with zeros."""
    if header is None:
        return
    expected = header["expected_bytes"]
    compressed = path.name.lower().endswith(".gz")
    if not compressed:
        found = path.stat().st_size
    else:
        with open(path, "rb") as handle:  # gzip trailer: uncompressed size mod 2**32, cheap to read
            handle.seek(-4, os.SEEK_END)
            trailer = struct.unpack("<I", handle.read(4))[0]
        if expected < 2**32 and trailer == expected:
            return
        found = _gzip_length(path)  # trailer disagrees (or file > 4 GiB): decompress to be sure
    if found < expected:
        raise ImageReadError(path, f"truncated file: expected {expected} bytes from its header, found "
                                   f"{'about ' if compressed else ''}{found} (an interrupted copy?)")


def _gzip_length(path: Path) -> int:
    """Bytes a gzip file decompresses to, counting what a truncated stream still yields (all members)."""
    total = 0
    decompressor = zlib.decompressobj(wbits=31)
    with open(path, "rb") as handle:
        try:
            while chunk := handle.read(1 << 20):
                while chunk:
                    total += len(decompressor.decompress(chunk))
                    chunk = decompressor.unused_data  # a next gzip member, if any
                    if chunk:
                        decompressor = zlib.decompressobj(wbits=31)
            total += len(decompressor.flush())
        except zlib.error:
            pass  # corrupt data: `total` is what could be read
    return total


def read_volumes(path: Path | str) -> list[Volume]:
    """Read an image file or DICOM series folder; a vector (e.g. RGB) image gives one Volume per component."""
    path = Path(path)
    image = _read_sitk(path)
    geometry = geometry_of(image)
    array = sitk.GetArrayFromImage(image)
    del image
    header = _read_nifti_header(path) if path.is_file() and array.ndim == geometry.ndim else None
    if header is not None:
        _restore_nifti_nonfinite(path, array, header)
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
    """Write `volume` with its exact geometry, atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, ending = split_ending(path)
    array = volume.array
    if ending.lower() in (".png",) and array.dtype not in (np.uint8, np.uint16):
        if array.min() < 0 or array.max() > 65535 or not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{path}: PNG holds only unsigned 8/16-bit integers, got {array.dtype}")
        volume = Volume(array.astype(np.uint16 if array.max() > 255 else np.uint8), volume.geometry)
    if ending.lower() == ".mhd":
        _write_mhd(volume, path)
        return path
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=ending, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(to_sitk(volume), tmp, compress)
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except RuntimeError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write image ({_short_reason(str(exc))})") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


def _write_mhd(volume: Volume, path: Path) -> None:
    """MetaImage header + raw pair: written under their final names in a temp folder, then moved.

    The header names its data file, so the pair cannot be written under temporary names.
    """
    stem = split_ending(path)[0]
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=path.parent))
    try:
        sitk.WriteImage(to_sitk(volume), str(tmp / path.name), False)
        for written in sorted(tmp.iterdir(), key=lambda p: p.suffix.lower() == ".mhd"):  # header last
            os.replace(written, path.parent / written.name)
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot write image ({_short_reason(str(exc))})") from exc
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

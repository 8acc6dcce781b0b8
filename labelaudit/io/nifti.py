"""The NIfTI checks ITK skips: truncated files are refused, NaN/Inf voxels put back (stdlib + numpy only).

ITK's NIfTI reader fills the voxels missing from a truncated file with zeros and reads NaN/Inf as 0, and its
writer returns normally when the disk fills up; so io reads the header and counts the data itself.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageReadError

#: Bytes read for the header: a NIfTI-2 header (540) plus its 4-byte extension flag.
_PREFIX_BYTES = 544
#: sizeof_hdr of NIfTI-1 and NIfTI-2: the first field of the file.
_HEADER_SIZES = (348, 540)
#: NIfTI datatype codes of real floating-point voxels -> numpy type code.
_FLOATS = {16: "f4", 64: "f8"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1/2 header that io checks."""

    endian: str  # "<" or ">"
    datatype: int
    bitpix: int
    offset: int  # vox_offset: where the voxels start
    voxels: int

    @property
    def expected_bytes(self) -> int:
        return self.offset + self.voxels * self.bitpix // 8


def is_nifti(path: Path | str) -> bool:
    return Path(path).name.lower().endswith((".nii", ".nii.gz"))


def _compressed(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def parse_header(raw: bytes) -> NiftiHeader | None:
    """The header at the start of `raw`; None if `raw` does not start with a complete NIfTI header."""
    for endian in ("<", ">"):
        if len(raw) >= 348 and struct.unpack(endian + "i", raw[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
            offset = int(struct.unpack(endian + "f", raw[108:112])[0])
            break
        if len(raw) >= 540 and struct.unpack(endian + "i", raw[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", raw[16:80])
            datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
            offset = struct.unpack(endian + "q", raw[168:176])[0]
            break
    else:
        return None
    if not 0 < dims[0] <= 7 or bitpix <= 0:
        return None
    voxels = 1
    for n in dims[1:dims[0] + 1]:
        voxels *= max(int(n), 1)
    return NiftiHeader(endian, datatype, bitpix, max(offset, 348), voxels)


def _declared_size(raw: bytes) -> int | None:
    """sizeof_hdr when `raw` starts like a NIfTI file, in either byte order."""
    if len(raw) < 4:
        return None
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size in _HEADER_SIZES:
            return size
    return None


def _read_prefix(path: Path, n: int) -> bytes | None:
    """Up to the first `n` bytes of the file's content (decompressed for .gz); None if a .gz is not gzip."""
    if not _compressed(path):
        with open(path, "rb") as handle:
            return handle.read(n)
    out = b""
    decompressor = zlib.decompressobj(wbits=31)
    with open(path, "rb") as handle:
        while len(out) < n and (chunk := handle.read(1 << 16)):
            try:
                while chunk and len(out) < n:
                    out += decompressor.decompress(chunk, n - len(out))
                    chunk = decompressor.unconsumed_tail or decompressor.unused_data
                    if decompressor.eof and chunk:  # the next gzip member
                        decompressor = zlib.decompressobj(wbits=31)
            except zlib.error:
                return out or None  # nothing decompressed: not gzip after all, let ITK say what is wrong
    return out[:n]


def read_header(path: Path) -> NiftiHeader | None:
    """The header of a .nii/.nii.gz file; None for other files (and for ones ITK should judge).

    A file too short to hold its own header is an ImageReadError: ITK would read it as an image of zeros.
    """
    path = Path(path)
    if not is_nifti(path):
        return None
    try:
        raw = _read_prefix(path, _PREFIX_BYTES)
    except OSError:
        return None  # unreadable: ITK names the reason
    if raw is None:
        return None
    header = parse_header(raw)
    if header is not None:
        return header
    size = _declared_size(raw)
    if len(raw) < 4 or (size is not None and len(raw) < size):
        content = "decompresses to" if _compressed(path) else "holds"
        raise ImageReadError(path, f"truncated file: {content} {len(raw)} bytes, less than a NIfTI header "
                                   f"({size or 348} bytes; an interrupted copy?)")
    return None


def data_length(path: Path) -> tuple[int, bool]:
    """(bytes a gzip file decompresses to, whether its last stream ended properly), over all members.

    A truncated or corrupt stream counts what it still yields.
    """
    total, complete = 0, False
    decompressor = zlib.decompressobj(wbits=31)
    with open(path, "rb") as handle:
        try:
            while chunk := handle.read(_CHUNK):
                while chunk:
                    total += len(decompressor.decompress(chunk))
                    chunk = decompressor.unused_data  # a next gzip member, if any
                    if chunk:
                        decompressor = zlib.decompressobj(wbits=31)
            total += len(decompressor.flush())
            complete = decompressor.eof
        except zlib.error:
            pass
    return total, complete


def _trailer_matches(path: Path, expected: int) -> bool:
    """Whether the gzip trailer (uncompressed size mod 2**32, cheap to read) says `expected` bytes."""
    if expected >= 2**32 or path.stat().st_size < 18:  # 18: the smallest gzip member
        return False
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return struct.unpack("<I", handle.read(4))[0] == expected


def check_complete(path: Path, header: NiftiHeader | None) -> None:
    """Refuse a NIfTI file with fewer voxel bytes than its header declares."""
    if header is None:
        return
    expected = header.expected_bytes
    compressed = _compressed(path)
    if not compressed:
        found = path.stat().st_size
    elif _trailer_matches(path, expected):
        return
    else:
        found = data_length(path)[0]  # trailer disagrees (or file > 4 GiB): decompress to be sure
    if found < expected:
        raise ImageReadError(path, f"truncated file: expected {expected} bytes from its header, found "
                                   f"{'about ' if compressed else ''}{found} (an interrupted copy?)")


def written_problem(path: Path, voxels: int) -> str | None:
    """Why a NIfTI file just written is not complete (header + `voxels` voxels), or None when it is.

    Stricter than reading: a gzip stream must also end properly.
    """
    path = Path(path)
    try:
        raw = _read_prefix(path, _PREFIX_BYTES) or b""
        header = parse_header(raw)
        if header is None:
            return f"{path.stat().st_size} bytes on disk, no complete NIfTI header"
        if header.voxels != voxels:
            return f"its header declares {header.voxels} voxels, expected {voxels}"
        expected = header.expected_bytes
        if not _compressed(path):
            found, complete = path.stat().st_size, True
        elif _trailer_matches(path, expected):
            return None
        else:
            found, complete = data_length(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if found < expected or not complete:
        return f"{found} of {expected} bytes{'' if complete else ', gzip stream cut off'}"
    return None


def restore_nonfinite(path: Path, array: np.ndarray, header: NiftiHeader) -> None:
    """Put back the NaN/Inf voxels that ITK's NIfTI reader silently turns into 0, in place.

    Streams the voxel data in chunks (no second full copy); NIfTI's x-fastest order is numpy's C order.
    """
    code = _FLOATS.get(header.datatype)
    if code is None or not np.issubdtype(array.dtype, np.floating) or array.size != header.voxels:
        return
    dtype = np.dtype(header.endian + code)
    flat = array.reshape(-1)
    if not np.shares_memory(flat, array):
        return
    with (gzip.open(path, "rb") if _compressed(path) else open(path, "rb")) as handle:
        handle.seek(header.offset)
        start = 0
        while start < flat.size:
            raw = handle.read(min(_CHUNK, flat.size - start) * dtype.itemsize)
            values = np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype)
            if values.size == 0:
                break
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                flat[start + bad] = values[bad]
            start += values.size

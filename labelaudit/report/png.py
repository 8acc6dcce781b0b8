"""A minimal PNG encoder (numpy + zlib) for the report's inline thumbnails: no imaging library needed."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: grey, RGB, RGBA


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _filtered(pixels: np.ndarray, up: bool) -> bytes:
    """Scanlines with filter byte 0 (none) or 2 (up: difference to the row above, mod 256)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    if up:
        rows = rows - np.vstack([np.zeros_like(rows[:1]), rows[:-1]])  # uint8 arithmetic wraps mod 256
    column = np.full((rows.shape[0], 1), 2 if up else 0, dtype=np.uint8)
    return np.hstack([column, rows]).tobytes()


def encode_png(pixels: np.ndarray, level: int = 9) -> bytes:
    """PNG bytes of uint8 pixels: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA.

    Of the filters none and up, the one that compresses smaller is kept (up wins on smooth images).
    """
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"PNG pixels: expected uint8, got {pixels.dtype}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2] if pixels.ndim == 3 else 0
    if channels not in _COLOUR_TYPES or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"PNG pixels: expected (H, W), (H, W, 3) or (H, W, 4) with H, W >= 1, got {pixels.shape}")
    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    data = min((zlib.compress(_filtered(pixels, up), level) for up in (False, True)), key=len)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png_data_uri(pixels: np.ndarray) -> str:
    """`data:image/png;base64,...` of `encode_png(pixels)`."""
    return "data:image/png;base64," + base64.b64encode(encode_png(pixels)).decode("ascii")

"""Synthetic volumes for tests and docs: anisotropic spacing, non-zero origin, rotated direction.

Every function takes a `numpy.random.Generator`; nothing uses global random state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io.image import write_volume
from .types import Geometry, Volume


@dataclass(frozen=True)
class SynthConfig:
    """Shape of a synthetic dataset. `size` is ITK order (x, y, z); z=1 with `two_d` gives 2D images."""

    cases: int = 4
    size: tuple[int, int, int] = (40, 36, 6)
    spacing: tuple[float, float, float] = (0.8, 0.9, 3.0)
    origin: tuple[float, float, float] = (-12.5, 30.0, 7.25)
    rotation_deg: float = 15.0  # about the z axis, so that direction bugs show
    classes: int = 1  # foreground classes (1 = binary)
    channels: int = 1
    modality: str = "CT"
    two_d: bool = False
    seed: int = 0


def rotated_direction(rotation_deg: float, ndim: int = 3) -> tuple[float, ...]:
    """A row-major direction matrix rotated about the last axis."""
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    if ndim == 2:
        return (c, -s, s, c)
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def synth_geometry(config: SynthConfig) -> Geometry:
    if config.two_d:
        return Geometry(config.size[:2], config.spacing[:2], config.origin[:2], rotated_direction(config.rotation_deg, 2))
    return Geometry(config.size, config.spacing, config.origin, rotated_direction(config.rotation_deg))


def synth_label(shape: tuple[int, ...], classes: int, rng: np.random.Generator) -> np.ndarray:
    """Nested ellipsoids (class k inside class k-1), radii varying smoothly along the first axis.

    shape: numpy order, (Z, Y, X) or (Y, X). Returns uint8 of that shape.
    """
    shape3 = shape if len(shape) == 3 else (1, *shape)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape3], indexing="ij")
    cy, cx = shape3[1] * rng.uniform(0.4, 0.6), shape3[2] * rng.uniform(0.4, 0.6)
    ry, rx = shape3[1] * rng.uniform(0.2, 0.3), shape3[2] * rng.uniform(0.2, 0.3)
    # radius profile along z: largest mid-volume, so end slices have small or no structure
    zc = (shape3[0] - 1) / 2
    profile = np.sqrt(np.clip(1 - ((z - zc) / (shape3[0] / 2 + 0.75)) ** 2, 0, 1)) if shape3[0] > 1 else 1.0
    label = np.zeros(shape3, dtype=np.uint8)
    for k in range(1, classes + 1):
        scale = profile * (1.0 - 0.3 * (k - 1))
        inside = ((y - cy) / (ry * scale + 1e-6)) ** 2 + ((x - cx) / (rx * scale + 1e-6)) ** 2 <= 1.0
        label[inside] = k
    return label.reshape(shape)


def synth_image(label: np.ndarray, channel: int, modality: str, rng: np.random.Generator) -> np.ndarray:
    """An image whose intensities follow the label, with smooth bias and noise.

    CT-like images are int16 in HU; others float32.
    """
    if modality.upper() == "CT":
        base, step, noise = -100.0, 80.0 + 20 * channel, 25.0
    else:
        base, step, noise = 100.0, 60.0 + 10 * channel, 12.0
    image = base + step * label.astype(np.float32)
    ramp = np.linspace(-1, 1, label.shape[-1], dtype=np.float32)
    image = image + 15.0 * ramp + rng.normal(0, noise, size=label.shape).astype(np.float32)
    if modality.upper() == "CT":
        return np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return image.astype(np.float32)


def synth_case(config: SynthConfig, rng: np.random.Generator) -> tuple[list[Volume], Volume]:
    """One synthetic case: image channels and label on a rotated, anisotropic grid."""
    geometry = synth_geometry(config)
    label = synth_label(geometry.shape, config.classes, rng)
    channels = [Volume(synth_image(label, c, config.modality, rng), geometry) for c in range(config.channels)]
    return channels, Volume(label, geometry)


def write_synth_dataset(root: Path | str, config: SynthConfig = SynthConfig(), layout: str = "nnunet",
                        file_ending: str | None = None) -> Path:
    """Write a synthetic dataset folder (`nnunet` or `paired` layout) and return its path."""
    root = Path(root)
    ending = file_ending or (".png" if config.two_d else ".nii.gz")
    images_dir = root / ("imagesTr" if layout == "nnunet" else "images")
    labels_dir = root / ("labelsTr" if layout == "nnunet" else "labels")
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    streams = np.random.SeedSequence(config.seed).spawn(config.cases)
    for i, stream in enumerate(streams):
        rng = np.random.default_rng(stream)
        case_id = f"case_{i:03d}"
        channels, label = synth_case(config, rng)
        for c, volume in enumerate(channels):
            if ending == ".png":
                volume = Volume((volume.array.astype(np.float32) + 1024).clip(0, 65535).astype(np.uint16),
                                volume.geometry)
            suffix = f"_{c:04d}" if (layout == "nnunet" or config.channels > 1) else ""
            write_volume(volume, images_dir / f"{case_id}{suffix}{ending}")
        write_volume(label, labels_dir / f"{case_id}{ending}")
    labels = {"background": 0, **{f"class_{k}": k for k in range(1, config.classes + 1)}}
    meta = {
        "name": root.name,
        "channel_names": {str(c): config.modality for c in range(config.channels)},
        "labels": labels,
        "numTraining": config.cases,
        "file_ending": ending,
    }
    if layout == "nnunet":
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root

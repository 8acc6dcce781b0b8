"""Regenerate labelaudit's embedded demo dataset from the MNI ICBM152 2009 template that nilearn ships.

What it makes
-------------
``labelaudit/demo_data/mni_brain/``, a 12-case brain MRI segmentation dataset in
nnU-Net v2 layout (``dataset.json``, ``imagesTr/mni_XXX_0000.nii.gz``,
``labelsTr/mni_XXX.nii.gz``), about 1.8 MB in all:

* image: T1-weighted MRI, int16, one channel (``channel_names {"0": "MR"}``);
* label: uint8, ``background 0`` (CSF and everything outside the brain),
  ``white_matter 1``, ``gray_matter 2`` (cortex, deep nuclei, cerebellum);
* grid: 80 x 96 pixels in-plane at 2 x 2 mm, 16 to 24 axial slices at 4 mm
  (ITK spacing ``(2, 2, 4)``, so slices are taken along the 4 mm axis), an oblique
  direction (tilted 6-16 degrees about the left-right axis and up to 6 degrees
  in-plane, like an oblique axial acquisition) and the origin that follows from it.

How it is derived
-----------------
The sources are nilearn's copies of the ICBM 2009a nonlinear symmetric template
(``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``: skull-stripped T1
and the gray/white matter probability maps, 1 mm isotropic). Each "subject" is the
template seen through its own, seeded (``SeedSequence(seed).spawn(12)``) changes:

1. a slab: 16-24 slices of 4 mm, centred at a different height of the brain for
   each case (the centres are spread over the brain's extent), with a random
   in-plane shift of up to 6 mm;
2. anatomy: a global scale of 0.90-1.04, a rotation of up to 5 degrees about
   each axis, and a smooth random displacement field (cubic interpolation of
   a 5 x 5 x 4 control grid, 2.5 mm standard deviation per component);
3. partial volume: each 2 x 2 x 4 mm voxel averages 2 x 2 x 4 samples of the
   warped template at 1 mm steps, for the T1 and both probability maps alike;
4. label: the argmax of (1 - p_gm - p_wm, p_wm, p_gm) of those averages, so the
   label is exactly consistent with the image (same warp, same averaging);
5. acquisition: a smooth multiplicative bias field (about +-15 %), a random gain,
   and Rician noise (sigma 1.5-3.5 % of the white matter intensity), rounded to int16.

Nothing here is a real patient: every case is the population-average template.

Licence
-------
The ICBM 2009 templates come with the notice below (kept verbatim in
``labelaudit/demo_data/NOTICE`` and ``labelaudit/demo_data/mni_brain/NOTICE``);
it asks that the notice appear in all copies:

    Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
    Montreal Neurological Institute, McGill University. Permission to use, copy,
    modify, and distribute this software and its documentation for any purpose
    and without fee is hereby granted, provided that the above copyright notice
    appear in all copies. ...

Regenerate
----------
Needs nilearn (the ``dev`` extra); run from the repository root::

    python tools/make_demo_data.py            # writes labelaudit/demo_data/mni_brain
    python tools/make_demo_data.py --check    # regenerate in a temp folder, compare voxels with the shipped copy

The output is deterministic for a given seed, nilearn template and numpy/scipy
build; ``dataset.json`` records the SHA-256 of the three source files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelaudit.io.image import read_volume, write_volume  # noqa: E402
from labelaudit.types import Geometry, Volume  # noqa: E402

DEMO_DIR = ROOT / "labelaudit" / "demo_data"
DATASET_NAME = "mni_brain"
SOURCES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
LABELS = {"background": 0, "white_matter": 1, "gray_matter": 2}

NOTICE = """\
The demo dataset in this folder (labelaudit/demo_data/mni_brain) is derived from
the MNI ICBM152 2009a nonlinear symmetric template (T1 and gray/white matter
probability maps) as distributed with nilearn
(nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz).
It was resampled, deformed, sliced and given synthetic bias field and noise by
tools/make_demo_data.py; see README.md. The original templates are available at
https://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/ and are distributed
under the following notice:

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University. Permission to use, copy,
modify, and distribute this software and its documentation for any purpose and
without fee is hereby granted, provided that the above copyright notice appear
in all copies. The authors and McGill University make no representations about
the suitability of this software for any purpose. It is provided "as is"
without express or implied warranty. The authors are not responsible for any
data loss, equipment damage, property loss, or injury to subjects or patients
resulting from the use or misuse of this software package.

References:
- VS Fonov, AC Evans, K Botteron, CR Almli, RC McKinstry, DL Collins and BDCG,
  Unbiased average age-appropriate atlases for pediatric studies, NeuroImage 54(1),
  2011. doi:10.1016/j.neuroimage.2010.07.033
- VS Fonov, AC Evans, RC McKinstry, CR Almli and DL Collins, Unbiased nonlinear
  average age-appropriate brain templates from birth to adulthood, NeuroImage 47
  Suppl 1, S102, 2009. doi:10.1016/S1053-8119(09)70884-5
- DL Collins, AP Zijdenbos, WFC Baare and AC Evans, ANIMAL+INSECT: Improved
  Cortical Structure Segmentation, IPMI 1999, LNCS 1613:210-223.
"""


@dataclass(frozen=True)
class DemoDataConfig:
    """Everything that shapes the demo dataset; saved in dataset.json."""

    cases: int = 12
    in_plane: tuple[int, int] = (80, 96)  # ITK (x, y) pixels
    slices: tuple[int, int] = (16, 24)  # inclusive range of slices per case
    spacing: tuple[float, float, float] = (2.0, 2.0, 4.0)  # ITK (x, y, z) mm
    tilt_deg: tuple[float, float] = (6.0, 16.0)  # oblique tilt about the left-right axis
    in_plane_rotation_deg: float = 6.0
    scale: tuple[float, float] = (0.90, 1.04)
    anatomy_rotation_deg: float = 5.0
    displacement_mm: float = 2.5
    bias: float = 0.15
    noise: tuple[float, float] = (0.015, 0.035)  # Rician sigma / white matter intensity
    seed: int = 20240611


# ----------------------------------------------------------------------------- geometry helpers

def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation about ITK axis 0 (x), 1 (y) or 2 (z)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def physical_to_index(points: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Physical points (3, N) -> continuous numpy indices (3, N) in (z, y, x) order."""
    direction = np.array(geometry.direction).reshape(3, 3)
    ijk = np.linalg.solve(direction, points - np.array(geometry.origin)[:, None]) / np.array(geometry.spacing)[:, None]
    return ijk[::-1]


def smooth_field(rng: np.random.Generator, grid: tuple[int, int, int], shape: tuple[int, ...],
                 std: float, components: int) -> np.ndarray:
    """Random values on a coarse `grid`, cubic-interpolated to `shape`: (components, *shape) float64."""
    coarse = rng.normal(0.0, std, size=(components, *grid))
    coords = np.meshgrid(*[np.linspace(0, g - 1, n) for g, n in zip(grid, shape)], indexing="ij")
    return np.stack([ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in coarse])


# ----------------------------------------------------------------------------- one subject

def make_case(template: dict[str, Volume], brain_center: np.ndarray, center_z: float,
              config: DemoDataConfig, rng: np.random.Generator) -> tuple[Volume, Volume, dict]:
    """One subject: (image int16, label uint8, parameters), both on the same oblique grid."""
    nx, ny = config.in_plane
    nz = int(rng.integers(config.slices[0], config.slices[1] + 1))
    size = (nx, ny, nz)
    spacing = np.array(config.spacing)
    t_geometry = template["t1"].geometry
    t_direction = np.array(t_geometry.direction).reshape(3, 3)

    tilt = float(rng.uniform(*config.tilt_deg)) * float(rng.choice([-1.0, 1.0]))
    spin = float(rng.uniform(-config.in_plane_rotation_deg, config.in_plane_rotation_deg))
    direction = rotation(0, tilt) @ rotation(2, spin) @ t_direction
    shift = rng.uniform(-6.0, 6.0, size=2)
    center = np.array([brain_center[0] + shift[0], brain_center[1] + shift[1], center_z])
    origin = center - direction @ (spacing * (np.array(size) - 1) / 2)
    geometry = Geometry(size, tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                        tuple(float(d) for d in direction.reshape(-1)))

    scale = float(rng.uniform(*config.scale))
    angles = rng.uniform(-config.anatomy_rotation_deg, config.anatomy_rotation_deg, size=3)
    anatomy = rotation(0, angles[0]) @ rotation(1, angles[1]) @ rotation(2, angles[2]) / scale
    shape = geometry.shape  # (Z, Y, X)
    displacement = smooth_field(rng, (4, 5, 5), shape, config.displacement_mm, 3)  # (3, Z, Y, X), ITK x,y,z mm

    # partial volume: average 2 x 2 x 4 sub-samples at 1 mm steps inside every voxel
    offsets = [(ox, oy, oz) for ox in (-0.25, 0.25) for oy in (-0.25, 0.25) for oz in (-0.375, -0.125, 0.125, 0.375)]
    kk, jj, ii = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    sums = {name: np.zeros(shape) for name in template}
    for ox, oy, oz in offsets:
        index = np.stack([ii + ox, jj + oy, kk + oz]).reshape(3, -1)  # ITK (x, y, z)
        points = origin[:, None] + direction @ (spacing[:, None] * index) + displacement.reshape(3, -1)
        source = anatomy @ (points - center[:, None]) + center[:, None]
        coords = physical_to_index(source, t_geometry)
        for name, volume in template.items():
            sums[name] += ndimage.map_coordinates(volume.array, coords, order=1, mode="constant",
                                                  cval=0.0).reshape(shape)
    t1, gm, wm = (sums[n] / len(offsets) for n in ("t1", "gm", "wm"))

    background = np.clip(1.0 - gm - wm, 0.0, 1.0)
    label = np.argmax(np.stack([background, wm, gm]), axis=0).astype(np.uint8)  # order matches LABELS

    bias = np.exp(smooth_field(rng, (3, 3, 3), shape, config.bias / 2, 1)[0])
    gain = float(rng.uniform(200.0, 300.0))  # T1 is scaled to [0, 1]: white matter lands near 170-260
    signal = t1 * bias * gain
    white = float(np.median(signal[label == 1])) if (label == 1).any() else float(signal.max())
    sigma = float(rng.uniform(*config.noise)) * white
    noisy = np.hypot(signal + rng.normal(0.0, sigma, shape), rng.normal(0.0, sigma, shape))  # Rician magnitude
    image = np.clip(np.round(noisy), 0, 32767).astype(np.int16)

    params = {"slices": nz, "tilt_deg": round(tilt, 3), "in_plane_rotation_deg": round(spin, 3),
              "center_mm": [round(float(c), 3) for c in center], "scale": round(scale, 4),
              "anatomy_rotation_deg": [round(float(a), 3) for a in angles], "gain": round(gain, 4),
              "noise_sigma": round(sigma, 3)}
    return Volume(image, geometry), Volume(label, geometry), params


# ----------------------------------------------------------------------------- the dataset

def nilearn_data_dir() -> Path:
    try:
        import nilearn.datasets
    except ImportError as exc:  # a developer tool: say what to install
        raise SystemExit("make_demo_data.py needs nilearn: pip install nilearn (or the 'dev' extra)") from exc
    return Path(nilearn.datasets.__file__).parent / "data"


def load_template(data_dir: Path) -> tuple[dict[str, Volume], dict[str, str]]:
    """The three template maps as float64 in [0, 1] (T1 scaled like the probabilities), and their SHA-256."""
    template, hashes = {}, {}
    for name, file_name in SOURCES.items():
        path = data_dir / file_name
        volume = read_volume(path)
        template[name] = Volume(volume.array.astype(np.float64) / 255.0, volume.geometry)
        hashes[file_name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return template, hashes


def make_dataset(out: Path, config: DemoDataConfig = DemoDataConfig(), data_dir: Path | None = None) -> Path:
    """Write the demo dataset to `out` (replaced if it exists) and return it."""
    template, hashes = load_template(data_dir or nilearn_data_dir())
    geometry = template["t1"].geometry
    brain = (template["gm"].array + template["wm"].array) > 0.5
    kk, jj, ii = np.nonzero(brain)
    t_direction = np.array(geometry.direction).reshape(3, 3)
    to_physical = lambda ijk: np.array(geometry.origin) + t_direction @ (np.array(geometry.spacing) * ijk)  # noqa: E731
    corners = np.stack([to_physical(np.array([ii.min(), jj.min(), kk.min()], float)),
                        to_physical(np.array([ii.max(), jj.max(), kk.max()], float))])
    brain_center = corners.mean(axis=0)
    z_low, z_high = corners[:, 2].min(), corners[:, 2].max()

    if out.exists():
        shutil.rmtree(out)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    streams = np.random.SeedSequence(config.seed).spawn(config.cases)
    # slab centres spread over the brain's height (leaving half a slab at each end), in a seeded order
    half = config.slices[0] * config.spacing[2] / 2
    centers = np.linspace(z_low + half, z_high - half, config.cases)
    order = np.random.default_rng(config.seed).permutation(config.cases)
    cases = {}
    for i, stream in enumerate(streams):
        rng = np.random.default_rng(stream)
        case_id = f"mni_{i + 1:03d}"
        image, label, params = make_case(template, brain_center, float(centers[order[i]]), config, rng)
        for path in (write_volume(image, out / "imagesTr" / f"{case_id}_0000.nii.gz"),
                     write_volume(label, out / "labelsTr" / f"{case_id}.nii.gz")):
            os.chmod(path, 0o644)  # io writes through a 0600 temp file; package data must be world-readable
        cases[case_id] = params
        print(f"{case_id}: {image.geometry.size} voxels, labels {np.bincount(label.array.ravel(), minlength=3)}",
              file=sys.stderr)

    meta = {
        "name": DATASET_NAME,
        "description": "Brain MRI (T1) white/gray matter segmentation derived from the MNI ICBM152 2009a "
                       "template: 12 deterministic pseudo-subjects (slab, deformation, bias field, noise).",
        "reference": "MNI ICBM152 2009a nonlinear symmetric template (Fonov et al. 2009, 2011), as shipped "
                     "with nilearn; derived by labelaudit tools/make_demo_data.py",
        "licence": "MNI ICBM152 notice (permission to use, copy, modify and distribute; keep the notice): see NOTICE",
        "release": "1.0",
        "tensorImageSize": "3D",
        "channel_names": {"0": "MR"},
        "labels": LABELS,
        "numTraining": config.cases,
        "file_ending": ".nii.gz",
        "generator": {"script": "tools/make_demo_data.py", "config": asdict(config), "sources": hashes,
                      "cases": cases},
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "NOTICE").write_text(NOTICE)
    return out


def compare(shipped: Path, fresh: Path) -> list[str]:
    """Voxel-level differences between two copies of the dataset (gzip bytes may differ across zlib builds)."""
    found = []
    for path in sorted(fresh.rglob("*.nii.gz")):
        other = shipped / path.relative_to(fresh)
        if not other.exists():
            found.append(f"{other}: missing")
            continue
        a, b = read_volume(path), read_volume(other)
        if a.geometry.differences(b.geometry) or not np.array_equal(a.array, b.array):
            found.append(f"{other}: differs")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR / DATASET_NAME, help="where to write the dataset")
    parser.add_argument("--check", action="store_true", help="regenerate in a temp folder and compare")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            differences = compare(args.out, make_dataset(Path(tmp) / DATASET_NAME))
        print("\n".join(differences) or f"{args.out}: identical to a fresh build")
        return 1 if differences else 0
    out = make_dataset(args.out)
    (out.parent / "NOTICE").write_text(NOTICE)  # beside the dataset too: the package's demo_data/NOTICE
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The audit-quality suite's datasets and noise regimes (bench/suite.py runs them).

Every dataset is generated deterministically from what ships in packages — nilearn's MNI ICBM152 2009a
template for the brain MR datasets (through tools/make_demo_data.py), numpy for the CT-like ones — as two
nnU-Net-layout folders: `train` (what the user audits) and `new` (clean cases that `check` gates later).

The suite is split by dataset, never by case, so that no default can be tuned to a held-out dataset:

- development half (defaults may be chosen here): `brain_wm` (binary white matter, MR, thick slices),
  `ct_lesion` (1-3 small low-contrast liver lesions in HU; most slices have no structure), `ct_liver` (the
  liver and its lesions: 2 classes of very different size, thin pixels), and since 2026-12-03 `brain_wm_gm`
  (white and gray matter, 3 classes, on a coarse grid of 4 mm slices) and `ct_spleen_kidney` (the spleen and
  both kidneys, 3 classes of small and mid-size organs). These two were added because the three before had
  stopped telling the held-out half's story: cleanlab's softmin ranked slices better in 8 of 9 held-out cells
  and in 4 of 9 development ones, and the gate of small binary organs (ct_kidney, ct_spleen) reached 1 in
  their slice and case regimes, where no development dataset had such an organ. Both are multi-class, as two of the three held-out datasets.
- held-out half (only ever reported): `brain_tissue` (white and gray matter, 3 classes, another grid and
  slice thickness), `ct_organs` (liver, spleen, kidneys: 4 classes, 5 mm slices, another field of view) and
  `brain_gm` (gray matter alone: a thin ribbon, 4 mm slices). `ct_liver` and `brain_gm` were added once
  ct_organs's result had been read, so that the slice score's next change could be chosen on a multi-class
  development dataset and reported on a dataset nobody had looked at.
- fresh held-out half (only ever reported): `ct_kidney` (both kidneys, binary: two small components per slice)
  and `brain_mask` (white and gray matter as one class, a large structure, on thin 2.5 mm slices). Added on
  2026-12-02, once the held-out half had been read at both presets in every regime, to report a slice-score
  change chosen on the development half; that change was withdrawn on the development half's gate figures
  before any fresh result was read (docs/decisions.md), so this half reports the slice score that ships.
  `ct_spleen` (the spleen alone in CT, a mid-size organ, 4 mm slices) joined it on 2026-12-02 from the
  reserve half, where it had been fit but read by nothing, to report the gate's rule of the standard preset
  (6 MADs), chosen on the development half (bench/threshold_rules.py). `ct_lesion_fine` (1-3 small liver
  lesions in HU, as ct_lesion, on a finer grid of 1x1x2 mm and another field of view) joined it on 2026-12-03
  from the reserve half, to report the case score of slice masses chosen on the development half
  (bench/score_gates.py).
  `brain_gm_fine` (gray matter alone on a finer grid, 1.9x1.9x3.2 mm) joined it on 2026-12-04 from the reserve
  half, to report the slice ranking chosen on the development half (bench/score_gates.py --half reserve, as it
  was then).
  `ct_organs_fine` (liver, spleen and kidneys in CT on a finer grid, 1.5x1.5x3 mm) joined it on 2026-12-04 from
  the reserve half, to report the region term of confidently wrong pixels (bench/score_gates.py --half reserve,
  as it was then).
- reserve half (fit, never reported): `brain_tissue_fine` (white and gray matter in MR on a finer grid,
  1.8x1.8x3 mm: multi-class MR, where the held-out half loses most slice figures to cleanlab's softmin), added
  on 2026-12-06 before anything was chosen that day (`python bench/suite.py --half reserve --methods
  stronger`). A dataset put here is fit but read by no table, gate or fix
  section, so that the next default chosen on the development half can be reported on data nobody has read;
  move it to `Half.FRESH` in the commit that reports that choice, and say so in bench/RESULTS.md.

Noise regimes (labelaudit corrupt):
- `slice`: 40 % of the slices with structure, mixed kinds (dilation, erosion, elastic, shift, missing, spurious);
- `case`: 40 % of the cases, each with one annotator's systematic error over every slice (level case);
- `structure`: 25 % of the slices, structure-level errors only (missing or spurious components, and a
  component given the wrong class where there are several classes).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np
from scipy import ndimage

from labelaudit.io.image import read_volume, write_volume
from labelaudit.types import Geometry, Volume

ROOT = Path(__file__).resolve().parents[1]


class Half(str, Enum):
    DEV = "dev"
    HELD_OUT = "held-out"
    FRESH = "fresh"  # held out as well; see the module docstring
    RESERVE = "reserve"  # fit but never read yet; see the module docstring

    @property
    def title(self) -> str:
        """The half's name in the tables of bench/RESULTS.md."""
        names = {"dev": "Development", "held-out": "Held-out", "fresh": "Fresh held-out", "reserve": "Reserve"}
        return names[self.value]

    @property
    def reported(self) -> bool:
        """Whether any table, gate, fix or cleanlab section may read the half's results."""
        return self is not Half.RESERVE


@dataclass(frozen=True)
class Regime:
    """One noise regime: the arguments of `labelaudit corrupt` for the training set and for the new cases."""

    name: str
    level: str
    rate: float
    kinds: tuple[str, ...]
    multi_class_kinds: tuple[str, ...] = ()  # added where the dataset has several foreground classes
    new_rate: float | None = None  # the corrupted copy of the new cases (None: `rate`)

    def corrupt_args(self, classes: int, new: bool = False) -> list[str]:
        kinds = self.kinds + (self.multi_class_kinds if classes > 1 else ())
        rate = self.new_rate if new and self.new_rate is not None else self.rate
        return ["--level", self.level, "--rate", str(rate), "--kinds", ",".join(kinds)]


MIXED = ("dilation", "erosion", "elastic", "shift", "missing", "spurious")
REGIMES = {
    "slice": Regime("slice", "slice", 0.4, MIXED),
    "case": Regime("case", "case", 0.4, ("dilation", "erosion", "shift", "missing"), new_rate=1.0),
    "structure": Regime("structure", "slice", 0.25, ("missing", "spurious"), ("wrong_class",)),
}


@dataclass(frozen=True)
class SuiteDataset:
    name: str
    half: Half
    description: str
    classes: int  # foreground classes
    train_cases: int
    new_cases: int
    make: str  # the generator's name in GENERATORS
    options: dict = field(default_factory=dict)


DATASETS = (
    SuiteDataset("brain_wm", Half.DEV, "MR T1, white matter (binary), 2.5x2.5x3.5 mm, 64x76 px", 1, 16, 8,
                 "brain", {"in_plane": (64, 76), "slices": (14, 18), "spacing": (2.5, 2.5, 3.5), "seed": 101,
                           "keep": {"white_matter": 1}}),
    SuiteDataset("ct_lesion", Half.DEV, "CT in HU, 1-3 small hypodense liver lesions (binary), 1.5x1.5x2.5 mm, "
                 "96x80 px", 1, 16, 8, "ct", {"size": (96, 80), "slices": (14, 18), "spacing": (1.5, 1.5, 2.5),
                                               "seed": 202, "labels": ("lesion",)}),
    SuiteDataset("ct_liver", Half.DEV, "CT in HU, liver and its 1-3 small lesions (2 classes), 1.2x1.2x3 mm, "
                 "100x84 px", 2, 16, 8, "ct", {"size": (100, 84), "slices": (12, 16), "spacing": (1.2, 1.2, 3.0),
                                               "seed": 606, "labels": ("liver", "lesion")}),
    SuiteDataset("brain_tissue", Half.HELD_OUT, "MR T1, white and gray matter (3 classes), 2x2x3 mm, 72x88 px",
                 2, 16, 8, "brain", {"in_plane": (72, 88), "slices": (16, 20), "spacing": (2.0, 2.0, 3.0),
                                     "seed": 303, "keep": {"white_matter": 1, "gray_matter": 2}}),
    SuiteDataset("ct_organs", Half.HELD_OUT, "CT in HU, liver / spleen / kidneys (4 classes), 2x2x5 mm, 88x72 px",
                 3, 16, 8, "ct", {"size": (88, 72), "slices": (12, 16), "spacing": (2.0, 2.0, 5.0), "seed": 404,
                                  "labels": ("liver", "spleen", "kidney")}),
    SuiteDataset("brain_gm", Half.HELD_OUT, "MR T1, gray matter (binary, a thin ribbon), 2.2x2.2x4 mm, 68x80 px",
                 1, 16, 8, "brain", {"in_plane": (68, 80), "slices": (14, 18), "spacing": (2.2, 2.2, 4.0),
                                     "seed": 505, "keep": {"gray_matter": 1}}),
    SuiteDataset("ct_kidney", Half.FRESH, "CT in HU, both kidneys (binary, two small components), 1.6x1.6x3 mm, "
                 "84x72 px", 1, 16, 8, "ct", {"size": (84, 72), "slices": (14, 18), "spacing": (1.6, 1.6, 3.0),
                                              "seed": 707, "labels": ("kidney",)}),
    SuiteDataset("brain_mask", Half.FRESH, "MR T1, white and gray matter as one class (binary, a large structure), "
                 "2.4x2.4x2.5 mm, 60x72 px", 1, 16, 8, "brain",
                 {"in_plane": (60, 72), "slices": (20, 26), "spacing": (2.4, 2.4, 2.5), "seed": 808,
                  "keep": {"white_matter": 1, "gray_matter": 1}, "labels": {"brain": 1}}),
    SuiteDataset("ct_spleen", Half.FRESH, "CT in HU, the spleen (binary, a mid-size organ), 1.8x1.8x4 mm, "
                 "80x76 px", 1, 16, 8, "ct", {"size": (80, 76), "slices": (12, 16), "spacing": (1.8, 1.8, 4.0),
                                              "seed": 909, "labels": ("spleen",)}),
    SuiteDataset("ct_lesion_fine", Half.FRESH, "CT in HU, 1-3 small hypodense liver lesions (binary), "
                 "1x1x2 mm, 112x92 px", 1, 16, 8, "ct", {"size": (112, 92), "slices": (16, 20),
                                                         "spacing": (1.0, 1.0, 2.0), "seed": 1111,
                                                         "labels": ("lesion",)}),
    SuiteDataset("brain_wm_gm", Half.DEV, "MR T1, white and gray matter (3 classes), 2.6x2.6x4 mm, 60x72 px", 2, 16,
                 8, "brain", {"in_plane": (60, 72), "slices": (12, 16), "spacing": (2.6, 2.6, 4.0), "seed": 1212,
                              "keep": {"white_matter": 1, "gray_matter": 2}}),
    SuiteDataset("ct_spleen_kidney", Half.DEV, "CT in HU, the spleen and both kidneys (3 classes, small and "
                 "mid-size organs), 1.4x1.4x3 mm, 92x84 px", 2, 16, 8, "ct",
                 {"size": (92, 84), "slices": (14, 18), "spacing": (1.4, 1.4, 3.0), "seed": 1313,
                  "labels": ("spleen", "kidney")}),
    SuiteDataset("brain_gm_fine", Half.FRESH, "MR T1, gray matter (binary, a thin ribbon), 1.9x1.9x3.2 mm, "
                 "76x92 px", 1, 16, 8, "brain", {"in_plane": (76, 92), "slices": (14, 18),
                                                 "spacing": (1.9, 1.9, 3.2), "seed": 1414,
                                                 "keep": {"gray_matter": 1}}),
    SuiteDataset("ct_organs_fine", Half.FRESH, "CT in HU, liver / spleen / kidneys (4 classes), 1.5x1.5x3 mm, "
                 "104x88 px", 3, 16, 8, "ct", {"size": (104, 88), "slices": (12, 16), "spacing": (1.5, 1.5, 3.0),
                                               "seed": 1515, "labels": ("liver", "spleen", "kidney")}),
    SuiteDataset("brain_tissue_fine", Half.RESERVE, "MR T1, white and gray matter (3 classes), 1.8x1.8x3 mm, "
                 "80x96 px", 2, 16, 8, "brain", {"in_plane": (80, 96), "slices": (16, 20),
                                                 "spacing": (1.8, 1.8, 3.0), "seed": 1616,
                                                 "keep": {"white_matter": 1, "gray_matter": 2}}),
)


def dataset_named(name: str) -> SuiteDataset:
    for dataset in DATASETS:
        if dataset.name == name:
            return dataset
    raise SystemExit(f"unknown suite dataset {name!r}: choose from {', '.join(d.name for d in DATASETS)}")


def make(dataset: SuiteDataset, dest: Path) -> tuple[Path, Path]:
    """Write dest/train and dest/new (reused when both exist already); returns them."""
    train, new = dest / "train", dest / "new"
    if (train / "dataset.json").exists() and (new / "dataset.json").exists():
        return train, new
    shutil.rmtree(dest, ignore_errors=True)
    GENERATORS[dataset.make](dataset, dest / "all")
    _split(dest / "all", train, new, dataset.train_cases)
    shutil.rmtree(dest / "all")
    return train, new


def _split(source: Path, train: Path, new: Path, train_cases: int) -> None:
    """Move the first `train_cases` cases to `train` and the others to `new` (both nnU-Net layout)."""
    meta = json.loads((source / "dataset.json").read_text())
    ids = sorted(p.name[: -len(".nii.gz")] for p in (source / "labelsTr").glob("*.nii.gz"))
    for dest, chosen in ((train, ids[:train_cases]), (new, ids[train_cases:])):
        (dest / "imagesTr").mkdir(parents=True)
        (dest / "labelsTr").mkdir()
        for case in chosen:
            for image in (source / "imagesTr").glob(f"{case}_*.nii.gz"):
                shutil.move(image, dest / "imagesTr" / image.name)
            shutil.move(source / "labelsTr" / f"{case}.nii.gz", dest / "labelsTr" / f"{case}.nii.gz")
        (dest / "dataset.json").write_text(json.dumps({**meta, "numTraining": len(chosen)}, indent=2) + "\n")


# ----------------------------------------------------------------------------- brain MR (nilearn's MNI template)

def _demo_generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "tools" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_brain(dataset: SuiteDataset, out: Path) -> Path:
    """Pseudo-subjects of the MNI template (tools/make_demo_data.py) on another grid; labels kept per `keep`."""
    generator = _demo_generator()
    o = dataset.options
    config = replace(generator.DemoDataConfig(), cases=dataset.train_cases + dataset.new_cases,
                     in_plane=tuple(o["in_plane"]), slices=tuple(o["slices"]), spacing=tuple(o["spacing"]),
                     seed=int(o["seed"]))
    generator.make_dataset(out, config)
    source = {"white_matter": 1, "gray_matter": 2}
    lut = np.zeros(256, dtype=np.uint8)
    for name, value in o["keep"].items():
        lut[source[name]] = value
    for path in sorted((out / "labelsTr").glob("*.nii.gz")):
        label = read_volume(path)
        write_volume(Volume(lut[label.array], label.geometry), path)
    meta = json.loads((out / "dataset.json").read_text())
    meta.update(name=dataset.name, description=dataset.description,
                labels={"background": 0, **o.get("labels", o["keep"])})
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------- CT-like abdomen (numpy)

#: HU of each tissue; organ contrasts as in portal-venous CT, lesions hypodense to the liver.
HU = {"air": -1000.0, "fat": -100.0, "muscle": 45.0, "liver": 60.0, "spleen": 50.0, "kidney": 150.0,
      "bone": 450.0, "vessel": 170.0}


def _ellipsoid(points: np.ndarray, center, radii) -> np.ndarray:
    """Signed-ish distance: < 1 inside the ellipsoid (points (3, ...) in mm, x y z order)."""
    return sum(((points[i] - center[i]) / radii[i]) ** 2 for i in range(3))


def ct_case(dataset: SuiteDataset, rng: np.random.Generator, index: int) -> tuple[Volume, Volume]:
    """One CT-like abdominal case in HU (int16) and its label (uint8) on an axial grid with a random in-plane
    rotation; organs deformed by a smooth random field, lesions 4-10 mm in radius inside the liver."""
    o = dataset.options
    nx, ny = o["size"]
    nz = int(rng.integers(o["slices"][0], o["slices"][1] + 1))
    sx, sy, sz = o["spacing"]
    shape = (nz, ny, nx)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    # mm about the field of view's centre, deformed by a smooth displacement (2.5 mm std)
    pts = np.stack([(xx - nx / 2) * sx, (yy - ny / 2) * sy, (zz - nz / 2) * sz])
    coarse = rng.normal(0.0, 2.5, size=(3, 3, 4, 4))
    coords = np.meshgrid(*[np.linspace(0, g - 1, n) for g, n in zip((3, 4, 4), shape)], indexing="ij")
    pts = pts + np.stack([ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in coarse])
    fov_x, fov_y = nx * sx, ny * sy
    s = rng.uniform(0.9, 1.08)  # body size
    body = _ellipsoid(pts, (0, 0, 0), (0.44 * fov_x * s, 0.40 * fov_y * s, 1e9)) < 1
    wall = _ellipsoid(pts, (0, 0, 0), (0.44 * fov_x * s - 8, 0.40 * fov_y * s - 8, 1e9)) < 1
    inner = _ellipsoid(pts, (0, 0, 0), (0.44 * fov_x * s - 16, 0.40 * fov_y * s - 16, 1e9)) < 1
    image = np.full(shape, HU["air"])
    image[body] = HU["fat"]  # subcutaneous fat, then the muscle wall, then a cavity of fat and bowel
    image[wall] = HU["muscle"]
    bowel = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), sigma=(1.0, 3.0, 3.0))
    image[inner] = (-60.0 + 70.0 * np.tanh(bowel / bowel.std()))[inner]
    label = np.zeros(shape, dtype=np.uint8)
    names = o["labels"]
    z0 = rng.uniform(-0.15, 0.15) * nz * sz  # where the slab cuts the organs
    organs = {
        "liver": ((-0.16 * fov_x * s, -0.02 * fov_y * s, z0 + 10), (0.20 * fov_x * s, 0.26 * fov_y * s, 70)),
        "spleen": ((0.22 * fov_x * s, 0.10 * fov_y * s, z0 + 15), (0.08 * fov_x * s, 0.12 * fov_y * s, 45)),
        "kidney_r": ((-0.12 * fov_x * s, 0.22 * fov_y * s, z0 - 20), (0.06 * fov_x * s, 0.08 * fov_y * s, 40)),
        "kidney_l": ((0.12 * fov_x * s, 0.22 * fov_y * s, z0 - 15), (0.06 * fov_x * s, 0.08 * fov_y * s, 40)),
    }
    for organ, (center, radii) in organs.items():
        jitter = rng.uniform(0.85, 1.15, size=3)
        inside = (_ellipsoid(pts, center, np.array(radii) * jitter) < 1) & inner
        tissue = "kidney" if organ.startswith("kidney") else organ
        image[inside] = HU[tissue] + rng.normal(0, 5)
        if tissue in names:
            label[inside] = names.index(tissue) + 1
    spine = (_ellipsoid(pts, (0, 0.30 * fov_y * s, 0), (12, 12, 1e9)) < 1)
    image[spine] = HU["bone"]
    aorta = (_ellipsoid(pts, (8, 0.18 * fov_y * s, 0), (7, 7, 1e9)) < 1)
    image[aorta] = HU["vessel"]
    liver = _ellipsoid(pts, *organs["liver"]) < 0.8  # lesions well inside the liver
    if "lesion" in names or "liver" in names:
        candidates = np.argwhere(liver & inner)
        for _ in range(int(rng.integers(1, 4))):
            if not len(candidates):
                break
            cz, cy, cx = candidates[rng.integers(len(candidates))]
            radius = rng.uniform(4.0, 10.0)
            lesion = _ellipsoid(pts, pts[:, cz, cy, cx], (radius, radius * rng.uniform(0.8, 1.2), radius)) < 1
            image[lesion] = HU["liver"] - rng.uniform(30.0, 50.0)
            if "lesion" in names:
                label[lesion] = names.index("lesion") + 1
    # partial volume and correlated noise, as a reconstruction kernel leaves them
    image = ndimage.gaussian_filter(image, sigma=(0.4, 0.7, 0.7))
    noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), sigma=(0.0, 0.6, 0.6))
    image = image + noise / noise.std() * rng.uniform(10.0, 18.0)
    angle = np.radians(rng.uniform(-8, 8))
    c, s_ = np.cos(angle), np.sin(angle)
    direction = (c, -s_, 0.0, s_, c, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry((nx, ny, nz), (sx, sy, sz), (-120.0 + index, -100.0, -300.0 + 7 * index), direction)
    return (Volume(np.clip(np.round(image), -1024, 3071).astype(np.int16), geometry), Volume(label, geometry))


def make_ct(dataset: SuiteDataset, out: Path) -> Path:
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    total = dataset.train_cases + dataset.new_cases
    for index, stream in enumerate(np.random.SeedSequence(int(dataset.options["seed"])).spawn(total)):
        image, label = ct_case(dataset, np.random.default_rng(stream), index)
        case_id = f"{dataset.name}_{index + 1:03d}"
        write_volume(image, out / "imagesTr" / f"{case_id}_0000.nii.gz")
        write_volume(label, out / "labelsTr" / f"{case_id}.nii.gz")
    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(dataset.options["labels"])}}
    meta = {"name": dataset.name, "description": dataset.description, "channel_names": {"0": "CT"},
            "labels": labels, "numTraining": total, "file_ending": ".nii.gz",
            "generator": {"script": "bench/suite_data.py", "options": {k: list(v) if isinstance(v, tuple) else v
                                                                       for k, v in dataset.options.items()}}}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


GENERATORS = {"brain": make_brain, "ct": make_ct}

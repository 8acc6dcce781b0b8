"""Synthetic label noise: sample a corruption with an rng, then apply it (pure), and noisy dataset copies.

Array legend: a label *slice* is an integer array of shape (H, W) (numpy order, one 2D
sample along the through-plane axis, see types.to_slices); a *stack* is (S, H, W).

Noise models (the seed papers' and the public generators', research/algorithms.md §3.7, §4.5, §5):

- ``dilation`` / ``erosion``: binary dilation or erosion of one class with a disk of radius
  r px (in-plane, on the slice).
- ``elastic``: a random-grid elastic deformation of one class with `elasticdeform`, nearest-
  neighbour (order 0): displacements ~ N(0, sigma^2) px on a points x points control grid.
  The displacement is drawn from our rng and stored, then applied with
  ``elasticdeform.deform_grid``; this is exactly what ``deform_random_grid`` does, except that
  ``deform_random_grid`` draws from NumPy's global random state, which would make runs
  irreproducible.
- ``mcpm``: MCPM's "ElasticDeform family" — one of rotation about the structure's centroid,
  translation, elastic deformation and dilation, chosen uniformly (params["op"]).
- ``shift``: boundary shift, the structure's outline translated by a few px.
- ``missing``: the class erased on the slice.
- ``spurious``: a disk-shaped blob of the class painted on background, near or away from the
  existing structure.

How one class is changed while the others stay consistent: the operation acts on the class's
*envelope* F (its mask with holes filled, so a class that encloses another, e.g. liver around
tumour, moves or shrinks by its outer outline and leaves the enclosed class alone). Pixels the
class gains become the class, whatever they were (over-painting); pixels it loses take the label
that surrounds that component of the class (the most common label just outside it: background
for an isolated organ, the outer organ for an enclosed tumour). So the label values never leave
the set already on the slice plus the corrupted class.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import io
from ..data import Track, discover_dataset, iter_cases, no_track
from ..errors import InputError, MissingDependencyError, UsageError
from ..types import from_slices, to_slices

#: Every kind `corrupt --kinds` accepts.
KINDS = ("dilation", "erosion", "elastic", "shift", "missing", "spurious", "mcpm")
#: The default mix: every kind that needs only the base install (elastic and mcpm need elasticdeform).
DEFAULT_KINDS = ("dilation", "erosion", "shift", "missing", "spurious")
#: MCPM's ElasticDeform family (algorithms.md §3.7), one chosen uniformly per corruption.
MCPM_OPS = ("rotation", "translation", "elastic", "dilation")
#: Kinds that change an existing structure, so the slice must hold the class.
_NEEDS_CLASS = ("dilation", "erosion", "elastic", "shift", "missing", "mcpm")
MANIFEST_NAME = "corruption.json"
ELASTIC_INSTALL = "pip install --no-binary elasticdeform elasticdeform"


@dataclass(frozen=True)
class NoiseParams:
    """Magnitude ranges of the noise models, in in-plane pixels (inclusive ranges).

    Defaults follow algorithms.md §3.7 for small structures (LIDC-like 64 px patches):
    radii U{1..3}, elastic sigma 2-4 px on a 3x3 grid, rotation 10-30 degrees, translation
    2-6 px per axis (mcpm). ``shift`` moves the outline 2-5 px in a random direction.
    """

    dilation_radius: tuple[int, int] = (1, 3)
    erosion_radius: tuple[int, int] = (1, 3)
    shift_px: tuple[int, int] = (2, 5)
    translation_px: tuple[int, int] = (2, 6)
    rotation_deg: tuple[float, float] = (10.0, 30.0)
    elastic_sigma: tuple[float, float] = (2.0, 4.0)
    elastic_points: int = 3
    spurious_radius: tuple[int, int] = (2, 5)
    max_tries: int = 6  # fresh parameters of the same kind before another kind is tried

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Corruption:
    """One sampled corruption: apply it with `apply_corruption`; `params` is JSON-serialisable."""

    kind: str
    label_class: int
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"kind": self.kind, "class": self.label_class, "params": self.params}

    @classmethod
    def from_json(cls, data: dict) -> Corruption:
        return cls(str(data["kind"]), int(data["class"]), dict(data["params"]))


# ----------------------------------------------------------------------------- helpers

def require_elasticdeform():
    """Import elasticdeform lazily; a missing or broken install (the NumPy-2 `_ARRAY_API not found`
    failure of the PyPI wheel) is a MissingDependencyError (exit 5) naming the fix."""
    try:
        import elasticdeform
        from elasticdeform import deform_grid  # noqa: F401 - loads the C extension, where the wheel fails
    except Exception as exc:  # ImportError, or AttributeError/RuntimeError from a NumPy ABI mismatch
        raise MissingDependencyError("elasticdeform (for --kinds elastic)", ELASTIC_INSTALL) from exc
    return elasticdeform


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _uniform_int(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(int(bounds[0]), int(bounds[1]) + 1))


def _envelope(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled (what an annotator outlines)."""
    return ndimage.binary_fill_holes(mask)


def _centroid(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [round(float(ys.mean()), 3), round(float(xs.mean()), 3)]


def _translate(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Integer translation; what leaves the slice is lost, what enters is empty."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    src_y, dst_y = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    src_x, dst_x = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    if src_y.start < src_y.stop and src_x.start < src_x.stop:
        out[dst_y, dst_x] = mask[src_y, src_x]
    return out


def _rotate(mask: np.ndarray, angle_deg: float, center: Sequence[float]) -> np.ndarray:
    """Rotate a mask about `center` (row, column), nearest neighbour."""
    theta = math.radians(angle_deg)
    # affine_transform maps each output coordinate o to the input coordinate matrix @ o + offset
    matrix = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    c = np.asarray(center, dtype=float)
    offset = c - matrix @ c
    return ndimage.affine_transform(mask.astype(np.uint8), matrix, offset=offset, order=0, mode="constant",
                                    cval=0).astype(bool)


def _elastic(mask: np.ndarray, displacement: list) -> np.ndarray:
    elasticdeform = require_elasticdeform()
    moved = elasticdeform.deform_grid(mask.astype(np.float32), np.asarray(displacement, dtype=float), order=0,
                                      mode="constant", cval=0.0)
    return moved > 0.5


def _surrounding_fill(label: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    """For every pixel of `envelope`, the most common label just outside its connected component.

    Returns an array like `label`; only pixels inside `envelope` are meaningful.
    """
    fill = np.zeros_like(label)
    components, count = ndimage.label(envelope)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
        part = components[grown] == index
        ring = ndimage.binary_dilation(part) & ~envelope[grown]
        values = label[grown][ring]
        if values.size:
            uniq, counts = np.unique(values, return_counts=True)
            fill[grown][part] = uniq[np.argmax(counts)]  # ties: the smaller label (background first)
    return fill


# ----------------------------------------------------------------------------- sampling (rng) and applying (pure)

def classes_on(label: np.ndarray) -> list[int]:
    """The foreground (non-zero) label values present in `label`, sorted."""
    return [int(v) for v in np.unique(label) if v != 0]


def sample_corruption(label: np.ndarray, kind: str, classes: Sequence[int], rng: np.random.Generator,
                      params: NoiseParams = NoiseParams()) -> Corruption | None:
    """Draw one corruption of `kind` for the label slice `label` (H, W); None when `kind` cannot apply.

    The class is drawn among the foreground classes present on the slice, or for ``spurious``
    among `classes` (the declared foreground classes). `rng` is the only source of randomness.
    """
    if kind not in KINDS:
        raise UsageError(f"unknown corruption kind '{kind}'", hint=f"choose from {', '.join(KINDS)}")
    present = classes_on(label)
    if kind == "spurious":
        choices = [int(c) for c in classes if c != 0] or present
        if not choices:
            return None
        label_class = int(rng.choice(choices))
        blob = _sample_blob(label, rng, params)
        return None if blob is None else Corruption(kind, label_class, blob)
    if not present:
        return None
    label_class = int(rng.choice(present))
    mask = label == label_class
    if kind == "mcpm":
        op = str(rng.choice(MCPM_OPS))
        return Corruption(kind, label_class, {"op": op, **_sample_op(op, mask, rng, params)})
    return Corruption(kind, label_class, _sample_op(kind, mask, rng, params))


def _sample_op(op: str, mask: np.ndarray, rng: np.random.Generator, params: NoiseParams) -> dict:
    if op == "dilation":
        return {"radius": _uniform_int(rng, params.dilation_radius)}
    if op == "erosion":
        return {"radius": _uniform_int(rng, params.erosion_radius)}
    if op == "shift":
        magnitude = _uniform_int(rng, params.shift_px)
        angle = rng.uniform(0, 2 * math.pi)
        dy, dx = round(magnitude * math.sin(angle)), round(magnitude * math.cos(angle))
        if dy == 0 and dx == 0:
            dx = magnitude
        return {"dy": int(dy), "dx": int(dx)}
    if op == "translation":
        dy, dx = (_uniform_int(rng, params.translation_px) * int(rng.choice((-1, 1))) for _ in range(2))
        return {"dy": int(dy), "dx": int(dx)}
    if op == "rotation":
        angle = rng.uniform(*params.rotation_deg) * rng.choice((-1.0, 1.0))
        return {"angle_deg": round(float(angle), 3), "center": _centroid(_envelope(mask))}
    if op == "elastic":
        sigma = float(rng.uniform(*params.elastic_sigma))
        points = int(params.elastic_points)
        displacement = rng.normal(0.0, sigma, size=(2, points, points)).round(4)
        return {"sigma": round(sigma, 4), "points": points, "displacement": displacement.tolist()}
    if op == "missing":
        return {}
    raise ValueError(f"unknown operation {op!r}")


def _sample_blob(label: np.ndarray, rng: np.random.Generator, params: NoiseParams) -> dict | None:
    """A blob centre on background, fully inside the slice; `near` blobs lie within ~2 radii of
    the existing structure, others farther away (either where the other is impossible)."""
    radius = _uniform_int(rng, params.spurious_radius)
    h, w = label.shape
    foreground = label != 0
    inner = np.zeros_like(foreground)
    if h > 2 * radius and w > 2 * radius:
        inner[radius:h - radius, radius:w - radius] = True
    if not foreground.any():
        candidates = {"none": inner}
    else:
        distance = ndimage.distance_transform_edt(~foreground)
        gap = radius + 1  # the blob must not touch the structure
        candidates = {"near": inner & (distance > gap) & (distance <= gap + 2 * radius),
                      "away": inner & (distance > gap + 2 * radius)}
    options = [name for name, where in candidates.items() if where.any()]
    if not options:
        return None
    where = str(rng.choice(options))
    ys, xs = np.nonzero(candidates[where])
    pick = int(rng.integers(ys.size))
    return {"center": [int(ys[pick]), int(xs[pick])], "radius": radius,
            "near": None if where == "none" else where == "near"}


def apply_corruption(label: np.ndarray, corruption: Corruption) -> np.ndarray:
    """Apply `corruption` to the label slice `label` (H, W); returns a new array of the same dtype.

    Pure: the same slice and corruption always give the same result (replayable from the manifest).
    """
    c = corruption.label_class
    params = corruption.params
    out = label.copy()
    if corruption.kind == "spurious":
        cy, cx = (int(v) for v in params["center"])
        r = int(params["radius"])
        yy, xx = np.ogrid[:label.shape[0], :label.shape[1]]
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        out[blob & (label == 0)] = c
        return out
    mask = label == c
    if not mask.any():
        return out
    envelope = _envelope(mask)
    op = params.get("op", corruption.kind) if corruption.kind == "mcpm" else corruption.kind
    if op == "dilation":
        moved = ndimage.binary_dilation(envelope, structure=_disk(params["radius"]))
    elif op == "erosion":
        moved = ndimage.binary_erosion(envelope, structure=_disk(params["radius"]))
    elif op in ("shift", "translation"):
        moved = _translate(envelope, int(params["dy"]), int(params["dx"]))
    elif op == "rotation":
        moved = _rotate(envelope, float(params["angle_deg"]), params["center"])
    elif op == "elastic":
        moved = _elastic(envelope, params["displacement"])
    elif op == "missing":
        moved = np.zeros_like(envelope)
    else:
        raise ValueError(f"unknown corruption {corruption.kind!r} / {op!r}")
    lost = mask & ~moved
    if lost.any():
        out[lost] = _surrounding_fill(label, envelope)[lost]
    out[moved & ~envelope] = c
    return out


def corrupt_slice(label: np.ndarray, kinds: Sequence[str], classes: Sequence[int], rng: np.random.Generator,
                  params: NoiseParams = NoiseParams()) -> tuple[np.ndarray, Corruption | None]:
    """Corrupt the label slice `label` (H, W) so that at least one pixel changes.

    A kind is drawn uniformly among `kinds`; when its corruption changes nothing (or cannot
    apply, e.g. ``missing`` on an empty slice), fresh parameters are drawn, then the other
    kinds in random order. Returns (new slice, corruption), or (copy, None) when no kind can
    change the slice.
    """
    first = str(rng.choice(list(kinds)))
    others = [k for k in kinds if k != first]
    order = [first] + [str(k) for k in rng.permutation(others)] if others else [first]
    for kind in order:
        if kind in _NEEDS_CLASS and not (label != 0).any():
            continue
        for _ in range(params.max_tries):
            corruption = sample_corruption(label, kind, classes, rng, params)
            if corruption is None:
                break
            noisy = apply_corruption(label, corruption)
            if (noisy != label).any():
                return noisy, corruption
    return label.copy(), None


def sample_systematic(stack: np.ndarray, kinds: Sequence[str], classes: Sequence[int], rng: np.random.Generator,
                      params: NoiseParams = NoiseParams()) -> tuple[np.ndarray, Corruption | None, np.ndarray]:
    """One annotator's systematic error over a volume: one corruption applied to every slice with foreground.

    stack: label slice stack (S, H, W). The class is drawn among the classes present in the
    volume (``spurious``: among `classes`), the parameters on the slice where that class is
    largest, and the same corruption is applied to every slice with foreground. Tries like
    `corrupt_slice` until some pixel changes. Returns (new stack, corruption or None,
    per-slice changed-pixel counts of shape (S,)).
    """
    has_fg = (stack != 0).reshape(stack.shape[0], -1).any(axis=1)
    first = str(rng.choice(list(kinds)))
    others = [k for k in kinds if k != first]
    order = [first] + ([str(k) for k in rng.permutation(others)] if others else [])
    present = classes_on(stack)
    for kind in order:
        if not has_fg.any():
            break
        for _ in range(params.max_tries):
            if kind == "spurious":
                reference = int(np.argmax((stack != 0).reshape(stack.shape[0], -1).sum(axis=1)))
            else:
                label_class = int(rng.choice(present))
                reference = int(np.argmax((stack == label_class).reshape(stack.shape[0], -1).sum(axis=1)))
            ref_slice = stack[reference]
            if kind != "spurious":  # draw parameters for that class only
                ref_slice = np.where(stack[reference] == label_class, stack[reference], 0)
            corruption = sample_corruption(ref_slice, kind, classes, rng, params)
            if corruption is None:
                break
            noisy = stack.copy()
            for s in np.flatnonzero(has_fg):
                noisy[s] = apply_corruption(stack[s], corruption)
            changed = (noisy != stack).reshape(stack.shape[0], -1).sum(axis=1)
            if changed.any():
                return noisy, corruption, changed
    return stack.copy(), None, np.zeros(stack.shape[0], dtype=np.int64)


# ----------------------------------------------------------------------------- dataset level

@dataclass(frozen=True)
class CorruptConfig:
    """What `labelaudit corrupt` does: a noisy copy of `clean` in `out` with a manifest."""

    clean: Path
    out: Path
    rate: float = 0.4
    kinds: tuple[str, ...] = DEFAULT_KINDS
    level: str = "slice"  # "slice" or "case"
    seed: int = 0
    params: NoiseParams = NoiseParams()
    force: bool = False
    strict: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.rate <= 1.0 or math.isnan(self.rate):
            raise UsageError(f"--rate must be between 0 and 1, got {self.rate}")
        if not self.kinds:
            raise UsageError("--kinds is empty", hint=f"choose from {', '.join(KINDS)}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise UsageError(f"unknown corruption kind(s) {', '.join(unknown)}",
                             hint=f"choose from {', '.join(KINDS)}")
        if self.level not in ("slice", "case"):
            raise UsageError(f"--level must be 'slice' or 'case', got '{self.level}'")


def parse_kinds(text: str) -> tuple[str, ...]:
    """Parse a comma-separated --kinds value; unknown names are a UsageError (exit 2)."""
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in text.split(",") if k.strip()))
    CorruptConfig(Path("."), Path("."), kinds=kinds).validate()
    return kinds


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))  # round() rounds half to even: 0.5 * 5 would give 2


def _check_out(clean: Path, out: Path, force: bool) -> None:
    clean_r, out_r = clean.resolve(), out.resolve()
    if out_r == clean_r or clean_r in out_r.parents:
        raise UsageError(f"OUT {out} is inside CLEAN {clean}", hint="write the noisy copy outside the clean dataset")
    if out_r in clean_r.parents:
        raise UsageError(f"CLEAN {clean} is inside OUT {out}", hint="choose an OUT folder that does not hold CLEAN")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"OUT {out} exists and is not a folder")
        if any(out.iterdir()):
            if not force:
                raise UsageError(f"OUT {out} exists and is not empty", hint="use --force to replace it, or another OUT")
            if not (out / MANIFEST_NAME).exists():
                raise UsageError(f"OUT {out} is not empty and is not the output of 'labelaudit corrupt' "
                                 f"(no {MANIFEST_NAME}); refusing to delete it even with --force",
                                 hint="empty it yourself or choose another OUT")


def _copy_tree(clean: Path, dest: Path, skip: set[Path], label_dirs: set[Path]) -> None:
    """Copy every file of `clean` to `dest`, except `skip`. Image files outside the label folders
    are hard-linked when possible (never modified); everything else is copied."""
    for dirpath, _, filenames in os.walk(clean, followlinks=True):
        here = Path(dirpath)
        target = dest / here.relative_to(clean)
        target.mkdir(parents=True, exist_ok=True)
        in_labels = any(here == d or d in here.parents for d in label_dirs)
        for name in filenames:
            src = here / name
            if src in skip:
                continue
            ending = io.split_ending(name)[1].lower()
            is_image = ending in io.IMAGE_ENDINGS or ending == ""  # DICOM files often have no ending
            if is_image and not in_labels:
                try:
                    os.link(src, target / name)
                    continue
                except OSError:
                    pass  # another file system, or links not allowed: copy
            shutil.copy2(src, target / name)


def corrupt_dataset(config: CorruptConfig, track: Track = no_track) -> dict:
    """Write a noisy copy of `config.clean` to `config.out` with `corruption.json`; return the manifest.

    `--level slice`: the population is every slice (along the through-plane axis) that holds
    any foreground (label != 0), pooled over all readable cases; exactly round(rate * N) of
    them are drawn without replacement and each gets one corruption that changes at least one
    pixel. `--level case`: the population is every readable case with foreground;
    round(rate * n) cases each get one systematic corruption over all their slices with
    foreground. Rounding is half up. The draw is a random permutation's prefix, so for one seed
    the corrupted set at a lower rate is contained in that at a higher rate.
    Random streams: SeedSequence(seed).spawn(n_cases + 1): the first draws the selection,
    one per case (in discovery order, sorted by case id) for the corruptions; within a case,
    one stream per slice at slice level. Results do not depend on processing order.
    """
    config.validate()
    clean, out = Path(config.clean), Path(config.out)
    if any(k in ("elastic", "mcpm") for k in config.kinds):
        require_elasticdeform()  # fail before any work, not halfway through
    dataset = discover_dataset(clean)
    _check_out(clean, out, config.force)

    refs = list(dataset.cases)
    folders = [ref.label_path for ref in refs if ref.label_path is not None and ref.label_path.is_dir()]
    if folders:
        raise InputError(f"{folders[0]}: a label stored as a DICOM series cannot be rewritten "
                         f"({len(folders)} such label(s))",
                         hint="convert the labels to NIfTI (.nii.gz) or NRRD first")
    streams = np.random.SeedSequence(config.seed).spawn(len(refs) + 1)
    index_of = {ref.case_id: i for i, ref in enumerate(refs)}

    # pass 1: check every case (as every command does) and find the slices with foreground
    info: dict[str, dict] = {}
    seen_classes: set[int] = set()
    for case, _ in iter_cases(dataset, strict=config.strict, track=track):
        assert case is not None and case.label is not None
        stack = case.label_slices()
        has_fg = (stack != 0).reshape(stack.shape[0], -1).any(axis=1)
        seen_classes.update(classes_on(stack))
        ref = refs[index_of[case.case_id]]
        info[case.case_id] = {"ref": ref, "fg": has_fg, "slices": int(stack.shape[0])}
        del case, stack
    if not info:
        raise InputError(f"{clean}: no readable case to corrupt", hint="run 'labelaudit inspect' to see the problems")
    declared = sorted(v for v in (dataset.labels or {}).values() if v != 0) or sorted(seen_classes)

    # selection
    selection_rng = np.random.default_rng(streams[0])
    case_ids = sorted(info, key=lambda cid: index_of[cid])
    if config.level == "slice":
        population = [(cid, int(s)) for cid in case_ids for s in np.flatnonzero(info[cid]["fg"])]
        k = _round_half_up(config.rate * len(population))
        chosen = {population[i] for i in selection_rng.permutation(len(population))[:k]}
        population_text = ("slices with any foreground (label != 0) along the through-plane axis, pooled over "
                           f"all {len(case_ids)} readable cases: {len(population)} slices")
    else:
        population = [cid for cid in case_ids if info[cid]["fg"].any()]
        k = _round_half_up(config.rate * len(population))
        chosen_cases = {population[i] for i in selection_rng.permutation(len(population))[:k]}
        population_text = (f"cases with any foreground (label != 0): {len(population)} of "
                           f"{len(case_ids)} readable cases")

    # pass 2: write the copy into a sibling temp folder, then move it into place
    label_paths = {info[cid]["ref"].label_path for cid in case_ids}
    label_dirs = {(clean / name) for name in ("labelsTr", "labels", "labelsTs")} | {p.parent for p in label_paths}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    cases_json: dict[str, dict] = {}
    try:
        _copy_tree(clean, partial, skip=label_paths, label_dirs=label_dirs)
        for cid in track(case_ids, "corrupting labels"):
            entry = info[cid]
            ref = entry["ref"]
            rel = ref.label_path.relative_to(clean)
            slices = [{"slice_index": s, "corrupted": False, "kind": None, "class": None, "params": None,
                       "changed_pixels": 0, "eligible": bool(entry["fg"][s])} for s in range(entry["slices"])]
            case_entry: dict = {"corrupted": False, "changed_pixels": 0, "label_file": rel.as_posix()}
            case_stream = streams[1 + index_of[cid]]
            if config.level == "slice":
                picked = [s for s in range(entry["slices"]) if (cid, s) in chosen]
            else:
                picked = list(np.flatnonzero(entry["fg"])) if cid in chosen_cases else []
            if picked:
                volume = io.read_volume(ref.label_path)  # original dtype, to write it back unchanged
                stack = to_slices(volume.array, volume.geometry).copy()
                if config.level == "slice":
                    slice_streams = case_stream.spawn(entry["slices"])
                    for s in picked:
                        noisy, corruption = corrupt_slice(stack[s], config.kinds, declared,
                                                          np.random.default_rng(slice_streams[s]), config.params)
                        changed = int((noisy != stack[s]).sum())
                        if corruption is not None:
                            stack[s] = noisy
                            slices[s].update(corrupted=True, kind=corruption.kind, params=corruption.params,
                                             changed_pixels=changed, **{"class": corruption.label_class})
                else:
                    noisy, corruption, changed = sample_systematic(stack, config.kinds, declared,
                                                                   np.random.default_rng(case_stream), config.params)
                    if corruption is not None:
                        stack = noisy
                        case_entry["corruption"] = corruption.to_json()
                        for s in np.flatnonzero(changed):
                            slices[s].update(corrupted=True, kind=corruption.kind, params=corruption.params,
                                             changed_pixels=int(changed[s]), **{"class": corruption.label_class})
                total = sum(sl["changed_pixels"] for sl in slices)
                if total:
                    written = io.write_like(from_slices(stack, volume.geometry), volume.geometry, partial / rel)
                    os.chmod(written, ref.label_path.stat().st_mode & 0o777)  # keep the original label's permissions
                    case_entry.update(corrupted=True, changed_pixels=total)
            if not case_entry["corrupted"]:
                (partial / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ref.label_path, partial / rel)  # byte for byte
            case_entry["slices"] = slices
            cases_json[cid] = case_entry

        if config.level == "slice":
            corrupted = sum(sl["corrupted"] for c in cases_json.values() for sl in c["slices"])
        else:
            corrupted = sum(c["corrupted"] for c in cases_json.values())
        manifest = {
            "format": 1,
            "source": str(clean.resolve()),
            "rate": config.rate,
            "level": config.level,
            "kinds": list(config.kinds),
            "seed": config.seed,
            "population": population_text,
            "population_size": len(population),
            "corrupted_count": int(corrupted),
            "achieved_rate": corrupted / len(population) if population else 0.0,
            "classes": declared,
            "noise_params": config.params.to_json(),
            "skipped": {cid: [str(p) for p in problems] for cid, problems in sorted(dataset.skipped.items())},
            "cases": cases_json,
        }
        (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()  # _check_out allowed it
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def summarize(manifest: dict) -> dict:
    """Counts for the CLI table: per kind, the corrupted slices, cases and changed pixels."""
    by_kind: dict[str, dict] = {}
    for cid, case in manifest["cases"].items():
        for sl in case["slices"]:
            if not sl["corrupted"]:
                continue
            kind = sl["kind"]
            if kind == "mcpm":
                kind = f"mcpm/{sl['params'].get('op')}"
            row = by_kind.setdefault(kind, {"slices": 0, "cases": set(), "changed_pixels": 0})
            row["slices"] += 1
            row["cases"].add(cid)
            row["changed_pixels"] += sl["changed_pixels"]
    return {kind: {**row, "cases": len(row["cases"])} for kind, row in sorted(by_kind.items())}

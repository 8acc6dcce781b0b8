"""Synthetic label noise operators: sample a corruption with an rng, then apply it (pure).

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
- ``wrong_class`` (multi-class data only): one connected component of a class relabelled to another
  foreground class (level case: the whole class), never to the class that surrounds it — that
  label would be the same as a ``missing`` one.

How one class is changed while the others stay consistent: the operation acts on the class's
*envelope* F (its mask with holes filled, so a class that encloses another, e.g. liver around
tumour, moves or shrinks by its outer outline and leaves the enclosed class alone). Pixels the
class gains become the class, whatever they were (over-painting); pixels it loses take the label
that surrounds that component of the class (the most common label just outside it: background
for an isolated organ, the outer organ for an enclosed tumour). So the label values never leave
the set already on the slice plus the corrupted class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..config import NoiseKind, NoiseParams
from ..errors import MissingDependencyError, UsageError
from ..formats.manifest import Corruption

__all__ = ["Corruption", "MCPM_OPS", "NoiseParams", "apply_corruption", "classes_on", "corrupt_slice",
           "require_elasticdeform", "sample_corruption", "sample_systematic"]

#: MCPM's ElasticDeform family (algorithms.md §3.7), one chosen uniformly per corruption.
MCPM_OPS = ("rotation", "translation", "elastic", "dilation")
#: Kinds that change an existing structure, so the slice must hold the class.
_NEEDS_CLASS = frozenset(NoiseKind) - {NoiseKind.SPURIOUS}
ELASTIC_INSTALL = "pip install --no-binary elasticdeform elasticdeform"


def _kind(kind: NoiseKind | str) -> NoiseKind:
    try:
        return NoiseKind(kind)
    except ValueError:
        raise UsageError(f"unknown corruption kind '{kind}'",
                         hint=f"choose from {', '.join(k.value for k in NoiseKind)}") from None


# ----------------------------------------------------------------------------- helpers

def require_elasticdeform():
    """Import elasticdeform lazily; a missing or broken install is a MissingDependencyError (exit 5) naming
    the fix (see docs/decisions.md for why the wheel can be broken)."""
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


def _kind_order(kinds: Sequence[NoiseKind | str], rng: np.random.Generator) -> list[NoiseKind]:
    """The kinds to try: one drawn uniformly, then the others in random order.

    The rng sees the kinds' plain string values (numpy would turn enum members into their repr).
    """
    names = [_kind(k).value for k in kinds]
    first = str(rng.choice(names))
    others = [k for k in names if k != first]
    order = [first] + ([str(k) for k in rng.permutation(others)] if others else [])
    return [NoiseKind(k) for k in order]


# ----------------------------------------------------------------------------- sampling (rng) and applying (pure)

def classes_on(label: np.ndarray) -> list[int]:
    """The foreground (non-zero) label values present in `label`, sorted."""
    return [int(v) for v in np.unique(label) if v != 0]


def sample_corruption(label: np.ndarray, kind: NoiseKind | str, classes: Sequence[int], rng: np.random.Generator,
                      params: NoiseParams = NoiseParams()) -> Corruption | None:
    """Draw one corruption of `kind` for the label slice `label` (H, W); None when `kind` cannot apply.

    The class is drawn among the foreground classes present on the slice, or for ``spurious``
    among `classes` (the declared foreground classes). `rng` is the only source of randomness.
    """
    kind = _kind(kind)
    present = classes_on(label)
    if kind is NoiseKind.SPURIOUS:
        choices = [int(c) for c in classes if c != 0] or present
        if not choices:
            return None
        label_class = int(rng.choice(choices))
        blob = _sample_blob(label, rng, params)
        return None if blob is None else Corruption(kind, label_class, blob)
    if kind is NoiseKind.WRONG_CLASS:
        _require_classes(classes, present)
    if not present:
        return None
    label_class = int(rng.choice(present))
    if kind is NoiseKind.WRONG_CLASS:
        return _sample_relabel(label, label_class, classes, rng)
    mask = label == label_class
    if kind is NoiseKind.MCPM:
        op = str(rng.choice(MCPM_OPS))
        return Corruption(kind, label_class, {"op": op, **_sample_op(op, mask, rng, params)})
    return Corruption(kind, label_class, _sample_op(kind.value, mask, rng, params))


def _require_classes(classes: Sequence[int], present: Sequence[int]) -> None:
    """wrong_class needs two foreground classes (declared, or on the slice); else a UsageError (exit 2)."""
    if len({int(c) for c in (*classes, *present) if c != 0}) < 2:
        raise UsageError("--kinds wrong_class needs multi-class data (two or more foreground classes); this "
                         "dataset has one", hint="drop wrong_class from --kinds")


def _targets(label: np.ndarray, mask: np.ndarray, label_class: int, classes: Sequence[int]) -> list[int]:
    """The classes the component `mask` of `label_class` may be relabelled to: any other foreground class
    but the one around it (which `missing` would give)."""
    surrounding = int(np.bincount(_surrounding_fill(label, _envelope(mask))[mask].astype(np.int64)).argmax())
    return sorted({int(c) for c in classes if c not in (0, label_class, surrounding)})


def _sample_relabel(label: np.ndarray, label_class: int, classes: Sequence[int], rng: np.random.Generator,
                    whole_class: bool = False) -> Corruption | None:
    """wrong_class: a component of `label_class` (tried in random order, weighted by area; then the other classes)
    and a target class; params {"to": class, "at": [row, col] of one pixel of the component}, or only
    {"to": class} for the whole class (`whole_class`, level case)."""
    present = classes_on(label)
    others = [int(c) for c in rng.permutation([c for c in present if c != label_class])] if len(present) > 1 else []
    for value in [label_class, *others]:
        mask = label == value
        if whole_class:
            targets = _targets(label, mask, value, classes) if mask.any() else []
            if targets:
                return Corruption(NoiseKind.WRONG_CLASS, value, {"to": int(rng.choice(targets))})
            continue
        components, count = ndimage.label(mask)
        area = np.bincount(components.ravel(), minlength=count + 1)[1:].astype(np.float64)
        # larger components first, by chance: a relabelled speck of a few pixels is no error worth finding
        for index in (rng.choice(count, size=count, replace=False, p=area / area.sum()) + 1 if count else []):
            part = components == index
            targets = _targets(label, part, value, classes)
            if targets:
                row, col = (int(v[0]) for v in np.nonzero(part))
                return Corruption(NoiseKind.WRONG_CLASS, value, {"to": int(rng.choice(targets)), "at": [row, col]})
    return None


def _relabel(label: np.ndarray, label_class: int, params: dict) -> np.ndarray:
    """Apply wrong_class: the component of `label_class` at params["at"] (or all of it) becomes params["to"]."""
    out = label.copy()
    mask = label == label_class
    if params.get("at") is not None:
        row, col = (int(v) for v in params["at"])
        components, _ = ndimage.label(mask)
        index = components[row, col] if 0 <= row < label.shape[0] and 0 <= col < label.shape[1] else 0
        mask = components == index if index else np.zeros_like(mask)
    out[mask] = int(params["to"])
    return out


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
    if corruption.kind is NoiseKind.SPURIOUS:
        cy, cx = (int(v) for v in params["center"])
        r = int(params["radius"])
        yy, xx = np.ogrid[:label.shape[0], :label.shape[1]]
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        out[blob & (label == 0)] = c
        return out
    if corruption.kind is NoiseKind.WRONG_CLASS:
        return _relabel(label, c, params)
    mask = label == c
    if not mask.any():
        return out
    envelope = _envelope(mask)
    op = params.get("op", "mcpm") if corruption.kind is NoiseKind.MCPM else corruption.kind.value
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
        raise ValueError(f"unknown corruption {corruption.kind.value!r} / {op!r}")
    lost = mask & ~moved
    if lost.any():
        out[lost] = _surrounding_fill(label, envelope)[lost]
    out[moved & ~envelope] = c
    return out


def corrupt_slice(label: np.ndarray, kinds: Sequence[NoiseKind | str], classes: Sequence[int],
                  rng: np.random.Generator, params: NoiseParams = NoiseParams()) -> tuple[np.ndarray, Corruption | None]:
    """Corrupt the label slice `label` (H, W) so that at least one pixel changes.

    A kind is drawn uniformly among `kinds`; when its corruption changes nothing (or cannot
    apply, e.g. ``missing`` on an empty slice), fresh parameters are drawn, then the other
    kinds in random order. Returns (new slice, corruption), or (copy, None) when no kind can
    change the slice.
    """
    for kind in _kind_order(kinds, rng):
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


def sample_systematic(stack: np.ndarray, kinds: Sequence[NoiseKind | str], classes: Sequence[int],
                      rng: np.random.Generator, params: NoiseParams = NoiseParams()
                      ) -> tuple[np.ndarray, Corruption | None, np.ndarray]:
    """One annotator's systematic error over a volume: one corruption applied to every slice with foreground.

    stack: label slice stack (S, H, W). The class is drawn among the classes present in the
    volume (``spurious``: among `classes`), the parameters on the slice where that class is
    largest, and the same corruption is applied to every slice with foreground. Tries like
    `corrupt_slice` until some pixel changes. Returns (new stack, corruption or None,
    per-slice changed-pixel counts of shape (S,)).
    """
    has_fg = (stack != 0).reshape(stack.shape[0], -1).any(axis=1)
    order = _kind_order(kinds, rng)
    present = classes_on(stack)
    for kind in order:
        if not has_fg.any():
            break
        for _ in range(params.max_tries):
            if kind is NoiseKind.SPURIOUS:
                reference = int(np.argmax((stack != 0).reshape(stack.shape[0], -1).sum(axis=1)))
                ref_slice = stack[reference]
            else:  # draw parameters for that class only
                label_class = int(rng.choice(present))
                reference = int(np.argmax((stack == label_class).reshape(stack.shape[0], -1).sum(axis=1)))
                ref_slice = np.where(stack[reference] == label_class, stack[reference], 0)
            if kind is NoiseKind.WRONG_CLASS:  # the whole class, judged on the full slice (what surrounds it)
                _require_classes(classes, present)
                corruption = _sample_relabel(stack[reference], label_class, classes, rng, whole_class=True)
            else:
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

"""The partial audit that `score --shard i/N` writes, and its typed reader for `labelaudit merge`.

    PART_DIR/cases.csv, slices.csv, maps/   as an audit folder's, for this shard's cases only
    PART_DIR/summary.json                   as an audit's, plus "shard": which part of which split, the dataset's
                                            fingerprint and case list, the run's identity, the class names
    PART_DIR/part/arrays.npz                the floats of slices.csv at full precision, and the thumbnails
    PART_DIR/part/views.json                the report's view of each case (files, orientation, regions, crops)

The full-precision floats are there because merge ranks and flags the slices again: slices.csv's six
decimals would reorder near-ties and move a score that rounds onto the threshold. The views are there
because the report's thumbnails are taken while a case is in memory; merge keeps those of the worst cases
of all parts. A part has no report: merge writes it, for all parts together.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, UsageError
from ..io.atomic import atomic_path, write_text
from ..report.views import CaseView, Orientation, RegionNote, SliceView
from ..types import Audit, AuditDataset, AuditRun, CaseScore, SliceScore, Threshold, ThresholdSource
from .audit import SLICE_COLUMNS, read_rows
from .fields import Fields, load_json
from .run import read_calibration

PART_FORMAT = 1
PART_FOLDER = "part"
_HINT = "PART_DIR is a folder written by `labelaudit score --shard i/N --out PART_DIR`"
_FLOATS = ("noise_score", "disagreement", "doubt_fraction")  # the float columns of slices.csv
_PARTS = ("structure_score", "softmin")  # the float columns of slices.csv that the noise score is made of
_PICTURES = ("image", "label", "pred", "noise")  # the arrays of a SliceView


def part_identity(summary: dict) -> dict:
    """What every part of one audit shares, from its summary.json content: the dataset, the run (where it lies
    may differ between machines), the thresholds, the pixel score, K and labelaudit's version."""
    dataset = summary.get("dataset") or {}
    return {"dataset": {k: dataset.get(k) for k in ("name", "layout", "fit_dataset")},
            "run": {k: v for k, v in (summary.get("run") or {}).items() if k != "path"},
            "threshold": summary.get("threshold"), "pixel_score": summary.get("pixel_score"),
            "perturbations": summary.get("perturbations"),
            "labelaudit": (summary.get("versions") or {}).get("labelaudit")}


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PartMarker:
    """summary.json's "shard": part `index` (1-based) of `count`, of the dataset with `fingerprint` (data.py)
    whose cases are `dataset_cases` (in scoring order); `cases`: the ones this part scored."""

    index: int
    count: int
    fingerprint: str
    dataset_cases: tuple[str, ...]
    cases: tuple[str, ...]

    def summary(self, summary: dict, audit: Audit) -> dict:
        """The "shard" block of summary.json, whose other content is `summary`."""
        return {"format": PART_FORMAT, "index": self.index, "count": self.count,
                "dataset_fingerprint": self.fingerprint, "run_identity": identity_hash(part_identity(summary)),
                "class_names": {str(k): v for k, v in audit.class_names.items()},
                "dataset_cases": list(self.dataset_cases), "cases": list(self.cases)}

    def write_files(self, root: Path, audit: Audit, views: dict[str, CaseView]) -> None:
        """Write part/arrays.npz and part/views.json into the audit folder being written at `root`."""
        arrays = {f"slice_{name}": np.array([getattr(s, name) for s in audit.slices], dtype=np.float64)
                  for name in _FLOATS}
        arrays.update({f"slice_{name}": np.array([getattr(s, name) for s in audit.slices], dtype=np.float64)
                       for name in _PARTS if all(getattr(s, name) is not None for s in audit.slices)})
        records = []
        for n, view in enumerate(views.values()):  # numpy scalars become JSON through `default` below
            records.append({"case_id": view.case_id, "images": list(view.images), "label": view.label,
                            "orientation": asdict(view.orientation), "fixed_map": view.fixed_map,
                            "regions": [asdict(r) for r in view.regions],
                            "slices": [{"slice_index": s.slice_index, "pixel_aspect": s.pixel_aspect,
                                        "crop": list(s.crop), "factor": s.factor} for s in view.slices.values()]})
            for s in view.slices.values():
                arrays.update({f"view{n}_slice{s.slice_index}_{k}": getattr(s, k) for k in _PICTURES})
        folder = Path(root) / PART_FOLDER
        with atomic_path(folder / "arrays.npz") as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        write_text(folder / "views.json", json.dumps({"format": PART_FORMAT, "views": records}, indent=1,
                                                     default=lambda v: v.item()) + "\n")


@dataclass
class Part:
    """One partial audit read back: where, which shard, its audit (as score returned it, with its views) and
    the identity every part of the same audit shares (part_identity)."""

    path: Path
    marker: PartMarker
    audit: Audit
    identity: dict


def read_part(path: Path | str) -> Part:
    """PART_DIR read and checked: a complete audit is a UsageError (exit 2); a missing or mistyped file or
    field an InputError (exit 3) naming it."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: {'not a folder' if path.exists() else 'no such folder'}", hint=_HINT)
    summary_path = path / "summary.json"
    summary = load_json(summary_path, InputError, _HINT)
    top = Fields(summary, summary_path, error=InputError, hint=_HINT)
    block = top.object("shard", None)
    if block is None:
        raise UsageError(f"{path}: a complete audit, not a part written by `score --shard i/N`", hint=_HINT)
    if block.int("format") != PART_FORMAT:
        raise InputError(f"{summary_path}: field 'shard.format' is {block.int('format')}, this labelaudit reads "
                         f"{PART_FORMAT}", hint="score the part again with this labelaudit")
    marker = PartMarker(block.int("index", minimum=1), block.int("count", minimum=1),
                        block.str("dataset_fingerprint"), tuple(block.strings("dataset_cases")),
                        tuple(block.strings("cases")))
    identity = part_identity(summary)
    if block.str("run_identity") != identity_hash(identity):
        raise InputError(f"{summary_path}: its run, dataset or thresholds were edited after the part was scored "
                         "(shard.run_identity does not match them)", hint="score the part again")
    audit = _read_audit(top, block, path)
    arrays = _load_arrays(path)
    audit.slices = _read_slices(path, audit.cases, arrays)
    audit.views = _read_views(path, arrays)
    return Part(path, marker, audit, identity)


def _read_audit(top: Fields, block: Fields, path: Path) -> Audit:
    """summary.json's content as the Audit that score returned (slices and views are read elsewhere)."""
    d, r, t = top.object("dataset"), top.object("run"), top.object("threshold")
    source = t.choice("source", ThresholdSource)
    threshold = Threshold(t.float("slice", low=0.0, high=1.0), t.float("case", low=0.0, high=1.0), source,
                          read_calibration(t) if source is ThresholdSource.RUN else None,
                          t.float("gate", None, low=0.0, high=1.0))
    trained = r.object("trained_on")
    run = AuditRun(r.str("path"), r.str("method"), r.str("created"), tuple(r.strings("models")),
                   trained.str("name"), trained.int("cases", minimum=0), r.str("source", ""))
    names = block.object("class_names")
    if not all(k.lstrip("-").isdigit() for k in names.data):
        raise names.fail(next(k for k in names.data if not k.lstrip("-").isdigit()), "integer label values as keys")
    skipped, timings, versions = top.object("skipped"), top.object("timings"), top.object("versions")
    audit = Audit(
        dataset=AuditDataset(d.str("name"), d.str("path"), d.str("layout"), d.bool("fit_dataset")), run=run,
        provider=top.str("provider"), device=top.str("device"), device_reason=top.str("device_reason"),
        pixel_score=top.str("pixel_score"), threshold=threshold, perturbations=top.int("perturbations", minimum=1),
        skipped={k: skipped.strings(k) for k in skipped.data}, problems=top.strings("problems"),
        notes=top.strings("notes"), class_names={int(k): names.str(k) for k in names.data},
        timings={k: timings.float(k) for k in timings.data}, out_dir=path,
        versions={k: versions.str(k) for k in versions.data if k != "labelaudit"})
    for c in top.objects("cases"):
        audit.cases.append(CaseScore(
            c.str("case_id"), c.float("noise_score"), c.bool("flagged"), c.int("worst_slice", minimum=0),
            c.float("disagreement"), c.int("n_slices", minimum=1), c.int("n_flagged_slices", minimum=0),
            c.str("model"), c.str("routing"), c.str("noise_map", None), c.str("pred_map", None),
            c.str("error_kind", "none"), c.int("axis", 0)))
    return audit


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    file = path / PART_FOLDER / "arrays.npz"
    try:
        with np.load(file, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(f"{file}: not found", hint=_HINT) from None
    except (OSError, ValueError) as exc:  # a truncated zip, or an object array
        raise InputError(f"{file}: cannot be read as a part's arrays ({exc})", hint=_HINT) from None


def _read_slices(path: Path, cases: list[CaseScore], arrays: dict[str, np.ndarray]) -> list[SliceScore]:
    """slices.csv with its floats from part/arrays.npz (which must agree with the CSV's six decimals)."""
    csv_path = path / "slices.csv"
    rows = read_rows(csv_path, SLICE_COLUMNS)
    exact = {}
    for name in _FLOATS:
        values = arrays.get(f"slice_{name}")
        if values is None or values.shape != (len(rows),):
            raise InputError(f"{path / PART_FOLDER / 'arrays.npz'}: slice_{name} does not hold one value per row "
                             f"of {csv_path} ({len(rows)})", hint="score the part again")
        exact[name] = values
    parts = {name: arrays[f"slice_{name}"] for name in _PARTS
             if f"slice_{name}" in arrays and arrays[f"slice_{name}"].shape == (len(rows),)}
    scored = {c.case_id: c.n_slices for c in cases}
    slices = []
    for i, row in enumerate(rows):
        line = i + 2
        try:
            values = {name: float(exact[name][i]) for name in _FLOATS}
            if any(abs(values[name] - float(row[name])) > 1e-6 for name in _FLOATS):
                raise InputError(f"{csv_path}, line {line}: does not match {PART_FOLDER}/arrays.npz",
                                 hint="score the part again")
            s = SliceScore(row["case_id"], int(row["slice_index"]), values["noise_score"], row["flagged"] == "true",
                           values["disagreement"], values["doubt_fraction"], int(row["label_pixels"]),
                           int(row["pred_pixels"]), row["error_kind"], int(row["axis"]),
                           *(float(parts[name][i]) if name in parts else None for name in _PARTS))
        except ValueError:
            raise InputError(f"{csv_path}, line {line}: a number that is not one", hint=_HINT) from None
        if s.case_id not in scored or not 0 <= s.slice_index < scored[s.case_id]:
            raise InputError(f"{csv_path}, line {line}: case {s.case_id} slice {s.slice_index} is not among the "
                             "scored cases' slices in summary.json", hint="score the part again")
        slices.append(s)
    if len(slices) != sum(scored.values()):
        raise InputError(f"{csv_path}: {len(slices)} rows, summary.json's cases have {sum(scored.values())} slices",
                         hint="score the part again")
    return slices


def _read_views(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, CaseView]:
    file = path / PART_FOLDER / "views.json"
    top = Fields(load_json(file, InputError, _HINT), file, error=InputError, hint=_HINT)
    views = {}
    for n, v in enumerate(top.objects("views")):
        o = v.object("orientation")
        spacing = o.numbers("spacing")
        if len(spacing) != 2:
            raise o.fail("spacing", "two numbers")
        orientation = Orientation(o.str("plane"), o.int("itk_axis"), o.int("num_slices", minimum=0),
                                  o.bool("transpose"), o.bool("flip_rows"), o.bool("flip_cols"),
                                  (spacing[0], spacing[1]))
        regions = tuple(RegionNote(r.int("slice_index", minimum=0), r.str("kind"), r.int("label_class"),
                                   r.int("label_value"), r.int("pred_value"), r.int("pixels", minimum=0),
                                   r.float("score")) for r in v.objects("regions"))
        view = CaseView(v.str("case_id"), tuple(v.strings("images")), v.str("label"), orientation,
                        fixed_map=v.str("fixed_map", ""), regions=regions)
        for s in v.objects("slices"):
            index, crop = s.int("slice_index", minimum=0), s.numbers("crop", integer=True)
            keys = [f"view{n}_slice{index}_{k}" for k in _PICTURES]
            if any(k not in arrays for k in keys) or len(crop) != 4:
                raise InputError(f"{file}: the thumbnail of case {view.case_id} slice {index} is missing from "
                                 f"{PART_FOLDER}/arrays.npz", hint="score the part again")
            view.slices[index] = SliceView(index, *(arrays[k] for k in keys), s.float("pixel_aspect", positive=True),
                                           (crop[0], crop[1], crop[2], crop[3]), s.int("factor", minimum=1))
        views[view.case_id] = view
    return views

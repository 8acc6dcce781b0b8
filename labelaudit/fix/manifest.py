"""fixes.json, the manifest `labelaudit fix` writes into the fixed dataset: every change, typed (stdlib only).

    FIXED/fixes.json   format, labelaudit_version, mode, audit, source, params, ignore_label, classes,
                       unmended {label value: agreement} (classes the model does not segment, never changed),
                       counts {cases, regions, pixels}, skipped {case_id: why},
                       cases: {case_id: {label_file, axis, changed_pixels,
                               regions: [{slice_index, bbox, pixels, score, kind, class, class_name,
                                          label_value, pred_value}]}}

`slice_index` counts along the numpy axis `axis` of the label's array (as in slices.csv); `bbox` is
[row0, row1, col0, col1] (half-open) on that slice. A field of the wrong type is an InputError (exit 3)
naming the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import FixMode, FixParams
from ..diagnosis import ErrorKind
from ..errors import InputError
from ..formats.fields import Fields, load_json

FIX_MANIFEST_NAME = "fixes.json"
FIX_FORMAT = 1
_HINT = "fixes.json is written by `labelaudit fix`"


@dataclass(frozen=True)
class FixRegionRecord:
    """One region that was changed: where, how large, how sure, and what was likely wrong with it."""

    slice_index: int
    bbox: tuple[int, int, int, int]
    pixels: int
    score: float  # mean noise score over the region
    kind: ErrorKind
    label_class: int  # the class whose outline was wrong
    class_name: str
    label_value: int  # what the label gave most of the region
    pred_value: int  # what the prediction gives most of it (what `replace` wrote)

    def to_json(self) -> dict:
        return {"slice_index": self.slice_index, "bbox": list(self.bbox), "pixels": self.pixels,
                "score": self.score, "kind": self.kind.value, "class": self.label_class,
                "class_name": self.class_name, "label_value": self.label_value, "pred_value": self.pred_value}


@dataclass(frozen=True)
class FixCaseRecord:
    """One case whose label was changed; label_file is relative to the fixed dataset's folder."""

    case_id: str
    label_file: str
    axis: int
    changed_pixels: int
    regions: tuple[FixRegionRecord, ...]

    def to_json(self) -> dict:
        return {"label_file": self.label_file, "axis": self.axis, "changed_pixels": self.changed_pixels,
                "regions": [r.to_json() for r in self.regions]}


@dataclass(frozen=True)
class FixManifest:
    """The whole fixes.json. `path`: where it was read from or written to (not part of its content)."""

    mode: FixMode
    audit: str
    source: str
    params: FixParams
    cases: dict[str, FixCaseRecord]
    ignore_label: int | None = None
    classes: dict[int, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    version: str = ""
    unmended: dict[int, float] = field(default_factory=dict)  # label value -> its prediction's agreement
    format: int = FIX_FORMAT
    path: Path | None = field(default=None, compare=False)

    @property
    def regions(self) -> list[tuple[str, FixRegionRecord]]:
        return [(cid, r) for cid, case in self.cases.items() for r in case.regions]

    def to_json(self) -> dict:
        return {
            "format": self.format, "labelaudit_version": self.version, "mode": self.mode.value,
            "audit": self.audit, "source": self.source, "params": self.params.to_json(),
            "ignore_label": self.ignore_label, "classes": {str(k): v for k, v in sorted(self.classes.items())},
            "unmended": {str(k): v for k, v in sorted(self.unmended.items())},
            "counts": {"cases": len(self.cases), "regions": len(self.regions),
                       "pixels": sum(c.changed_pixels for c in self.cases.values())},
            "skipped": self.skipped,
            "cases": {cid: case.to_json() for cid, case in self.cases.items()},
        }


def write_fix_manifest(manifest: FixManifest, path: Path | str) -> Path:
    """Write fixes.json atomically (a temp file renamed into place)."""
    from ..io.atomic import write_json

    return write_json(path, manifest.to_json())


def _region(f: Fields) -> FixRegionRecord:
    bbox = f.numbers("bbox", integer=True)
    if len(bbox) != 4:
        raise f.fail("bbox", "[row0, row1, col0, col1]")
    return FixRegionRecord(f.int("slice_index", minimum=0), (bbox[0], bbox[1], bbox[2], bbox[3]),
                           f.int("pixels", minimum=1), f.float("score", low=0.0, high=1.0),
                           f.choice("kind", ErrorKind), f.int("class"), f.str("class_name", ""),
                           f.int("label_value"), f.int("pred_value"))


def read_fix_manifest(path: Path | str) -> FixManifest:
    """Read and check fixes.json; every problem is an InputError (exit 3) naming the file and the field."""
    path = Path(path)
    data = load_json(path, InputError, _HINT)
    top = Fields(data, path, error=InputError, hint=_HINT)
    if top.int("format") != FIX_FORMAT:
        raise top.fail("format", str(FIX_FORMAT))
    params = top.object("params")
    classes = top.object("classes", None)
    skipped = top.object("skipped", None)
    unmended = top.object("unmended", None)
    cases = {}
    cases_field = top.object("cases")
    for cid in cases_field.data:
        f = cases_field.object(cid)
        cases[str(cid)] = FixCaseRecord(str(cid), f.str("label_file"), f.int("axis", minimum=-1),
                                        f.int("changed_pixels", minimum=0),
                                        tuple(_region(r) for r in f.objects("regions")))
    return FixManifest(
        mode=top.choice("mode", FixMode), audit=top.str("audit"), source=top.str("source"),
        params=FixParams(params.float("region_score", low=0.0, high=1.0),
                         params.float("min_agreement", FixParams.min_agreement, low=0.0, high=1.0)), cases=cases,
        ignore_label=top.int("ignore_label", None, minimum=1),
        classes={int(k): classes.str(k) for k in classes.data if k.lstrip("-").isdigit()} if classes else {},
        skipped={str(k): skipped.str(k) for k in skipped.data} if skipped else {},
        version=top.str("labelaudit_version", ""), path=path,
        unmended={int(k): unmended.float(k, low=0.0, high=1.0) for k in unmended.data if k.lstrip("-").isdigit()}
        if unmended else {})

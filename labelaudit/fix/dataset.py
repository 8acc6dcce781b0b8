"""`labelaudit fix`: a complete copy of the dataset an audit scored, with the regions judged wrong changed.

    FIXED/...            every file of the dataset: images hard-linked where possible (else copied), labels
                         copied, the labels of changed cases rewritten (same name, ending and geometry)
    FIXED/dataset.json   --mode ignore: `labels` gains "ignore" = the highest label value + 1 (nnU-Net v2)
    FIXED/fixes.json     every change (fix/manifest.py)

The inputs are only read: the copy is written beside FIXED and swapped in at the end (formats/outputs.py),
and --out may not be, lie inside or hold the dataset or the audit folder (exit 2).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__, io
from ..io.tree import copy_dataset_files
from ..config import FixConfig, FixMode
from ..data import Track, discover_dataset, no_track
from ..errors import InputError, UsageError
from ..formats.audit import find_map, unescape_cell
from ..formats.fields import Fields, load_json
from ..formats.run import read_calibration
from ..formats.outputs import OutputKind, StagedFolder, dataset_inputs, guard_output
from ..types import CaseRef, Dataset, from_slices, to_slices
from .manifest import FIX_MANIFEST_NAME, FixCaseRecord, FixManifest, FixRegionRecord, write_fix_manifest
from .rule import JudgedRegion, apply_fix, judge_regions, untrusted_classes

_AUDIT_HINT = "AUDIT_DIR is a folder written by `labelaudit score`"


@dataclass(frozen=True)
class AuditInput:
    """What `fix` reads of an audit folder: the dataset it scored, its cases and every slice's flag."""

    path: Path
    dataset: Path
    cases: tuple[str, ...]
    flags: dict[str, np.ndarray]  # case id -> bool (S,), in slice order
    skipped: dict[str, str]
    scores: dict[str, np.ndarray]  # case id -> float (S,) slice noise scores, in slice order
    # label value -> Dice of the run's prediction against its training labels (its calibration), if known
    agreement: dict[int, float] | None = None


def read_audit(audit_dir: Path) -> AuditInput:
    """summary.json and slices.csv of an audit folder; a missing or mistyped field is an InputError (exit 3)."""
    audit_dir = Path(audit_dir)
    path = audit_dir / "summary.json"
    summary = load_json(path, InputError, _AUDIT_HINT)
    top = Fields(summary, path, error=InputError, hint=_AUDIT_HINT)
    dataset = Path(top.object("dataset").str("path"))
    cases = tuple(c.str("case_id") for c in top.objects("cases"))
    skipped_field = top.object("skipped", None)
    skipped = {k: "; ".join(skipped_field.strings(k)) for k in skipped_field.data} if skipped_field else {}
    flags, scores = _read_flags(audit_dir / "slices.csv", cases)
    calibration = read_calibration(top.object("threshold", None))  # the run's, as summary.json carries it
    agreement = calibration.class_agreement if calibration is not None else None
    return AuditInput(audit_dir, dataset, cases, flags, skipped, scores, agreement)


def _read_flags(path: Path, cases: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each case's slice flags (bool (S,)) and noise scores (float (S,)), in slice order."""
    rows: dict[str, dict[int, bool]] = {c: {} for c in cases}
    values: dict[tuple[str, int], float] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("case_id", "slice_index", "flagged", "noise_score")
                       if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}", hint=_AUDIT_HINT)
            for line, row in enumerate(reader, start=2):
                case_id, flag = unescape_cell(row["case_id"]), row["flagged"]
                if flag not in ("true", "false") or not row["slice_index"].isdigit():
                    raise InputError(f"{path}, line {line}: expected slice_index an integer and flagged true or "
                                     f"false, found {row['slice_index']!r} and {flag!r}", hint=_AUDIT_HINT)
                rows.setdefault(case_id, {})[int(row["slice_index"])] = flag == "true"
                try:
                    values[(case_id, int(row["slice_index"]))] = float(row["noise_score"])
                except ValueError:
                    raise InputError(f"{path}, line {line}: noise_score {row['noise_score']!r} is not a number",
                                     hint=_AUDIT_HINT) from None
    except FileNotFoundError:
        raise InputError(f"{path}: not found", hint=_AUDIT_HINT) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot be read as CSV ({exc})", hint=_AUDIT_HINT) from None
    flags, scores = {}, {}
    for case_id in cases:
        found = rows.get(case_id, {})
        if sorted(found) != list(range(len(found))) or not found:
            raise InputError(f"{path}: case {case_id} lacks slice rows (found {len(found)}, not numbered 0..n-1)",
                             hint=_AUDIT_HINT)
        flags[case_id] = np.array([found[i] for i in range(len(found))], dtype=bool)
        scores[case_id] = np.array([values[(case_id, i)] for i in range(len(found))], dtype=np.float64)
    return flags, scores


# ----------------------------------------------------------------------------- the ignore label

def ignore_setup(dataset: Dataset, mode: FixMode) -> tuple[int | None, str | None]:
    """The ignore label value and the new dataset.json text (mode ignore), or (None, None).

    nnU-Net v2 wants `"ignore"` in `labels`, its value the highest label value + 1; one already declared is
    kept. A dataset without a dataset.json that declares its labels is a UsageError (exit 2).
    """
    if mode is not FixMode.IGNORE:
        return None, None
    path = dataset.root / "dataset.json"
    if not path.is_file() or not dataset.labels:
        raise UsageError(f"--mode ignore: {dataset.root} has no dataset.json declaring its labels, where nnU-Net "
                         "reads the ignore label from", hint="use --mode replace, or add a dataset.json")
    meta = json.loads(path.read_text(encoding="utf-8"))
    labels = meta["labels"]
    msd = all(str(k).isdigit() and isinstance(v, str) for k, v in labels.items())  # MSD: "value": "name"
    if "ignore" in dataset.labels:
        value = dataset.labels["ignore"]
        others = [v for k, v in dataset.labels.items() if k != "ignore"]
        if others and value <= max(others):
            raise InputError(f"{path}: 'ignore' is {value}, but nnU-Net needs it above every other label "
                             f"({max(others)})")
        return value, None
    value = max(_all_values(labels)) + 1
    if msd:
        labels[str(value)] = "ignore"
    else:
        labels["ignore"] = value
    return value, json.dumps(meta, indent=4, ensure_ascii=False) + "\n"


def _all_values(labels: dict) -> list[int]:
    values = []
    for key, value in labels.items():
        if isinstance(value, list):
            values += [int(v) for v in value]
        elif isinstance(value, int):
            values.append(value)
        elif str(key).isdigit():
            values.append(int(key))
    return values


# ----------------------------------------------------------------------------- the copy

def fix_dataset(config: FixConfig, track: Track = no_track) -> FixManifest:
    """Write the fixed copy of the dataset that `config.audit_dir` scored to `config.out`; return its manifest."""
    audit = read_audit(config.audit_dir)
    if not audit.dataset.is_dir():
        raise InputError(f"{audit.dataset}: the dataset the audit scored is no longer there",
                         hint="fix reads the dataset named in AUDIT_DIR/summary.json")
    dataset = discover_dataset(audit.dataset)
    guard_output(config.out, "--out", OutputKind.FIXED,
                 [*dataset_inputs("the audited dataset", dataset.root), ("AUDIT_DIR", audit.path)])
    refs = {ref.case_id: ref for ref in dataset.cases}
    gone = [c for c in audit.cases if c not in refs]
    if gone:
        raise InputError(f"{dataset.root}: case(s) {', '.join(gone[:10])} of the audit are no longer in the "
                         "dataset", hint="score the dataset again, then fix")
    folders = [r.label_path for r in dataset.cases if r.label_path is not None and r.label_path.is_dir()]
    if folders:
        raise InputError(f"{folders[0]}: a label stored as a DICOM series cannot be rewritten",
                         hint="convert the labels to NIfTI (.nii.gz) or NRRD first")
    ignore, dataset_json = ignore_setup(dataset, config.mode)
    names = {v: k for k, v in (dataset.labels or {}).items()}
    untrusted = untrusted_classes(audit.agreement, config.params)
    stage = StagedFolder(config.out, "--out")
    try:
        cases: dict[str, FixCaseRecord] = {}
        for case_id in track(list(audit.cases), "fixing labels"):
            record = _fix_case(refs[case_id], audit, config, ignore, names, dataset.root, stage.path, untrusted)
            if record is not None:
                cases[case_id] = record
        written = {dataset.root / cases[c].label_file for c in cases}
        copy_dataset_files(dataset.root, stage.path, written | ({dataset.root / "dataset.json"} if dataset_json else set()),
                           _label_dirs(dataset))
        if dataset_json:
            from ..io.atomic import write_text

            write_text(stage.path / "dataset.json", dataset_json)
        skipped = {c: audit.skipped.get(c, "not scored by the audit") for c in refs if c not in audit.cases}
        manifest = FixManifest(config.mode, str(audit.path.resolve()), str(dataset.root.resolve()), config.params,
                               cases, ignore, {v: k for v, k in names.items() if v != 0}, skipped, __version__,
                               unmended={v: audit.agreement[v] for v in sorted(untrusted)},
                               path=config.out / FIX_MANIFEST_NAME)
        write_fix_manifest(manifest, stage.path / FIX_MANIFEST_NAME)
        stage.commit()
    except BaseException:
        stage.abort()
        raise
    finally:
        stage.release()
    return manifest


def _fix_case(ref: CaseRef, audit: AuditInput, config: FixConfig, ignore: int | None, names: dict[int, str],
              root: Path, out: Path, untrusted: frozenset[int] = frozenset()) -> FixCaseRecord | None:
    """Judge one case's regions; write its changed label into `out` (None when nothing is judged wrong)."""
    label = io.read_volume(ref.label_path)  # its own dtype, to write it back alike
    geometry = label.geometry
    maps = [find_map(audit.path, ref.case_id, kind) for kind in ("pred", "noise")]
    pred, noise = (io.read_volume(p) for p in maps)
    for path, volume in zip(maps, (pred, noise)):
        diff = geometry.differences(volume.geometry)
        if diff:
            raise InputError(f"case {ref.case_id}: {path} does not lie on the grid of the label {ref.label_path} "
                             f"({'; '.join(diff)})", hint="the dataset changed since it was scored: score it again")
    stack, pred_s, noise_s = (to_slices(v.array, geometry) for v in (label, pred, noise))
    flags = audit.flags[ref.case_id]
    if len(flags) != stack.shape[0]:
        raise InputError(f"case {ref.case_id}: slices.csv lists {len(flags)} slices, the label has "
                         f"{stack.shape[0]}", hint="the dataset changed since it was scored: score it again")
    judged = judge_regions(stack, pred_s, noise_s.astype(np.float32, copy=False), flags, audit.scores[ref.case_id],
                           config.params, untrusted=untrusted)
    if not judged:
        return None
    fixed = apply_fix(stack, pred_s, judged, config.mode, ignore)
    rel = ref.label_path.relative_to(root)
    written = io.write_like(from_slices(fixed, geometry), geometry, out / rel)
    os.chmod(written, ref.label_path.stat().st_mode & 0o777)
    return FixCaseRecord(ref.case_id, rel.as_posix(), geometry.slicing_axis() if geometry.ndim == 3 else -1,
                         int((fixed != stack).sum()), tuple(_record(j, names) for j in judged))


def _record(judged: JudgedRegion, names: dict[int, str]) -> FixRegionRecord:
    r = judged.region
    return FixRegionRecord(r.slice_index, r.bbox, r.pixels, round(judged.score, 6), r.kind, r.label_class,
                           names.get(r.label_class, f"label_{r.label_class}"), r.label_value, r.pred_value)


def _label_dirs(dataset: Dataset) -> set[Path]:
    """The folders whose files are labels: copied, never hard-linked, since the fixed copy replaces some."""
    root = dataset.root
    dirs = {root / n for n in ("labelsTr", "labels", "labelsTs")}
    return dirs | {r.label_path.parent for r in dataset.cases if r.label_path is not None}

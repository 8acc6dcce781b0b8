"""The audit folder that `score` writes: cases.csv, slices.csv, maps/, summary.json and the report.

    AUDIT_DIR/cases.csv               one row per case, noise_score descending
    AUDIT_DIR/slices.csv              one row per slice of every case, noise_score descending
    AUDIT_DIR/maps/<case>_noise<end>  float32 noise map in [0, 1], the label file's exact geometry
    AUDIT_DIR/maps/<case>_pred<end>   the model's label map (label values), same geometry
    AUDIT_DIR/summary.json            dataset, run, provider, thresholds, counts, per-case rows, timings, skipped
    AUDIT_DIR/report.html             the self-contained HTML report (labelaudit.report)

Every file is written through a temp file and renamed, so an interrupted run leaves no half file; the whole
folder is written beside its place and swapped in at the end (AuditFolder), so a run never mixes with an
older one. Text cells that a spreadsheet would run as a formula (= + - @) get a leading quote.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import __version__, io
from ..errors import InputError, UsageError
from ..io.atomic import cannot_write, write_text
from ..report import ViewCollector, render_report, write_report
from ..types import Audit, Case, CaseRef, CaseScore, Dataset, Geometry, from_slices
from .outputs import OutputKind, StagedFolder, dataset_inputs, guard_output

CASE_COLUMNS = ("case_id", "noise_score", "flagged", "worst_slice", "disagreement", "n_slices", "n_flagged_slices",
                "model", "routing", "noise_map", "pred_map", "error_kind")
SLICE_COLUMNS = ("case_id", "slice_index", "noise_score", "flagged", "disagreement", "doubt_fraction",
                 "label_pixels", "pred_pixels", "error_kind", "axis")
#: Written after SLICE_COLUMNS, not required when an audit is read back (earlier audits have none): the
#: structure and softmin scores the noise score ranks by (score/ranking.py).
SLICE_PART_COLUMNS = ("structure_score", "softmin")
#: Files the audit itself writes; --report may not name one of them.
OWN_FILES = ("cases.csv", "slices.csv", "summary.json", "maps")


def audit_guard_inputs(dataset: Dataset, run_dir: Path | None) -> list[tuple[str, Path]]:
    """What `score` reads: the dataset (its folders and every case file's folder, resolved) and the run folder."""
    inputs = dataset_inputs("DATASET", dataset.root)
    inputs += [("DATASET", p.resolve().parent) for ref in dataset.cases for p in ref.files]
    return inputs + ([("--model", Path(run_dir))] if run_dir is not None else [])


def map_ending(ref: CaseRef) -> str:
    """The maps' file ending: the label file's own when it holds float32 with geometry, else .nii.gz."""
    ending = io.split_ending(ref.label_path)[1].lower() if ref.label_path and ref.label_path.is_file() else ""
    return ending if ending in io.FLOAT_ENDINGS else ".nii.gz"


def write_case_maps(out_dir: Path, ref: CaseRef, geometry: Geometry, noise: np.ndarray,
                    pred: np.ndarray) -> tuple[str, str]:
    """Write a case's noise and prediction maps on the label's grid; returns their paths relative to out_dir.

    noise: float32 (S, H, W) slice stack; pred: integer (S, H, W) label values (not class indices).
    """
    ending = map_ending(ref)
    noise_rel = f"maps/{ref.case_id}_noise{ending}"
    pred_rel = f"maps/{ref.case_id}_pred{ending}"
    io.write_like(from_slices(noise.astype(np.float32, copy=False), geometry), geometry, Path(out_dir) / noise_rel)
    io.write_like(from_slices(pred, geometry), geometry, Path(out_dir) / pred_rel)
    return noise_rel, pred_rel


#: A text cell starting with one of these is a formula to a spreadsheet (OWASP CSV injection): prefix a quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_QUOTED = (*FORMULA_STARTS, "'")


def escape_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text; `unescape_cell` undoes it exactly (a quote before one is doubled)."""
    if text.startswith(FORMULA_STARTS) or (text[:1] == "'" and text[1:2] in _QUOTED):
        return "'" + text
    return text


def unescape_cell(text: str) -> str:
    """A text cell of cases.csv/slices.csv as it was before `escape_cell`."""
    return text[1:] if text[:1] == "'" and text[1:2] in _QUOTED else text


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, str):
        return escape_cell(value)
    return "" if value is None else str(value)


def _csv(rows: list, columns: tuple[str, ...]) -> str:
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(getattr(row, c)) for c in columns])
    return buffer.getvalue()


def summary_of(audit: Audit) -> dict:
    """summary.json's content."""
    return {
        "dataset": audit.dataset.to_json(),
        "run": audit.run.to_json(),
        "method": audit.run.method,
        "provider": audit.provider, "device": audit.device, "device_reason": audit.device_reason,
        "pixel_score": audit.pixel_score, "perturbations": audit.perturbations,
        "threshold": audit.threshold.to_json(),
        "counts": {"cases": len(audit.cases), "slices": len(audit.slices),
                   "flagged_cases": len(audit.flagged_cases), "flagged_slices": len(audit.flagged_slices),
                   "skipped_cases": len(audit.skipped)},
        "slice_index": "counts along the numpy axis `axis` of each case's array (SimpleITK's GetArrayFromImage), "
                       "the through-plane axis with the largest spacing",
        "cases": [asdict(c) for c in audit.cases],
        "skipped": audit.skipped,
        "problems": audit.problems,
        "notes": audit.notes,
        "timings": audit.timings,
        "files": audit.files,
        "versions": {"labelaudit": __version__, **audit.versions},
    }


class AuditFolder:
    """The audit folder being written: each case's maps (and report thumbnails) as it is scored, then the tables.

    Everything is written into a hidden sibling folder and swapped in by `commit` (formats/outputs.py), so an
    interrupted or failed run leaves the previous audit as it was and two runs never mix; `abort` drops it.
    A --report outside the folder is written after the swap. `part` (formats/part.PartMarker, score --shard)
    makes it a partial audit: its "shard" marker and files instead of a report. `inputs`: what the folder may
    not overlap, when that is not `dataset` and `run_dir` (merge: the part folders).
    """

    def __init__(self, path: Path, dataset: Dataset | None, run_dir: Path | None = None, report: Path | None = None,
                 part=None, inputs: list[tuple[str, Path]] | None = None) -> None:
        self.path = Path(path)
        self.part = part
        self._inputs = list(inputs) if inputs is not None else audit_guard_inputs(dataset, run_dir)
        guard_output(self.path, "--out", OutputKind.AUDIT, self._inputs)
        self.report = self._check_report(report)
        self._stage = StagedFolder(self.path, "--out")
        self._outside_report: tuple[Path, str] | None = None
        self.views = ViewCollector()  # thumbnails for the report, gathered while each case is in memory

    def _check_report(self, report: Path | None) -> Path:
        """The report's final path; one inside the audit folder is written there, any other is guarded."""
        if report is None:
            return self.path / "report.html"
        report = Path(report)
        try:
            rel = report.resolve().relative_to(self.path.resolve())
        except ValueError:
            guard_output(report, "--report", OutputKind.REPORT, self._inputs)
            return report
        if not rel.parts or rel.parts[0] in OWN_FILES:
            raise UsageError(f"--report {report}: is {'the audit folder' if not rel.parts else 'a file'} the audit "
                             f"itself writes ({self.path / rel})", hint="name an .html file of its own")
        return report

    def _inside(self, path: Path) -> Path | None:
        """Where `path` (a final path inside the audit folder) is written now, or None when outside it."""
        try:
            return self._root / Path(path).resolve().relative_to(self.path.resolve())
        except ValueError:
            return None

    @property
    def _root(self) -> Path:
        return self._stage.path

    def add_case(self, ref: CaseRef, case: Case, noise: np.ndarray, pred: np.ndarray, stats, result: CaseScore,
                 fixed: np.ndarray, judged: list) -> None:
        """Write one case's maps (again, when its scores and flags changed); noise float32 (S, H, W), pred and
        fixed label values (S, H, W); stats: its SliceStats; judged: the regions (fix.rule.JudgedRegion) that
        `fixed` replaced, for the report."""
        try:
            result.noise_map, result.pred_map = write_case_maps(self._root, ref, case.label.geometry, noise, pred)
            fixed_rel = f"maps/{ref.case_id}_fixed{map_ending(ref)}"
            io.write_like(from_slices(fixed, case.label.geometry), case.label.geometry, self._root / fixed_rel)
        except OSError as exc:
            raise cannot_write(self.path / "maps", exc) from exc
        self.views.add(ref, case, noise, pred, stats.noise_score, (stats.label_pixels + stats.pred_pixels) > 0,
                       result.noise_score, judged, fixed_rel)

    def written(self, rel: str) -> Path:
        """Where the file `rel` (e.g. a CaseScore's noise_map) written into this folder lies now."""
        return self._root / rel

    def add_file(self, rel: str, source: Path) -> None:
        """Put the file `source` at `rel` in the folder (merge's maps): hard-linked where it can be, else copied."""
        target = self._root / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(source, target)
        except OSError as exc:
            raise cannot_write(self.path / rel, exc) from exc

    def write(self, audit: Audit, report: Path | None = None) -> dict[str, str]:
        """Write cases.csv, slices.csv, summary.json and the report; returns the paths (where they will be)."""
        if report is not None and Path(report) != self.report:
            self.report = self._check_report(report)
        audit.views = self.views.views
        audit.files = {"cases": str(self.path / "cases.csv"), "slices": str(self.path / "slices.csv"),
                       "summary": str(self.path / "summary.json"), "maps": str(self.path / "maps"),
                       **({"part": str(self.path / "part")} if self.part else {"report": str(self.report)})}
        write_text(self._root / "cases.csv", _csv(audit.cases, CASE_COLUMNS))
        write_text(self._root / "slices.csv", _csv(audit.slices, SLICE_COLUMNS + SLICE_PART_COLUMNS))
        inside = self._inside(self.report)
        if self.part is not None:  # merge writes the report, for all parts together
            self.part.write_files(self._root, audit, self.views.views)
        elif inside is not None:
            write_report(audit, inside)
        else:
            self._outside_report = (self.report, render_report(audit))
        self.write_summary(audit)
        return audit.files

    def write_summary(self, audit: Audit) -> Path:
        path = self._root / "summary.json"
        summary = summary_of(audit)
        if self.part is not None:
            summary["shard"] = self.part.summary(summary, audit)
        write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
        return self.path / "summary.json"

    def commit(self) -> Path:
        """Swap the new audit in for the old one, then write a report that lies outside it."""
        try:
            self._stage.commit()
            if self._outside_report is not None:
                write_text(*self._outside_report)
        except BaseException:
            self._stage.abort()  # before the swap: drops the new folder; after it: only the lock
            raise
        finally:
            self._stage.release()
        return self.path

    def abort(self) -> None:
        """Drop what this run wrote; the previous audit stays as it was."""
        self._stage.abort()


# ----------------------------------------------------------------------------- readers (for `evaluate`)
_AUDIT_HINT = "AUDIT_DIR is a folder written by `labelaudit score`"


def read_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of cases.csv or slices.csv, text cells unescaped; a missing column or file is an InputError."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)} "
                                 f"(found: {', '.join(reader.fieldnames or []) or 'none'})", hint=_AUDIT_HINT)
            return [{k: unescape_cell(v) if isinstance(v, str) else v for k, v in row.items()} for row in reader]
    except FileNotFoundError:
        raise InputError(f"{path}: not found", hint=_AUDIT_HINT) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot be read as CSV ({exc})", hint=_AUDIT_HINT) from None


def _noise_score(value: str, path: Path, line: int) -> float:
    try:
        score = float(value)
    except ValueError:
        raise InputError(f"{path}, line {line}: noise_score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise InputError(f"{path}, line {line}: noise_score is {value}, expected a finite number")
    return score


def read_case_scores(path: Path) -> dict[str, float]:
    """cases.csv -> {case_id: noise_score}; duplicate ids and non-numeric scores are InputErrors (exit 3)."""
    scores: dict[str, float] = {}
    for line, row in enumerate(read_rows(path, ("case_id", "noise_score")), start=2):
        if row["case_id"] in scores:
            raise InputError(f"{path}, line {line}: case {row['case_id']} appears twice")
        scores[row["case_id"]] = _noise_score(row["noise_score"], path, line)
    return scores


def read_slice_scores(path: Path) -> dict[tuple[str, int], float]:
    """slices.csv -> {(case_id, slice_index): noise_score}."""
    scores: dict[tuple[str, int], float] = {}
    for line, row in enumerate(read_rows(path, ("case_id", "slice_index", "noise_score")), start=2):
        try:
            key = (row["case_id"], int(row["slice_index"]))
        except ValueError:
            raise InputError(f"{path}, line {line}: slice_index {row['slice_index']!r} is not an integer") from None
        if key in scores:
            raise InputError(f"{path}, line {line}: case {key[0]} slice {key[1]} appears twice")
        scores[key] = _noise_score(row["noise_score"], path, line)
    return scores


def find_map(audit_dir: Path, case_id: str, kind: str) -> Path:
    """maps/<case_id>_<kind><ending> for any image ending (kind: noise or pred); InputError when absent."""
    maps = audit_dir / "maps"
    for ending in io.IMAGE_ENDINGS:
        candidate = maps / f"{case_id}_{kind}{ending}"
        if candidate.is_file():
            return candidate
    raise InputError(f"case {case_id}: {maps}/{case_id}_{kind}.* not found",
                     hint="the audit folder's maps/ must hold every case's noise map and prediction")

"""The audit folder that `score` writes: cases.csv, slices.csv, maps/, summary.json and the report.

    AUDIT_DIR/cases.csv               one row per case, noise_score descending
    AUDIT_DIR/slices.csv              one row per slice of every case, noise_score descending
    AUDIT_DIR/maps/<case>_noise<end>  float32 noise map in [0, 1], the label file's exact geometry
    AUDIT_DIR/maps/<case>_pred<end>   the model's label map (label values), same geometry
    AUDIT_DIR/summary.json            dataset, run, provider, thresholds, counts, per-case rows, timings, skipped
    AUDIT_DIR/report.html             the self-contained HTML report (labelaudit.report)

Every file is written through a temp file and renamed, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import csv
import io as _io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import __version__
from .. import io
from ..io.atomic import write_text
from ..errors import UsageError
from ..types import CaseRef, Dataset, Geometry

CASE_COLUMNS = ("case_id", "noise_score", "flagged", "worst_slice", "disagreement", "n_slices", "n_flagged_slices",
                "model", "routing", "noise_map", "pred_map", "error_kind")
SLICE_COLUMNS = ("case_id", "slice_index", "noise_score", "flagged", "disagreement", "doubt_fraction",
                 "label_pixels", "pred_pixels", "error_kind")
INPUT_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "images", "labels")


def check_out_dir(out_dir: Path, dataset: Dataset) -> None:
    """Refuse an audit folder inside the dataset's image or label folders (nothing may replace an input file)."""
    target = Path(out_dir).resolve()
    folders = {(dataset.root / name).resolve() for name in INPUT_FOLDERS if (dataset.root / name).is_dir()}
    for ref in dataset.cases:
        folders.update(p.resolve().parent for p in ref.files)
    for folder in sorted(folders):
        if target == folder or folder in target.parents:
            raise UsageError(f"--out {out_dir}: inside the dataset's input folder {folder}",
                             hint="write the audit elsewhere, e.g. --out audits/" + dataset.name)
    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {out_dir}: exists and is not a folder")


def map_ending(ref: CaseRef) -> str:
    """The maps' file ending: the label file's own when it holds float32 with geometry, else .nii.gz."""
    ending = io.split_ending(ref.label_path)[1].lower() if ref.label_path and ref.label_path.is_file() else ""
    return ending if ending in io.FLOAT_ENDINGS else ".nii.gz"


def write_case_maps(out_dir: Path, ref: CaseRef, geometry: Geometry, noise: np.ndarray,
                    pred: np.ndarray) -> tuple[str, str]:
    """Write a case's noise and prediction maps on the label's grid; returns their paths relative to out_dir.

    noise: float32 (S, H, W) slice stack; pred: integer (S, H, W) label values (not class indices).
    """
    from ..types import from_slices

    ending = map_ending(ref)
    noise_rel = f"maps/{ref.case_id}_noise{ending}"
    pred_rel = f"maps/{ref.case_id}_pred{ending}"
    io.write_like(from_slices(noise.astype(np.float32, copy=False), geometry), geometry, Path(out_dir) / noise_rel)
    io.write_like(from_slices(pred, geometry), geometry, Path(out_dir) / pred_rel)
    return noise_rel, pred_rel


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}"
    return "" if value is None else str(value)


def _csv(rows: list, columns: tuple[str, ...]) -> str:
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(getattr(row, c)) for c in columns])
    return buffer.getvalue()


def summary_of(audit) -> dict:
    """summary.json's content."""
    return {
        "dataset": audit.dataset,
        "run": audit.run,
        "method": audit.run.get("method"),
        "provider": audit.provider, "device": audit.device, "device_reason": audit.device_reason,
        "pixel_score": audit.pixel_score, "perturbations": audit.perturbations,
        "threshold": audit.threshold,
        "counts": {"cases": len(audit.cases), "slices": len(audit.slices),
                   "flagged_cases": len(audit.flagged_cases), "flagged_slices": len(audit.flagged_slices),
                   "skipped_cases": len(audit.skipped)},
        "cases": [asdict(c) for c in audit.cases],
        "skipped": audit.skipped,
        "problems": audit.problems,
        "timings": audit.timings,
        "files": audit.files,
        "versions": {"labelaudit": __version__, **audit.versions},
    }


def write_summary(audit) -> Path:
    path = Path(audit.out_dir) / "summary.json"
    write_text(path, json.dumps(summary_of(audit), indent=2) + "\n")
    return path


def write_audit(audit, report: Path | None = None) -> dict[str, str]:
    """Write cases.csv, slices.csv, summary.json and the report into audit.out_dir; returns the paths."""
    out_dir = Path(audit.out_dir)
    report_path = Path(report) if report is not None else out_dir / "report.html"
    audit.files = {"cases": str(out_dir / "cases.csv"), "slices": str(out_dir / "slices.csv"),
                   "summary": str(out_dir / "summary.json"), "maps": str(out_dir / "maps"),
                   "report": str(report_path)}
    write_text(out_dir / "cases.csv", _csv(audit.cases, CASE_COLUMNS))
    write_text(out_dir / "slices.csv", _csv(audit.slices, SLICE_COLUMNS))
    from ..report import write_report

    write_report(audit, report_path)
    write_summary(audit)
    return audit.files


def render_audit(audit, top: int = 10) -> None:
    """Print on stdout: the provider, where the outputs are, and the top slices."""
    from rich.table import Table

    from ..console import out

    out.print(f"provider: {audit.provider} ({audit.device_reason})")
    threshold = audit.threshold
    out.print(f"scored {len(audit.cases)} cases, {len(audit.slices)} slices; flagged {len(audit.flagged_cases)} "
              f"cases, {len(audit.flagged_slices)} slices (threshold slice {threshold['slice']:.3f}, case "
              f"{threshold['case']:.3f}, {threshold.get('source', '')})")
    if audit.skipped:
        out.print(f"skipped {len(audit.skipped)} case(s): {', '.join(sorted(audit.skipped))} (see summary.json)")
    table = Table(title=f"top {min(top, len(audit.slices))} slices", title_justify="left")
    for column in ("case", "slice", "noise score", "flagged", "1 - Dice", "in doubt", "label px"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for s in audit.slices[:top]:
        table.add_row(s.case_id, str(s.slice_index), f"{s.noise_score:.3f}", "yes" if s.flagged else "",
                      f"{s.disagreement:.3f}", f"{s.doubt_fraction:.0%}", str(s.label_pixels))
    out.print(table)
    if audit.out_dir is not None:
        out.print(f"audit: {audit.out_dir}  (cases.csv, slices.csv, maps/, summary.json)")
        out.print(f"report: {audit.files.get('report', '')}")

"""Measure an audit against known corruption: ranking metrics per case, slice and pixel, and
segmentation metrics of the robust model (and of the noisy labels) against the clean labels.

Inputs: an audit folder written by `labelaudit score` (cases.csv, slices.csv, maps/), the
corruption.json manifest written by `labelaudit corrupt` (which sits in the noisy dataset it
describes), and optionally the clean dataset (default: the manifest's "source").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import io
from ..config import EvaluateConfig
from ..data import Track, discover_dataset, no_track
from ..errors import InputError
from ..formats.audit import find_map, read_case_scores, read_slice_scores
from ..formats.manifest import Manifest, read_manifest
from ..types import Volume, to_slices
from .kinds import KindConfusion, kind_confusion, read_slice_kinds
from .levels import LEVEL_HELP, LevelResult, PixelSample, case_level, name_ids, roi_mask, slice_level
from .metrics import SegmentationScores
from .segmentation import SOURCES, ClassSummary, SegmentationResult, class_scores, declared_classes, summarise

_CLEAN_HINT = "--clean is the dataset that `labelaudit corrupt` read"


@dataclass
class EvaluationResult:
    config: EvaluateConfig
    clean: Path | None
    ranking: list[LevelResult]
    segmentation: list[SegmentationResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kinds: KindConfusion | None = None  # error_kind per slice vs the corruption (None: nothing to compare)

    def level(self, name: str) -> LevelResult | None:
        return next((r for r in self.ranking if r.level == name), None)

    def to_json(self) -> dict:
        """A JSON-ready dict; NaN (undefined) values become null."""
        from .. import __version__

        return _nan_to_none({
            "format": 1,
            "labelaudit_version": __version__,
            "audit_dir": str(self.config.audit_dir),
            "truth": str(self.config.truth),
            "clean": str(self.clean) if self.clean else None,
            "settings": {"pixel_sample": self.config.pixel_sample, "seed": self.config.seed,
                         "roi_band_px": self.config.roi_band_px},
            "levels": LEVEL_HELP,
            "ranking": {r.level: {"ap": r.scores.ap, "auroc": r.scores.auroc,
                                  "precision_at_k": r.scores.precision_at_k, "k": r.scores.k,
                                  "positives": r.scores.positives, "total": r.scores.total,
                                  "prevalence": r.scores.prevalence,
                                  "population_positives": r.population_positives,
                                  "population_total": r.population_total, "sampled": r.sampled}
                        for r in self.ranking},
            "segmentation": {s.source: {
                "classes": {str(k): _summary_json(v) for k, v in s.classes.items()},
                "foreground_mean": _summary_json(s.foreground),
                "per_case": {case_id: {str(k): _scores_json(v) for k, v in per_class.items()}
                             for case_id, per_class in s.per_case.items()},
            } for s in self.segmentation},
            "kinds": self.kinds.to_json() if self.kinds is not None else None,
            "warnings": self.warnings,
        })


def _summary_json(summary: ClassSummary) -> dict:
    return {"name": summary.name, "dice": summary.dice, "iou": summary.iou, "hd95_mm": summary.hd95,
            "assd_mm": summary.assd, "asd_mm": summary.asd, "cases": summary.cases,
            "undefined_distances": summary.undefined_distances}


def _scores_json(scores: SegmentationScores) -> dict:
    return {"dice": scores.dice, "iou": scores.iou, "hd95_mm": scores.hd95, "assd_mm": scores.assd,
            "asd_mm": scores.asd}


def _nan_to_none(value):
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def write_evaluation_json(result: EvaluationResult, path: Path | str) -> Path:
    """Write `result.to_json()` atomically (a temp file renamed into place)."""
    from ..io.atomic import write_json

    return write_json(path, result.to_json())


# ----------------------------------------------------------------------------- evaluation

def evaluate_audit(config: EvaluateConfig, track: Track = no_track) -> EvaluationResult:
    """Measure the audit in `config.audit_dir` against the manifest `config.truth`.

    Case and slice levels need only the audit's CSV files and the manifest; the pixel levels
    and the segmentation metrics need the clean labels (`config.clean`, else the manifest's
    source) and are skipped, with a warning, when those cannot be found.
    """
    audit_dir = Path(config.audit_dir)
    if not audit_dir.is_dir():
        raise InputError(f"{audit_dir}: not a folder", hint="AUDIT_DIR is a folder written by `labelaudit score`")
    manifest = read_manifest(config.truth)
    case_scores = read_case_scores(audit_dir / "cases.csv")
    slice_scores = read_slice_scores(audit_dir / "slices.csv")
    _check_same_cases(audit_dir, manifest, case_scores)
    warnings: list[str] = []
    ranking = [case_level(manifest, case_scores), slice_level(manifest, slice_scores, audit_dir / "slices.csv")]
    _check_summary(audit_dir, manifest, warnings)

    clean_root = _clean_root(config, manifest, warnings)
    named = read_slice_kinds(audit_dir / "slices.csv")
    result = EvaluationResult(config, clean_root, ranking, warnings=warnings,
                              kinds=kind_confusion(manifest, named) if named is not None else None)
    if clean_root is not None:
        _measure_against_clean(config, manifest, clean_root, result, track)
    return result


def _check_same_cases(audit_dir: Path, manifest: Manifest, case_scores: dict[str, float]) -> None:
    only_audit, only_manifest = set(case_scores) - set(manifest.cases), set(manifest.cases) - set(case_scores)
    if only_audit or only_manifest:
        parts = ([f"in the audit but not the manifest: {name_ids(only_audit)}"] if only_audit else []) + \
                ([f"in the manifest but not the audit: {name_ids(only_manifest)}"] if only_manifest else [])
        raise InputError(f"{audit_dir / 'cases.csv'} and {manifest.path} list different cases ({'; '.join(parts)})",
                         hint="evaluate the audit of the noisy dataset that this manifest describes")


def _clean_labels(clean_root: Path, case_ids: list[str]) -> tuple[dict[str, Path], dict[str, int] | None]:
    """Every case's clean label file, and the clean dataset's declared labels."""
    clean = discover_dataset(clean_root)
    labels = {ref.case_id: ref.label_path for ref in clean.cases}
    missing = [c for c in case_ids if labels.get(c) is None]
    if missing:
        why = "; ".join(str(p) for c in missing for p in clean.skipped.get(c, []))
        raise InputError(f"{clean_root}: clean dataset has no usable label for case(s) {name_ids(missing)}"
                         + (f" ({why})" if why else ""), hint=_CLEAN_HINT)
    return labels, clean.labels


def _measure_against_clean(config: EvaluateConfig, manifest: Manifest, clean_root: Path, result: EvaluationResult,
                           track: Track) -> None:
    """Add the pixel levels and the segmentation metrics, case by case (one rng stream per case)."""
    case_ids = sorted(manifest.cases)
    clean_labels, declared = _clean_labels(clean_root, case_ids)
    classes = declared_classes(declared)
    pixels, roi = PixelSample(config.pixel_sample), PixelSample(config.pixel_sample)
    streams = np.random.SeedSequence(config.seed).spawn(len(case_ids))
    per_case: dict[str, dict[str, dict[int, SegmentationScores]]] = {source: {} for source in SOURCES}
    observed: set[int] = set()
    for case_id, stream in track(list(zip(case_ids, streams)), "evaluating cases"):
        rng = np.random.default_rng(stream)
        truth = manifest.cases[case_id]
        noisy, reference, noise, pred = _case_volumes(config.audit_dir, case_id, truth.label_path,
                                                      clean_labels[case_id])
        scores = noise.array.astype(np.float32, copy=False)
        wrong = noisy.array != reference.array
        if truth.changed_pixels is not None and int(wrong.sum()) != truth.changed_pixels:
            result.warnings.append(f"case {case_id}: {int(wrong.sum())} pixels differ between the noisy and clean "
                                   f"labels, the manifest says {truth.changed_pixels} changed (is --clean the right "
                                   "dataset?)")
        pixels.add(scores.reshape(-1), wrong.reshape(-1), rng)
        region = roi_mask(noisy, reference, config.roi_band_px)
        roi.add(to_slices(scores, noisy.geometry)[region], to_slices(wrong, noisy.geometry)[region], rng)

        if classes is None:
            observed |= {int(v) for v in np.unique(reference.array) if v != 0}
        spacing = tuple(reversed(noisy.geometry.spacing))
        for source, volume in zip(SOURCES, (pred, noisy)):
            per_case[source][case_id] = class_scores(volume.array, reference.array, spacing, classes)
    result.ranking += [pixels.result("pixel"), roi.result("pixel_roi")]
    names = classes or {v: f"class_{v}" for v in sorted(observed)}
    result.segmentation += [summarise(source, per_case[source], names) for source in SOURCES]


def _case_volumes(audit_dir: Path, case_id: str, noisy_path: Path,
                  clean_path: Path) -> tuple[Volume, Volume, Volume, Volume]:
    """The noisy label, clean label, noise map and prediction of one case, checked to share one grid."""
    audit_dir = Path(audit_dir)
    noisy = _read(noisy_path, case_id, "noisy label")
    reference = _read(clean_path, case_id, "clean label")
    noise_path, pred_path = find_map(audit_dir, case_id, "noise"), find_map(audit_dir, case_id, "pred")
    noise, pred = _read(noise_path, case_id, "noise map"), _read(pred_path, case_id, "prediction")
    for path, volume in ((clean_path, reference), (noise_path, noise), (pred_path, pred)):
        _same_grid(noisy, noisy_path, volume, path, case_id)
    if not np.isfinite(noise.array.astype(np.float32, copy=False)).all():
        raise InputError(f"case {case_id}: {noise_path} holds NaN/Inf, expected noise scores in [0, 1]")
    return noisy, reference, noise, pred


def _check_summary(audit_dir: Path, manifest: Manifest, warnings: list[str]) -> None:
    """Warn (not fail: folders move) when the audit says it scored another dataset than the manifest's."""
    try:
        scored = json.loads((audit_dir / "summary.json").read_text())["dataset"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if Path(scored).resolve() != manifest.path.parent.resolve():
        warnings.append(f"the audit scored {scored}, but the manifest describes {manifest.path.parent}")


def _clean_root(config: EvaluateConfig, manifest: Manifest, warnings: list[str]) -> Path | None:
    if config.clean is not None:
        if not Path(config.clean).is_dir():
            raise InputError(f"{config.clean}: clean dataset not found", hint=_CLEAN_HINT)
        return Path(config.clean)
    if manifest.source is not None and manifest.source.is_dir():
        return manifest.source
    warnings.append(f"the clean dataset {manifest.source or '(not recorded)'} was not found: pixel and "
                    "segmentation metrics are skipped; pass --clean CLEAN_DATASET")
    return None


def _read(path: Path, case_id: str, what: str) -> Volume:
    try:
        return io.read_volume(path)
    except InputError as exc:
        raise InputError(f"case {case_id}: cannot read the {what} ({exc.message})") from exc


def _same_grid(reference: Volume, reference_path: Path, volume: Volume, path: Path, case_id: str) -> None:
    diff = reference.geometry.differences(volume.geometry)
    if diff:
        raise InputError(f"case {case_id}: {path} does not lie on the grid of the noisy label "
                         f"{reference_path} ({'; '.join(diff)})")

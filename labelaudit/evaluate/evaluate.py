"""Measure an audit against known corruption: ranking metrics per case, slice and pixel, and
segmentation metrics of the robust model (and of the noisy labels) against the clean labels.

Inputs: an audit folder written by `labelaudit score` (cases.csv, slices.csv, maps/), the
corruption.json manifest written by `labelaudit corrupt` (which sits in the noisy dataset it
describes), and optionally the clean dataset (default: the manifest's "source").
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import io
from ..data import Track, discover_dataset, no_track
from ..errors import InputError
from .metrics import RankingScores, SegmentationScores, ranking_scores, segmentation_scores
from ..types import Volume, to_slices

MANIFEST_FORMAT = 1
LEVELS = ("case", "slice", "pixel", "pixel_roi")
LEVEL_HELP = {
    "case": "cases.csv noise_score vs the manifest's corrupted flag",
    "slice": "slices.csv noise_score vs each slice's corrupted flag",
    "pixel": "noise map vs (noisy label != clean label), every pixel",
    "pixel_roi": "as pixel, within the ROI: foreground of the noisy or clean label, "
                 "dilated in-plane by roi_band_px pixels (square neighbourhood)",
}


@dataclass(frozen=True)
class EvaluateConfig:
    """What `evaluate` measures.

    pixel_sample: the most pixels used per pixel level (a uniform sample drawn with `seed`,
    identical for identical inputs); roi_band_px: the in-plane dilation of the ROI, in pixels.
    """

    audit_dir: Path
    truth: Path
    clean: Path | None = None
    pixel_sample: int = 2_000_000
    seed: int = 0
    roi_band_px: int = 3


# ----------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class CaseTruth:
    """One case of the manifest; `label_path` is the noisy label file, absolute."""

    case_id: str
    corrupted: bool
    changed_pixels: int | None
    label_path: Path
    slices: dict[int, bool]  # slice_index -> corrupted


@dataclass(frozen=True)
class Manifest:
    path: Path
    source: Path | None
    settings: dict
    cases: dict[str, CaseTruth]


def read_manifest(path: Path | str) -> Manifest:
    """Read and check corruption.json; every problem is an InputError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: manifest not found",
                         hint="--truth is the corruption.json that `labelaudit corrupt` wrote") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise InputError(f"{path}: expected a corruption manifest (a JSON object with 'cases'), found something else",
                         hint="--truth is the corruption.json that `labelaudit corrupt` wrote")
    if data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path}: manifest format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
    root = path.parent
    cases: dict[str, CaseTruth] = {}
    for case_id, entry in data["cases"].items():
        try:
            slices: dict[int, bool] = {}
            for item in entry["slices"]:
                index = int(item["slice_index"])
                if index in slices:
                    raise InputError(f"{path}: case {case_id}: slice {index} is listed twice")
                slices[index] = bool(item["corrupted"])
            changed = entry.get("changed_pixels")
            cases[str(case_id)] = CaseTruth(str(case_id), bool(entry["corrupted"]),
                                            None if changed is None else int(changed),
                                            root / entry["label_file"], slices)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: case {case_id}: malformed entry ({type(exc).__name__}: {exc})",
                             hint="each case needs corrupted, label_file and slices[{slice_index, corrupted}]") from exc
    if not cases:
        raise InputError(f"{path}: the manifest lists no case")
    source = data.get("source")
    source_path = None if not source else (Path(source) if Path(source).is_absolute() else root / source)
    settings = {k: data.get(k) for k in ("rate", "level", "kinds", "seed")}
    return Manifest(path, source_path, settings, cases)


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)} "
                                 f"(found: {', '.join(reader.fieldnames or []) or 'none'})",
                                 hint="AUDIT_DIR is a folder written by `labelaudit score`")
            return list(reader)
    except FileNotFoundError:
        raise InputError(f"{path}: not found", hint="AUDIT_DIR is a folder written by `labelaudit score`") from None


def _score(value: str, path: Path, line: int) -> float:
    try:
        score = float(value)
    except ValueError:
        raise InputError(f"{path}, line {line}: noise_score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise InputError(f"{path}, line {line}: noise_score is {value}, expected a finite number")
    return score


def read_case_scores(path: Path) -> dict[str, float]:
    """cases.csv -> {case_id: noise_score}; duplicate ids and non-numeric scores are InputErrors."""
    scores: dict[str, float] = {}
    for line, row in enumerate(_read_csv(path, ("case_id", "noise_score")), start=2):
        if row["case_id"] in scores:
            raise InputError(f"{path}, line {line}: case {row['case_id']} appears twice")
        scores[row["case_id"]] = _score(row["noise_score"], path, line)
    return scores


def read_slice_scores(path: Path) -> dict[tuple[str, int], float]:
    """slices.csv -> {(case_id, slice_index): noise_score}."""
    scores: dict[tuple[str, int], float] = {}
    for line, row in enumerate(_read_csv(path, ("case_id", "slice_index", "noise_score")), start=2):
        try:
            key = (row["case_id"], int(row["slice_index"]))
        except ValueError:
            raise InputError(f"{path}, line {line}: slice_index {row['slice_index']!r} is not an integer") from None
        if key in scores:
            raise InputError(f"{path}, line {line}: case {key[0]} slice {key[1]} appears twice")
        scores[key] = _score(row["noise_score"], path, line)
    return scores


def find_map(audit_dir: Path, case_id: str, kind: str) -> Path:
    """maps/<case_id>_<kind><ending> for any image ending; InputError when absent."""
    maps = audit_dir / "maps"
    for ending in io.IMAGE_ENDINGS:
        candidate = maps / f"{case_id}_{kind}{ending}"
        if candidate.is_file():
            return candidate
    raise InputError(f"case {case_id}: {maps}/{case_id}_{kind}.* not found",
                     hint="the audit folder's maps/ must hold every case's noise map and prediction")


def _name_ids(ids: Iterable, limit: int = 10) -> str:
    ids = sorted(ids)
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class LevelResult:
    """Ranking metrics of one level; `population_*` count every item, `scores` the (sampled) ones used."""

    level: str
    scores: RankingScores
    population_positives: int
    population_total: int

    @property
    def sampled(self) -> bool:
        return self.scores.total < self.population_total


@dataclass(frozen=True)
class ClassSummary:
    """Per-class means over cases; distance means skip the cases where they are undefined.

    For the foreground mean, the metrics are the mean of the class means and `cases` and
    `undefined_distances` count (case, class) pairs.
    """

    name: str
    dice: float
    iou: float
    hd95: float
    assd: float
    asd: float
    cases: int
    undefined_distances: int


@dataclass
class SegmentationResult:
    """Metrics of one label source (`prediction` or `noisy_label`) against the clean labels."""

    source: str
    classes: dict[int, ClassSummary]
    foreground: ClassSummary  # mean over the foreground classes' means
    per_case: dict[str, dict[int, SegmentationScores]]


@dataclass
class EvaluationResult:
    config: EvaluateConfig
    clean: Path | None
    ranking: list[LevelResult]
    segmentation: list[SegmentationResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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


# ----------------------------------------------------------------------------- pixel sampling

class _PixelSample:
    """A uniform sample of at most `capacity` pixels streamed case by case (bottom-k sampling).

    Every pixel gets a random key; the sample is the pixels with the `capacity` smallest keys,
    so memory stays at ~2×capacity whatever the dataset size, and the result depends only on
    the seed and the case order.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.truth: list[np.ndarray] = []
        self.kept = 0
        self.cutoff = np.inf
        self.population_total = 0
        self.population_positives = 0

    def add(self, scores: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> None:
        self.population_total += scores.size
        self.population_positives += int(truth.sum())
        keys = rng.random(scores.size)
        keep = keys < self.cutoff
        self.keys.append(keys[keep])
        self.scores.append(scores[keep].astype(np.float32, copy=False))
        self.truth.append(truth[keep])
        self.kept += int(keep.sum())
        if self.kept > 2 * self.capacity:
            self._trim()

    def _trim(self) -> None:
        keys, scores, truth = (np.concatenate(x) for x in (self.keys, self.scores, self.truth))
        if keys.size > self.capacity:
            index = np.argpartition(keys, self.capacity - 1)[: self.capacity]
            keys, scores, truth = keys[index], scores[index], truth[index]
            self.cutoff = float(keys.max())
        self.keys, self.scores, self.truth, self.kept = [keys], [scores], [truth], keys.size

    def result(self, level: str) -> LevelResult:
        self._trim()
        return LevelResult(level, ranking_scores(self.scores[0], self.truth[0]),
                           self.population_positives, self.population_total)


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
    warnings: list[str] = []

    only_audit, only_manifest = set(case_scores) - set(manifest.cases), set(manifest.cases) - set(case_scores)
    if only_audit or only_manifest:
        parts = ([f"in the audit but not the manifest: {_name_ids(only_audit)}"] if only_audit else []) + \
                ([f"in the manifest but not the audit: {_name_ids(only_manifest)}"] if only_manifest else [])
        raise InputError(f"{audit_dir / 'cases.csv'} and {manifest.path} list different cases ({'; '.join(parts)})",
                         hint="evaluate the audit of the noisy dataset that this manifest describes")
    case_ids = sorted(manifest.cases)

    ranking = [_complete("case", ranking_scores(np.array([case_scores[c] for c in case_ids]),
                                                np.array([manifest.cases[c].corrupted for c in case_ids])))]
    ranking.append(_slice_level(manifest, slice_scores, audit_dir / "slices.csv"))
    _check_summary(audit_dir, manifest, warnings)

    clean_root = _clean_root(config, manifest, warnings)
    result = EvaluationResult(config, clean_root, ranking, warnings=warnings)
    if clean_root is None:
        return result
    clean = discover_dataset(clean_root)
    clean_labels = {ref.case_id: ref.label_path for ref in clean.cases}
    missing = [c for c in case_ids if clean_labels.get(c) is None]
    if missing:
        why = "; ".join(str(p) for c in missing for p in clean.skipped.get(c, []))
        raise InputError(f"{clean_root}: clean dataset has no usable label for case(s) {_name_ids(missing)}"
                         + (f" ({why})" if why else ""), hint="--clean is the dataset that `labelaudit corrupt` read")
    classes = _classes(clean.labels)

    pixels, roi = _PixelSample(config.pixel_sample), _PixelSample(config.pixel_sample)
    streams = np.random.SeedSequence(config.seed).spawn(len(case_ids))
    per_case: dict[str, dict[str, dict[int, SegmentationScores]]] = {"prediction": {}, "noisy_label": {}}
    observed: set[int] = set()
    for case_id, stream in track(list(zip(case_ids, streams)), "evaluating cases"):
        rng = np.random.default_rng(stream)
        truth = manifest.cases[case_id]
        noisy = _read(truth.label_path, case_id, "noisy label")
        reference = _read(clean_labels[case_id], case_id, "clean label")
        noise_path, pred_path = find_map(audit_dir, case_id, "noise"), find_map(audit_dir, case_id, "pred")
        noise, pred = _read(noise_path, case_id, "noise map"), _read(pred_path, case_id, "prediction")
        for path, volume in ((clean_labels[case_id], reference), (noise_path, noise), (pred_path, pred)):
            _same_grid(noisy, truth.label_path, volume, path, case_id)
        scores = noise.array.astype(np.float32, copy=False)
        if not np.isfinite(scores).all():
            raise InputError(f"case {case_id}: {noise_path} holds NaN/Inf, expected noise scores in [0, 1]")
        wrong = noisy.array != reference.array
        if truth.changed_pixels is not None and int(wrong.sum()) != truth.changed_pixels:
            warnings.append(f"case {case_id}: {int(wrong.sum())} pixels differ between the noisy and clean labels, "
                            f"the manifest says {truth.changed_pixels} changed (is --clean the right dataset?)")
        pixels.add(scores.reshape(-1), wrong.reshape(-1), rng)
        region = _roi(noisy, reference, config.roi_band_px)
        roi.add(to_slices(scores, noisy.geometry)[region], to_slices(wrong, noisy.geometry)[region], rng)

        if classes is None:
            observed |= {int(v) for v in np.unique(reference.array) if v != 0}
        spacing = tuple(reversed(noisy.geometry.spacing))
        for source, volume in (("prediction", pred), ("noisy_label", noisy)):
            per_case[source][case_id] = _class_scores(volume.array, reference.array, spacing, classes)
    result.ranking += [pixels.result("pixel"), roi.result("pixel_roi")]
    names = classes or {v: f"class_{v}" for v in sorted(observed)}
    for source in ("prediction", "noisy_label"):
        result.segmentation.append(_summarise(source, per_case[source], names))
    return result


def _complete(level: str, scores: RankingScores) -> LevelResult:
    """A level scored on every item (no sampling)."""
    return LevelResult(level, scores, scores.positives, scores.total)


def _slice_level(manifest: Manifest, slice_scores: dict[tuple[str, int], float], path: Path) -> LevelResult:
    expected = {(c, i): flag for c, truth in manifest.cases.items() for i, flag in truth.slices.items()}
    missing, extra = set(expected) - set(slice_scores), set(slice_scores) - set(expected)
    if missing:
        raise InputError(f"{path}: no score for {len(missing)} slice(s) of the manifest: "
                         + _name_ids(f"{c} slice {i}" for c, i in missing),
                         hint="slices.csv needs one row per slice of every case")
    if extra:
        raise InputError(f"{path}: {len(extra)} slice(s) that the manifest does not list: "
                         + _name_ids(f"{c} slice {i}" for c, i in extra),
                         hint="the audit and the manifest must slice the same volumes along the same axis")
    keys = sorted(expected)
    scores = ranking_scores(np.array([slice_scores[k] for k in keys]), np.array([expected[k] for k in keys]))
    return _complete("slice", scores)


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
            raise InputError(f"{config.clean}: clean dataset not found",
                             hint="--clean is the dataset that `labelaudit corrupt` read")
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


def _roi(noisy: Volume, clean: Volume, band: int) -> np.ndarray:
    """(S, H, W) bool: foreground of either label, dilated in-plane by `band` pixels (square)."""
    foreground = to_slices((noisy.array != 0) | (clean.array != 0), noisy.geometry)
    if band <= 0 or not foreground.any():
        return foreground
    structure = np.ones((1, 3, 3), dtype=bool)  # no growth across slices: the methods work per slice
    return ndimage.binary_dilation(foreground, structure=structure, iterations=band)


def _classes(labels: dict[str, int] | None) -> dict[int, str] | None:
    """Foreground classes (value -> name) declared by the clean dataset, or None to use those observed."""
    if not labels:
        return None
    found = {int(v): str(k) for k, v in labels.items() if isinstance(v, int) and int(v) != 0}
    return dict(sorted(found.items())) or None


def _class_scores(label: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...],
                  classes: dict[int, str] | None) -> dict[int, SegmentationScores]:
    values = sorted(classes) if classes else sorted(
        {int(v) for v in np.unique(reference) if v != 0} | {int(v) for v in np.unique(label) if v != 0})
    label = np.rint(label) if np.issubdtype(label.dtype, np.floating) else label
    return {v: segmentation_scores(label == v, reference == v, spacing) for v in values}


def _summarise(source: str, per_case: dict[str, dict[int, SegmentationScores]],
               names: dict[int, str]) -> SegmentationResult:
    summaries: dict[int, ClassSummary] = {}
    for value, name in names.items():
        # a case without the class in either mask has Dice 1 (both empty); cases list every class seen
        rows = [scores[value] if value in scores else SegmentationScores(1.0, 1.0, math.nan, math.nan, math.nan)
                for scores in per_case.values()]
        summaries[value] = _mean_summary(name, rows)
    fg = list(summaries.values())
    foreground = ClassSummary(
        "foreground mean", *(_nanmean([getattr(s, f) for s in fg]) for f in ("dice", "iou", "hd95", "assd", "asd")),
        len(per_case) * len(fg), sum(s.undefined_distances for s in fg))
    return SegmentationResult(source, summaries, foreground, per_case)


def _mean_summary(name: str, rows: list[SegmentationScores]) -> ClassSummary:
    undefined = sum(not r.distances_defined for r in rows)
    return ClassSummary(name, _nanmean([r.dice for r in rows]), _nanmean([r.iou for r in rows]),
                        _nanmean([r.hd95 for r in rows]), _nanmean([r.assd for r in rows]),
                        _nanmean([r.asd for r in rows]), len(rows), undefined)


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


# ----------------------------------------------------------------------------- rendering

def evaluation_tables(result: EvaluationResult) -> list:
    """Rich tables for the terminal: the ranking levels, then the segmentation metrics."""
    from rich.table import Table

    def fmt(value: float, digits: int = 3) -> str:
        return "–" if math.isnan(value) else f"{value:.{digits}f}"

    ranking = Table(title="audit vs manifest", title_justify="left")
    for column in ("level", "AP", "AUROC", "P@k", "positives/total", "chance AP"):
        ranking.add_column(column, justify="left" if column == "level" else "right")
    for row in result.ranking:
        s = row.scores
        counts = f"{row.population_positives}/{row.population_total}"
        if row.sampled:
            counts += f" (sample {s.positives}/{s.total})"
        ranking.add_row(row.level, fmt(s.ap), fmt(s.auroc), fmt(s.precision_at_k) + f" (k={s.k})", counts,
                        fmt(s.prevalence))
    tables = [ranking]
    if result.segmentation:
        seg = Table(title="segmentation vs clean labels (mean over cases; distances in mm)", title_justify="left")
        for column in ("labels", "class", "Dice", "IoU", "HD95", "ASSD", "ASD", "no distance"):
            seg.add_column(column, justify="left" if column in ("labels", "class") else "right")
        for source in result.segmentation:
            rows = list(source.classes.values())
            if len(rows) > 1:
                rows.append(source.foreground)
            for summary in rows:
                seg.add_row(source.source.replace("_", " "), summary.name, fmt(summary.dice), fmt(summary.iou),
                            fmt(summary.hd95, 2), fmt(summary.assd, 2), fmt(summary.asd, 2),
                            f"{summary.undefined_distances}/{summary.cases}")
        tables.append(seg)
    return tables

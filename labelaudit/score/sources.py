"""Probabilities the user brings (`--probabilities SRC`, repeatable) as a probability source: no inference.

SRC is an nnU-Net v2 trained-model folder (each case's out-of-fold validation probabilities, nnunet.py), or
a folder of per-case files: CASE.npz (also nnU-Net predict's --save_probabilities output) or one
multi-component image per case (probability_files.py). With several SRC, a case's probabilities are their
mean (one folder per fold model: the ensemble). A single softmax has no perturbed passes (K = 1): the
uncertainty is the normalised entropy of the given probabilities, or of their mean, which is higher where
the folders disagree, so the confident-disagreement score discounts those pixels.

Array legend: C classes, S slices of one case, b slices of one batch, H x W in-plane pixels.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

import numpy as np

from .. import io
from ..config import PixelScore, ScoreConfig
from ..data import discover_dataset, raise_fatal
from ..errors import ModelError, UsageError
from ..formats.probability_run import ProbabilityRun, read_probability_run
from .decide import resolve_threshold
from ..preprocess import LabelMap
from ..types import AuditRun, Case, Dataset, Routing
from .formulas import PIXEL_SCORE, normalised_entropy
from .nnunet import NnunetLabels, is_model_folder, read_model_folder, read_nnunet_labels
from .probability_files import count_classes, is_npz, read_probabilities
from .ranking import ranking_of
from .scorer import ProbabilityBatch, Route, ScoringPlan

#: Cases named in a "no probabilities for" error before "… and N more".
MAX_LISTED = 5


class FolderKind(str, Enum):
    """What a --probabilities folder holds."""

    NNUNET_MODEL = "nnU-Net v2 trained-model folder (out-of-fold validation probabilities)"
    NPZ = "folder of CASE.npz"
    IMAGES = "folder of probability images"


@dataclass(frozen=True)
class ProbabilityFolder:
    """One --probabilities SRC, indexed: which file(s) hold each case's probabilities, and its labels if declared.

    files: case id -> ((part, file), ...); a part is a fold of an nnU-Net model (fold_2), else the folder.
    """

    path: Path
    kind: FolderKind
    files: dict[str, tuple[tuple[str, Path], ...]]
    meta: NnunetLabels | None
    notes: tuple[str, ...] = ()

    @property
    def parts(self) -> list[str]:
        return sorted({part for found in self.files.values() for part, _ in found})

    def describe(self) -> str:
        if self.kind is FolderKind.NNUNET_MODEL:
            return f"{self.kind.value} {self.path}: {', '.join(self.parts)}"
        return f"{self.kind.value} {self.path} ({len(self.files)} cases)"


def open_folder(path: Path | str) -> ProbabilityFolder:
    """Index one SRC; a folder that holds no probabilities is a ModelError naming it."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"--probabilities {path}: {'not a folder' if path.exists() else 'no such folder'}",
                         hint="SRC is an nnU-Net trained-model folder, or a folder of CASE.npz or probability images")
    if is_model_folder(path):
        model = read_model_folder(path)
        files: dict[str, list[tuple[str, Path]]] = {}
        for fold, cases in model.folds.items():
            for case_id, npz in cases.items():
                files.setdefault(case_id, []).append((fold, npz))
        return ProbabilityFolder(path, FolderKind.NNUNET_MODEL, {c: tuple(f) for c, f in sorted(files.items())},
                                 model.meta, model.notes)
    meta = read_nnunet_labels(path) if (path / "dataset.json").is_file() else None
    entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    npz = {p.name[:-len(".npz")]: p for p in entries if is_npz(p)}
    if npz:
        return ProbabilityFolder(path, FolderKind.NPZ, {c: ((path.name, p),) for c, p in npz.items()}, meta)
    if meta is not None:  # an nnU-Net prediction folder: its CASE<ending> files are segmentations
        raise ModelError(f"--probabilities {path}: an nnU-Net prediction folder without probabilities (no CASE.npz)",
                         hint="predict with: nnUNetv2_predict ... --save_probabilities")
    images = {io.split_ending(p)[0]: p for p in entries if io.split_ending(p)[1].lower() in io.FLOAT_ENDINGS}
    if not images:
        raise ModelError(f"--probabilities {path}: holds no CASE.npz and no probability image (.nii.gz, .nrrd, .mha …)",
                         hint="SRC is an nnU-Net trained-model folder, or a folder of CASE.npz or probability images")
    return ProbabilityFolder(path, FolderKind.IMAGES, {c: ((path.name, p),) for c, p in images.items()}, None)


@dataclass(frozen=True)
class GivenModel:
    """Everything known about the given probabilities before a case is read: folders, label set, calibration."""

    folders: tuple[ProbabilityFolder, ...]
    label_map: LabelMap
    calibration: ProbabilityRun | None = None
    calibration_dir: Path | None = None

    @property
    def out_of_fold(self) -> bool:
        return all(f.kind is FolderKind.NNUNET_MODEL for f in self.folders)

    @property
    def routing(self) -> Routing:
        return Routing.OUT_OF_FOLD if self.out_of_fold else Routing.NEW_DATA

    @property
    def method(self) -> str:
        return "nnU-Net v2" if self.out_of_fold else "given probabilities"

    def part_name(self, folder: ProbabilityFolder, part: str) -> str:
        if len(self.folders) == 1 or folder.kind is not FolderKind.NNUNET_MODEL:
            return part
        return f"{folder.path.name}/{part}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.part_name(f, p) for f in self.folders for p in f.parts)

    def describe(self) -> str:
        how = "" if len(self.folders) == 1 else f"the mean of {len(self.folders)} sources: "
        return how + "; ".join(f.describe() for f in self.folders)

    def files_of(self, case_id: str) -> list[tuple[str, Path]]:
        """(part name, file) of every file holding the case's probabilities (their mean is scored)."""
        return [(self.part_name(f, part), path) for f in self.folders for part, path in f.files.get(case_id, ())]

    def require(self, case_ids: Sequence[str], root: Path) -> None:
        """Every case must have probabilities in every folder (ModelError naming the first ones missing)."""
        for folder in self.folders:
            missing = [c for c in case_ids if c not in folder.files]
            if not missing:
                continue
            listed = ", ".join(missing[:MAX_LISTED]) + (f" and {len(missing) - MAX_LISTED} more"
                                                        if len(missing) > MAX_LISTED else "")
            if folder.kind is FolderKind.NNUNET_MODEL:
                where = f"{folder.path}/fold_*/validation/CASE.npz"
                hint = ("nnU-Net writes them for the cases each fold held out when trained with --npz: train every "
                        "fold (`nnUNetv2_train DATASET CONFIG FOLD --npz`, or `--val --npz` for a trained one); "
                        "for new cases predict with `nnUNetv2_predict ... --save_probabilities`")
            else:
                where = f"{folder.path}/CASE{'.npz' if folder.kind is FolderKind.NPZ else '<image ending>'}"
                hint = "give probabilities for every case (nnU-Net: nnUNetv2_predict ... --save_probabilities)"
            raise ModelError(f"{folder.path}: no probabilities for {len(missing)} case(s) of {root}: {listed} "
                             f"(expected {where})", hint=hint)

    def created(self) -> str:
        """When the newest probability file was written (ISO 8601, UTC)."""
        times = [path.stat().st_mtime for f in self.folders for found in f.files.values() for _, path in found[:1]]
        return datetime.fromtimestamp(max(times), timezone.utc).isoformat(timespec="seconds") if times else ""

    def trained_on(self) -> str:
        return next((f.meta.name for f in self.folders if f.meta is not None and f.meta.name), "")


def open_given(paths: Sequence[Path], dataset: Dataset, calibration_dir: Path | None = None) -> GivenModel:
    """Index every SRC and settle the label set: nnU-Net's dataset.json beside the probabilities, else the
    calibration's, else DATASET's dataset.json, else values 0..C-1 of the first file's C classes.

    Mismatched label sets are ModelErrors (exit 4), as is a DATASET label value outside them.
    """
    if not paths:
        raise UsageError("--probabilities: expected at least one folder")
    calibration = read_probability_run(calibration_dir) if calibration_dir is not None else None
    folders = tuple(open_folder(p) for p in paths)
    declared = [f for f in folders if f.meta is not None]
    for other in declared[1:]:
        if set(other.meta.labels.values()) != set(declared[0].meta.labels.values()):
            raise ModelError(f"{other.path / 'dataset.json'}: labels {sorted(other.meta.labels.values())} differ "
                             f"from {declared[0].path / 'dataset.json'}'s {sorted(declared[0].meta.labels.values())}",
                             hint="every --probabilities folder must come from a model of the same label set")
    if declared:
        label_map, where = LabelMap.from_declared(declared[0].meta.labels), declared[0].path / "dataset.json"
    elif calibration is not None:
        label_map, where = calibration.label_map, calibration_dir / "run.json"
    elif dataset.labels:
        label_map, where = LabelMap.from_declared(dataset.labels), dataset.root / "dataset.json"
    else:
        first = next(path for _, path in next(iter(folders[0].files.values())))
        label_map, where = LabelMap.from_declared(None, range(count_classes(first))), first
    if calibration is not None and calibration.label_map.values != label_map.values:
        raise ModelError(f"{calibration_dir / 'run.json'}: calibrated for the classes {list(calibration.label_map.values)}, "
                         f"but the probabilities have {list(label_map.values)} ({where})",
                         hint="pass --model the calibration of a model with the same label set")
    extra = sorted(set((dataset.labels or {}).values()) - set(label_map.values))
    if extra:
        raise ModelError(f"{folders[0].path}: the probabilities' classes {list(label_map.values)} ({where}) do not "
                         f"include label values {extra} declared in {dataset.root / 'dataset.json'}",
                         hint="give the probabilities of a model trained on this label set")
    return GivenModel(folders, label_map, calibration, calibration_dir)


def given_pixel_score(requested: PixelScore | None, calibration: ProbabilityRun | None,
                      notes: list[str]) -> PixelScore:
    """The formula: the requested one, else the calibration's, else PIXEL_SCORE; meta formulas need an MCPM run."""
    calibrated = calibration.threshold.pixel_score if calibration is not None else None
    score = PixelScore(requested or calibrated or PIXEL_SCORE)
    if score.needs_meta_weight:
        raise ModelError(f"pixel score {score.value} needs an MCPM run's meta weight (meta_weight.onnx); given "
                         "probabilities have none", hint="use confident_disagreement or disagreement")
    if calibrated and score is not PixelScore(calibrated):
        notes.append(f"pixel score {score.value} differs from {calibrated}, which the calibration's threshold was "
                     "derived with: the calibrated threshold may flag more or fewer annotations than it should")
    return score


class GivenSource:
    """The given probabilities of each case, read and checked file by file, averaged over the folders."""

    provider = "given probabilities"
    device = "cpu"
    perturbations = 1

    def __init__(self, given: GivenModel, pixel_score: PixelScore, batch_size: int = 16) -> None:
        self.given = given
        self.label_map = given.label_map
        self.pixel_score = pixel_score
        self.batch_size = batch_size
        self.reason = "read from files: no inference"
        self.versions = {"numpy": np.__version__}
        many = len(given.folders) > 1
        self.notes = [f"probabilities: {given.describe()}; no perturbed passes (K = 1): the uncertainty is the "
                      "normalised entropy of the " + ("mean of the folders' probabilities, which grows where they "
                                                      "disagree" if many else "given probabilities")]
        self.seconds = {"inference": 0.0, "scoring": 0.0}

    def route(self, case_id: str) -> Route:
        files = self.given.files_of(case_id)
        if not files:
            raise ModelError(f"no probabilities for case {case_id} in "
                             f"{', '.join(str(f.path) for f in self.given.folders)}")
        names = [name for name, _ in files]
        name = names[0] if len(names) == 1 else f"mean({'+'.join(names)})"
        return Route(tuple(path for _, path in files), name, self.given.routing)

    def probabilities(self, case: Case, route: Route) -> np.ndarray:
        """The case's probabilities float32 (C, *label shape): one file's, or the mean of several."""
        total = None
        for path in route.parts:
            prob = read_probabilities(path, case.label, self.label_map, case.case_id)
            if total is None:
                total = prob if len(route.parts) == 1 else prob.copy()
            else:
                total += prob
            del prob
        if len(route.parts) > 1:
            total /= np.float32(len(route.parts))
        return total

    def batches(self, case: Case, route: Route) -> Iterator[ProbabilityBatch]:
        """The case's probabilities, `batch_size` slices at a time along its slicing axis, with their entropy."""
        t0 = time.perf_counter()
        prob = self.probabilities(case, route)
        self.seconds["inference"] += time.perf_counter() - t0
        geometry = case.geometry
        stack = prob[np.newaxis] if geometry.ndim < 3 else np.moveaxis(prob, geometry.slicing_axis() + 1, 0)
        labels = case.label_slices()  # (S, H, W), the same axis moved first
        for start in range(0, labels.shape[0], self.batch_size):
            t0 = time.perf_counter()
            stop = min(labels.shape[0], start + self.batch_size)
            batch = np.ascontiguousarray(stack[start:stop])  # (b, C, H, W)
            unc = normalised_entropy(batch)
            given = self.label_map.encode(labels[start:stop])
            self.seconds["scoring"] += time.perf_counter() - t0
            yield ProbabilityBatch(start, stop, given, batch, unc)


def probability_plan(config: ScoreConfig) -> ScoringPlan:
    """`score`/`check` with --probabilities: the folders, the label set, the threshold (from the calibration
    folder config.run_dir when given) and the source, checked against the dataset before anything is read."""
    if config.dataset is None:
        raise UsageError("--probabilities: name the DATASET they belong to",
                         hint="labelaudit score DATASET --probabilities SRC")
    if config.perturbations is not None:
        raise UsageError(f"perturbations K={config.perturbations}: given probabilities have no perturbed passes")
    if config.batch_size < 1:
        raise UsageError(f"--batch-size {config.batch_size}: expected at least 1")
    dataset = discover_dataset(config.dataset)
    raise_fatal(dataset, config.strict)
    given = open_given(config.probabilities, dataset, config.run_dir)
    given.require([r.case_id for r in dataset.cases if config.cases is None or r.case_id in config.cases],
                  dataset.root)
    calibration = given.calibration.threshold if given.calibration is not None else None
    threshold = resolve_threshold(calibration, config.threshold)
    prior = config.structure_prior_mm2
    if prior is None and calibration is not None:
        prior = calibration.structure_prior_mm2
    notes = [note for f in given.folders for note in f.notes]
    pixel_score = given_pixel_score(config.pixel_score, given.calibration, notes)
    first = given.folders[0].path
    trained = {c for f in given.folders if f.kind is FolderKind.NNUNET_MODEL for c in f.files}
    run = AuditRun(str(first.resolve()), given.method, given.created(), given.names, given.trained_on(),
                   len(trained), source=given.describe())
    return ScoringPlan(
        dataset=dataset, threshold=threshold, run=run, fit_dataset=given.out_of_fold, label_map=given.label_map,
        open_source=lambda: GivenSource(given, pixel_score, config.batch_size), structure_prior_mm2=prior,
        ranking=ranking_of(calibration), model_path=first, classes="the probabilities' classes",
        fit_on=f"probabilities in {first}",
        label_hint="these probabilities come from a model of another label set; give those of a model trained "
                   "on this dataset's labels", notes=notes)

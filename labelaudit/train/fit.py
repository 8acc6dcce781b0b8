"""`labelaudit fit`: from a dataset folder to a run folder (weights, ONNX graphs, run.json), fold by fold.

Importable without PyTorch (the CLI builds a FitConfig first); torch is imported inside fit_dataset, and its
absence is a MissingDependencyError (exit 5).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..config import FitConfig, Method
from ..data import no_track
from ..errors import InputError, UsageError
from ..formats.run import DatasetRecord, FoldModel, RunInfo, record_latest, save_run
from .extra import require_training_extra
from .registry import METHODS, MethodSpec

log = logging.getLogger(__name__)

#: progress(description, completed, total, status): the training progress callback (the CLI draws Rich bars)
ProgressFn = Callable[[str, int, int, str], None]
#: Fields that may differ between the stored configuration and a --resume invocation.
_RUNTIME_FIELDS = {"device", "resume", "force", "calibrate", "out", "strict", "dataset"}


def _no_progress(description: str, completed: int, total: int, status: str) -> None:
    return None


def split_folds(case_ids: list[str], folds: int, seed: int) -> list[list[str]]:
    """Split case ids (never slices) into `folds` disjoint, nearly equal groups by a seeded permutation."""
    if folds < 1:
        raise UsageError(f"--folds {folds}: expected 1 or more")
    if folds > len(case_ids):
        raise UsageError(f"--folds {folds} needs at least {folds} cases; the dataset has {len(case_ids)}",
                         hint=f"use --folds {max(1, len(case_ids))} or fewer")
    order = np.random.default_rng(seed).permutation(sorted(case_ids))
    return [sorted(str(c) for c in part) for part in np.array_split(order, folds)]


def fold_seed(seed: int, fold: int) -> int:
    """An independent seed per fold, so folds do not share random streams."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def default_run_dir(dataset_name: str, method: Method | str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_name) or "dataset"
    return Path("runs") / f"{safe}-{Method(method).value}"


def fit_dataset(config: FitConfig, track: Callable[[Iterable, str], Iterable] = no_track,
                progress: ProgressFn = _no_progress) -> Path:
    """Train config.method on config.dataset, fold by fold; export, calibrate, and return the run folder."""
    require_training_extra()
    _check_config(config)
    from .. import __version__
    from ..data import discover_dataset, fingerprint, iter_cases
    from ..preprocess import LabelMap, fit_preprocessing, prepare_case
    from ..score.calibrate import structure_prior_of

    spec = METHODS[config.method]
    dataset = discover_dataset(config.dataset)
    run_dir = Path(config.out) if config.out else default_run_dir(dataset.name, config.method)
    config = _claim_run_dir(run_dir, config)

    cases, infos = [], []
    for case, info in iter_cases(dataset, strict=config.strict, track=track):
        cases.append(case)
        infos.append(info)
    if not cases:
        raise InputError(f"{config.dataset}: no readable case to train on",
                         hint="run `labelaudit inspect` on the dataset to see the problems")
    found = sorted({v for info in infos for v in info.label_counts})
    label_map = LabelMap.from_declared(dataset.labels, found)
    channels = cases[0].image_slices().shape[1]
    if dataset.channel_names and len(dataset.channel_names) == channels:
        channel_names = [dataset.channel_names[k] for k in sorted(dataset.channel_names, key=int)]
    else:
        channel_names = ["unknown"] * channels
    spacing = (config.target_spacing, config.target_spacing) if config.target_spacing else None
    prep = fit_preprocessing(cases, channel_names, label_map, spacing, seed=config.seed)
    prepared = {}
    for case in track(cases, "preprocessing"):
        prepared[case.case_id] = prepare_case(case, prep, label_map)
    prior = structure_prior_of(case.label for case in cases)  # A₀ for calibration, from the labels in memory
    del cases
    case_ids = sorted(prepared)
    meta, meta_cases = None, []
    if spec.meta_net:
        meta, meta_cases = _resolve_meta_set(config, case_ids, prepared, prep, label_map, channels, track)
    train_pool = [c for c in case_ids if meta is None or c not in meta.excluded]
    groups = split_folds(train_pool, config.folds, config.seed)
    if config.resume:
        stored = json.loads((run_dir / "run.json").read_text()).get("folds")
        if stored is not None and stored != groups:
            raise UsageError(f"{run_dir}: the dataset's readable cases changed since this run started, "
                             "so its folds no longer match", hint="start over with --force")

    import onnx
    import torch

    info = RunInfo(
        method=config.method.value, label_map=label_map, channel_names=channel_names, preprocessing=prep,
        perturbations=config.perturbations, models=[], config=config.to_json(), log={},
        dataset=DatasetRecord(
            path=str(Path(config.dataset).resolve()), name=dataset.name, layout=dataset.layout,
            file_ending=dataset.file_ending, fingerprint=fingerprint(dataset), cases=tuple(case_ids),
            skipped={cid: [str(p) for p in problems] for cid, problems in dataset.skipped.items()}),
        versions={"labelaudit": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": _installed_version("onnxruntime")},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status="training", folds=groups, meta_set=meta.to_json() if meta is not None else None,
    )
    save_run(run_dir, info)  # the folds, for --resume

    from .loop import resolve_device

    device = resolve_device(config.device)
    info.device = str(device)
    models = []
    for fold, held_out in enumerate(groups):
        train_ids = [c for c in train_pool if c not in held_out] if len(groups) > 1 else train_pool
        record = _fit_fold(config, spec, run_dir, fold, len(groups), [prepared[c] for c in train_ids],
                           label_map.num_classes, device, progress, meta_cases)
        if "mcpm_cost" in record:
            info.mcpm_cost = {**(info.mcpm_cost or {}), f"fold_{fold}": record.pop("mcpm_cost")}
        info.log[f"fold_{fold}"] = record.pop("log")
        models.append(FoldModel(fold=fold if len(groups) > 1 else -1, held_out=held_out if len(groups) > 1 else [],
                                **record))
        if fold < len(groups) - 1:
            save_run(run_dir, info)  # progress; after the last fold, the complete run below is written instead
    info.models, info.status = models, None
    save_run(run_dir, info)  # complete: calibration reads it
    if config.calibrate:
        from ..score.calibrate import calibrate_run

        # the training device says where torch runs; ONNX Runtime may lack that provider (a CPU-only
        # onnxruntime beside CUDA torch), so calibration takes whatever ONNX Runtime can actually run
        info.threshold = calibrate_run(run_dir, device="cpu" if config.device == "cpu" else "auto", track=track,
                                       structure_prior_mm2=prior)
        save_run(run_dir, info)
    record_latest(run_dir)
    return run_dir


def _installed_version(module: str) -> str:
    """The version of the installed distribution that provides `module` (e.g. onnxruntime-gpu), without importing it."""
    from importlib import metadata

    for name in metadata.packages_distributions().get(module, []):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _check_config(config: FitConfig) -> None:
    if METHODS[config.method].meta_net and config.meta_set is None:
        raise UsageError(f"--method {config.method.value} needs --meta-set: a file of verified case ids (one per "
                         "line) or a dataset folder of verified cases",
                         hint="or use --method pint, which needs no meta set")
    if config.meta_set is not None and not METHODS[config.method].meta_net:
        raise UsageError("--meta-set is only used by --method " + ", ".join(
            m.value for m, spec in METHODS.items() if spec.meta_net))
    if config.loop.epochs < 1 or config.loop.iterations_per_epoch < 1 or config.loop.batch_size < 1:
        raise UsageError("--epochs, --iterations-per-epoch and --batch-size must be 1 or more")
    if config.target_spacing is not None and config.target_spacing <= 0:
        raise UsageError(f"--target-spacing {config.target_spacing}: expected a positive size in mm")


def _claim_run_dir(run_dir: Path, config: FitConfig) -> FitConfig:
    """Refuse to overwrite a run without --force; with --resume, continue with the run's own configuration."""
    existing = run_dir.exists() and any(run_dir.iterdir())
    if existing and config.resume:
        stored_path = run_dir / "run.json"
        if not stored_path.is_file():
            raise UsageError(f"{run_dir}: nothing to resume (no run.json)", hint="start over with --force")
        try:
            stored = FitConfig.from_json(json.loads(stored_path.read_text())["config"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UsageError) as exc:
            raise UsageError(f"{stored_path}: cannot read the run's configuration ({exc})",
                             hint="start over with --force") from exc
        keep = {name: getattr(config, name) for name in _RUNTIME_FIELDS}
        resumed = replace(stored, **keep)
        given, saved = config.to_json(), resumed.to_json()
        changed = [k for k in given if k not in _RUNTIME_FIELDS and given[k] != saved[k]]
        if changed:
            log.warning("--resume continues with the run's own configuration; ignoring different values of: %s",
                        ", ".join(changed))
        return resumed
    if existing and not config.force:
        raise UsageError(f"{run_dir}: a run folder already exists",
                         hint="add --resume to continue it, --force to overwrite it, or --out another folder")
    if existing and config.force:
        for child in run_dir.iterdir():  # only what fit writes: never a user's other files
            if child.is_dir() and re.fullmatch(r"fold_\d+", child.name):
                shutil.rmtree(child)
            elif child.name == "run.json":
                child.unlink()
    return replace(config, resume=False) if not existing else config


def _resolve_meta_set(config: FitConfig, case_ids: list[str], prepared: dict, prep, label_map, channels: int,
                      track: Callable[[Iterable, str], Iterable]):
    """MCPM's meta set (meta_set.MetaSet) and its prepared cases [(image (S, C_in, h, w), classes (S, h, w))]."""
    from .meta_set import meta_set_from_dataset, meta_set_from_file

    path = Path(config.meta_set)
    if not path.is_dir():
        meta = meta_set_from_file(path, case_ids)
        return meta, [prepared[c] for c in meta.case_ids]
    from ..data import discover_dataset, iter_cases
    from ..preprocess import prepare_case

    dataset = discover_dataset(path)
    cases = {}
    for case, case_info in iter_cases(dataset, strict=config.strict, track=track):
        unknown = sorted(set(case_info.label_counts) - set(label_map.values))
        if unknown:
            raise InputError(f"--meta-set {path}: case {case.case_id} has label values {unknown}, which the dataset "
                             f"being fit does not have (its classes are {list(label_map.values)})",
                             hint="the meta set must be labelled with the same classes as the dataset")
        found = case.image_slices().shape[1]
        if found != channels:
            raise InputError(f"--meta-set {path}: case {case.case_id} has {found} image channel(s), the dataset "
                             f"being fit has {channels}")
        cases[case.case_id] = prepare_case(case, prep, label_map)
    if dataset.skipped:
        log.warning("--meta-set %s: skipped case(s) with problems: %s", path, ", ".join(sorted(dataset.skipped)))
    meta = meta_set_from_dataset(path, sorted(cases), case_ids)
    return meta, [cases[c] for c in meta.case_ids]


def _fit_fold(config: FitConfig, spec: MethodSpec, run_dir: Path, fold: int, folds: int, cases: list,
              num_classes: int, device, progress: ProgressFn, meta_cases: list) -> dict:
    """Train (or resume, or skip when finished) one fold; save its weights and export its graph(s).

    A method with a meta net (MCPM) also saves the meta mask network (meta_weight.safetensors) and exports
    meta_weight.onnx; its parity record is export["meta_weight"], and "mcpm_cost" is the measured cost of its
    epochs against plain ones.
    """
    from .export import export_meta_weight, export_segmenter
    from .loop import SliceSampler, load_checkpoint, train
    from .weights import load_meta_net, load_net, save_weights

    folder = run_dir / f"fold_{fold}"
    checkpoint, weights, onnx_path = folder / "checkpoint.pt", folder / "weights.safetensors", folder / "segmenter.onnx"
    meta_weights, meta_onnx = folder / "meta_weight.safetensors", folder / "meta_weight.onnx"
    rel = {"segmenter": f"fold_{fold}/segmenter.onnx", "weights": f"fold_{fold}/weights.safetensors"}
    if spec.meta_net:
        rel["meta_weight"] = f"fold_{fold}/meta_weight.onnx"
    in_channels = cases[0][0].shape[1]
    finished = None
    if config.resume and checkpoint.is_file() and weights.is_file() and (not spec.meta_net or meta_weights.is_file()):
        state = load_checkpoint(checkpoint)
        if int(state["epoch"]) >= config.loop.epochs:
            finished = list(state["log"])
    theta = None
    if finished is None:
        seed = fold_seed(config.seed, fold)
        method = spec.build(config, seed, meta_cases)
        sampler = SliceSampler(cases, config.loop.patch_size, config.loop.foreground_fraction)
        description = f"fold {fold + 1}/{folds}" if folds > 1 else "training"
        result = train(method, sampler, num_classes, config.loop, config.net, seed,
                       device, checkpoint, resume=config.resume, progress=progress, description=description)
        save_weights(result.net, weights, {"format": "labelaudit", "role": spec.role,
                                           "net": json.dumps(config.net.to_json())})
        if spec.meta_net:
            theta = method.deploy_meta_net()
            save_weights(theta, meta_weights, {"format": "labelaudit", "role": "meta_mask",
                                               "mcpm": json.dumps(config.mcpm.to_json())})
        net, finished = result.net, result.log
    else:
        net = load_net(weights, in_channels, num_classes, config.net)
        if spec.meta_net:
            theta = load_meta_net(meta_weights, in_channels, num_classes, config.mcpm)
    export = export_segmenter(net, num_classes, in_channels, onnx_path, config.perturbations, config.exporter)
    record = {**rel, "export": export, "log": finished}
    if spec.meta_net:
        from .mcpm import epoch_cost

        export["meta_weight"] = export_meta_weight(theta, num_classes, in_channels, meta_onnx, config.exporter)
        record["mcpm_cost"] = epoch_cost(finished, config.loop.iterations_per_epoch)
    return record

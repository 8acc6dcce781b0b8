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
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..config import FitConfig, Method
from ..data import no_track
from ..errors import UsageError
from ..formats.run import DatasetRecord, FoldModel, RunInfo, record_latest, save_run
from .extra import require_training_extra
from .progress import ProgressFn
from .registry import METHODS, MethodSpec

log = logging.getLogger(__name__)

#: The U-Net's divisor (train/nets.py, which imports torch): the smallest patch side.
DIVISOR = 16

#: Fields that may differ between the stored configuration and a --resume invocation.
_RUNTIME_FIELDS = {"device", "resume", "force", "calibrate", "out", "strict", "dataset", "preprocessed"}


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
    """Train config.method on config.dataset, fold by fold; export, calibrate, and return the run folder.

    Under torchrun the folds are shared out over the processes, several processes training one fold with
    DistributedDataParallel when there are more processes than folds (train/distributed.py); only rank 0
    reports progress.
    """
    require_training_extra()
    _check_config(config)
    from .distributed import current_ranks, process_group

    ranks = current_ranks()
    if not ranks.primary:
        track, progress = no_track, _no_progress
    with process_group(ranks) as group:
        return _fit(config, track, progress, group)


def _fit(config: FitConfig, track: Callable[[Iterable, str], Iterable], progress: ProgressFn, group) -> Path:
    from .. import __version__
    from ..data import discover_dataset, fingerprint
    from .distributed import Layout, rank_device
    from .prepare import dataset_entry, preprocessed_root
    from .progress import FoldsProgress

    spec = METHODS[config.method]
    dataset = discover_dataset(config.dataset)
    run_dir = Path(config.out) if config.out else default_run_dir(dataset.name, config.method)
    if group.primary:
        config = _claim_run_dir(run_dir, config)
    config = group.broadcast(config)
    root = preprocessed_root(config, run_dir)
    with ExitStack() as stack:
        entry = stack.enter_context(dataset_entry(config, dataset, root, track, group.primary, group.barrier))
        case_ids = sorted(c.case_id for c in entry.cases)
        meta, meta_cases = None, []
        if spec.meta_net:
            meta, meta_cases = _resolve_meta_set(config, entry, root, track, group, stack)
        train_pool = [c for c in case_ids if meta is None or c not in meta.excluded]
        groups = split_folds(train_pool, config.folds, config.seed)
        if config.resume:
            stored = json.loads((run_dir / "run.json").read_text()).get("folds")
            if stored is not None and stored != groups:
                raise UsageError(f"{run_dir}: the dataset's readable cases changed since this run started, "
                                 "so its folds no longer match", hint="start over with --force")

        import onnx
        import torch

        from .loop import resolve_device

        label_map = entry.label_map
        info = RunInfo(
            method=config.method.value, label_map=label_map, channel_names=list(entry.channel_names),
            preprocessing=entry.preprocessing, perturbations=config.perturbations, models=[],
            config=config.to_json(), log={},
            dataset=DatasetRecord(
                path=str(Path(config.dataset).resolve()), name=dataset.name, layout=dataset.layout,
                file_ending=dataset.file_ending, fingerprint=fingerprint(dataset), cases=tuple(case_ids),
                skipped=entry.skipped),
            versions={"labelaudit": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                      "onnxruntime": _installed_version("onnxruntime")},
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            status="training", folds=groups, meta_set=meta.to_json() if meta is not None else None,
        )
        layout = Layout(group.world, len(groups))
        mine = layout.folds_of(group.ranks.rank)
        device = resolve_device(rank_device(config.device, group.ranks))
        info.device = str(device)
        team = group.team(layout, device.type)
        if group.world > 1:
            info.extra["distributed"] = {"processes": group.world, "backend": "gloo",
                                         "ranks_per_fold": layout.team_size,
                                         "folds_by_rank": [layout.folds_of(r) for r in range(group.world)]}
            if team.backend:
                info.extra["distributed"]["ddp_backend"] = team.backend
            if layout.idle:
                log.warning("%d processes for %d fold(s): ranks %s have nothing to train (give a number of "
                            "processes that is a multiple of the folds, or at most the folds)", group.world,
                            len(groups), ",".join(str(r) for r in layout.idle))
        if group.primary:
            save_run(run_dir, info)  # the folds, for --resume
        clock = FoldsProgress(progress, len(mine), config.loop.total_iterations)
        records: dict[int, dict] = {}
        for fold in mine:
            held_out = groups[fold]
            train_ids = [c for c in train_pool if c not in held_out] if len(groups) > 1 else train_pool
            record = _fit_fold(config, spec, run_dir, fold, len(groups), [entry.case(c) for c in train_ids],
                               label_map.num_classes, device, clock, meta_cases, team)
            if record is not None:  # the team's leader's
                records[fold] = record
            if group.primary and fold != mine[-1]:
                _add_models(info, records, groups)
                save_run(run_dir, info)  # progress; after the last fold, the complete run below is written instead
        for part in group.gather(records):
            records.update(part)
        if group.primary:
            _add_models(info, records, groups)
            info.status = None
            save_run(run_dir, info)  # complete: calibration reads it
            if config.calibrate:
                from ..score.calibrate import calibrate_run

                # the training device says where torch runs; ONNX Runtime may lack that provider (a CPU-only
                # onnxruntime beside CUDA torch), so calibration takes whatever ONNX Runtime can actually run
                info.threshold = calibrate_run(run_dir, device="cpu" if config.device == "cpu" else "auto",
                                               track=track, structure_prior_mm2=entry.structure_prior_mm2)
                save_run(run_dir, info)
            record_latest(run_dir)
        group.barrier()  # the others return once the run folder is complete
    return run_dir


def _add_models(info: RunInfo, records: dict[int, dict], groups: list[list[str]]) -> None:
    """Set info.models, .log and .mcpm_cost from the fold records so far (in fold order)."""
    info.models = []
    for fold in sorted(records):
        record = dict(records[fold])
        if "mcpm_cost" in record:
            info.mcpm_cost = {**(info.mcpm_cost or {}), f"fold_{fold}": record.pop("mcpm_cost")}
        info.log[f"fold_{fold}"] = record.pop("log")
        several = len(groups) > 1
        info.models.append(FoldModel(fold=fold if several else -1, held_out=groups[fold] if several else [], **record))


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
    if config.loop.patch_size is not None and config.loop.patch_size < DIVISOR:
        raise UsageError(f"--patch-size {config.loop.patch_size}: expected {DIVISOR} or more (the U-Net halves "
                         "a patch four times)")
    problems = config.net.problems()
    if problems:
        features = ",".join(str(f) for f in config.net.features)
        raise UsageError(f"--features {features}: {'; '.join(problems)}", hint="e.g. --features 16,32,64,128,256,16")


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


def _resolve_meta_set(config: FitConfig, entry, root: Path, track: Callable[[Iterable, str], Iterable], group,
                      stack: ExitStack):
    """MCPM's meta set (meta_set.MetaSet) and its prepared cases (preprocessed.PreparedCase)."""
    from .meta_set import meta_set_from_dataset, meta_set_from_file

    path = Path(config.meta_set)
    case_ids = sorted(c.case_id for c in entry.cases)
    if not path.is_dir():
        meta = meta_set_from_file(path, case_ids)
        return meta, [entry.case(c) for c in meta.case_ids]
    from .prepare import meta_entry

    verified = stack.enter_context(meta_entry(config, path, entry, root, track, group.primary, group.barrier))
    if verified.skipped:
        log.warning("--meta-set %s: skipped case(s) with problems: %s", path, ", ".join(sorted(verified.skipped)))
    meta = meta_set_from_dataset(path, sorted(c.case_id for c in verified.cases), case_ids)
    return meta, [verified.case(c) for c in meta.case_ids]


def _fit_fold(config: FitConfig, spec: MethodSpec, run_dir: Path, fold: int, folds: int, cases: list,
              num_classes: int, device, clock, meta_cases: list, team) -> dict | None:
    """Train (or resume, or skip when finished) one fold; save its weights and export its graph(s).

    With a DDP `team`, every member trains; the leader saves and exports and returns the record, the others
    return None.

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
    in_channels = cases[0].in_channels
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
        result = train(method, sampler, num_classes, config.loop, config.net, seed, device, checkpoint,
                       resume=config.resume, progress=clock.fold(), description=description, team=team)
        if not team.leader:
            return None
        save_weights(result.net, weights, {"format": "labelaudit", "role": spec.role,
                                           "net": json.dumps(config.net.to_json())})
        if spec.meta_net:
            theta = method.deploy_meta_net()
            save_weights(theta, meta_weights, {"format": "labelaudit", "role": "meta_mask",
                                               "mcpm": json.dumps(config.mcpm.to_json())})
        net, finished = result.net, result.log
    else:
        clock.skip()
        if not team.leader:
            return None
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

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
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..data import no_track
from ..errors import InputError, UsageError
from .export import DEFAULT_EXPORTER, EXPORTERS
from ..config import (
    DEFAULT_VARIANT, METHODS, VARIANTS, LoopParams, McpmParams, NetParams, PintParams, params_from_json,
)
from ..formats.run import FoldModel, Perturbations, RunInfo, record_latest, save_run

log = logging.getLogger(__name__)

#: progress(description, completed, total, status): the training progress callback (the CLI draws Rich bars)
ProgressFn = Callable[[str, int, int, str], None]
#: Fields that may differ between the stored configuration and a --resume invocation.
_RUNTIME_FIELDS = {"device", "resume", "force", "calibrate", "out", "strict", "dataset"}


def _no_progress(description: str, completed: int, total: int, status: str) -> None:
    return None


@dataclass(frozen=True)
class FitConfig:
    """Everything `labelaudit fit` needs; saved as run.json's `config`.

    folds: K models, each trained on the cases of the other folds (K = 1: one model on every case).
    Default 3: each case is then scored by a model that did not see it, at 3x the cost of one model
    (about a minute per fold for the demo on 2 CPU cores); nnU-Net uses 5.
    exporter: the ONNX exporter. Default `torchscript` (the legacy tracer): 0.6 s per fold on 2 cores against
    15-25 s for `dynamo` (torch.export based, the maintained path), which was half of a 3-fold demo fit.
    Both are verified by the same ONNX Runtime parity check, and `dynamo` takes over by itself where the
    TorchScript exporter is missing or fails.
    meta_set: MCPM's verified cases, a file of case ids or a dataset folder (labelaudit.train.meta_set); they are
    never in a training fold, and scoring routes them to the ensemble of the fold models.
    """

    dataset: Path
    out: Path | None = None
    method: str = "pint"
    variant: str = DEFAULT_VARIANT
    folds: int = 3
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    force: bool = False
    strict: bool = False
    target_spacing: float | None = None  # in-plane mm; None keeps the native pixels
    meta_set: Path | None = None
    calibrate: bool = True
    exporter: str = DEFAULT_EXPORTER
    loop: LoopParams = LoopParams()
    net: NetParams = NetParams()
    pint: PintParams = PintParams()
    mcpm: McpmParams = McpmParams()
    perturbations: Perturbations = Perturbations()  # the scoring-time noise bank of the exported graph

    def __post_init__(self) -> None:
        # `variant` is the CLI's spelling; keep the PINT parameters saved in run.json consistent with it
        if self.pint.variant != self.variant:
            object.__setattr__(self, "pint", replace(self.pint, variant=self.variant))

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("dataset", "out", "meta_set"):
            data[key] = str(data[key]) if data[key] is not None else None
        data["loop"], data["pint"], data["mcpm"] = asdict(self.loop), asdict(self.pint), self.mcpm.to_json()
        data["net"], data["perturbations"] = self.net.to_json(), asdict(self.perturbations)
        return data

    @classmethod
    def from_json(cls, data: dict) -> FitConfig:
        simple = {f.name for f in fields(cls)} - {"loop", "net", "pint", "mcpm", "perturbations"}
        kwargs = {k: v for k, v in data.items() if k in simple}
        for key in ("dataset", "out", "meta_set"):
            if kwargs.get(key) is not None:
                kwargs[key] = Path(kwargs[key])
        return cls(**kwargs, loop=params_from_json(LoopParams, data.get("loop", {})),
                   net=NetParams.from_json(data.get("net", {})),
                   pint=params_from_json(PintParams, data.get("pint", {})),
                   mcpm=params_from_json(McpmParams, data.get("mcpm", {})),
                   perturbations=Perturbations(**data.get("perturbations", {})))


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


def default_run_dir(dataset_name: str, method: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_name) or "dataset"
    return Path("runs") / f"{safe}-{method}"


def fit_dataset(config: FitConfig, track: Callable[[Iterable, str], Iterable] = no_track,
                progress: ProgressFn = _no_progress) -> Path:
    """Train config.method on config.dataset, fold by fold; export, calibrate, and return the run folder."""
    from .export import require_training_extra

    require_training_extra()
    _check_config(config)
    from .. import __version__
    from ..data import discover_dataset, fingerprint, iter_cases
    from ..preprocess import LabelMap, fit_preprocessing, prepare_case

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
    del cases
    case_ids = sorted(prepared)
    meta, meta_cases = None, None
    if config.method == "mcpm":
        meta, meta_cases = _resolve_meta_set(config, case_ids, prepared, prep, label_map, channels, track)
    train_pool = [c for c in case_ids if meta is None or c not in meta.excluded]
    groups = split_folds(train_pool, config.folds, config.seed)
    if config.resume:
        stored = json.loads((run_dir / "run.json").read_text()).get("folds")
        if stored is not None and stored != groups:
            raise UsageError(f"{run_dir}: the dataset's readable cases changed since this run started, "
                             "so its folds no longer match", hint="start over with --force")

    import onnx
    import onnxruntime
    import torch

    info = RunInfo(
        method=config.method, label_map=label_map, channel_names=channel_names, preprocessing=prep,
        perturbations=config.perturbations, models=[], config=config.to_json(), log={},
        dataset={"path": str(Path(config.dataset).resolve()), "name": dataset.name, "layout": dataset.layout,
                 "file_ending": dataset.file_ending, "fingerprint": fingerprint(dataset), "cases": case_ids,
                 "skipped": {cid: [str(p) for p in problems] for cid, problems in dataset.skipped.items()}},
        versions={"labelaudit": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra={"status": "training", "folds": groups},
    )
    if meta is not None:
        info.extra["meta_set"] = meta.to_json()
    save_run(run_dir, info)

    from .loop import resolve_device

    device = resolve_device(config.device)
    info.extra["device"] = str(device)
    models = []
    for fold, held_out in enumerate(groups):
        train_ids = [c for c in train_pool if c not in held_out] if len(groups) > 1 else train_pool
        record = _fit_fold(config, run_dir, fold, len(groups), [prepared[c] for c in train_ids],
                           label_map.num_classes, device, progress, meta_cases)
        if "mcpm_cost" in record:
            info.extra.setdefault("mcpm_cost", {})[f"fold_{fold}"] = record.pop("mcpm_cost")
        info.log[f"fold_{fold}"] = record.pop("log")
        models.append(FoldModel(fold=fold if len(groups) > 1 else -1, held_out=held_out if len(groups) > 1 else [],
                                **record))
        save_run(run_dir, info)
    info.models = models
    info.extra.pop("status", None)
    save_run(run_dir, info)
    if config.calibrate:
        from ..score.pipeline import calibrate_run

        # the training device says where torch runs; ONNX Runtime may lack that provider (a CPU-only
        # onnxruntime beside CUDA torch), so calibration takes whatever ONNX Runtime can actually run
        info.threshold = calibrate_run(run_dir, device="cpu" if config.device == "cpu" else "auto", track=track)
        save_run(run_dir, info)
    record_latest(run_dir)
    return run_dir


def _check_config(config: FitConfig) -> None:
    if config.method not in METHODS:
        raise UsageError(f"--method {config.method!r}: expected one of {', '.join(METHODS)}")
    if config.method == "mcpm" and config.meta_set is None:
        raise UsageError("--method mcpm needs --meta-set: a file of verified case ids (one per line) or a "
                         "dataset folder of verified cases", hint="or use --method pint, which needs no meta set")
    if config.meta_set is not None and config.method != "mcpm":
        raise UsageError("--meta-set is only used by --method mcpm")
    if config.exporter not in EXPORTERS:
        raise UsageError(f"--exporter {config.exporter!r}: expected one of {', '.join(EXPORTERS)}")
    if config.variant not in VARIANTS:
        raise UsageError(f"--variant {config.variant!r}: expected one of {', '.join(VARIANTS)}")
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
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
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


def _fit_fold(config: FitConfig, run_dir: Path, fold: int, folds: int, cases: list, num_classes: int,
              device, progress: ProgressFn, meta_cases: list | None = None) -> dict:
    """Train (or resume, or skip when finished) one fold; save its weights and export its graph(s).

    MCPM also saves the meta mask network (meta_weight.safetensors) and exports meta_weight.onnx; its parity
    record is export["meta_weight"], and "mcpm_cost" is the measured cost of its epochs against plain ones.
    """
    from .export import export_meta_weight, export_segmenter, load_meta_net, load_net, save_weights
    from .loop import SliceSampler, load_checkpoint, train
    from .mcpm import McpmMethod, epoch_cost
    from .pint import PintMethod
    from .plain import PlainMethod

    folder = run_dir / f"fold_{fold}"
    checkpoint, weights, onnx_path = folder / "checkpoint.pt", folder / "weights.safetensors", folder / "segmenter.onnx"
    meta_weights, meta_onnx = folder / "meta_weight.safetensors", folder / "meta_weight.onnx"
    mcpm = config.method == "mcpm"
    rel = {"segmenter": f"fold_{fold}/segmenter.onnx", "weights": f"fold_{fold}/weights.safetensors"}
    if mcpm:
        rel["meta_weight"] = f"fold_{fold}/meta_weight.onnx"
    in_channels = cases[0][0].shape[1]
    finished = None
    if config.resume and checkpoint.is_file() and weights.is_file() and (not mcpm or meta_weights.is_file()):
        state = load_checkpoint(checkpoint)
        if int(state["epoch"]) >= config.loop.epochs:
            finished = list(state["log"])
    theta = None
    if finished is None:
        seed = fold_seed(config.seed, fold)
        if config.method == "pint":
            method = PintMethod(config.pint)
        elif mcpm:
            method = McpmMethod(config.mcpm, meta_cases or [], seed, config.loop)
        else:
            method = PlainMethod()
        sampler = SliceSampler(cases, config.loop.patch_size, config.loop.foreground_fraction)
        description = f"fold {fold + 1}/{folds}" if folds > 1 else "training"
        result = train(method, sampler, num_classes, config.loop, config.net, seed,
                       device, checkpoint, resume=config.resume, progress=progress, description=description)
        role = "ema_teacher" if config.method == "pint" else "network"
        save_weights(result.net, weights, {"format": "labelaudit", "role": role, "net": json.dumps(config.net.to_json())})
        if mcpm:
            theta = method.deploy_meta_net()
            save_weights(theta, meta_weights, {"format": "labelaudit", "role": "meta_mask",
                                               "mcpm": json.dumps(config.mcpm.to_json())})
        net, finished = result.net, result.log
    else:
        net = load_net(weights, in_channels, num_classes, config.net)
        if mcpm:
            theta = load_meta_net(meta_weights, in_channels, num_classes, config.mcpm)
    export = export_segmenter(net, num_classes, in_channels, onnx_path, config.perturbations, config.exporter)
    record = {**rel, "export": export, "log": finished}
    if mcpm:
        export["meta_weight"] = export_meta_weight(theta, num_classes, in_channels, meta_onnx, config.exporter)
        record["mcpm_cost"] = epoch_cost(finished, config.loop.iterations_per_epoch)
    return record

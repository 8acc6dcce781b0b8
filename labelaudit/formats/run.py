"""The run folder: run.json, weights and ONNX graphs; the contract between `fit` and `score`/`check`.

Layout of RUN_DIR (written by `fit`, read by `score`, `check`, `export`):

    run.json
    fold_0/weights.safetensors   fold_0/checkpoint.pt   fold_0/segmenter.onnx   (fold_0/meta_weight.onnx: MCPM)
    fold_1/...                   (one folder per fold; a single model is fold_0)

stdlib + numpy only: no torch, no onnxruntime here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import (PRESET_BUDGETS, Exporter, McpmParams, NetParams, Perturbations, PixelScore, Preset,
                      params_from_json)
from ..errors import ModelError
from ..io.atomic import write_json
from ..preprocess import CHANNEL_NORMS, ChannelNorm, LabelMap, Preprocessing
from ..training_scores import ScoreSpread, SliceRanking
from ..types import Calibration
from .fields import Fields, load_json

RUN_FORMAT = 1
LATEST_POINTER = Path("runs") / ".latest"


@dataclass
class FoldModel:
    """One trained model of the run (fold i was held out; fold -1: trained on every case)."""

    fold: int
    segmenter: str  # relative path of segmenter.onnx
    weights: str  # relative path of the safetensors weights
    meta_weight: str | None = None  # MCPM's meta_weight.onnx
    held_out: list[str] = field(default_factory=list)  # case ids this model did not train on
    export: dict = field(default_factory=dict)  # opset, parity max |diff|, exporter (free-form record)

    def to_json(self) -> dict:
        return {"fold": self.fold, "segmenter": self.segmenter, "weights": self.weights,
                "meta_weight": self.meta_weight, "held_out": self.held_out, "export": self.export}

    @classmethod
    def from_fields(cls, f: Fields) -> FoldModel:
        return cls(fold=f.int("fold", minimum=-1), segmenter=_relative(f, "segmenter"), weights=f.str("weights", ""),
                   meta_weight=_relative(f, "meta_weight", None), held_out=f.strings("held_out", []),
                   export=f.object("export", None).data if f.has("export") else {})


@dataclass(frozen=True)
class DatasetRecord:
    """The dataset a run was fit on, as run.json records it."""

    path: str
    name: str
    layout: str = ""
    file_ending: str = ""
    fingerprint: str = ""
    cases: tuple[str, ...] = ()
    skipped: dict[str, list[str]] = field(default_factory=dict)  # case id -> why it was not trained on

    def to_json(self) -> dict:
        return {"path": self.path, "name": self.name, "layout": self.layout, "file_ending": self.file_ending,
                "fingerprint": self.fingerprint, "cases": list(self.cases), "skipped": self.skipped}

    @classmethod
    def from_fields(cls, f: Fields) -> DatasetRecord:
        skipped = f.object("skipped", None)
        return cls(path=f.str("path", ""), name=f.str("name", "?"), layout=f.str("layout", ""),
                   file_ending=f.str("file_ending", ""), fingerprint=f.str("fingerprint", ""),
                   cases=tuple(f.strings("cases", [])),
                   skipped={k: skipped.strings(k) for k in skipped.data} if skipped is not None else {})


@dataclass(frozen=True)
class RunSettings:
    """The parts of run.json's `config` (FitConfig.to_json()) that export, weights and scoring read.

    exporter: None for a run written before the option (those were exported with dynamo).
    net: a run written before run.json recorded its network has the one U-Net of that time, FAST's.
    """

    net: NetParams = NetParams(features=PRESET_BUDGETS[Preset.FAST][1])
    mcpm: McpmParams = McpmParams()
    exporter: Exporter | None = None
    variant: str | None = None
    epochs: int | None = None  # of each fold (config.loop.epochs)

    @property
    def preset(self) -> Preset | None:
        """The preset whose budget (epochs, features) the run was trained with, if any."""
        return next((p for p, budget in PRESET_BUDGETS.items() if budget == (self.epochs, self.net.features)), None)

    @classmethod
    def from_fields(cls, f: Fields) -> RunSettings:
        """Read `config` with validation; a field of the wrong shape is a ModelError (exit 4) naming it."""
        loop = f.object("loop", None)
        return cls(_params(f, "net", NetParams.from_json, cls.net),
                   _params(f, "mcpm", lambda d: params_from_json(McpmParams, d), McpmParams()),
                   f.choice("exporter", Exporter, None), f.str("variant", None),
                   loop.int("epochs", None, minimum=1) if loop is not None else None)


def _params(f: Fields, key: str, read, default):
    """The parameter block `key` of `config` through `read` (its from_json), `default` when absent."""
    block = f.object(key, None)
    if block is None:
        return default
    try:
        return read(block.data)
    except (TypeError, ValueError) as exc:
        raise f.fail(key, f"the {key} parameters `labelaudit fit` writes ({exc})") from exc


_RUN_HINT = "re-fit the run, or restore run.json as `labelaudit fit` wrote it"


@dataclass
class RunInfo:
    """Everything in run.json. `config` is FitConfig.to_json(); `log` maps fold -> per-epoch rows."""

    method: str  # plain | pint | mcpm
    dataset: DatasetRecord
    label_map: LabelMap
    channel_names: list[str]
    preprocessing: Preprocessing
    perturbations: Perturbations
    models: list[FoldModel]
    config: dict = field(default_factory=dict)
    log: dict[str, list[dict]] = field(default_factory=dict)
    threshold: Calibration | None = None  # fit's calibration; None until calibrated
    versions: dict = field(default_factory=dict)
    created: str = ""
    status: str | None = None  # "training" while fit runs
    folds: list[list[str]] | None = None  # the case ids held out by each fold, as split at the start
    device: str | None = None  # where torch trained
    meta_set: dict | None = None  # MCPM's verified cases (train/meta_set.MetaSet.to_json)
    mcpm_cost: dict | None = None  # measured cost of MCPM epochs against plain ones, per fold
    extra: dict = field(default_factory=dict)  # fields of other writers (e.g. "shipped"), kept as they are

    @property
    def settings(self) -> RunSettings:
        """`config`, typed: the network, MCPM's parameters, the exporter and the PINT variant."""
        return RunSettings.from_fields(Fields(self.config, "run.json", "config", hint=_RUN_HINT))

    def to_json(self) -> dict:
        optional = {name: getattr(self, name) for name in ("status", "folds", "device", "meta_set", "mcpm_cost")
                    if getattr(self, name) is not None}
        return {
            "format": RUN_FORMAT, "created": self.created, "method": self.method, "config": self.config,
            "dataset": self.dataset.to_json(), "classes": self.label_map.to_json(),
            "channel_names": self.channel_names, "preprocessing": self.preprocessing.to_json(),
            "perturbations": vars(self.perturbations), "models": [m.to_json() for m in self.models],
            "threshold": self.threshold.to_json() if self.threshold is not None else {},
            "log": self.log, "versions": self.versions, **optional, **self.extra,
        }

    @classmethod
    def from_json(cls, data, where: Path) -> RunInfo:
        """Parse run.json's content; any field of the wrong shape is a ModelError (exit 4) naming it."""
        f = Fields(data, where, hint=_RUN_HINT)
        if data.get("format") != RUN_FORMAT:
            raise ModelError(f"{where}: run.json format {data.get('format')!r}, expected {RUN_FORMAT}",
                             hint="re-export or re-fit the run with this version of labelaudit")
        known = {"format", "created", "method", "config", "dataset", "classes", "channel_names", "preprocessing",
                 "perturbations", "models", "threshold", "log", "versions", "status", "folds", "device", "meta_set",
                 "mcpm_cost"}
        folds = f.list("folds", None)
        if folds is not None and not all(isinstance(g, list) and all(isinstance(c, str) for c in g) for g in folds):
            raise f.fail("folds", "a list of lists of case ids")
        return cls(
            method=f.str("method"), dataset=DatasetRecord.from_fields(f.object("dataset")),
            label_map=read_label_map(f.object("classes")), channel_names=f.strings("channel_names"),
            preprocessing=read_preprocessing(f.object("preprocessing")),
            perturbations=read_perturbations(f.object("perturbations", None)),
            models=[FoldModel.from_fields(m) for m in f.objects("models")],
            config=_checked_config(f),
            log=f.object("log", None).data if f.has("log") else {},
            threshold=read_calibration(f.object("threshold", None)) if f.has("threshold") else None,
            versions=f.object("versions", None).data if f.has("versions") else {},
            created=f.str("created", ""), status=f.str("status", None), folds=folds, device=f.str("device", None),
            meta_set=f.object("meta_set", None).data if f.has("meta_set") else None,
            mcpm_cost=f.object("mcpm_cost", None).data if f.has("mcpm_cost") else None,
            extra={k: v for k, v in data.items() if k not in known},
        )


def _checked_config(f: Fields) -> dict:
    """run.json's `config` as written (it round-trips), checked once here so that `settings` cannot fail later."""
    config = f.object("config", None)
    if config is None:
        return {}
    RunSettings.from_fields(config)
    return config.data


def _relative(f: Fields, key: str, default=...):
    """A path inside the run folder: relative, without '..' (run.json must not point elsewhere)."""
    value = f.str(key) if default is ... else f.str(key, default)
    if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts):
        raise f.fail(key, "a path inside the run folder")
    return value


def read_label_map(f: Fields) -> LabelMap:
    values, names = f.numbers("values", integer=True), f.strings("names")
    if not values or len(values) != len(names) or len(set(values)) != len(values):
        raise f.fail("values", "distinct label values, one per name")
    return LabelMap(tuple(values), tuple(names))


def read_preprocessing(f: Fields) -> Preprocessing:
    channels = []
    for c in f.objects("channels"):
        kind = c.str("kind")
        if kind not in CHANNEL_NORMS:
            raise c.fail("kind", " or ".join(repr(k) for k in CHANNEL_NORMS))
        channels.append(ChannelNorm(kind, c.float("clip_low", 0.0), c.float("clip_high", 0.0), c.float("mean", 0.0),
                                    c.float("std", 1.0, positive=True)))
    if not channels:
        raise f.fail("channels", "at least one channel")
    spacing = f.numbers("target_spacing", None)
    if spacing is not None and (len(spacing) != 2 or min(spacing) <= 0):
        raise f.fail("target_spacing", "two positive in-plane spacings in mm")
    return Preprocessing(tuple(channels), tuple(spacing) if spacing else None, f.int("divisor", 16, minimum=1))


def read_perturbations(f: Fields | None) -> Perturbations:
    if f is None:
        return Perturbations()
    default = Perturbations()
    return Perturbations(k=f.int("k", default.k, minimum=1), sigma=f.float("sigma", default.sigma, low=0.0),
                         clip=f.float("clip", default.clip, low=0.0), seed=f.int("seed", default.seed))


def read_calibration(f: Fields | None) -> Calibration | None:
    """run.json's "threshold" ({} before fit calibrated it)."""
    if f is None or not f.data:
        return None

    def stats(key: str) -> ScoreSpread:
        block = f.object(key, None)
        if block is None:
            return ScoreSpread()
        quantiles = [k for k in block.data if re.fullmatch(r"q\d{1,2}", k)]
        # log_median / log_mad: written by calibrations of log scores (before 2026-12-01), no longer read
        unknown = [k for k in block.data if k not in ("median", "mad", "log_median", "log_mad", *quantiles)]
        if unknown:
            raise block.fail(unknown[0], "no such field (median, mad and quantiles q50 … q99)")
        return ScoreSpread(block.float("median", None), block.float("mad", None, low=0.0),
                           {k: block.float(k) for k in quantiles})

    return Calibration(
        slice=f.float("slice", low=0.0, high=1.0), case=f.float("case", f.data.get("slice"), low=0.0, high=1.0),
        rule=f.str("rule", ""), case_rule=f.str("case_rule", ""), meaning=f.str("meaning", ""),
        k=f.float("k", 3.0), mad_scale=f.float("mad_scale", 1.4826), floor=f.float("floor", 0.0),
        pixel_score=f.choice("pixel_score", PixelScore, None).value if f.has("pixel_score") else None,
        perturbations=f.int("perturbations", None, minimum=1), scored=f.str("scored", ""),
        n_slices=f.int("n_slices", 0, minimum=0), n_cases=f.int("n_cases", 0, minimum=0),
        slice_stats=stats("slice_stats"), case_stats=stats("case_stats"),
        flagged_slices=f.int("flagged_slices", 0, minimum=0), flagged_cases=f.int("flagged_cases", 0, minimum=0),
        structure_prior_mm2=f.float("structure_prior_mm2", None, positive=True),
        structure_prior_rule=f.str("structure_prior_rule", None), slice_rule=f.str("slice_rule", None),
        gate=f.float("gate", None, low=0.0, high=1.0), gate_rule=f.str("gate_rule", None),
        gate_k=f.float("gate_k", None, positive=True),
        class_agreement=_class_agreement(f), slice_ranking=_slice_ranking(f),
    )


def _slice_ranking(f: Fields) -> SliceRanking | None:
    """threshold.slice_ranking: three sorted tables of scores in [0, 1], of one length (score/ranking.py)."""
    block = f.object("slice_ranking", None)
    if block is None:
        return None
    unknown = [k for k in block.data if k not in ("rule", "structure", "softmin", "blended")]
    if unknown:
        raise block.fail(unknown[0], "no such field (rule, structure, softmin, blended)")
    tables = {key: block.numbers(key) for key in ("structure", "softmin", "blended")}
    for key, values in tables.items():
        if not values or len(values) != len(tables["structure"]):
            raise block.fail(key, f"a non-empty list as long as 'structure' ({len(tables['structure'])} values)")
        if min(values) < 0.0 or max(values) > 1.0 or any(b < a for a, b in zip(values, values[1:])):
            raise block.fail(key, "scores in [0, 1], sorted ascending")
    return SliceRanking(block.str("rule"), *(tuple(tables[k]) for k in ("structure", "softmin", "blended")))


def _class_agreement(f: Fields) -> dict[int, float] | None:
    """threshold.class_agreement: label value (as text) -> a Dice in [0, 1]."""
    block = f.object("class_agreement", None)
    if block is None:
        return None
    if not all(k.lstrip("-").isdigit() for k in block.data):
        raise f.fail("class_agreement", "label values (integers) as keys")
    return {int(k): block.float(k, low=0.0, high=1.0) for k in block.data}


def save_run(run_dir: Path, info: RunInfo) -> Path:
    path = Path(run_dir) / "run.json"
    write_json(path, info.to_json())
    return path


def read_run_info(run_dir: Path | str) -> RunInfo:
    """RUN_DIR/run.json parsed, without checking that the files it names exist (export creates them)."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: run folder not found", hint="train one with: labelaudit fit DATASET")
    if not path.is_file():
        raise ModelError(f"{path}: missing", hint="this folder was not written by `labelaudit fit`")
    data = load_json(path)
    if isinstance(data, dict) and data.get("kind") == "probabilities":  # formats/probability_run.py
        raise ModelError(f"{path}: the calibration of given probabilities (`score --probabilities`), not a run "
                         "folder with ONNX graphs", hint=f"pass the probabilities with it: --probabilities SRC "
                                                         f"--model {run_dir}")
    return RunInfo.from_json(data, path)


def load_run(run_dir: Path | str) -> RunInfo:
    """Read and validate RUN_DIR/run.json; every ONNX file it names must exist (ModelError, exit 4)."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    info = read_run_info(run_dir)
    if not info.models:
        raise ModelError(f"{path}: lists no models", hint="re-run `labelaudit export` on the run folder")
    for model in info.models:
        for rel in (model.segmenter, model.meta_weight):
            if rel and not (run_dir / rel).is_file():
                raise ModelError(f"{run_dir / rel}: ONNX graph missing",
                                 hint=f"re-create it with: labelaudit export {run_dir}")
    return info


def record_latest(run_dir: Path, cwd: Path | None = None) -> None:
    """Remember RUN_DIR as the latest run (in ./runs/.latest), for `score`/`check` without --model."""
    pointer = (cwd or Path.cwd()) / LATEST_POINTER
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(str(Path(run_dir).resolve()) + "\n")


def latest_run(cwd: Path | None = None) -> Path:
    pointer = (cwd or Path.cwd()) / LATEST_POINTER
    if not pointer.is_file():
        raise ModelError("no model given and no latest run recorded in ./runs",
                         hint="pass --model RUN_DIR, or train one with: labelaudit fit DATASET")
    return Path(pointer.read_text().strip())


def perturbation_noise(perturbations: Perturbations, channels: int, height: int, width: int):
    """The deterministic noise bank fed to segmenter.onnx: float32 (K, C, H, W); pass 0 is all zeros.

    Scoring and export parity both use it, so an audit is reproducible across runtimes.
    """
    import numpy as np

    rng = np.random.default_rng([perturbations.seed, height, width, channels])
    noise = rng.normal(0.0, perturbations.sigma, size=(perturbations.k, channels, height, width))
    noise = np.clip(noise, -perturbations.clip, perturbations.clip).astype(np.float32)
    noise[0] = 0.0
    return noise

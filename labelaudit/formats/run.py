"""The run folder: run.json, weights and ONNX graphs; the contract between `fit` and `score`/`check`.

Layout of RUN_DIR (written by `fit`, read by `score`, `check`, `export`):

    run.json
    fold_0/weights.safetensors   fold_0/checkpoint.pt   fold_0/segmenter.onnx   (fold_0/meta_weight.onnx: MCPM)
    fold_1/...                   (one folder per fold; a single model is fold_0)

stdlib + numpy only: no torch, no onnxruntime here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..io.atomic import write_json
from ..errors import ModelError
from ..config import Perturbations
from ..preprocess import LabelMap, Preprocessing

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
    export: dict = field(default_factory=dict)  # opset, parity max |diff|, exporter

    def to_json(self) -> dict:
        return {"fold": self.fold, "segmenter": self.segmenter, "weights": self.weights,
                "meta_weight": self.meta_weight, "held_out": self.held_out, "export": self.export}


@dataclass
class RunInfo:
    """Everything in run.json. `config` is the FitConfig as a dict; `log` maps fold -> per-epoch rows."""

    method: str  # plain | pint | mcpm
    dataset: dict  # path, name, layout, file_ending, fingerprint, cases
    label_map: LabelMap
    channel_names: list[str]
    preprocessing: Preprocessing
    perturbations: Perturbations
    models: list[FoldModel]
    config: dict = field(default_factory=dict)
    log: dict[str, list[dict]] = field(default_factory=dict)
    threshold: dict = field(default_factory=dict)  # {"slice": float, "case": float, "rule": str, ...}
    versions: dict = field(default_factory=dict)
    created: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "format": RUN_FORMAT, "created": self.created, "method": self.method, "config": self.config,
            "dataset": self.dataset, "classes": self.label_map.to_json(), "channel_names": self.channel_names,
            "preprocessing": self.preprocessing.to_json(),
            "perturbations": vars(self.perturbations),
            "models": [m.to_json() for m in self.models], "threshold": self.threshold,
            "log": self.log, "versions": self.versions, **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict, where: Path) -> RunInfo:
        known = {"format", "created", "method", "config", "dataset", "classes", "channel_names", "preprocessing",
                 "perturbations", "models", "threshold", "log", "versions"}
        try:
            if data.get("format") != RUN_FORMAT:
                raise ModelError(f"{where}: run.json format {data.get('format')!r}, expected {RUN_FORMAT}",
                                 hint="re-export or re-fit the run with this version of labelaudit")
            return cls(
                method=data["method"], dataset=data["dataset"], label_map=LabelMap.from_json(data["classes"]),
                channel_names=list(data["channel_names"]),
                preprocessing=Preprocessing.from_json(data["preprocessing"]),
                perturbations=Perturbations(**data.get("perturbations", {})),
                models=[FoldModel(**m) for m in data["models"]], config=data.get("config", {}),
                log=data.get("log", {}), threshold=data.get("threshold", {}), versions=data.get("versions", {}),
                created=data.get("created", ""), extra={k: v for k, v in data.items() if k not in known},
            )
        except KeyError as exc:
            raise ModelError(f"{where}: run.json lacks the field {exc.args[0]!r}") from exc
        except TypeError as exc:
            raise ModelError(f"{where}: run.json has an invalid field ({exc})") from exc


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
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
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

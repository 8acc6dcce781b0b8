"""The embedded demo dataset and `labelaudit demo`: copy it, check it, corrupt it (then fit and score).

The dataset (``labelaudit/demo_data/mni_brain``, nnU-Net v2 layout, 12 brain MRI cases with
white/gray matter labels derived from the MNI ICBM152 2009 template) ships inside the package;
``tools/make_demo_data.py`` regenerates it and ``demo_data/README.md`` describes it.

`run_demo` is a list of steps, each a small function that takes the config and the result so far
and fills in its part of the result; add a step by writing one more and appending it to `STEPS`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import DatasetSummary, Track, discover_dataset, inspect_dataset, no_track
from .errors import UsageError
from .config import DEFAULT_EXPORTER, DEFAULT_METHOD, Exporter, Method

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only for annotations

    from .formats.manifest import CorruptionManifest

#: The demo dataset's folder name inside the package (and its dataset.json "name").
DEMO_NAME = "mni_brain"
#: Documented shape of the embedded dataset (tests hold the files to it).
DEMO_CASES = 12
DEMO_SLICES = (16, 24)  # inclusive range of slices per case
DEMO_LABELS = {"background": 0, "white_matter": 1, "gray_matter": 2}


def _demo_resource() -> Traversable:
    return resources.files("labelaudit") / "demo_data" / DEMO_NAME


def demo_dataset_path() -> Path:
    """The embedded demo dataset's folder (read-only: never write into it; use `materialize_demo`).

    When the package is not installed as plain files (e.g. imported from a zip), the dataset is
    first extracted to a temporary folder.
    """
    resource = _demo_resource()
    if isinstance(resource, Path):
        return resource
    return materialize_demo(Path(tempfile.mkdtemp(prefix="labelaudit-demo-")) / DEMO_NAME)


def materialize_demo(dest: Path | str) -> Path:
    """Copy the embedded demo dataset to `dest` (created; must not exist or be empty) and return it.

    The copies are ordinary writable files, whatever the permissions of the installed package.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} exists and is not empty", hint="choose another folder or empty it first")
    _copy_traversable(_demo_resource(), dest)
    return dest


def _copy_traversable(source: Traversable, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name.startswith(".") or item.name == "__pycache__":
            continue
        if item.is_dir():
            _copy_traversable(item, dest / item.name)
        else:
            (dest / item.name).write_bytes(item.read_bytes())  # new file, default mode: writable


def is_demo_copy(folder: Path) -> bool:
    """True when `folder` holds a copy of the demo dataset (so a rerun may replace it)."""
    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("name") == DEMO_NAME and "generator" in meta


# ----------------------------------------------------------------------------- the pipeline

@dataclass(frozen=True)
class DemoConfig:
    """What `labelaudit demo` does; the corrupt settings are `labelaudit corrupt`'s."""

    out: Path = Path("demo")
    rate: float = 0.3  # fraction of slices with foreground whose label is corrupted
    kinds: tuple[str, ...] | None = None  # None: config.DEFAULT_KINDS (no elasticdeform needed)
    level: str = "slice"
    seed: int = 0
    method: Method = DEFAULT_METHOD  # fit's default, whatever it is
    folds: int = 3
    epochs: int | None = None  # None: the FAST preset's (a CPU budget: the demo must run in minutes)
    iterations_per_epoch: int | None = None
    device: str = "auto"
    exporter: Exporter = DEFAULT_EXPORTER

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    @property
    def audit_dir(self) -> Path:
        return self.out / "audit"

    @property
    def clean_dir(self) -> Path:
        return self.out / "clean"

    @property
    def noisy_dir(self) -> Path:
        return self.out / "noisy"


@dataclass(frozen=True)
class DemoHooks:
    """How the steps report progress: `track` wraps loops, `progress(description, done, total, status)`
    follows training (fit's callback)."""

    track: Track = no_track
    progress: Callable[[str, int, int, str], None] | None = None


@dataclass
class DemoStep:
    """One finished step: its name, what it wrote (if anything) and how long it took."""

    name: str
    seconds: float
    path: Path | None = None


@dataclass
class DemoResult:
    """What the demo produced; steps fill in their fields in order."""

    config: DemoConfig
    clean: Path | None = None
    summary: DatasetSummary | None = None
    noisy: Path | None = None
    manifest: CorruptionManifest | None = None
    manifest_path: Path | None = None
    run_dir: Path | None = None
    audit: Any = None  # scoring.Audit
    evaluation: Any = None  # evaluate.EvaluationResult
    steps: list[DemoStep] = field(default_factory=list)

    @property
    def num_cases(self) -> int:
        return len(self.summary.cases) if self.summary else 0

    @property
    def num_slices(self) -> int:
        return sum(info.num_slices for info in self.summary.cases) if self.summary else 0

    @property
    def corrupted_by_kind(self) -> dict[str, dict]:
        """kind -> {"slices", "cases", "changed_pixels"} (noise.summarize of the manifest)."""
        if self.manifest is None:
            return {}
        from .noise.corrupt import summarize

        return summarize(self.manifest)


def step_copy(config: DemoConfig, result: DemoResult, hooks: DemoHooks) -> Path:
    """Copy the embedded dataset to OUT/clean (replacing an earlier demo copy, nothing else)."""
    clean = config.clean_dir
    if clean.exists() and any(clean.iterdir()):
        if not is_demo_copy(clean):
            raise UsageError(f"{clean} exists and is not a copy of the demo dataset; refusing to replace it",
                             hint="choose another --out folder")
        shutil.rmtree(clean)
    result.clean = materialize_demo(clean)
    return result.clean


def step_inspect(config: DemoConfig, result: DemoResult, hooks: DemoHooks) -> Path:
    """Check every case of the clean copy (strict: the demo data has no problems)."""
    assert result.clean is not None
    result.summary = inspect_dataset(discover_dataset(result.clean), strict=True, track=hooks.track)
    return result.clean


def step_corrupt(config: DemoConfig, result: DemoResult, hooks: DemoHooks) -> Path:
    """Write the noisy copy OUT/noisy with corruption.json (replacing an earlier demo's)."""
    from .config import DEFAULT_KINDS, CorruptConfig
    from .formats.manifest import MANIFEST_NAME
    from .noise.corrupt import corrupt_dataset

    assert result.clean is not None
    corrupt = CorruptConfig(clean=result.clean, out=config.noisy_dir, rate=config.rate,
                            kinds=config.kinds or DEFAULT_KINDS, level=config.level, seed=config.seed,
                            force=True)  # force replaces only an earlier corrupt output (it checks)
    result.manifest = corrupt_dataset(corrupt, track=hooks.track)
    result.noisy = config.noisy_dir
    result.manifest_path = config.noisy_dir / MANIFEST_NAME
    return result.manifest_path


def step_fit(config: DemoConfig, result: DemoResult, hooks: DemoHooks) -> Path:
    """Train the robust model on the noisy copy (cross-fitted folds) and export its ONNX graphs."""
    from dataclasses import replace

    from .config import FitConfig, Preset, preset_budget
    from .train.fit import fit_dataset

    assert result.noisy is not None
    loop, net = preset_budget(Preset.FAST)
    loop = replace(loop, epochs=config.epochs or loop.epochs,
                   iterations_per_epoch=config.iterations_per_epoch or loop.iterations_per_epoch)
    fit_config = FitConfig(dataset=result.noisy, out=config.run_dir, method=config.method, folds=config.folds,
                           seed=config.seed, device=config.device, force=True, exporter=config.exporter, loop=loop,
                           net=net)
    kwargs = {"progress": hooks.progress} if hooks.progress is not None else {}
    result.run_dir = fit_dataset(fit_config, track=hooks.track, **kwargs)
    return result.run_dir


def step_score(config: DemoConfig, result: DemoResult, hooks: DemoHooks) -> Path:
    """Score every annotation of the noisy copy out-of-fold and write the audit and its report."""
    from .config import ScoreConfig
    from .score.pipeline import score_dataset

    assert result.run_dir is not None and result.noisy is not None
    result.audit = score_dataset(ScoreConfig(run_dir=result.run_dir, dataset=result.noisy, out_dir=config.audit_dir,
                                             device=config.device), track=hooks.track)
    return config.audit_dir / "report.html"


def step_evaluate(config: DemoConfig, result: DemoResult, hooks: DemoHooks) -> Path:
    """Measure the audit against what `corrupt` really changed (the demo knows the truth)."""
    from .config import EvaluateConfig
    from .evaluate.evaluate import evaluate_audit, write_evaluation_json

    assert result.manifest_path is not None and result.clean is not None
    result.evaluation = evaluate_audit(EvaluateConfig(config.audit_dir, result.manifest_path, clean=result.clean),
                                       track=hooks.track)
    return write_evaluation_json(result.evaluation, config.audit_dir / "evaluation.json")


Step = Callable[[DemoConfig, DemoResult, DemoHooks], "Path | None"]
#: The demo, in order: (name shown to the user, step).
STEPS: tuple[tuple[str, Step], ...] = (
    ("copy the demo dataset", step_copy),
    ("check the dataset", step_inspect),
    ("corrupt the labels", step_corrupt),
    ("fit the robust model", step_fit),
    ("score every annotation", step_score),
    ("evaluate the audit against the known corruption", step_evaluate),
)


def run_demo(config: DemoConfig, hooks: DemoHooks = DemoHooks(),
             announce: Callable[[int, int, str], None] | None = None) -> DemoResult:
    """Run every step of the demo into `config.out`; `announce(i, n, name)` is called before step i."""
    result = DemoResult(config)
    config.out.mkdir(parents=True, exist_ok=True)
    for i, (name, step) in enumerate(STEPS, start=1):
        if announce is not None:
            announce(i, len(STEPS), name)
        start = time.perf_counter()
        path = step(config, result, hooks)
        result.steps.append(DemoStep(name, time.perf_counter() - start, path))
    return result

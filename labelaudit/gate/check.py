"""`labelaudit check`: score incoming annotations and decide pass or fail (never torch).

INCOMING is scored with a run folder's ONNX graphs, always with the ensemble of the run's models (incoming
data is new data), or with the probabilities given for its cases (--probabilities, flagged with the thresholds
of a calibration folder), reusing cached scores of unchanged cases when a cache is given. The decision is the
one flag rule (score/decide.py); the gate fails when more cases are flagged than `max_flagged` allows.

Exit codes (interface.md): 0 pass, 1 flagged (only ever from a completed check), 2 usage, 3 input,
4 model (missing, invalid, or fit on other labels / channels), 5 missing install, 70 bug.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..config import CheckConfig, ScoreConfig
from ..data import Track, discover_dataset, no_track, raise_fatal
from ..errors import InputError, UsageError
from ..formats.cache import CacheEntry, ScoreCache, case_key, model_hash
from ..formats.run import load_run
from ..types import Audit, AuditDataset, CaseScore, Dataset, SliceScore, Threshold
from ..score.decide import decide, resolve_threshold
from ..score.formulas import SLICE_RULE
from ..score.ranking import RANKING_RULE

#: Flagged slices named per case in every output (the worst first).
WORST_SLICES = 3


@dataclass
class SliceVerdict:
    slice_index: int
    noise_score: float
    flagged: bool
    error_kind: str | None = None


@dataclass
class CaseVerdict:
    """One annotation's result. `worst_slices`: the flagged slices (at most WORST_SLICES), worst first;
    for a case flagged by its case score alone, its worst slice."""

    case_id: str
    label_path: str
    noise_score: float
    flagged: bool
    n_slices: int
    n_flagged_slices: int
    disagreement: float
    worst_slices: list[SliceVerdict]
    error_kind: str | None = None
    cached: bool = False


@dataclass(frozen=True)
class CheckedModel:
    """The run folder the gate checked with."""

    path: str
    method: str
    created: str
    trained_on: str
    models: int

    def to_json(self) -> dict:
        return {"path": self.path, "method": self.method, "created": self.created, "trained_on": self.trained_on,
                "models": self.models}


@dataclass
class CheckResult:
    """What `run_check` returns; `cases` are sorted by noise score, highest first."""

    dataset: AuditDataset
    model: CheckedModel
    provider: str  # the ONNX Runtime provider, or "cache" when nothing needed scoring
    threshold: Threshold
    max_flagged: int
    cases: list[CaseVerdict] = field(default_factory=list)
    scored: int = 0
    cached: int = 0
    seconds: float = 0.0
    started: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[CaseVerdict]:
        return [c for c in self.cases if c.flagged]

    @property
    def passed(self) -> bool:
        return len(self.flagged) <= self.max_flagged

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def _verdict(entry: CacheEntry, threshold: Threshold, label_path: str, cached: bool) -> CaseVerdict:
    decision = decide(entry.noise_score, entry.slices, threshold)
    order = sorted(range(len(entry.slices)), key=lambda i: (-entry.slices[i], i))
    picked = [i for i in order if decision.slice_flags[i]][:WORST_SLICES] or order[:1]
    worst = [SliceVerdict(i, float(entry.slices[i]), bool(decision.slice_flags[i]), entry.slice_kinds[i])
             for i in picked]
    return CaseVerdict(entry.case_id, label_path, float(entry.noise_score), decision.flagged, len(entry.slices),
                       decision.n_flagged_slices, float(entry.disagreement), worst, entry.error_kind, cached)


def _entry(case: CaseScore, slices: list[SliceScore]) -> CacheEntry:
    """A case's scores as cached: no decisions, only numbers (and the error kinds)."""
    slices = sorted(slices, key=lambda s: s.slice_index)
    return CacheEntry(case.case_id, float(case.noise_score), tuple(float(s.noise_score) for s in slices),
                      tuple(s.error_kind for s in slices), case.error_kind, float(case.disagreement), case.model)


def cache_settings(pixel_score: str, perturbations: int, routing: str) -> dict:
    """What a cached case's scores depend on besides its files and the model's: the cache key's settings."""
    from .. import __version__

    return {"pixel_score": pixel_score, "perturbations": perturbations, "labelaudit": __version__,
            "scores": SLICE_RULE, "ranking": RANKING_RULE, "routing": routing}


class _OnnxGate:
    """The run folder's ONNX models (ONNX Runtime must be installed)."""

    def __init__(self, config: CheckConfig) -> None:
        from ..score.inference import pixel_score_of
        from ..score.providers import require_onnxruntime

        require_onnxruntime()
        if config.run_dir is None:
            raise UsageError("no run folder given", hint="pass --model RUN_DIR, or --probabilities SRC")
        self.run_dir = Path(config.run_dir)
        self.info = info = load_run(self.run_dir)
        self.threshold = resolve_threshold(info.threshold, config.threshold)
        self.model = CheckedModel(str(self.run_dir), info.method, info.created, info.dataset.name, len(info.models))
        self.settings = cache_settings(pixel_score_of(info).value, info.perturbations.k, "ensemble")
        self.notes: list[str] = []

    def matches(self, dataset: Dataset) -> None:
        from ..score.routing import check_run_matches

        check_run_matches(self.info, dataset, self.run_dir)

    def cache_model(self) -> str:
        return model_hash(self.run_dir, [p for m in self.info.models for p in (m.segmenter, m.meta_weight) if p])

    def case_files(self, case_id: str) -> list[Path]:
        return []


class _GivenGate:
    """Probabilities given per case (score/sources.py), with the thresholds of a calibration folder if any."""

    def __init__(self, config: CheckConfig) -> None:
        from ..formats.probability_run import read_probability_run
        from ..score.sources import given_pixel_score

        self.config = config
        self.calibration = read_probability_run(config.run_dir) if config.run_dir is not None else None
        calibrated = self.calibration.threshold if self.calibration is not None else None
        self.threshold = resolve_threshold(calibrated, config.threshold)
        self.notes = [] if calibrated is not None or config.threshold is not None else [
            f"no calibration given (--model): flagging at the default threshold {self.threshold.slice:g}; calibrate "
            "with `labelaudit score TRAINING_DATASET --probabilities SRC` and pass --model AUDIT_DIR/calibration"]
        self.settings = {**cache_settings(given_pixel_score(None, self.calibration, []).value, 1, "given"),
                         "probabilities": [str(Path(p).resolve()) for p in config.probabilities]}
        self.given = None

    def matches(self, dataset: Dataset) -> None:
        from ..score.sources import open_given

        self.given = open_given(self.config.probabilities, dataset, self.config.run_dir)
        self.given.require([r.case_id for r in dataset.cases], dataset.root)

    @property
    def model(self) -> CheckedModel:
        given, calibration = self.given, self.calibration
        path = self.config.run_dir if calibration is not None else given.folders[0].path
        return CheckedModel(str(path), given.method, calibration.created if calibration else given.created(),
                            calibration.dataset.name if calibration else given.trained_on(), len(given.names))

    def cache_model(self) -> str:
        return model_hash(self.config.run_dir, []) if self.calibration is not None else "no calibration"

    def case_files(self, case_id: str) -> list[Path]:
        return [path for _, path in self.given.files_of(case_id)]


def run_check(config: CheckConfig, track: Track = no_track) -> CheckResult:
    """Score INCOMING (only the new or changed cases when a cache is given) and decide pass or fail.

    Any problem with a case (unreadable file, missing label, label values outside the model's, scores that are
    not finite) is an InputError (exit 3) naming every such case: a gate must not pass what it could not check.
    """
    from ..score.pipeline import score_dataset

    started = time.perf_counter()
    if config.max_flagged < 0:
        raise UsageError(f"--max-flagged {config.max_flagged}: expected 0 or more")
    gate = _GivenGate(config) if config.probabilities else _OnnxGate(config)
    threshold = gate.threshold
    dataset = discover_dataset(config.incoming)
    raise_fatal(dataset, strict=False)
    # every case problem is collected (discovery now, reading while scoring) and raised at the end, at once
    problems = {case: [str(p) for p in found] for case, found in dataset.skipped.items()}
    gate.matches(dataset)

    refs = {ref.case_id: ref for ref in dataset.cases}
    cache = ScoreCache(config.cache_dir) if config.cache_dir is not None else None
    keys: dict[str, str] = {}
    entries: dict[str, CacheEntry] = {}
    if cache is not None:
        model = gate.cache_model()
        for case_id, ref in refs.items():  # given probabilities: their files are part of the case
            keys[case_id] = case_key([*ref.image_paths, *gate.case_files(case_id)], ref.label_path, model,
                                     gate.settings)
            hit = cache.get(keys[case_id])
            if hit is not None and hit.case_id == case_id:
                entries[case_id] = hit
    cached = set(entries)
    to_score = tuple(case_id for case_id in refs if case_id not in cached)

    provider, notes = "cache", list(gate.notes)
    if to_score:
        audit = score_dataset(ScoreConfig(
            run_dir=config.run_dir, dataset=Path(config.incoming), write=False, device=config.device,
            batch_size=config.batch_size, threshold=config.threshold, out_of_fold=False, strict=False,
            cases=to_score if cached else None, probabilities=config.probabilities), track=track)
        for case, found in audit.skipped.items():
            problems.setdefault(case, found)
        provider, notes = audit.provider, notes + audit.notes
        _collect(audit, entries, cache, keys)

    if problems:
        _raise_problems(problems, config.incoming)
    cases = [_verdict(entries[c], threshold, _display_path(refs[c].label_path), c in cached) for c in refs]
    cases.sort(key=lambda c: (-c.noise_score, c.case_id))
    return CheckResult(
        dataset=AuditDataset(dataset.name, str(dataset.root), dataset.layout, False),
        model=gate.model,
        provider=provider, threshold=threshold, max_flagged=config.max_flagged, cases=cases,
        scored=len(to_score), cached=len(cached), seconds=time.perf_counter() - started,
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"), notes=notes,
    )


def _collect(audit: Audit, entries: dict[str, CacheEntry], cache: ScoreCache | None, keys: dict[str, str]) -> None:
    by_case: dict[str, list[SliceScore]] = {}
    for s in audit.slices:
        by_case.setdefault(s.case_id, []).append(s)
    for case in audit.cases:
        entries[case.case_id] = _entry(case, by_case.get(case.case_id, []))
        if cache is not None:
            cache.put(keys[case.case_id], entries[case.case_id])


def _raise_problems(skipped: dict[str, list[str]], incoming: Path) -> None:
    lines = [f"  {p}" for case in sorted(skipped) for p in skipped[case]]
    raise InputError(f"{incoming}: {len(skipped)} case(s) could not be checked:\n" + "\n".join(lines),
                     hint="fix or remove these annotations; the gate does not pass what it could not check")


def _display_path(path: Path | None) -> str:
    """The label file relative to the working directory when under it (what CI annotations expect)."""
    if path is None:
        return ""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:  # another drive on Windows
        return str(path)

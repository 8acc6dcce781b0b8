"""`labelaudit check`: score incoming annotations and decide pass or fail (never torch).

INCOMING is scored with a run folder's ONNX graphs, always with the ensemble of the run's models (incoming
data is new data), reusing cached scores of unchanged cases when a cache is given. The decision is the one
flag rule (gate/decide.py); the gate fails when more cases are flagged than `max_flagged` allows.

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
from ..types import Audit, AuditDataset, CaseScore, SliceScore, Threshold
from .decide import decide, resolve_threshold

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


def run_check(config: CheckConfig, track: Track = no_track) -> CheckResult:
    """Score INCOMING (only the new or changed cases when a cache is given) and decide pass or fail.

    Any problem with a case (unreadable file, missing label, label values outside the model's, scores that are
    not finite) is an InputError (exit 3) naming every such case: a gate must not pass what it could not check.
    """
    from .. import __version__
    from ..score.inference import pixel_score_of
    from ..score.pipeline import score_dataset
    from ..score.providers import require_onnxruntime
    from ..score.routing import check_run_matches

    started = time.perf_counter()
    if config.max_flagged < 0:
        raise UsageError(f"--max-flagged {config.max_flagged}: expected 0 or more")
    require_onnxruntime()
    run_dir = Path(config.run_dir)
    info = load_run(run_dir)
    threshold = resolve_threshold(info.threshold, config.threshold)
    dataset = discover_dataset(config.incoming)
    raise_fatal(dataset, strict=False)
    # every case problem is collected (discovery now, reading while scoring) and raised at the end, at once
    problems = {case: [str(p) for p in found] for case, found in dataset.skipped.items()}
    check_run_matches(info, dataset, run_dir)

    refs = {ref.case_id: ref for ref in dataset.cases}
    cache = ScoreCache(config.cache_dir) if config.cache_dir is not None else None
    keys: dict[str, str] = {}
    entries: dict[str, CacheEntry] = {}
    if cache is not None:
        model = model_hash(run_dir, [p for m in info.models for p in (m.segmenter, m.meta_weight) if p])
        settings = {"pixel_score": pixel_score_of(info).value, "perturbations": info.perturbations.k,
                    "labelaudit": __version__, "routing": "ensemble"}
        for case_id, ref in refs.items():
            keys[case_id] = case_key(ref.image_paths, ref.label_path, model, settings)
            hit = cache.get(keys[case_id])
            if hit is not None and hit.case_id == case_id:
                entries[case_id] = hit
    cached = set(entries)
    to_score = tuple(case_id for case_id in refs if case_id not in cached)

    provider, notes = "cache", []
    if to_score:
        audit = score_dataset(ScoreConfig(
            run_dir=run_dir, dataset=Path(config.incoming), write=False, device=config.device,
            batch_size=config.batch_size, threshold=config.threshold, out_of_fold=False, strict=False,
            cases=to_score if cached else None), track=track)
        for case, found in audit.skipped.items():
            problems.setdefault(case, found)
        provider, notes = audit.provider, audit.notes
        _collect(audit, entries, cache, keys)

    if problems:
        _raise_problems(problems, config.incoming)
    cases = [_verdict(entries[c], threshold, _display_path(refs[c].label_path), c in cached) for c in refs]
    cases.sort(key=lambda c: (-c.noise_score, c.case_id))
    return CheckResult(
        dataset=AuditDataset(dataset.name, str(dataset.root), dataset.layout, False),
        model=CheckedModel(str(run_dir), info.method, info.created, info.dataset.name, len(info.models)),
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

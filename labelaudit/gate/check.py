"""The CI gate: score incoming annotations, turn thresholds into pass/fail decisions, render them for CI.

`run_check` scores INCOMING with a run folder's ONNX graphs (never torch), always with the ensemble of the
run's models (incoming data is new data), reusing cached scores of unchanged cases when a cache is given.
The decision is score's own: a slice is flagged when its noise score reaches the slice threshold, a case
when its score reaches the case threshold or any of its slices is flagged; the gate fails when more cases
are flagged than `max_flagged` allows.

Renderers (pure: they return text, the CLI prints): `junit_xml`, `github_annotations`, `check_json`,
`summary_table`.

Exit codes (interface.md): 0 pass, 1 flagged (only ever from a completed check), 2 usage, 3 input,
4 model (missing, invalid, or fit on other labels / channels), 5 missing install, 70 bug.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree as ET

from ..data import Track, no_track
from ..errors import InputError, MissingDependencyError, ModelError, UsageError

#: Flagged slices named per case in every output (the worst first).
WORST_SLICES = 3
ONNXRUNTIME_INSTALL = "pip install onnxruntime   (or onnxruntime-gpu for CUDA)"


@dataclass(frozen=True)
class CheckConfig:
    """What `labelaudit check` asks for.

    threshold: overrides the run's calibrated slice and case thresholds (a noise score in [0, 1]).
    max_flagged: the gate still passes with up to this many flagged cases. cache_dir: reuse the scores of
    cases whose image, label and model are unchanged.
    """

    incoming: Path
    run_dir: Path
    threshold: float | None = None
    max_flagged: int = 0
    cache_dir: Path | None = None
    device: str = "auto"
    batch_size: int = 16


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


@dataclass
class CheckResult:
    """What `run_check` returns; `cases` are sorted by noise score, highest first."""

    dataset: dict  # name, path, layout
    model: dict  # path, method, created, trained_on, models
    provider: str  # the ONNX Runtime provider, or "cache" when nothing needed scoring
    threshold: dict
    max_flagged: int
    cases: list[CaseVerdict] = field(default_factory=list)
    scored: int = 0
    cached: int = 0
    seconds: float = 0.0
    started: str = ""

    @property
    def flagged(self) -> list[CaseVerdict]:
        return [c for c in self.cases if c.flagged]

    @property
    def passed(self) -> bool:
        return len(self.flagged) <= self.max_flagged

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


# ----------------------------------------------------------------------------- the model against the data

def require_onnxruntime() -> None:
    """ONNX Runtime is what scores; without it `check` cannot run (MissingDependencyError, exit 5)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("ONNX Runtime (onnxruntime)", ONNXRUNTIME_INSTALL) from exc


def _norm(name: str) -> str:
    return str(name).strip().lower()


def check_model_matches(info, dataset, run_dir: Path) -> None:
    """Refuse a model fit on other channels, modality or label set than `dataset` declares (ModelError, exit 4).

    Compares what run.json records with the incoming dataset.json when it has one: the number of channels
    and the declared label values (scoring.check_run_matches), then the channel names (the modality, e.g.
    CT vs MR) and the label names. A paired-layout folder declares neither; its label values are checked per
    case while scoring.
    """
    from ..score.pipeline import check_run_matches

    check_run_matches(info, dataset, run_dir)
    fit_on = info.dataset.get("name", "?")
    if dataset.channel_names and info.channel_names:
        theirs = [dataset.channel_names[k] for k in sorted(dataset.channel_names, key=lambda k: (len(k), k))]
        for i, (ours, incoming) in enumerate(zip(info.channel_names, theirs)):
            if "unknown" in (_norm(ours), _norm(incoming)) or _norm(ours) == _norm(incoming):
                continue
            raise ModelError(
                f"{run_dir}: channel {i} of the model is {ours!r} (fit on {fit_on}), but "
                f"{dataset.root / 'dataset.json'} declares {incoming!r}",
                hint="check with a model fit on this modality; if it is the same one under another name, make "
                     "channel_names in dataset.json match")
    auto_named = all(n == "background" or n.startswith("label_") for n in info.label_map.names)
    if dataset.labels and not auto_named:
        ours = {v: _norm(n) for v, n in zip(info.label_map.values, info.label_map.names)}
        theirs = {int(v): _norm(n) for n, v in dataset.labels.items()}
        if ours != theirs:
            fmt = lambda m: ", ".join(f"{v}={n}" for v, n in sorted(m.items()))  # noqa: E731
            raise ModelError(
                f"{run_dir}: the model's label set ({fmt(ours)}; fit on {fit_on}) differs from the one "
                f"{dataset.root / 'dataset.json'} declares ({fmt(theirs)})",
                hint="check with a model fit on this label set (--model RUN_DIR)")


# ----------------------------------------------------------------------------- thresholds

def describe_threshold(threshold: dict) -> str:
    """One line that says what the threshold is and where it comes from."""
    slice_t, case_t = threshold["slice"], threshold["case"]
    source = threshold.get("source", "")
    if source == "override":
        return f"slice and case {slice_t:.3f} (--threshold)"
    if source == "run.json" and threshold.get("rule") == "median+k*mad":
        stats = threshold.get("slice_stats", {})
        spread = ""
        if stats.get("median") is not None:
            spread = f" = max(floor {threshold.get('floor', 0):g}, median {stats['median']:.3f} + " \
                     f"{threshold.get('k', 3):g}·1.4826·MAD {stats['mad']:.3f})"
        return (f"slice {slice_t:.3f}{spread}, case {case_t:.3f}; calibrated at fit time on "
                f"{threshold.get('n_slices', '?')} {threshold.get('scored', '')} training slices")
    return f"slice {slice_t:.3f}, case {case_t:.3f} ({source})"


def decide(entry: dict, threshold: dict) -> tuple[bool, list[bool]]:
    """Apply thresholds to one case's cached scores: (case flagged, per-slice flags).

    entry: {"noise_score": float, "slices": [float, ...]}. The same rule as scoring._case_result.
    """
    slice_flags = [s >= threshold["slice"] for s in entry["slices"]]
    return bool(entry["noise_score"] >= threshold["case"] or any(slice_flags)), slice_flags


def _verdict(entry: dict, threshold: dict, label_path: str, cached: bool) -> CaseVerdict:
    flagged, slice_flags = decide(entry, threshold)
    kinds = entry.get("slice_kinds") or [None] * len(entry["slices"])
    order = sorted(range(len(entry["slices"])), key=lambda i: (-entry["slices"][i], i))
    picked = [i for i in order if slice_flags[i]][:WORST_SLICES] or order[:1]
    worst = [SliceVerdict(i, float(entry["slices"][i]), slice_flags[i], kinds[i]) for i in picked]
    return CaseVerdict(entry["case_id"], label_path, float(entry["noise_score"]), flagged, len(entry["slices"]),
                       sum(slice_flags), float(entry.get("disagreement", 0.0)), worst, entry.get("error_kind"),
                       cached)


def _entry(case, slices: list) -> dict:
    """A case's scores as cached: no decisions, only numbers (and the error kinds, when scoring gives them)."""
    slices = sorted(slices, key=lambda s: s.slice_index)
    return {"case_id": case.case_id, "noise_score": float(case.noise_score),
            "slices": [float(s.noise_score) for s in slices],
            "slice_kinds": [getattr(s, "error_kind", None) for s in slices],
            "error_kind": getattr(case, "error_kind", None), "disagreement": float(case.disagreement),
            "model": case.model}


# ----------------------------------------------------------------------------- the check

def run_check(config: CheckConfig, track: Track = no_track) -> CheckResult:
    """Score INCOMING (only the new or changed cases when a cache is given) and decide pass or fail.

    Any problem with a case (unreadable file, missing label, label values outside the model's) is an
    InputError (exit 3) naming every such case: a gate must not pass an annotation it could not check.
    """
    from .. import __version__
    from ..formats.cache import ScoreCache, case_key, model_hash
    from ..data import discover_dataset, raise_fatal
    from ..formats.run import load_run
    from ..score.pipeline import PIXEL_SCORE, ScoreConfig, resolve_threshold, score_dataset

    started = time.perf_counter()
    if config.threshold is not None and not 0.0 <= config.threshold <= 1.0:
        raise UsageError(f"--threshold {config.threshold}: expected a noise score in [0, 1]")
    if config.max_flagged < 0:
        raise UsageError(f"--max-flagged {config.max_flagged}: expected 0 or more")
    require_onnxruntime()
    run_dir = Path(config.run_dir)
    info = load_run(run_dir)
    dataset = discover_dataset(config.incoming)
    raise_fatal(dataset, strict=False)
    # every case problem is collected (discovery now, reading while scoring) and raised at the end, at once
    problems = {case: [str(p) for p in found] for case, found in dataset.skipped.items()}
    check_model_matches(info, dataset, run_dir)
    threshold = resolve_threshold(info, config.threshold)

    refs = {ref.case_id: ref for ref in dataset.cases}
    cache = ScoreCache(config.cache_dir) if config.cache_dir is not None else None
    keys: dict[str, str] = {}
    entries: dict[str, dict] = {}
    if cache is not None:
        model = model_hash(run_dir, [p for m in info.models for p in (m.segmenter, m.meta_weight) if p])
        settings = {"pixel_score": PIXEL_SCORE.value, "perturbations": info.perturbations.k,
                    "labelaudit": __version__, "routing": "ensemble"}
        for case_id, ref in refs.items():
            keys[case_id] = case_key(ref.image_paths, ref.label_path, model, settings)
            hit = cache.get(keys[case_id])
            if hit is not None:
                entries[case_id] = hit
    cached = set(entries)
    to_score = tuple(case_id for case_id in refs if case_id not in cached)

    provider = "cache"
    if to_score:
        audit = score_dataset(ScoreConfig(
            run_dir=run_dir, dataset=Path(config.incoming), write=False, device=config.device,
            batch_size=config.batch_size, threshold=config.threshold, out_of_fold=False, strict=False,
            cases=to_score if cached else None), track=track)
        for case, found in audit.skipped.items():
            problems.setdefault(case, found)
        provider = audit.provider
        by_case: dict[str, list] = {}
        for s in audit.slices:
            by_case.setdefault(s.case_id, []).append(s)
        for case in audit.cases:
            entries[case.case_id] = _entry(case, by_case.get(case.case_id, []))
            if cache is not None:
                cache.put(keys[case.case_id], entries[case.case_id])

    if problems:
        _raise_problems(problems, config.incoming)
    cases = [_verdict(entries[c], threshold, _display_path(refs[c].label_path), c in cached) for c in refs]
    cases.sort(key=lambda c: (-c.noise_score, c.case_id))
    return CheckResult(
        dataset={"name": dataset.name, "path": str(dataset.root), "layout": dataset.layout},
        model={"path": str(run_dir), "method": info.method, "created": info.created,
               "trained_on": info.dataset.get("name", "?"), "models": len(info.models)},
        provider=provider, threshold=threshold, max_flagged=config.max_flagged, cases=cases,
        scored=len(to_score), cached=len(cached), seconds=time.perf_counter() - started,
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


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


# ----------------------------------------------------------------------------- renderers

def kind_label(kind: str | None) -> str:
    """Human words for an error-kind token ('' when unknown or none)."""
    if not kind or kind == "none":
        return ""
    try:
        from ..diagnosis import ErrorKind

        return ErrorKind(kind).label
    except (ImportError, ValueError):
        return str(kind).replace("_", " ")


def _slices_text(case: CaseVerdict) -> str:
    parts = []
    for s in case.worst_slices:
        kind = kind_label(s.error_kind)
        parts.append(f"slice {s.slice_index} ({s.noise_score:.3f}{', ' + kind if kind else ''})")
    return ", ".join(parts)


def failure_message(case: CaseVerdict, threshold: dict) -> str:
    """One line: why the case is flagged, its worst slice(s) and the likely kind of error."""
    why = (f"noise score {case.noise_score:.3f} (case threshold {threshold['case']:.3f}); "
           f"{case.n_flagged_slices} of {case.n_slices} slices at or above {threshold['slice']:.3f}")
    kind = kind_label(case.error_kind)
    return f"{why}; worst: {_slices_text(case)}" + (f"; likely {kind}" if kind else "")


def check_json(result: CheckResult) -> dict:
    """The machine-readable result (`--format json`)."""
    return {
        "passed": result.passed, "exit_code": result.exit_code,
        "dataset": result.dataset, "model": result.model, "provider": result.provider,
        "threshold": result.threshold, "max_flagged": result.max_flagged,
        "counts": {"cases": len(result.cases), "flagged": len(result.flagged), "scored": result.scored,
                   "cached": result.cached},
        "flagged": [c.case_id for c in result.flagged],
        "cases": [{
            "case_id": c.case_id, "label": c.label_path, "noise_score": c.noise_score, "flagged": c.flagged,
            "n_slices": c.n_slices, "n_flagged_slices": c.n_flagged_slices, "disagreement": c.disagreement,
            "error_kind": c.error_kind, "cached": c.cached,
            "worst_slices": [{"slice_index": s.slice_index, "noise_score": s.noise_score, "flagged": s.flagged,
                              "error_kind": s.error_kind} for s in c.worst_slices],
        } for c in result.cases],
        "seconds": result.seconds,
    }


def _classname(dataset_name: str) -> str:
    return "labelaudit." + "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in dataset_name)


def junit_xml(result: CheckResult) -> str:
    """JUnit XML: one <testcase> per annotation (case), a <failure> for each flagged one.

    Only the attributes of the common JUnit schema (Jenkins junit-10.xsd, read by GitHub, GitLab, Jenkins,
    Azure): the label file goes in <system-out>, not a `file` attribute.
    """
    classname = _classname(result.dataset["name"])
    n, failures = len(result.cases), len(result.flagged)
    per_case = result.seconds / n if n else 0.0
    suites = ET.Element("testsuites", name="labelaudit check", tests=str(n), failures=str(failures), errors="0",
                        time=f"{result.seconds:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=classname, tests=str(n), failures=str(failures), errors="0",
                          skipped="0", time=f"{result.seconds:.3f}", timestamp=result.started[:19],
                          hostname=socket.gethostname() or "localhost")
    props = ET.SubElement(suite, "properties")
    for name, value in (("model", result.model["path"]), ("method", result.model["method"]),
                        ("trained_on", result.model["trained_on"]), ("provider", result.provider),
                        ("threshold.slice", f"{result.threshold['slice']:.6f}"),
                        ("threshold.case", f"{result.threshold['case']:.6f}"),
                        ("threshold.source", str(result.threshold.get("source", ""))),
                        ("max_flagged", str(result.max_flagged))):
        ET.SubElement(props, "property", name=name, value=str(value))
    for case in result.cases:
        element = ET.SubElement(suite, "testcase", classname=classname, name=case.case_id, time=f"{per_case:.3f}")
        if case.flagged:
            failure = ET.SubElement(element, "failure", message=failure_message(case, result.threshold),
                                    type="labelaudit.flagged")
            failure.text = "\n".join(
                [f"label: {case.label_path}", f"noise score: {case.noise_score:.4f}",
                 f"likely kind of error: {kind_label(case.error_kind) or 'not determined'}"]
                + [f"slice {s.slice_index}: noise score {s.noise_score:.4f}"
                   + (f", {kind_label(s.error_kind)}" if kind_label(s.error_kind) else "") for s in case.worst_slices])
        out = ET.SubElement(element, "system-out")
        out.text = (f"label {case.label_path}; noise score {case.noise_score:.4f}; {case.n_flagged_slices}/"
                    f"{case.n_slices} slices flagged" + ("; cached" if case.cached else ""))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _gh_escape(text: str, property_value: bool = False) -> str:
    # GitHub's workflow-command escaping (actions/toolkit: escapeData / escapeProperty)
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property_value else text


def github_annotations(result: CheckResult) -> str:
    """GitHub Actions workflow commands: one ::error per flagged case on its label file, then a ::notice."""
    lines = []
    for case in result.flagged:
        worst = case.worst_slices[0] if case.worst_slices else None
        title = f"labelaudit: case {case.case_id}" + (
            f" slice {worst.slice_index} noise score {worst.noise_score:.3f}" if worst else "")
        level = "error" if not result.passed else "warning"
        lines.append(f"::{level} file={_gh_escape(case.label_path, True)},title={_gh_escape(title, True)}::"
                     f"{_gh_escape(failure_message(case, result.threshold))}")
    verdict = "passed" if result.passed else "failed"
    lines.append(f"::notice title=labelaudit check {verdict}::"
                 + _gh_escape(f"{len(result.cases)} annotation(s) checked, {len(result.flagged)} flagged "
                              f"(tolerance {result.max_flagged}); threshold {describe_threshold(result.threshold)}"))
    return "\n".join(lines) + "\n"


def summary_table(result: CheckResult, top: int = 20):
    """A Rich renderable: the verdict line and a table of the flagged cases (or the top cases)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    shown = result.flagged[:top] or result.cases[: min(top, 5)]
    table = Table(title=f"{'flagged annotations' if result.flagged else 'highest noise scores'} of "
                        f"{result.dataset['name']}", title_justify="left")
    for column in ("case", "noise score", "flagged", "worst slice(s)", "likely error", "label"):
        table.add_column(column, justify="right" if column == "noise score" else "left",
                         overflow="fold")
    for case in shown:
        table.add_row(case.case_id, f"{case.noise_score:.3f}", "FLAGGED" if case.flagged else "",
                      _slices_text(case), kind_label(case.error_kind), case.label_path)
    head = Text(f"checked {len(result.cases)} annotation(s) of {result.dataset['path']} with "
                f"{result.model['path']} ({result.model['method']}, trained on {result.model['trained_on']}); "
                f"{result.scored} scored on {result.provider}, {result.cached} from the cache")
    thresh = Text(f"threshold: {describe_threshold(result.threshold)}")
    n = len(result.flagged)
    if result.passed:
        verdict = Text(f"PASS: {n} annotation(s) flagged (tolerance {result.max_flagged})", style="bold green")
    else:
        verdict = Text(f"FAIL: {n} annotation(s) flagged (tolerance {result.max_flagged})", style="bold red")
    return Group(head, thresh, table, verdict)

"""`labelaudit merge`: the audit of a whole dataset from the partial audits that `score --shard i/N` wrote.

The merged folder is the one an unsharded `score` writes: the same rows of cases.csv and slices.csv in the
same order, the same flags (THE rule, score/decide.py, applied again to the parts' full-precision scores),
the same summary.json and maps (hard-linked from the parts where the file system allows, else copied), and
the report, with the thumbnails of the worst cases over all parts. Timings are summed over the parts
(machine-seconds, so slices_per_s is per machine). Parts that do not belong together are refused before
anything is written: another split, dataset, run, threshold, pixel score or K; a part missing or given twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from ..data import Track, no_track
from ..errors import InputError, UsageError
from ..formats.audit import AuditFolder
from ..formats.outputs import dataset_inputs
from ..formats.part import Part, read_part
from ..report.views import CaseView
from ..types import Audit
from .pipeline import decide_again
from .shard import Shard

_WHAT = {"dataset": "a different dataset", "run": "a different run", "threshold": "different thresholds",
         "pixel_score": "a different pixel score", "perturbations": "a different number of perturbed passes (K)",
         "labelaudit": "a different labelaudit version"}


def merge_parts(paths: Sequence[Path], out: Path, report: Path | None = None, track: Track = no_track) -> Audit:
    """Read, check and merge the part folders `paths` into the audit folder `out` (and `report`, by default
    out/report.html). A set of parts that does not make one audit is a UsageError (exit 2); a damaged part an
    InputError (exit 3). The folder is written beside `out` and swapped in when complete (AuditFolder)."""
    if not paths:
        raise UsageError("no part folder given", hint="pass every PART_DIR that `score --shard i/N` wrote")
    parts = sorted((read_part(p) for p in track(list(paths), "reading parts")), key=lambda p: p.marker.index)
    check_parts(parts)
    first = parts[0].audit
    inputs = [("PART_DIR", Path(p)) for p in paths] + dataset_inputs("DATASET", _existing(first.dataset.path))
    if _existing(first.run.path) is not None:
        inputs.append(("--model", Path(first.run.path)))
    folder = AuditFolder(Path(out), None, report=report, inputs=inputs)
    try:
        audit = merged_audit(parts, folder.path)
        for part in track(parts, "merging maps"):
            for rel in _map_files(part):
                folder.add_file(rel, part.path / rel)
        folder.views.views = _views(parts, audit, folder.views.config.top_cases)
        folder.write(audit, report)
        folder.commit()
    except BaseException:
        folder.abort()
        raise
    return audit


def _existing(path: str) -> Path | None:
    return Path(path) if path and Path(path).is_dir() else None


def check_parts(parts: list[Part]) -> None:
    """Refuse (UsageError, exit 2) parts of different splits, datasets or runs, and a part missing or twice;
    a part whose cases are not its shard's is an InputError (exit 3). `parts`: sorted by shard index."""
    first = parts[0]
    n = first.marker.count
    for part in parts[1:]:
        if part.marker.count != n:
            raise UsageError(f"{part.path}: part {part.marker.index}/{part.marker.count}, but {first.path}: part "
                             f"{first.marker.index}/{n}: they come from different splits",
                             hint="merge the parts of one split, all scored with the same --shard i/N")
        if (part.marker.fingerprint, part.marker.dataset_cases) != (first.marker.fingerprint,
                                                                    first.marker.dataset_cases):
            raise UsageError(f"{part.path}: scored another dataset than {first.path} (fingerprint "
                             f"{part.marker.fingerprint} vs {first.marker.fingerprint}: other case ids, file names "
                             "or file sizes)", hint="every part must score the same dataset, unchanged; score the "
                                                    "parts of the changed dataset again")
        if part.identity != first.identity:
            key = next(k for k in first.identity if first.identity[k] != part.identity.get(k))
            raise UsageError(f"{part.path}: scored with {_WHAT.get(key, 'a different ' + key)} than {first.path} "
                             f"({_difference(key, part.identity[key], first.identity[key])})",
                             hint="every part must be scored with the same --model and the same options")
    seen: dict[int, Part] = {}
    for part in parts:
        if part.marker.index in seen:
            raise UsageError(f"part {part.marker.index}/{n} given twice: {seen[part.marker.index].path} and "
                             f"{part.path}", hint="pass each part folder once")
        seen[part.marker.index] = part
    missing = [i for i in range(1, n + 1) if i not in seen]
    if missing:
        shown = ", ".join(f"{i}/{n}" for i in missing)
        raise UsageError(f"missing part{'s' if len(missing) > 1 else ''} {shown}: {len(parts)} of {n} given",
                         hint=f"score it with `labelaudit score DATASET --model RUN --shard {missing[0]}/{n} --out "
                              "PART_DIR` and pass its folder too")
    for part in parts:
        expected = Shard(part.marker.index, n).select(part.marker.dataset_cases)
        scored = {c.case_id for c in part.audit.cases}
        if part.marker.cases != expected or not scored <= set(expected):
            raise InputError(f"{part.path}: its cases are not those of shard {part.marker.index}/{n} of the dataset",
                             hint="score the part again")


def _difference(key: str, found, expected) -> str:
    """The first field that differs, as `key.field: found vs expected`."""
    if isinstance(found, dict) and isinstance(expected, dict):
        for k in [*expected, *(k for k in found if k not in expected)]:
            if found.get(k) != expected.get(k):
                return _difference(f"{key}.{k}", found.get(k), expected.get(k))
    return f"{key}: {found!r} vs {expected!r}"


def merged_audit(parts: list[Part], out_dir: Path) -> Audit:
    """The Audit an unsharded score returns, from the parts (sorted by shard index; checked by check_parts)."""
    first = parts[0].audit
    order = parts[0].marker.dataset_cases  # the order score reads the cases in
    audit = Audit(dataset=first.dataset, run=first.run, provider=_joined(parts, "provider"),
                  device=_joined(parts, "device"), device_reason=_joined(parts, "device_reason"),
                  pixel_score=first.pixel_score, threshold=first.threshold, perturbations=first.perturbations,
                  notes=list(dict.fromkeys(n for p in parts for n in p.audit.notes)),
                  class_names=dict(first.class_names), versions=dict(first.versions), out_dir=out_dir)
    for part in parts:
        audit.cases.extend(part.audit.cases)
        audit.slices.extend(part.audit.slices)
    # skipped as score records it: the cases skipped while scoring, in reading order, then the ones discovery
    # skipped (those are the same in every part)
    while_scoring = {c: why for p in parts for c, why in p.audit.skipped.items() if c in p.marker.cases}
    audit.skipped = {c: while_scoring[c] for c in order if c in while_scoring}
    audit.problems = [line for why in audit.skipped.values() for line in why]
    for case_id, why in first.skipped.items():
        audit.skipped.setdefault(case_id, why)
    audit.cases.sort(key=lambda c: (-c.noise_score, c.case_id))
    audit.slices.sort(key=lambda s: (-s.noise_score, s.case_id, s.slice_index))
    decide_again(audit)
    audit.timings = {k: sum(p.audit.timings.get(k, 0.0) for p in parts) for k in first.timings if k != "slices_per_s"}
    total = audit.timings.get("total_s", 0.0)
    audit.timings["slices_per_s"] = len(audit.slices) / total if total else 0.0
    return audit


def _joined(parts: list[Part], name: str) -> str:
    """The parts' provider (device, reason): the one value, or each value with the parts that had it."""
    values: dict[str, list[str]] = {}
    for part in parts:
        values.setdefault(getattr(part.audit, name), []).append(str(part.marker.index))
    if len(values) == 1:
        return next(iter(values))
    return "; ".join(f"{value} (part{'s' if len(ids) > 1 else ''} {', '.join(ids)})" for value, ids in values.items())


def _map_files(part: Part) -> list[str]:
    """The maps of a part's cases (noise, prediction, fixed label), relative to its folder; each must be there."""
    found = []
    for case in part.audit.cases:
        view = part.audit.views.get(case.case_id)
        for rel in (case.noise_map, case.pred_map, view.fixed_map if view is not None else None):
            if not rel:
                continue
            pure = PurePosixPath(rel)
            if pure.is_absolute() or ".." in pure.parts or pure.parts[:1] != ("maps",):
                raise InputError(f"{part.path / 'summary.json'}: case {case.case_id}: map {rel!r} is not inside "
                                 "maps/", hint="score the part again")
            if not (part.path / rel).is_file():
                raise InputError(f"{part.path / rel}: not found (case {case.case_id})", hint="score the part again")
            found.append(rel)
    return found


def _views(parts: list[Part], audit: Audit, top_cases: int) -> dict[str, CaseView]:
    """Every case's report view, in reading order; thumbnails only for the `top_cases` worst cases overall.

    Each part kept thumbnails for its own worst `top_cases` (report/views.ViewCollector), and the worst over
    all parts are among them, so these are the thumbnails one unsharded score keeps."""
    by_case = {c: v for p in parts for c, v in p.audit.views.items()}
    views = {c: by_case[c] for c in parts[0].marker.dataset_cases if c in by_case}
    worst = {c.case_id for c in audit.cases[:max(top_cases, 0)]}  # audit.cases: worst first, ties by case id
    for case_id, view in views.items():
        if case_id not in worst:
            view.slices.clear()
    return views

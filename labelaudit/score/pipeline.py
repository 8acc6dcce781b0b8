"""`labelaudit score`: stream a dataset's cases through a probability source into an audit (no torch on this path).

The source is the run's ONNX models (`_onnx_plan`), or the probabilities the user brings (sources.py); the
scoring, the maps, the tables and the report are the same for both.

Flags: a slice is flagged when its score reaches the slice threshold; a case when its score reaches the case
threshold or any of its slices is flagged (score/decide.py, the one rule). Thresholds come from run.json
(fit's calibration), an override, or DEFAULT_THRESHOLD (score/calibrate.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import ScoreConfig
from ..data import CaseInfo, Track, check_case, discover_dataset, no_track, raise_fatal
from ..diagnosis import ErrorKind, classify_slices, dominant_kind
from ..errors import InputError, ModelError, UsageError
from ..fix.rule import agreement_counts, untrusted_classes
from ..formats.audit import AuditFolder
from ..formats.run import RunInfo, load_run
from .decide import decide, resolve_threshold, saturated_calibration_note, stale_calibration_note
from ..types import (
    Audit, AuditDataset, AuditRun, Case, CaseRef, CaseScore, Problem, Routing, SliceScore, Threshold,
)
from .formulas import CASE_TOP_SLICES, SliceStats, case_noise_score, dice_disagreement
from .inference import OnnxSource
from .ranking import SliceOrder, rank_stats, ranking_of, rerank_slices
from .routing import check_run_matches, is_fit_dataset, model_name
from .scorer import CaseScorer, ScoringPlan
from .shard import Shard
from .sources import probability_plan
from .writer import CaseWriter

#: score_dataset's `calibrate`: thresholds derived from the finished audit itself (score --probabilities).
Calibrate = Callable[[Audit], Threshold]


def _prefetched(refs: list[CaseRef], declared, track: Track, pool: ThreadPoolExecutor
                ) -> Iterator[tuple[CaseRef, Case | None, CaseInfo | None, list[Problem]]]:
    """Read case i+1 in the background while case i is scored (reading is I/O and decompression)."""
    pending: Future | None = pool.submit(check_case, refs[0], declared) if refs else None
    # the progress bar advances when the consumer asks for the next case, i.e. once this one is scored
    for i, ref in enumerate(track(refs, "scoring")):
        case, info, problems = pending.result()
        if i + 1 < len(refs):
            pending = pool.submit(check_case, refs[i + 1], declared)
        yield ref, case, info, problems


def score_dataset(config: ScoreConfig, track: Track = no_track, calibrate: Calibrate | None = None,
                  shard: Shard | None = None, overlap_writes: bool = True) -> Audit:
    """Score every case of the dataset with the run's ONNX graphs, or with the probabilities config names;
    write the audit folder unless `write` is False.

    Streams one case at a time (the next one is read in the background); each case's maps are written as soon
    as it is done, in the background while the next case is scored (score/writer.py), or before the next case
    is scored when `overlap_writes` is False (the same audit, byte for byte; for comparisons). Case-level
    problems skip the case (recorded in the audit), or are fatal with `strict`. The audit folder replaces an
    earlier one only once complete (AuditFolder.commit); any failure drops it.
    `calibrate`: derives the thresholds from the scored audit itself; every case and slice is then flagged
    again with them, and each case's fixed map and report view are written again with those flags. `shard`
    (score --shard i/N): score only its share of the cases, into a partial audit that `labelaudit merge`
    assembles (score/merge.py).
    """
    folders: list[AuditFolder] = []
    try:
        audit = _score_dataset(config, track, folders, calibrate, shard, overlap_writes)
    except BaseException:
        for folder in folders:
            folder.abort()
        raise
    for folder in folders:
        folder.commit()
    return audit


def _onnx_plan(config: ScoreConfig) -> ScoringPlan:
    """The run folder's ONNX models: its dataset, classes, calibrated threshold and A₀."""
    if config.run_dir is None:
        raise UsageError("no run folder given", hint="pass --model RUN_DIR, or --probabilities SRC")
    run_dir = Path(config.run_dir)
    info = load_run(run_dir)
    dataset_root = Path(config.dataset) if config.dataset is not None else fit_dataset_path(info, run_dir)
    dataset = discover_dataset(dataset_root)
    raise_fatal(dataset, config.strict)
    check_run_matches(info, dataset, run_dir)
    threshold = resolve_threshold(info.threshold, config.threshold)
    fit_dataset = is_fit_dataset(info, dataset)
    prior = config.structure_prior_mm2
    if prior is None and info.threshold is not None:
        prior = info.threshold.structure_prior_mm2
    run = AuditRun(str(run_dir.resolve()), info.method, info.created,
                   tuple(model_name(info.models, [i]) for i in range(len(info.models))), info.dataset.name,
                   len(info.dataset.cases))
    return ScoringPlan(
        dataset=dataset, threshold=threshold, run=run, fit_dataset=fit_dataset, label_map=info.label_map,
        open_source=lambda: OnnxSource(info, run_dir, config.device, config.batch_size, config.perturbations,
                                       config.pixel_score, fit_dataset, config.out_of_fold),
        structure_prior_mm2=prior, ranking=ranking_of(info.threshold), model_path=run_dir,
        classes="the run's classes",
        fit_on=f"run fit on {info.dataset.name}",
        label_hint="this run folder was fit on another label set; pass --model with a run fit on this dataset")


def _score_dataset(config: ScoreConfig, track: Track, folders: list[AuditFolder],
                   calibrate: Calibrate | None = None, shard: Shard | None = None,
                   overlap_writes: bool = True) -> Audit:
    started = time.perf_counter()
    plan = probability_plan(config) if config.probabilities else _onnx_plan(config)
    dataset, threshold, label_map = plan.dataset, plan.threshold, plan.label_map
    part = shard.marker(dataset) if shard is not None else None
    if part is not None:
        config = replace(config, cases=part.cases)

    folder = None
    if config.write:
        out_dir = Path(config.out_dir) if config.out_dir is not None else Path("audits") / dataset.name
        folder = AuditFolder(out_dir, dataset, plan.model_path, config.report, part=part)
        folders.append(folder)

    source = plan.open_source()
    scorer = CaseScorer(source, plan.structure_prior_mm2, plan.ranking)
    audit = Audit(
        dataset=AuditDataset(dataset.name, str(dataset.root.resolve()), dataset.layout, plan.fit_dataset),
        run=plan.run, provider=source.provider, device=source.device, device_reason=source.reason,
        versions=source.versions, pixel_score=source.pixel_score.value, threshold=threshold,
        perturbations=source.perturbations, out_dir=folder.path if folder is not None else None,
        notes=list(source.notes) + plan.notes,
        class_names={v: k for k, v in (dataset.labels or {}).items()},
    )
    for note in (stale_calibration_note(threshold, plan.structure_prior_mm2),
                 saturated_calibration_note(threshold.calibration)):
        if note:
            audit.notes.append(note)
    declared = dataset.labels.values() if dataset.labels else None
    seconds = {"read": 0.0}
    # for the maps again, once `calibrate` ranked and flagged anew: the stats, the scores the noise map was made with
    kept: dict[str, tuple[CaseRef, SliceStats, np.ndarray]] = {}
    label_set_failures = 0
    # the writer sets each CaseScore's map paths and the folder's views: read them only once it is drained
    with (ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelaudit-read") as pool,
          CaseWriter(folder, overlap_writes, _untrusted(threshold)) if folder is not None else nullcontext() as writer):
        wait = time.perf_counter()
        refs = [r for r in dataset.cases if config.cases is None or r.case_id in config.cases]
        for ref, case, case_info, problems in _prefetched(refs, declared, track, pool):
            seconds["read"] += time.perf_counter() - wait
            unknown = sorted(set(case_info.label_counts) - set(label_map.values)) if case_info else []
            if unknown and not problems:
                label_set_failures += 1
                problems = [Problem(f"label values {unknown} are not among {plan.classes} "
                                    f"{list(label_map.values)} ({plan.fit_on})",
                                    ref.case_id, ref.label_path)]
            if not problems:
                route = source.route(ref.case_id)
                stats, noise_map, pred_map = scorer.score_case(case, route)
                if not np.isfinite(stats.noise_score).all():
                    problems = [Problem("its noise scores are not finite (NaN or Inf): the image's intensities "
                                        "overflow the network's float32 arithmetic; check the image's values and "
                                        "units", ref.case_id, ref.image_paths[0])]
            if problems:
                if config.strict:
                    raise InputError("\n".join(str(p) for p in problems),
                                     hint="without --strict, problem cases are skipped")
                audit.skipped[ref.case_id] = [str(p) for p in problems]
                audit.problems.extend(str(p) for p in problems)
                wait = time.perf_counter()
                continue
            pred_values = label_map.decode(pred_map)
            agreement_counts(case.label_slices(), pred_values, audit.class_counts, label_map.values)
            kinds = classify_slices(case.label_slices(), pred_values, noise=noise_map, scores=stats.noise_score)
            result = _case_result(ref.case_id, stats, threshold, route.name, route.routing, audit, kinds,
                                  case.geometry.slicing_axis())
            if writer is not None:
                writer.submit(ref, case, noise_map, pred_values, stats, result)
                if calibrate is not None:
                    kept[ref.case_id] = (ref, stats, stats.noise_score)
            del case, noise_map, pred_map, pred_values
            wait = time.perf_counter()
        if writer is not None:
            writer.drain()
    if label_set_failures and not audit.cases:
        raise ModelError(f"{plan.model_path}: no case of {dataset.root} could be scored: its labels hold values "
                         f"outside {plan.classes} {list(label_map.values)}", hint=plan.label_hint)
    for ref_id, problems in dataset.skipped.items():  # discovery-time problems (missing label, duplicates …)
        audit.skipped.setdefault(ref_id, [str(p) for p in problems])
    audit.cases.sort(key=lambda c: (-c.noise_score, c.case_id))
    audit.slices.sort(key=lambda s: (-s.noise_score, s.case_id, s.slice_index))
    if calibrate is not None:
        audit.threshold = calibrate(audit)
        _rank_again(audit, kept, ranking_of(audit.threshold.calibration))
        decide_again(audit)
        if folder is not None:
            _rewrite_fixed(folder, audit, kept, declared, track)
    num_slices = sum(c.n_slices for c in audit.cases)
    # write_s: the writer thread's time (it runs alongside inference_s, so the parts may add up to more than
    # total_s) and the tables'; write_wait_s: the time the scoring thread waited for the writer
    written = writer.seconds if writer is not None else {"write": 0.0, "write_wait": 0.0}
    audit.timings = {"total_s": 0.0, "read_s": seconds["read"], "inference_s": scorer.seconds["inference"],
                     "scoring_s": scorer.seconds["scoring"], "write_s": written["write"],
                     "write_wait_s": written["write_wait"]}
    if folder is not None:
        t0 = time.perf_counter()
        audit.timings["total_s"] = time.perf_counter() - started
        folder.write(audit, config.report)
        audit.timings["write_s"] += time.perf_counter() - t0
    audit.timings["total_s"] = time.perf_counter() - started
    audit.timings["slices_per_s"] = num_slices / audit.timings["total_s"] if audit.timings["total_s"] else 0.0
    if folder is not None:
        folder.write_summary(audit)  # once more, with the final timings
    return audit


def _rank_again(audit: Audit, kept: dict[str, tuple[CaseRef, SliceStats, np.ndarray]],
                ranking: SliceOrder | None) -> None:
    """Every slice scored again by the ranking derived from this audit (score/ranking.py), the audit sorted again;
    kept's stats too (its noise maps, written with the scores before, are rescaled by _rewrite_fixed)."""
    for s, score in zip(audit.slices, rerank_slices(audit.slices, ranking)):
        s.noise_score = float(score)
    for case_id, (ref, stats, _) in kept.items():
        kept[case_id] = (ref, rank_stats(stats, ranking), stats.noise_score)
    worst: dict[str, SliceScore] = {}
    for s in audit.slices:
        if s.case_id not in worst or s.noise_score > worst[s.case_id].noise_score:
            worst[s.case_id] = s
    for case in audit.cases:
        if case.case_id in worst:
            case.worst_slice = worst[case.case_id].slice_index
    audit.slices.sort(key=lambda s: (-s.noise_score, s.case_id, s.slice_index))


def _rewrite_fixed(folder: AuditFolder, audit: Audit, kept: dict[str, tuple[CaseRef, SliceStats, np.ndarray]],
                   declared, track: Track) -> None:
    """The maps and views again with the ranking and flags of the thresholds derived from this audit (the same
    rule as `labelaudit fix` on the finished audit); each case is read once more, its maps are read back."""
    writer = CaseWriter(folder, overlap=False, untrusted=_untrusted(audit.threshold))
    for result in track([c for c in audit.cases if c.case_id in kept], "flagging with the derived thresholds"):
        ref, stats, mapped_with = kept[result.case_id]
        case, _, problems = check_case(ref, declared)
        if case is None:
            raise InputError("\n".join(str(p) for p in problems), hint="the dataset changed while it was scored")
        writer.rewrite(ref, case, stats, result, mapped_with)


def _untrusted(threshold: Threshold) -> frozenset[int]:
    """The classes that the run's calibration found its model does not segment (none without a calibration)."""
    calibration = threshold.calibration
    return untrusted_classes(calibration.class_agreement if calibration is not None else None)


def fit_dataset_path(info: RunInfo, run_dir: Path) -> Path:
    """The dataset the run was fit on, which `score` and calibration read when no DATASET is given."""
    recorded = info.dataset.path
    if not recorded:
        raise ModelError(f"{run_dir / 'run.json'}: records no dataset path", hint="pass the DATASET argument")
    if not Path(recorded).is_dir():
        raise InputError(f"{recorded}: the dataset the run was fit on is no longer there",
                         hint="pass the DATASET argument")
    return Path(recorded)


def decide_again(audit: Audit) -> None:
    """Flag every case and slice again with audit.threshold (the one rule, score/decide.py)."""
    by_case: dict[str, list[SliceScore]] = {}
    for s in audit.slices:
        by_case.setdefault(s.case_id, []).append(s)
    for case in audit.cases:
        slices = sorted(by_case.get(case.case_id, []), key=lambda s: s.slice_index)
        decision = decide(case.noise_score, [s.noise_score for s in slices], audit.threshold)
        for s, flag in zip(slices, decision.slice_flags):
            s.flagged = bool(flag)
        case.flagged, case.n_flagged_slices = decision.flagged, decision.n_flagged_slices


def _case_result(case_id: str, stats: SliceStats, threshold: Threshold, model: str, routing: Routing,
                 audit: Audit, kinds: list[ErrorKind], axis: int) -> CaseScore:
    score = case_noise_score(stats.mass)
    decision = decide(score, stats.noise_score, threshold)
    for i in range(len(stats.noise_score)):
        audit.slices.append(SliceScore(case_id, i, float(stats.noise_score[i]), bool(decision.slice_flags[i]),
                                       float(stats.disagreement[i]), float(stats.doubt_fraction[i]),
                                       int(stats.label_pixels[i]), int(stats.pred_pixels[i]), kinds[i].value, axis,
                                       float(stats.structure_score[i]), float(stats.softmin[i])))
    result = CaseScore(case_id, score, decision.flagged, int(np.argmax(stats.noise_score)),
                       float(dice_disagreement(stats.counts.sum(axis=-1))), len(stats.noise_score),
                       decision.n_flagged_slices, model, routing.value, axis=axis)
    worst = np.argsort(-stats.mass, kind="stable")[:CASE_TOP_SLICES]  # the slices that make the case score
    result.error_kind = dominant_kind([kinds[i] for i in worst], stats.noise_score[worst]).value
    audit.cases.append(result)
    return result

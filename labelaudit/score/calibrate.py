"""Flagging thresholds: the user's override, or fit's calibration on the training data's out-of-fold scores.

Calibration: threshold = max(FLOOR, median + K · MAD_SCALE · MAD) of the scores of the slices with a non-empty
ROI. The median and MAD have a 50% breakdown point, so the noisy labels in the training data (up to half) do
not move the estimate of the clean bulk much; K = 3 robust standard deviations flags about 0.1% of a normal
clean bulk; the floor keeps a near-perfect model (MAD ≈ 0) from flagging every slice with a few uncertain
boundary pixels.

The gate (the worst-slice score that flags a whole case) is the same rule with GATE_K MADs (FAST_GATE_K for
runs of the fast preset, whose weaker models spread their clean slices wider): a clean slice's
score is skewed to the right (a few uncertain pixels more or less), so K MADs cut into the clean tail, and a
case of 15 slices has 15 chances to cross it. (The rule on log scores, used before, broke with strong models:
clean slices scoring near 0 widened the log MAD until the gate reached 1; docs/decisions.md.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import Preset, ScoreConfig
from ..data import Track, discover_dataset, fingerprint, no_track
from ..errors import ImageReadError
from ..formats.run import DatasetRecord, load_run
from .decide import NO_CASE_THRESHOLD, decide, resolve_threshold, saturated_calibration_note
from ..io import read_volume
from ..training_scores import ScoreSpread
from ..types import Audit, Calibration, Dataset, Routing, Threshold, ThresholdSource, Volume
from ..fix.rule import class_agreement
from .formulas import CASE_SHARE, CASE_TOP_SLICES, SLICE_RULE, STRUCTURE_PRIOR
from .pipeline import fit_dataset_path, score_dataset
from .ranking import counts_for_calibration, order_of, ranking_from_scores, rerank_slices, structure_score


#: See the module docstring: threshold = max(THRESHOLD_FLOOR, median + THRESHOLD_K · MAD_SCALE · MAD).
THRESHOLD_RULE = "median+k*mad"
THRESHOLD_K = 3.0
MAD_SCALE = 1.4826  # MAD -> standard deviation for a normal distribution
THRESHOLD_FLOOR = 0.05
#: The gate's rule: max(slice threshold, median + GATE_K · MAD_SCALE · MAD) of the same scores. A run of the
#: fast preset (a weaker model, whose clean slices spread wider) keeps FAST_GATE_K (docs/decisions.md).
GATE_K = 6.0
FAST_GATE_K = 8.0


def gate_rule(gate_k: float = GATE_K) -> str:
    """The gate's rule as run.json stores it."""
    return f"median+{gate_k:g}*mad"


GATE_RULE = gate_rule(GATE_K)


def gate_k_for(preset: Preset | None) -> float:
    """The gate's MADs for a run of `preset` (None: not one of fit's presets, e.g. a user's own probabilities)."""
    return FAST_GATE_K if preset is Preset.FAST else GATE_K

#: Stored with the thresholds in run.json, so that a committed model says what its threshold means.
THRESHOLD_MEANING = ("a slice is flagged when its noise score reaches 'slice' = min(1, max(floor, median + k * "
                     "mad_scale * MAD)) of the scores of the training slices with structure ('scored' says whether "
                     "out-of-fold or in-sample): k robust standard deviations above a typical training "
                     "annotation, robust to up to half of them being wrong; a case is flagged when its worst "
                     "slice reaches 'gate' (the same rule with 'gate_k' MADs) or its score (mean of its "
                     f"{CASE_TOP_SLICES} worst slice masses M/(M + {CASE_SHARE} x A0), M the slice's expected "
                     "mislabelled pixels) reaches 'case'")
#: Fewer cases than this: no case threshold, the worst slice alone (a MAD of a handful of cases is noise).
MIN_CASES_FOR_CASE_RULE = 10
QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)


#: How A₀ was measured, stored with it.
PRIOR_RULE = (f"{STRUCTURE_PRIOR} x the median labelled area of the training slices with structure (A0 of the "
              "slice score)")


def robust_threshold(scores: np.ndarray, k: float = THRESHOLD_K, floor: float = THRESHOLD_FLOOR) -> float:
    """max(floor, median + k · 1.4826 · MAD) of `scores` (float, any shape); `floor` when empty. At most 1."""
    spread = ScoreSpread.of(np.asarray(scores).reshape(-1))
    if not spread.known:
        return float(floor)
    return float(min(1.0, max(floor, spread.median + k * MAD_SCALE * spread.mad)))


def case_rule_applies(n_cases: int) -> bool:
    """Whether the case threshold comes from the case scores (else there is none: decide.NO_CASE_THRESHOLD)."""
    return n_cases >= MIN_CASES_FOR_CASE_RULE


def threshold_from_scores(slice_scores: np.ndarray, case_scores: np.ndarray, k: float = THRESHOLD_K,
                          floor: float = THRESHOLD_FLOOR, gate_k: float = GATE_K) -> Threshold:
    """The slice, case and gate thresholds of THRESHOLD_RULE and GATE_RULE from training scores.

    slice_scores: float (N,) of the slices with a non-empty ROI; case_scores: float (M,) of every case;
    gate_k: the gate's MADs (GATE_K; the benchmark compares others).
    """
    slice_threshold = robust_threshold(slice_scores, k, floor)
    gate = max(slice_threshold, robust_threshold(slice_scores, gate_k, floor))  # never below a slice flag
    case_threshold = (robust_threshold(case_scores, k, floor) if case_rule_applies(len(case_scores))
                      else NO_CASE_THRESHOLD)
    return Threshold(slice_threshold, case_threshold, ThresholdSource.RUN, gate=gate)


def thresholds_from_audit(audit: Audit, k: float = THRESHOLD_K, floor: float = THRESHOLD_FLOOR,
                          gate_k: float = GATE_K) -> Calibration:
    """Slice and case thresholds from an audit of the (noisy) training data; see THRESHOLD_RULE; and the tables
    that rank slices by the structure and softmin scores together (score/ranking.py).

    Only the slices that `counts_for_calibration` count. The thresholds are those of the structure score S_i,
    whatever ranked the audit's slices (the ranked training slices take S_i's values, in another order).
    """
    kept = [s for s in audit.slices if counts_for_calibration(s.label_pixels, s.pred_pixels)]
    slice_scores = np.array([structure_score(s) for s in kept], dtype=float)
    case_scores = np.array([c.noise_score for c in audit.cases], dtype=float)
    threshold = threshold_from_scores(slice_scores, case_scores, k, floor, gate_k)
    slice_threshold, case_threshold, gate = threshold.slice, threshold.case, threshold.gate
    case_rule = (THRESHOLD_RULE if case_rule_applies(len(case_scores))
                 else f"none (fewer than {MIN_CASES_FOR_CASE_RULE} cases): the worst slice alone")
    ranking = (ranking_from_scores(slice_scores, np.array([s.softmin for s in kept], dtype=float))
               if kept and all(s.softmin is not None for s in kept) else None)
    ranked = rerank_slices(audit.slices, order_of(ranking, slice_threshold, gate))
    per_case: dict[str, list[float]] = {}
    for s, score in zip(audit.slices, ranked):
        per_case.setdefault(s.case_id, []).append(score)
    kept_ranked = np.array([score for s, score in zip(audit.slices, ranked)
                            if counts_for_calibration(s.label_pixels, s.pred_pixels)], dtype=float)

    return Calibration(
        slice=slice_threshold, case=case_threshold, rule=THRESHOLD_RULE, case_rule=case_rule,
        meaning=THRESHOLD_MEANING, k=k, mad_scale=MAD_SCALE, floor=floor, pixel_score=audit.pixel_score,
        perturbations=audit.perturbations,
        scored="out-of-fold" if any(c.routing == Routing.OUT_OF_FOLD.value for c in audit.cases) else "in-sample",
        n_slices=int(slice_scores.size), n_cases=int(case_scores.size),
        slice_stats=ScoreSpread.of(slice_scores, QUANTILES), case_stats=ScoreSpread.of(case_scores, QUANTILES),
        flagged_slices=int(decide(0.0, kept_ranked, threshold).n_flagged_slices),
        flagged_cases=sum(decide(c.noise_score, per_case.get(c.case_id, []), threshold).flagged for c in audit.cases),
        gate=gate, gate_rule=gate_rule(gate_k), gate_k=gate_k,
        class_agreement=class_agreement(audit.class_counts) or None, slice_ranking=ranking,
    )


def calibrate_run(run_dir: Path | str, device: str = "auto", track: Track = no_track, batch_size: int = 16,
                  structure_prior_mm2: float | None = None, dataset: Path | None = None) -> Calibration:
    """Score the run's own training dataset out-of-fold (nothing written) and derive its flagging thresholds.

    structure_prior_mm2: A₀, when the caller measured it already (fit has the labels in memory); else the fit
    dataset's labels are read for it. dataset: where that dataset is now (default: the path run.json records).
    Returns what `fit` stores as run.json's "threshold".
    """
    info = load_run(run_dir)
    root = Path(dataset) if dataset is not None else fit_dataset_path(info, Path(run_dir))
    prior = structure_prior_mm2
    if prior is None:
        prior = structure_prior(discover_dataset(root))
    audit = score_dataset(ScoreConfig(run_dir=Path(run_dir), dataset=root, write=False, device=device,
                                      batch_size=batch_size, structure_prior_mm2=prior), track=track)
    return stamped(thresholds_from_audit(audit, gate_k=gate_k_for(info.settings.preset)), prior)


def stamped(calibration: Calibration, prior: float | None) -> Calibration:
    """The calibration with what its thresholds mean: A₀ and its rule, and the slice score's rule."""
    return replace(calibration, structure_prior_mm2=prior, structure_prior_rule=PRIOR_RULE, slice_rule=SLICE_RULE)


def score_probabilities(config: ScoreConfig, track: Track = no_track) -> Audit:
    """`score --probabilities`: flag with the calibration folder config.run_dir when one is given; else derive
    the thresholds from this very audit with fit's rule (on the training data's out-of-fold probabilities, as
    fit calibrates on its own), flag with them, and save them to AUDIT_DIR/calibration for `check --model`."""
    from datetime import datetime, timezone

    from .. import __version__
    from ..formats.probability_run import CALIBRATION_FOLDER, ProbabilityRun, SourceRecord, save_probability_run
    from .sources import open_given

    if config.run_dir is not None or config.dataset is None:
        return score_dataset(config, track)
    dataset = discover_dataset(config.dataset)
    given = open_given(config.probabilities, dataset)  # its label set goes with the thresholds
    prior = config.structure_prior_mm2 if config.structure_prior_mm2 is not None else structure_prior(dataset)
    config = replace(config, structure_prior_mm2=prior)
    derived: list[Calibration] = []

    def calibrate(audit: Audit) -> Threshold:
        calibration = stamped(thresholds_from_audit(audit), prior)
        if not given.out_of_fold:
            calibration = replace(calibration, scored="given probabilities (not known to be out-of-fold)")
            audit.notes.append("thresholds derived from probabilities that are not nnU-Net's out-of-fold validation: "
                               "a model trained on these labels agrees with them too well, so they come out low")
        derived.append(calibration)
        saturated = saturated_calibration_note(calibration) if config.threshold is None else None
        if saturated:
            audit.notes.append(saturated)
        return resolve_threshold(calibration, config.threshold)

    audit = score_dataset(config, track, calibrate=calibrate)
    if config.write and derived and audit.out_dir is not None:
        record = DatasetRecord(str(dataset.root.resolve()), dataset.name, dataset.layout, dataset.file_ending,
                               fingerprint(dataset), tuple(c.case_id for c in audit.cases))
        run = ProbabilityRun(given.label_map, derived[0], SourceRecord(
            given.describe(), tuple(str(Path(p).resolve()) for p in config.probabilities), given.routing.value),
            record, datetime.now(timezone.utc).isoformat(timespec="seconds"),
            {"labelaudit": __version__, **audit.versions})
        audit.files["calibration"] = str(save_probability_run(Path(audit.out_dir) / CALIBRATION_FOLDER, run).parent)
    return audit


def structure_prior_of(labels: Iterable[Volume], prior: float = STRUCTURE_PRIOR) -> float | None:
    """A₀ in mm²: `prior` × the median labelled (non-background) area of the slices that have any; None if none."""
    areas = []
    for label in labels:
        stack = label.to_slices()
        counts = (stack != 0).reshape(stack.shape[0], -1).sum(axis=1)
        spacing = label.geometry.in_plane_spacing()
        areas.extend(float(n) * spacing[0] * spacing[1] for n in counts if n > 0)
    return float(prior * np.median(areas)) if areas else None


def structure_prior(dataset: Dataset, prior: float = STRUCTURE_PRIOR) -> float | None:
    """`structure_prior_of` the labels of `dataset`, read from disk (the images are not needed)."""
    def labels() -> Iterator[Volume]:
        for ref in dataset.cases:
            try:
                yield read_volume(ref.label_path)
            except ImageReadError:
                continue  # scoring reports the case

    return structure_prior_of(labels(), prior)

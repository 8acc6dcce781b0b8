"""Slice scores and their thresholds chosen together, on the development half only (defaults are chosen here).

cleanlab's softmin ranks slices better than labelaudit's slice score on the held-out half at the standard preset;
averaged with it, the slice score ranked better on the development half too, but its thresholds (median + k MADs
of the training slices) reached their ceiling of 1 and nothing was flagged (docs/decisions.md). A score is only
worth shipping with a threshold rule that works on it, so this script measures both at once: for each
development cell with a standard-preset run, each candidate score of the same probabilities (slice scores, and
case rules that keep the slice score and change only how a case's slices make its score)

- on the training set (the fold models' out-of-fold softmax): AP at slice, pixel and case level, and the training
  slices each threshold rule flags (corrupted / clean, against the corruption manifest);
- on the new cases (the ensemble's softmax, as `check` scores them): clean new cases flagged by `check`'s rule
  (false alarms; at most 1 in 20 asked) and corrupted new cases flagged (detections; at least half).

    python bench/score_gates.py [--half dev] [--work bench/suite_runs/full] [--results]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pint_audit import machine, write_section
from suite_data import DATASETS, REGIMES, Half
from suite_signals import CaseData, Signal, dice_per_case, level_scores, median_area_mm2

from suite import corrupt, run_probabilities, truth_of
from threshold_rules import logit, sigmoid

from labelaudit.evaluate.metrics import ranking_scores
from labelaudit.formats.manifest import read_manifest
from labelaudit.score import calibrate
from labelaudit.score.decide import NO_CASE_THRESHOLD, decide
from labelaudit.score.formulas import (REGION_SHARE, SOFTMIN_TEMPERATURE, case_noise_score, given_class_probability,
                                       normalised_entropy, pixel_noise_score, region_of_interest, roi_radius,
                                       slice_stats, worst_region)
from labelaudit.score.inference import dataset_probabilities
from labelaudit.score.ranking import ecdf, order_of, ranked_scores, ranking_from_scores, within_bands
from labelaudit.config import PixelScore
from labelaudit.types import Threshold, ThresholdSource

HERE = Path(__file__).resolve().parent
TITLE = "## Slice scores with their thresholds (`python bench/score_gates.py`)"
LEVELS = ("slice", "pixel", "case")
#: The case rule that standardises the top-3 mean and the whole-case share against the training cases.
STANDARDISED = "case z(top3) + z(whole)"
#: cleanlab's case rule on softmin: its worst slice (the landed slice score kept).
SOFTMIN_WORST = "case softmin worst"
#: The case put on the landed case score's scale by the mean of its empirical CDFs under the landed case score and
#: SOFTMIN_WORST among the training cases, as score/ranking.py does for slices (the landed slice score kept).
CASE_RANKED = "case rank mean (landed and softmin worst)"
#: The case score before 2026-12-03: the mean of the 3 worst slice scores (today's: of the 3 worst slice masses).
TOP3 = "case top3 (before)"
#: Rankings put on the landed score's scale: each slice's mean empirical CDF under the named scores' training
#: distributions, ranked among the training slices' and mapped through the landed score's training quantiles, so
#: that the training slices keep the landed score's distribution (hence its thresholds) and only their order
#: changes; the case keeps the landed case score, the noise map is (1 − p̄_y) × the new slice score.
#: BANDED is the product's ranking of 2026-12-04 (score/ranking.py): the rank mean from the tables calibration
#: stores, kept within the landed score's bands between its slice threshold and gate (today's rule on the training
#: slices); SHIFTED_BANDED the same with the softmin of p̄ shifted by the classes' confident thresholds.
BANDED = "ranked in bands (cleanlab softmin)"
SHIFTED = "softmin shifted"
SHIFTED_BANDED = "ranked in bands (softmin shifted)"
#: The region term R at other pixel levels (formulas.REGION_LEVEL: 0.3 until 2026-12-04, then 0.7): the higher,
#: the more only confidently wrong pixels make a region, so that a spurious blob stands out from a structure's
#: uncertain boundary (max(F, R_level)).
LEVELS_R = {"R level 0.3": 0.3, "R level 0.5": 0.5, "R level 0.7": 0.7}
#: The region term R against a prior that does not grow with the structure: min(REGION_SHARE · A₀, k pixels), so
#: that a small confidently wrong blob beside a large structure scores as it would beside a small one (spurious
#: blobs are where the landed score trails softmin most); max(F, R_k), thresholded on its own training slices.
PRIORS_R = {"R prior 4 px": 4.0, "R prior 16 px": 16.0}
#: The rank mean of each PRIORS_R score and softmin, on the landed scale within the landed score's bands (so it
#: flags what landed flags and only reorders); the same of the landed score with softmin counted twice, and of the
#: landed score, softmin and R prior 4 px.
PRIOR_BANDED = {**{f"ranked in landed bands ({name})": (name, "softmin") for name in PRIORS_R},
                "ranked in landed bands (softmin twice)": ("landed", "softmin", "softmin"),
                "ranked in landed bands (landed and softmin and R prior 4 px)": ("landed", "softmin", "R prior 4 px")}
#: Banded rankings: their base slice score (thresholds calibrated on it, bands of it) and the softmin blended in.
BANDS = {BANDED: ("landed", "softmin"), SHIFTED_BANDED: ("landed", SHIFTED),
         **{f"ranked in bands ({name})": (name, "softmin") for name in LEVELS_R}}
#: The rank mean of the landed score and both softmins, on the landed scale (onto_scale), within the same bands.
BOTH_BANDED = "ranked in bands (both softmins)"
REMAPPED = {"rank mean → landed scale": ("landed", "softmin"), "softmin → landed scale": ("softmin",),
            **BANDS, BOTH_BANDED: ("landed", "softmin", SHIFTED), **PRIOR_BANDED}
#: The banded rankings' base score: its training slices' thresholds make the bands and are the ones it flags with.
BANDED_ON = {**{how: base for how, (base, _) in BANDS.items()}, BOTH_BANDED: "landed",
             **{how: "landed" for how in PRIOR_BANDED}}
#: The scores shown under every rule of RULES; the later candidates under today's rule only (the logit rule was
#: rejected on the first five).
EVERY_RULE = ("landed", "softmin", "mean", "product", "geo")
SCORES = (*EVERY_RULE, SHIFTED, *LEVELS_R, *PRIORS_R, "mass 0.05", "mass 0.25", "softmin of s",
          "class R", "class R, F", "case whole", "case max(top3, whole)", "case mean", "case max",
          "case max(whole, R)", "case max(whole, top3 R)", STANDARDISED, TOP3, *REMAPPED, SOFTMIN_WORST, CASE_RANKED)
#: cleanlab's softmin temperature, for the softmin of labelaudit's own pixel score.
TEMPERATURE = 0.1
DESCRIBED = ("landed = max(F, R) with A₀ = 0.5 × the median area, case = mean of its 3 worst slice masses "
             "M / (M + 0.5 · A₀) (score/formulas.py); the other scores' case = mean of their 3 worst; softmin = "
             "cleanlab's; mean = (max(F, R) at A₀ = 0.1 × the median + softmin) / 2; product = landed × softmin; "
             "geo = its square root; mass c = M / (M + 2c · A₀), M = Σ_ROI s_v; softmin of s = cleanlab's softmin "
             "(T = 0.1) of 1 − s_v; class R = max(landed, R of each class against its own median area), class "
             "R, F = max over classes of max(F, R) each against its own median area; the case rules keep the "
             "landed slice score and change the case score only: whole = Σ M / (Σ |union| + A₀) over the "
             "case's slices, max(top3, whole), mean = mean over the slices with structure, max = the worst "
             "slice, max(whole, R) = with the case's worst region R, max(whole, top3 R) = with the mean of "
             "its 3 worst R, z(top3) + z(whole) = σ of their mean, each standardised by the training cases' "
             "median and MAD, top3 (before) = the mean of the 3 worst slice scores; rank mean → landed scale = "
             "the mean of a slice's empirical CDFs under the landed score and softmin among the training slices "
             "with structure, ranked and mapped through the landed score's training quantiles (the training "
             "slices keep the landed distribution, so its thresholds, in another order), softmin → landed scale "
             "the same of softmin alone; ranked in bands (cleanlab softmin) = the rank mean as score/ranking.py "
             "computed it on 2026-12-04, kept within the landed score's bands below its slice threshold, up to its "
             "gate and above (today's rule on the training slices), so it flags what landed flags; softmin shifted "
             "= cleanlab's softmin of p̄ shifted by the classes' confident thresholds (cleanlab's adjust_pred_probs; "
             "t = the mean p̄ of each class over the training pixels labelled with it), ranked in "
             "bands (softmin shifted) = the banded rank mean of the landed score and it; ranked in bands (both "
             "softmins) = the rank mean of the landed score and both softmins, on the landed scale, within the same "
             "bands; R prior k px = max(F, R) with R against min(¼ A₀, k pixels) instead of ¼ A₀ (a small blob "
             "beside a large structure scores as beside a small one), ranked in landed bands (R prior k px) = the "
             "rank mean of it and softmin on the landed scale within the landed score's bands (landed's flags, "
             "another order), ranked in landed bands (softmin twice) the same of the landed score and softmin "
             "with softmin's CDF counted twice (weights 1/3, 2/3), (landed and softmin and R prior 4 px) of the "
             "three; R level L = max(F, R) with R's regions made of the pixels whose s_v exceeds L "
             "(landed: 0.3 until "
             "2026-12-04, then 0.7), its "
             "case the landed case score; ranked in bands (R level L) = the banded rank mean of it and softmin, its "
             "thresholds and bands calibrated on it; all of these keep the landed case score; "
             "case softmin worst = softmin's worst slice (cleanlab's case rule) as the case score; case rank mean "
             "(landed, softmin worst) = the mean of a case's empirical CDFs under the landed case score and softmin's "
             "worst slice among the training cases, mapped through the landed training case scores; both keep the "
             "landed slice score.")


def title_of(half: str) -> str:
    """The section's heading: the development half's under TITLE, any other half's under its own."""
    return TITLE if half == Half.DEV.value else TITLE.replace("`)", f" --half {half}`)")


@dataclass(frozen=True)
class Scored:
    """One score of one set of cases: per slice, whether it enters the calibration, per case."""

    slices: dict[tuple[str, int], float]
    structure: dict[tuple[str, int], bool]
    cases: dict[str, float]
    pixels: list[np.ndarray]


def _softmin(case: CaseData) -> np.ndarray:
    from cleanlab.segmentation.rank import get_label_quality_scores

    prob = case.prob / np.maximum(case.prob.sum(axis=1, keepdims=True), 1e-12)
    quality, _ = get_label_quality_scores(case.classes.astype(np.int64), prob.astype(np.float32),
                                          method="softmin", verbose=False)
    return 1.0 - np.asarray(quality, dtype=np.float64)


def class_medians_mm2(cases: list[CaseData]) -> dict[int, float]:
    """Per foreground class, the median area (mm²) of the training slices where the label has it."""
    areas: dict[int, list[float]] = {}
    for case in cases:
        pixel = case.spacing[0] * case.spacing[1]
        for c in range(1, case.prob.shape[1]):
            counts = (case.classes == c).reshape(case.classes.shape[0], -1).sum(axis=1)
            areas.setdefault(c, []).extend(float(n) * pixel for n in counts if n > 0)
    return {c: float(np.median(a)) if a else 1.0 for c, a in areas.items()}


def class_scores(noise: np.ndarray, case: CaseData, pred: np.ndarray, medians: dict[int, float],
                 with_fraction: bool) -> np.ndarray:
    """max over foreground classes c of that class's own slice score, its A₀ from class c's median area:
    R only over the pixels label or prediction give to c (with_fraction: max(F_c, R_c), F_c over c alone)."""
    radius = roi_radius(case.spacing)
    found = np.zeros(len(noise))
    for c, median in medians.items():
        eps = max(1.0, 0.5 * median / (case.spacing[0] * case.spacing[1]))
        mine = (case.classes == c) | (pred == c)
        if not mine.any():
            continue
        region = worst_region(np.where(mine, noise, 0.0), REGION_SHARE * eps)
        if with_fraction:
            binary_label, binary_pred = (case.classes == c).astype(np.int64), (pred == c).astype(np.int64)
            region = slice_stats(np.where(mine | ~((case.classes != 0) | (pred != 0)), noise, 0.0), binary_label,
                                 binary_pred, 2, radius, eps, REGION_SHARE).noise_score
        found = np.maximum(found, region)
    return found


def training_confidence(cases: list[CaseData]) -> np.ndarray:
    """cleanlab's confident thresholds of the training cases' probabilities: per class, the mean p̄ of the given
    class over the pixels labelled with it (a class no pixel is labelled with: the largest, no shift)."""
    num_classes = cases[0].prob.shape[1]
    total, count = np.zeros(num_classes), np.zeros(num_classes)
    for case in cases:
        p_given = given_class_probability(case.prob, case.classes).astype(np.float64)
        total += np.bincount(case.classes.reshape(-1), weights=p_given.reshape(-1), minlength=num_classes)
        count += np.bincount(case.classes.reshape(-1), minlength=num_classes)
    known = count > 0
    t = np.where(known, total / np.maximum(count, 1.0), 0.0)
    return np.where(known, t, t[known].max() if known.any() else 1.0)


def shifted_softmin(p_given: np.ndarray, classes: np.ndarray, confidence: np.ndarray,
                    temperature: float = SOFTMIN_TEMPERATURE) -> np.ndarray:
    """SHIFTED per slice: cleanlab's softmin of q_v = (p̄_{v,y_v} − t_{y_v} + max t) / Z, Z = 1 + C · max t − Σ t
    (cleanlab's adjust_pred_probs, its `_subtract_confident_thresholds`), weighted by exp(−Z q_v / temperature):
    the temperature stays on p̄'s scale. p_given float (b, H, W), classes int (b, H, W) -> float64 (b,)."""
    t = np.asarray(confidence, dtype=np.float64)
    shifted = np.clip(p_given.astype(np.float64), 0.0, 1.0) + (t.max() - t)[classes]
    flat = shifted.reshape(len(shifted), -1)
    weight = np.exp(-(flat - flat.min(axis=1, keepdims=True)) / temperature)
    scale = 1.0 + len(t) * t.max() - t.sum()
    return np.clip(1.0 - (flat * weight).sum(axis=1) / weight.sum(axis=1) / scale, 0.0, 1.0)


def score_cases(cases: list[CaseData], median_mm2: float, medians: dict[int, float] | None = None,
                confidence: np.ndarray | None = None) -> dict[str, Scored]:
    """Every score of SCORES on the same probabilities (DESCRIBED says what each is). median_mm2: the training
    labels' median area (fit measures A₀ there, once); medians: the same per foreground class (class_medians_mm2),
    for the per-class candidates; confidence: the training cases' confident thresholds (training_confidence), for
    SHIFTED (None: cleanlab's softmin)."""
    out = {how: Scored({}, {}, {}, []) for how in SCORES}
    for case in cases:
        p_given = given_class_probability(case.prob, case.classes)
        unc = normalised_entropy(case.prob)
        pred = case.prob.argmax(axis=1)
        noise = pixel_noise_score(p_given, unc, PixelScore.CONFIDENT_DISAGREEMENT)
        wrong = pixel_noise_score(p_given, unc, PixelScore.DISAGREEMENT)

        def stats(prior: float):
            eps = max(1.0, prior * median_mm2 / (case.spacing[0] * case.spacing[1]))
            return slice_stats(noise, case.classes, pred, case.prob.shape[1], roi_radius(case.spacing), eps,
                               REGION_SHARE), eps

        def ours(prior: float) -> np.ndarray:
            return stats(prior)[0].noise_score.astype(np.float64)

        landed_stats, a0 = stats(0.5)
        landed, soft = landed_stats.noise_score.astype(np.float64), _softmin(case)
        mass = landed_stats.mislabelled  # Σ_ROI s_v: the expected mislabelled pixels, whatever the structure's size
        quality = 1.0 - noise.reshape(len(noise), -1).astype(np.float64)
        weight = np.exp(-(quality - quality.min(axis=1, keepdims=True)) / TEMPERATURE)
        shifted = shifted_softmin(p_given, case.classes, confidence) if confidence is not None else soft
        scores = {"landed": landed, "softmin": soft, SHIFTED: shifted, "mean": (ours(0.1) + soft) / 2,
                  "product": landed * soft, "geo": np.sqrt(landed * soft),
                  "mass 0.05": mass / (mass + 0.1 * a0), "mass 0.25": landed_stats.mass,  # formulas.slice_mass
                  "softmin of s": 1.0 - (quality * weight).sum(axis=1) / weight.sum(axis=1)}
        noise_in_roi = np.where(region_of_interest(case.classes, pred, roi_radius(case.spacing)), noise, 0.0)
        fraction = np.where(landed_stats.union > 0,
                            np.clip(landed_stats.mislabelled / (landed_stats.union + a0), 0.0, 1.0), 0.0)
        for name, level in LEVELS_R.items():
            scores[name] = np.maximum(fraction, worst_region(noise_in_roi, REGION_SHARE * a0, level))
        for name, pixels in PRIORS_R.items():
            scores[name] = np.maximum(fraction, worst_region(noise_in_roi, min(REGION_SHARE * a0, pixels)))
        if medians is not None:
            scores["class R"] = np.maximum(landed_stats.noise_score, class_scores(noise, case, pred, medians, False))
            scores["class R, F"] = class_scores(noise, case, pred, medians, True)
        has = ((case.classes != 0) | (pred != 0)).reshape(len(landed), -1).any(axis=1)
        # the case as one structure (F over the whole case): its expected mislabelled share, which a bias over
        # every slice raises though no one slice stands out
        union = landed_stats.union.sum()
        whole = min(1.0, float(landed_stats.mislabelled.sum() / (union + a0))) if union else 0.0
        region = landed_stats.worst_region
        case_rules = {"case whole": whole, "case max(top3, whole)": max(case_noise_score(landed), whole),
                      "case mean": float(landed[has].mean()) if has.any() else 0.0,
                      "case max": float(landed.max(initial=0.0)),
                      "case max(whole, R)": max(whole, float(region.max(initial=0.0))),
                      "case max(whole, top3 R)": max(whole, case_noise_score(region)),
                      TOP3: case_noise_score(landed), "landed": case_noise_score(landed_stats.mass),
                      SOFTMIN_WORST: float(soft.max(initial=0.0))}
        case_rules[CASE_RANKED] = case_rules["landed"]  # rank_cases() replaces it
        scores.update({how: landed for how in (*case_rules, STANDARDISED, *REMAPPED)})  # the slice score kept
        case_rules.update({how: case_rules["landed"] for how in (*REMAPPED, *LEVELS_R, *PRIORS_R)})  # case kept
        for how, values in scores.items():
            scored = out[how]
            for i, value in enumerate(values):
                scored.slices[(case.case_id, i)] = float(value)
                scored.structure[(case.case_id, i)] = bool(has[i])
            scored.cases[case.case_id] = case_rules.get(how, case_noise_score(values))
            # REMAPPED: remap() multiplies by the slice score it makes
            scored.pixels.append(wrong if how in REMAPPED else
                                 (wrong * values[:, None, None]).reshape(-1).astype(np.float32))
    return out


def onto_scale(scale: np.ndarray, training: list[np.ndarray]) -> Callable[[list[np.ndarray]], np.ndarray]:
    """A map of items scored under several scores onto `scale`'s training distribution: the mean of each item's
    empirical CDFs under the scores' training values (`training`, one array per score, paired with `scale`),
    ranked among the training items' and mapped through `scale`'s quantiles (inverted CDF), so that the training
    items get exactly `scale`'s values, in another order."""
    refs = [np.sort(values) for values in training]

    def mean_cdf(values: list[np.ndarray]) -> np.ndarray:
        return np.mean([ecdf(ref, v) for ref, v in zip(refs, values)], axis=0)

    u_train, target = np.sort(mean_cdf(training)), np.sort(scale)
    return lambda values: np.quantile(target, np.clip(ecdf(u_train, mean_cdf(values)), 0.0, 1.0),
                                      method="inverted_cdf")


def remap(training: dict[str, Scored], every: list[dict[str, Scored]]) -> None:
    """REMAPPED's slice scores and noise maps, in place (every holds training too); slices without structure
    keep the landed score (0 where neither label nor prediction has structure)."""
    keys = [k for k, has in training["landed"].structure.items() if has]

    def of(scored: dict[str, Scored], src: str, chosen: list) -> np.ndarray:
        return np.array([scored[src].slices[k] for k in chosen])

    def today(base: str) -> Threshold:  # today's rule on the base score's training slices and cases
        return RULES[TODAY](of(training, base, keys), np.array(list(training[base].cases.values())))

    for how, sources in REMAPPED.items():
        if how in BANDS:  # the product's ranking, banded by today's thresholds of its base's training slices
            base, softmin = BANDS[how]
            t = today(base)
            order = order_of(ranking_from_scores(of(training, base, keys), of(training, softmin, keys)),
                             t.slice, t.gate)  # None (S_i alone) where calibration would keep no tables

            def rank(scored: dict[str, Scored], chosen: list, base: str = base, softmin: str = softmin) -> np.ndarray:
                return ranked_scores(of(scored, base, chosen), of(scored, softmin, chosen),
                                     np.ones(len(chosen), bool), order)
        else:
            mapper = onto_scale(of(training, "landed", keys), [of(training, src, keys) for src in sources])
            t = today(BANDED_ON[how]) if how in BANDED_ON else None
            bands = tuple(sorted({t.slice, t.gate})) if t is not None else ()

            def rank(scored: dict[str, Scored], chosen: list, bands: tuple = bands) -> np.ndarray:
                mapped = mapper([of(scored, src, chosen) for src in sources])
                return within_bands(mapped, of(scored, "landed", chosen), bands) if bands else mapped
        for scored in every:
            target = scored[how]
            chosen = [k for k, has in target.structure.items() if has]
            if chosen:
                target.slices.update(zip(chosen, rank(scored, chosen).tolist()))
            for index, case_id in enumerate(dict.fromkeys(c for c, _ in target.slices)):  # the order of pixels
                wrong = target.pixels[index]
                values = np.array([target.slices[(case_id, i)] for i in range(len(wrong))])
                target.pixels[index] = (wrong * values[:, None, None]).reshape(-1).astype(np.float32)


def rank_cases(training: dict[str, Scored], every: list[dict[str, Scored]]) -> None:
    """CASE_RANKED's case scores, in place (every holds training too): onto_scale of the landed case score and
    SOFTMIN_WORST, on the landed training case scores' scale (so its case threshold keeps its meaning)."""
    sources = ("landed", SOFTMIN_WORST)
    ids_train = list(training["landed"].cases)
    mapper = onto_scale(np.array([training["landed"].cases[c] for c in ids_train]),
                        [np.array([training[src].cases[c] for c in ids_train]) for src in sources])
    for scored in every:
        ids = list(scored[CASE_RANKED].cases)
        mapped = mapper([np.array([scored[src].cases[c] for c in ids]) for src in sources])
        scored[CASE_RANKED].cases.update(zip(ids, map(float, mapped)))


def standardise(training: dict[str, Scored], every: list[dict[str, Scored]]) -> None:
    """STANDARDISED's case scores, in place: σ((z(top3) + z(whole)) / 2), each z against the training cases'
    median and 1.4826 · MAD of that statistic (σ keeps the score in [0, 1] for the MAD threshold rule)."""
    def centre(how: str) -> tuple[float, float]:
        values = np.array(list(training[how].cases.values()))
        med = float(np.median(values))
        return med, max(calibrate.MAD_SCALE * float(np.median(np.abs(values - med))), 1e-9)
    (m3, s3), (mw, sw) = centre(TOP3), centre("case whole")
    for scored in every:
        for case_id in scored[STANDARDISED].cases:
            z = (scored[TOP3].cases[case_id] - m3) / s3 + (scored["case whole"].cases[case_id] - mw) / sw
            scored[STANDARDISED].cases[case_id] = float(sigmoid(z / 2))


#: What the development half's figures of 2026-12-06 said, and earlier ones (kept with the table it reads).
READING = """What this says (development half, all fifteen cells refit at the standard preset on 2026-12-06; read for
the region term against a prior that does not grow with the structure and for three more rankings within the landed
score's bands, with the bar set and committed before the run: adopted only if a candidate beats today's ranking,
`ranked in bands (cleanlab softmin)`, in mean slice AP and in at least 10 of the 15 cells, with mean pixel AP at
most 0.005 lower; nothing was chosen, and the reserve, brain_tissue_fine, fit the same day, stays unread):

- **None clears the bar.** Mean slice · pixel AP against today's 0.860 · 0.779: `ranked in landed bands (R prior 4
  px)` 0.864 · 0.779 (8 of 15 cells better), `(R prior 16 px)` 0.864 · 0.779 (8), `(softmin twice)` 0.862 · 0.778
  (9), `(landed and softmin and R prior 4 px)` 0.863 · 0.782 (9); all flag what landed flags (544 of 1087
  corrupted, 30 of 2252 clean training slices; 0 of 120 clean and 67 of 115 corrupted new cases).
- **R against 4 pixels does what it was meant to on spurious blobs** (AP of those slices against the clean ones:
  slice regime 0.858 against softmin's 0.815 and the landed score's 0.763; structure regime 0.911 against 0.889 and
  0.877) **and gives it back on dilation and erosion** (slice regime 0.767 and 0.618 against the landed 0.785 and
  0.677): a region of a few confidently wrong pixels now outranks a moved or widened border. Alone, as the slice
  score, it ranks 0.864 · 0.798 but its thresholds flag 0 of 1087 corrupted training slices (its training scores'
  spread puts every threshold at the ceiling): no gate, not a slice score.
- **The rank mean of the landed score and both softmins, rejected on 2026-12-04's fits at 9 of 15, is better in 10
  of 15 cells of today's** (0.881 · 0.804 against 0.860 · 0.779; better than cleanlab's softmin in 10 of 15, where
  today's ranking is in 7 of 15). It was not a candidate of today's bar; over the two refits it is 19 of 30 cells,
  and the next choice can take it up with a bar of its own, reported on brain_tissue_fine.
- **The landed score alone ranks as well as today's ranking here** (0.860 · 0.788 against 0.860 · 0.779; better in 6
  of 15): on these fits the ranking gains nothing over the structure score at slice level and loses 0.009 at pixel
  level, where it was chosen (2026-12-03) for a slice gain; single refits move cells by more than candidates differ.

Earlier reading (2026-12-04's fits, since refit; the table shows today's):

What this said (development half, all fifteen cells at the standard preset: the five case-regime cells
refit earlier on 2026-12-04, the ten others later that day; read for the softmin shifted by the classes' confident
thresholds, with a bar set after a look at the first eight cells and before the fifteen-cell run: adopted only if its
banded ranking beat today's on the mean slice AP, did not lower the mean pixel AP and won at least 10 of the 15
cells):

- **Not adopted: cleanlab's confident-threshold adjustment does not carry over to segmentation.** `softmin shifted`
  (the softmin of p̄ − t_y + max t, renormalised, t the mean p̄ of each class over the training pixels labelled with
  it, as cleanlab's adjust_pred_probs does for classification) ranks slices at 0.721 against cleanlab's 0.863. It
  gains where it was meant to, in the case regime, where cleanlab's softmin saturates on every slice holding a small
  lesion (ct_lesion 0.603 → 0.763, ct_liver 0.798 → 0.900), and collapses in the structure regime (ct_liver 0.968 →
  0.562, ct_spleen_kidney 0.994 → 0.498, mean 0.908 → 0.560): the shift lifts every pixel labelled with a class the
  model is less sure of by the same amount, so a spurious blob labelled with that class looks no worse than the
  background's boundary, and the errors labelled with a small class vanish from the softmin.
- **Banded with the landed score it loses too**: `ranked in bands (softmin shifted)` 0.865 · 0.808 · 0.920 against
  today's 0.869 · 0.801 · 0.920, better in 6 of 15 cells (all five of the case regime: 0.818 → 0.872 there; the
  structure regime 0.900 → 0.848).
- **The rank mean of the landed score and both softmins is the best mean and still misses the bar**: `ranked in
  bands, both softmins` 0.884 · 0.815 · 0.920, the same flags (515 of 1093 corrupted, 35 of 2247 clean training
  slices; 0 of 120 clean and 64 of 115 corrupted new cases), better than today's in 9 of 15 cells (slice regime
  0.890 → 0.899, case 0.818 → 0.870, structure 0.900 → 0.883, where it loses 4 of 5) and better than cleanlab's
  softmin in 9 of 15 (today's: 7). Below the 10 of 15 set before the run: not adopted; it is a third score for a
  gain the structure regime gives back, and the reserve (ct_organs_fine) stays unread for a candidate that clears
  the bar.
- **Per corruption kind** (each kind's slices against the clean ones, over the five cells of a regime; the
  table above): the structure score trails softmin most on spurious blobs (slice
  regime AP 0.656 against 0.820, structure regime 0.816 against 0.895) and on dilation (0.802 against 0.856), and
  leads on erosion (0.672 against 0.611) and missing structure (0.830 against 0.802): R weighs a small blob against
  a quarter of A₀, where softmin sees a few confidently wrong pixels.
- **So the region term at a higher pixel level was tried next** (`R level 0.5`, `R level 0.7`: R's regions made
  of the pixels with s_v above 0.5 or 0.7 instead of 0.3, thresholds calibrated on it; same bar, set before that
  run): banded with softmin 0.869 · 0.799 and 0.871 · 0.797 against today's 0.869 · 0.801, better in 8 and 7 of
  15 cells: not adopted. At 0.7 the thresholds flag more of the corrupted training slices (568 of 1093 against
  515) and fewer clean ones (31 of 2247 against 35), and the gate catches 69 of 115 corrupted new cases against
  64 (0 of 120 clean either way): a gate candidate for a measurement of its own, with its bar set first; read
  here after the fact, it chose nothing. On the new cases corrupted again with seed 7 (`--new-seed 7`, the same
  fits and thresholds) it caught 65 of 117 against the landed score's 57 (0.5: 64), 0 of 120 clean flagged.
- **cleanlab's softmin ranks slices better than today's ranking in the slice and structure regimes here too**
  (0.895 against 0.890, 0.908 against 0.900), as on the held-out half, and far worse in the case regime (0.786
  against 0.818): the development half shows the held-out half's slice-level losses, so the next candidate can be
  chosen on it.

Earlier readings (their figures are those of the fits of their day, since refit; the table shows today's):

What this said (development half, nine cells refit on 2026-12-03, the standard preset; the case score changed,
the slice score did not). Written when `landed` was the mean of the 3 worst slice scores; the table now shows
today's case score as `landed` and the earlier one as `case top3 (before)`, and two more datasets (the end):

- **The landed slice score and today's rule stay**: mean AP slice · pixel · case 0.804 · 0.725 · 0.811, 270 of 594
  corrupted training slices flagged (29 of 1302 clean), the gate 0 of 72 clean and 39 of 67 corrupted new
  cases. The refit moved single cells by more than most candidates differ: brain_wm's case regime went from
  0.737 · 0.719 · 0.779 (2026-12-02's fit) to 0.666 · 0.649 · 0.683.
- **No case rule is better in all three case-regime cells** (case AP brain_wm · ct_lesion · ct_liver; landed,
  the mean of the 3 worst slices, 0.683 · 0.872 · 0.877): the whole case as one structure 0.856 · 0.634 ·
  0.948, the mean over the slices with structure 0.787 · 0.708 · 0.958, the worst slice 0.599 · 0.915 · 0.758.
  One annotator's bias over every slice of a large structure (brain_wm's white matter, ct_liver's liver) is
  found by the case's share; on ct_lesion, whose lesions span a few slices, the same bias touches few slices
  and the worst slices find it; each rule gives up one for the other. Standardising the top-3 mean and the
  share against the training cases and adding them (0.802 · 0.802 · 0.976, mean 0.860) is the best mean but
  still loses ct_lesion, puts its case threshold at the ceiling in every cell, and needs the training cases'
  statistics at scoring time; picked from seven case rules on 48 cases (18 corrupted), it is not evidence
  enough to change the case score users rank by.
  The gate hardly moves under any of them (39–40 of 67), since the worst slice decides most flags.
- **Adopted: the mean of the 3 worst slice masses** (case mass 0.25, m_i = M_i / (M_i + 0.5 · A₀), the slice
  score unchanged), the one case rule at least as good in all three: case AP 0.683 → 0.766, 0.872 → 0.877,
  0.877 → 0.915 (mean 0.853 against 0.811), the gate unchanged (0 of 72, 39 of 67). The gain in ct_lesion
  (0.005) is within what one case changes. A mass is on another scale than the slice score (training case
  masses a median 0.71 and 0.55 on brain_wm's and ct_liver's slice regimes, their slices 0.06 and 0.09; case
  thresholds 0.74–1.00 where the slice thresholds are 0.14–0.45), so `--threshold`, the default threshold and
  calibrations of fewer than 10 cases, which applied the slice threshold to the case score (harmless for a
  mean of slice scores, which reaches a threshold only if the worst slice does), now have no case threshold:
  the worst slice alone flags the case there. Reported on the reserve half (section below).
- **The mass of the pixel scores against a fixed prior, M / (M + A₀)** (mass 0.25) ranks slices better in the
  case regimes (brain_wm 0.666 → 0.727, ct_liver 0.898 → 0.921, ct_lesion 0.638 → 0.673) and on ct_lesion,
  worse on brain_wm's slice and structure regimes (0.935 → 0.864, 0.939 → 0.805) and ct_liver's (0.946 → 0.929,
  0.949 → 0.915): mean 0.798 against 0.804, and its gate catches 18 of 67.
- **cleanlab's softmin of labelaudit's own pixel score** (T = 0.1) ranks as softmin does (0.791 · 0.692 ·
  0.776 against 0.787 · 0.695 · 0.773) and, like it, saturates every threshold at 1: the aggregation, not the
  pixel score, is what leaves no room above the clean bulk.
- **A₀ per class** (class R, class R, F) lowers ct_liver (the two-class dataset) at slice level in all three
  regimes (0.946 → 0.842, 0.898 → 0.665, 0.949 → 0.901): the lesion class's small median area lifts clean
  lesion slices, and its thresholds reach 1; on the binary datasets it is the landed score by construction.
- **ct_lesion saturates at 1 under every score and rule**, as on 2026-12-02: the model does not segment its
  lesions well enough for any aggregation of its probabilities to be thresholded.
- The reserve half (ct_lesion_fine), read only after this choice, reports it.

Added later on 2026-12-03 (the two development datasets fit that day, `--datasets brain_wm_gm` and
`--datasets ct_spleen_kidney`; nothing was chosen from them yet):

- **They show what the held-out half showed**: cleanlab's softmin ranks slices better than the landed score
  in 5 of their 6 cells (brain_wm_gm 0.969 against 0.927 in the slice regime, 0.956 against 0.898 in the
  structure regime; ct_spleen_kidney 0.993 against 0.975, 0.994 against 0.979; the case regimes tie or go to
  the landed score), and ct_spleen_kidney's slice and case regimes flag nothing although their slice AP is
  0.975 and 0.889: the gate reaches 1 (slice thresholds 0.913 and 0.957), as on the fresh ct_spleen. The
  development half now holds the failures it lacked.
- **Rankings put on the landed score's scale keep its thresholds**: `rank mean → landed scale` (the mean of
  a slice's empirical CDFs under the landed score and softmin) ranks 0.861 · 0.783 · 0.888 over the fifteen
  cells against the landed 0.855 · 0.788 · 0.888, flags 502 of 1087 corrupted and 28 of 2252 clean training
  slices (landed 494 and 37) and 65 of 115 corrupted new cases (64), 0 of 120 clean ones; `softmin → landed
  scale` ranks 0.851 · 0.773 · 0.888. Neither lifts the ceiling on ct_spleen_kidney. The rank mean is the
  candidate for the next choice, which the reserve dataset (brain_gm_fine, not yet fit) is to report.
- **The lower MAD** (the spread from the scores below the median; `lower MAD 3/6`) catches 73 of 115 corrupted
  new cases against 64, at 1 of 120 clean ones flagged (0 today) and 63 of 2252 clean training slices (37);
  ct_spleen_kidney's gate still reaches 1 in its slice and case regimes (slice thresholds 0.779 and 0.847).
  Not kept as it stands."""



#: What the fresh held-out half's figures of 2026-12-03 said (ct_lesion_fine, read once the case score had landed).
FRESH_READING = """What this says (ct_lesion_fine, moved from the reserve half and read once, after the case score of
slice masses had been chosen on the development half and committed; nothing was chosen after it):

- **The new case score loses where it was meant to help**: in the case regime, case AP 0.933 with the mean of
  the 3 worst slice scores and **0.905** with the mean of the 3 worst slice masses (miss ratio 1.42; cleanlab's
  softmin 0.911); it also loses in the structure regime (0.944 → 0.920) and gains in the slice regime (0.991 →
  0.996); mean 0.956 → 0.940. On the development half the gain came from the large structures (brain_wm,
  ct_liver) and not from ct_lesion (+0.005); small lesions, where a bias touches a few slices, do not gain from
  counting pixels.
- **Nothing is flagged under any score**: every slice and gate threshold is at 1, as on ct_lesion (0 of 24
  clean and 0 of 24 corrupted new cases flagged): the gate does not work on small lesions at this model's
  quality.
- softmin ranks slices better than the landed slice score in the slice and structure regimes (0.871 against
  0.810, 0.842 against 0.793) and worse in the case regime (0.846 against 0.882)."""
#: What the held-out half's figures of 2026-12-03 said (refit that day, read once the case score had landed).
HELD_OUT_READING = """What this says (held-out half rescored on 2026-12-04 with the region term of confidently wrong
pixels, s_v > 0.7, after it had been chosen on the development half and committed; the same fits, recalibrated;
`R level 0.3` is the score before, `ranked in bands (R level 0.3)` the product before; nothing was chosen after it):

- **Fewer false flags, a few fewer detections, slices ranked a little better**: the product's ranking 0.932 · 0.881
  · 0.928 against 0.923 · 0.890 · 0.928 before (cleanlab's softmin 0.930 · 0.891 · 0.943); training slices
  flagged 525 of 751 corrupted and 29 of 1469 clean against 553 and 66; the gate 0 of 72 clean and 59 of 72
  corrupted new cases against 1 and 62. The development half's gain in detections (69 against 64, 65 against 57)
  did not carry over; its fall in clean flags did, and more strongly.

Earlier, before the region level changed (the same fits, read once on 2026-12-04):

What this said (held-out half, nine cells refit on 2026-12-04 at the default, read once after
the slice ranking in bands had been chosen and reported on the reserve, `--scores "landed,softmin,ranked in bands
(today)"`, the name `ranked in bands (cleanlab softmin)` has since; nothing was chosen after it):

- **The ranking in bands ranks slices better than the structure score alone in 8 of 9 cells** (mean slice AP
  0.923 against 0.911; brain_gm's structure regime 0.936 → 0.932 the one loss), pixels a little worse (0.890
  against 0.895), cases unchanged (0.928), and flags exactly the same: 553 of 751 corrupted and 66 of 1469 clean
  training slices, 1 of 72 clean and 62 of 72 corrupted new cases.
- **softmin still ranks slices better on the mean** (0.930) and in 7 of 9 cells, and flags nothing at any of
  these rules.

Earlier, 2026-12-03 (nine cells refit that day, read once for the scores that shipped then and their baseline,
`--scores "landed,softmin,case top3 (before)"`; those fits are gone, the figures stay as read):

- **The case score of slice masses gains on these large structures**: case AP in the case regime 0.910 ·
  0.976 · 0.863 (brain_tissue · ct_organs · brain_gm) against 0.910 · 0.958 · 0.768 with the mean of the 3
  worst slice scores (mean 0.917 against 0.879), where on small lesions (ct_lesion_fine) it lost. cleanlab's
  softmin, aggregated the same way (the mean of its 3 worst slices): 0.924 · 1.000 · 0.976.
- The thresholds and the gate are those of today's rule: 552 of 751 corrupted and 65 of 1469 clean training
  slices flagged, 0 of 72 clean and 63 of 72 corrupted new cases; softmin's slice threshold and gate reach 1
  in every cell."""
#: What the reserve half's figures of 2026-12-04 said (brain_gm_fine, fit that day and read once, after the choice).
RESERVE_READING = """What this says (ct_organs_fine, the reserve half: fit on 2026-12-04 and read once, after the
region term of confidently wrong pixels, s_v > 0.7, had been chosen on the development half and committed; `R level
0.3` is the score before, `ranked in bands (R level 0.3)` the product before; nothing was chosen after it):

- **Slices ranked a little better, pixels a little worse, the gate unchanged**: the product's ranking 0.984 ·
  0.904 · 0.976 against 0.977 · 0.915 · 0.976 before; training slices flagged 193 of 225 corrupted and 12 of 420
  clean against 174 and 10; the gate 1 of 24 clean and 21 of 24 corrupted new cases either way.
- **cleanlab's softmin ranks better at every level here** (0.992 · 0.941 · 1.000) and flags nothing at these rules.
- ct_organs_fine then moved to the fresh held-out half (bench/suite_data.py); brain_tissue_fine (declared on
  2026-12-06) is the next reserve.

Earlier reserve (brain_gm_fine, since moved to the fresh half):

What this said (brain_gm_fine, the reserve half: fit on 2026-12-04 and read once, after the slice
ranking had been chosen on the development half and its bands on the shipped demo model, both committed; nothing was
chosen after it):

- **The ranking in bands gains at slice level and keeps every flag**: mean AP slice · pixel · case 0.902 · 0.889 ·
  0.740 against the structure score alone 0.889 · 0.894 · 0.740 (case regime slice AP 0.779 → 0.817), the same
  158 of 251 corrupted and 25 of 482 clean training slices flagged, the gate 0 of 24 clean and 21 of 24 corrupted
  new cases, as the structure score alone.
- **Unbanded it would have lost flags here too**: the rank mean without bands ranks best (0.912 · 0.890 · 0.740)
  but catches 17 of 24 corrupted new cases (2 of 8 in the case regime against 6), as on the demo model, where it
  halved the corrupted slices flagged.
- softmin still ranks slices best in the case regime (0.869 against 0.817) and reaches 1 under every threshold
  rule (0 flagged).
- brain_gm_fine then moved to the fresh held-out half (bench/suite_data.py); ct_organs_fine is the next reserve."""
READINGS = {Half.DEV.value: READING, Half.FRESH.value: FRESH_READING, Half.HELD_OUT.value: HELD_OUT_READING,
            Half.RESERVE.value: RESERVE_READING}

def mad_rule(k: float, gate_k: float, scale: str) -> Callable[[np.ndarray, np.ndarray], Threshold]:
    """median + k · 1.4826 · MAD of the training slices with structure (and of the cases), on the scores
    (`scale` raw) or on their logits (`scale` logit), mapped back to scores."""
    def rule(slices: np.ndarray, cases: np.ndarray) -> Threshold:
        if scale == "raw":
            return calibrate.threshold_from_scores(slices, cases, k=k, gate_k=gate_k)

        def at(values: np.ndarray, kk: float) -> float:
            z = logit(values)
            med = float(np.median(z))
            mad = float(np.median(np.abs(z - med)))
            return max(calibrate.THRESHOLD_FLOOR, float(sigmoid(med + kk * calibrate.MAD_SCALE * mad)))
        sl = at(slices, k)
        case = at(cases, k) if calibrate.case_rule_applies(len(cases)) else NO_CASE_THRESHOLD
        return Threshold(sl, case, ThresholdSource.RUN, gate=max(sl, at(slices, gate_k)))
    return rule


def lower_mad_rule(k: float, gate_k: float) -> Callable[[np.ndarray, np.ndarray], Threshold]:
    """median + k · 1.4826 · the MAD of the scores below the median only: a label error only raises a score, so
    the wrong slices (up to half) sit above the median and widen the two-sided MAD; the lower side is the
    clean bulk's."""
    def at(values: np.ndarray, kk: float) -> float:
        med = float(np.median(values)) if len(values) else 0.0
        low = med - values[values <= med]
        mad = float(np.median(low)) if len(low) else 0.0
        return float(min(1.0, max(calibrate.THRESHOLD_FLOOR, med + kk * calibrate.MAD_SCALE * mad)))

    def rule(slices: np.ndarray, cases: np.ndarray) -> Threshold:
        sl = at(slices, k)
        case = at(cases, k) if calibrate.case_rule_applies(len(cases)) else NO_CASE_THRESHOLD
        return Threshold(sl, case, ThresholdSource.RUN, gate=max(sl, at(slices, gate_k)))
    return rule


TODAY = "MAD 3/6"  # score/calibrate.py's rule at the standard preset
RULES = {TODAY: mad_rule(3, 6, "raw"), "logit MAD 3/6": mad_rule(3, 6, "logit"),
         "lower MAD 3/6": lower_mad_rule(3, 6)}


def _gate(scored: Scored, threshold: Threshold, only: set[str] | None = None) -> list[int]:
    per_case: dict[str, list[float]] = {}
    for (case_id, _), value in scored.slices.items():
        per_case.setdefault(case_id, []).append(value)
    verdicts = [decide(scored.cases[c], v, threshold).flagged for c, v in per_case.items() if only is None or c in only]
    return [int(sum(verdicts)), len(verdicts)]


def measure(cell: Path, clean_new: Path, shown: tuple[str, ...] = SCORES, corrupted_new: str = "noisy_new") -> dict:
    """The figures of the scores `shown` (of SCORES) on one cell; every score is computed, only these are read.
    corrupted_new: the cell's folder of corrupted new cases (suite.py's, or one of --new-seed)."""
    run_dir = cell / "runs" / "stronger"
    manifest = read_manifest(cell / "noisy" / "corruption.json")
    order = sorted(manifest.cases)
    truth = truth_of(cell / "noisy", manifest.source, order)
    train = run_probabilities(run_dir, cell / "noisy")
    assert [c.case_id for c in train] == order
    median = median_area_mm2(train)
    new = {"clean": run_probabilities(run_dir, clean_new, out_of_fold=False),
           "noisy": run_probabilities(run_dir, cell / corrupted_new, out_of_fold=False)}
    corrupted_new = {c for c, t in read_manifest(cell / corrupted_new / "corruption.json").cases.items()
                     if any(t.slices.values())}
    found = {}
    medians = class_medians_mm2(train)
    confidence = training_confidence(train)
    all_train = score_cases(train, median, medians, confidence)
    all_new = {name: score_cases(cases_, median, medians, confidence) for name, cases_ in new.items()}
    standardise(all_train, [all_train, *all_new.values()])
    remap(all_train, [*all_new.values(), all_train])
    rank_cases(all_train, [*all_new.values(), all_train])
    for how in shown:
        scored = all_train[how]
        signal = Signal(how, scored.slices, scored.cases, scored.pixels)
        levels = {lv: (None if s.ap is None else float(s.ap)) for lv, s in level_scores(signal, truth).items()}
        keys = [k for k in scored.slices if scored.structure[k]]
        slices = np.array([scored.slices[k] for k in keys])
        # the product calibrates BANDED's thresholds on S_i, the landed score (score/calibrate.py)
        calibrated_on = np.array([all_train[BANDED_ON.get(how, how)].slices[k] for k in keys])
        corrupted = np.array([truth.slices.get(k, False) for k in keys])
        cases = np.array([scored.cases[c] for c in order])
        new_scored = {name: found_[how] for name, found_ in all_new.items()}
        rules = {}
        for name, rule in RULES.items():
            t = rule(calibrated_on, cases)
            flags = slices >= t.slice
            rules[name] = {"slice": t.slice, "case": t.case, "gate": t.worst_slice,
                           "corrupted_slices": [int((flags & corrupted).sum()), int(corrupted.sum())],
                           "clean_slices": [int((flags & ~corrupted).sum()), int((~corrupted).sum())],
                           "false_alarms": _gate(new_scored["clean"], t),
                           "detections": _gate(new_scored["noisy"], t, corrupted_new)}
        found[how] = {"ap": levels, "rules": rules}
    found["kinds"] = kind_aps(all_train, truth, manifest.record)
    found["dice_new"] = float(np.mean([dice_per_case(c.prob.argmax(axis=1), c.classes, c.prob.shape[1] - 1)
                                       for c in new["clean"]]))  # the ensemble's prediction on clean new cases
    return found


#: The scores whose AP per corruption kind is measured (kind_aps).
KIND_SCORES = ("landed", "softmin", BANDED, "R prior 4 px")


def kind_aps(scored: dict[str, Scored], truth, record) -> dict[str, dict[str, float]]:
    """Per corruption kind of the training slices (corruption.json), the AP of KIND_SCORES ranking that kind's
    slices among the clean ones (slices with structure; the other kinds left out): {kind: {"n": n, score: AP}}."""
    kinds = {(case_id, s.slice_index): s.corruption.kind.value for case_id, c in record.cases.items()
             for s in c.slices if s.corrupted and s.corruption is not None}
    keys = [k for k, has in scored["landed"].structure.items() if has]
    label = np.array([kinds.get(k, "clean" if not truth.slices.get(k, False) else "unknown") for k in keys])
    found = {}
    for kind in sorted(set(label) - {"clean", "unknown"}):
        chosen = (label == kind) | (label == "clean")
        wrong = label[chosen] == kind
        found[kind] = {"n": int(wrong.sum()), **{how: float(ranking_scores(
            np.array([scored[how].slices[k] for k, c in zip(keys, chosen) if c]), wrong).ap) for how in KIND_SCORES}}
    return found


def kind_table(rows: dict[str, dict]) -> list[str]:
    """Per regime and kind, KIND_SCORES' AP averaged over the cells weighted by the kind's slices."""
    pooled: dict[tuple[str, str], list[dict]] = {}
    for cell, found in rows.items():
        for kind, entry in found.get("kinds", {}).items():
            pooled.setdefault((cell.split("/")[1], kind), []).append(entry)
    if not pooled:
        return []
    lines = ["", "AP per corruption kind (the kind's training slices against the clean ones, over the cells of a "
             "regime, weighted by its slices):", "", "| regime | kind | slices | cells | "
             + " | ".join(KIND_SCORES) + " |", "| --- | --- | --- | --- |" + " --- |" * len(KIND_SCORES)]
    order = list(REGIMES)
    for (regime, kind), entries in sorted(pooled.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        n = np.array([e["n"] for e in entries], dtype=float)
        lines.append(f"| {regime} | {kind} | {int(n.sum())} | {len(entries)} | " + " | ".join(
            f"{np.average([e[how] for e in entries], weights=n):.3f}" for how in KIND_SCORES) + " |")
    return lines


def _pair(p) -> str:
    return f"{p[0]}/{p[1]}"


def section(rows: dict[str, dict], meta: str, title: str = TITLE, reading: str = "") -> str:
    lines = [title, "", meta, "", "| cell | score | AP slice · pixel · case | rule | slice / case / gate "
             "thresholds | corrupted / clean training slices flagged | clean new cases flagged | corrupted new cases "
             "flagged |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    totals: dict[tuple[str, str], list[list[int]]] = {}
    shown = [how for how in SCORES if all(how in found for found in rows.values())]
    for cell, found in rows.items():
        for how in shown:
            entry = found[how]
            ap = " · ".join("—" if (v := entry["ap"].get(lv)) is None or np.isnan(v) else f"{v:.3f}"
                            for lv in LEVELS)
            for name, m in entry["rules"].items():
                if how not in EVERY_RULE and name != TODAY:
                    continue
                lines.append(f"| {cell} | {how} | {ap} | {name} | {m['slice']:.3f} / {m['case']:.3f} / "
                             f"{m['gate']:.3f} | {_pair(m['corrupted_slices'])} · {_pair(m['clean_slices'])} | "
                             f"{_pair(m['false_alarms'])} | {_pair(m['detections'])} |")
                t = totals.setdefault((how, name), [[0, 0] for _ in range(4)])
                for pair, key in zip(t, ("corrupted_slices", "clean_slices", "false_alarms", "detections")):
                    pair[0] += m[key][0]
                    pair[1] += m[key][1]
    lines.append("")
    for how in shown:
        aps = [[v for e in rows.values() if (v := e[how]["ap"].get(lv)) is not None and not np.isnan(v)]
               for lv in LEVELS]
        lines.append(f"- {how}: mean AP slice · pixel · case " + " · ".join(f"{np.mean(a):.3f}" if a else "—"
                                                                           for a in aps) + "; " + "; ".join(
            f"{name}: training slices flagged corrupted {_pair(t[0])}, clean {_pair(t[1])}, new cases flagged "
            f"clean {_pair(t[2])}, corrupted {_pair(t[3])}" for (h, name), t in totals.items() if h == how) + ".")
    lines += kind_table(rows)
    if reading:
        lines += ["", reading]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half", choices=[h.value for h in Half], default="dev")
    parser.add_argument("--work", type=Path, default=HERE / "suite_runs" / "full")
    parser.add_argument("--results", action="store_true", help="write the section into bench/RESULTS.md")
    parser.add_argument("--rewrite", action="store_true", help="write the section from the saved figures")
    parser.add_argument("--datasets", help="comma-separated names: measure these again, keep the saved others")
    parser.add_argument("--scores", help="comma-separated scores of SCORES to read (default: all); a held-out half "
                        "is read for the scores that ship and their baselines only, so that a candidate stays "
                        "unread there until it is chosen")
    parser.add_argument("--new-seed", type=int, help="corrupt the new cases again with this seed (suite.py's are "
                        "seed 2) and flag those: the gate on corruptions nothing was read on; printed, saved beside")
    options = parser.parse_args()
    seeded = f"_seed{options.new_seed}" if options.new_seed is not None else ""
    if seeded and (options.results or options.rewrite):
        parser.error("--new-seed is printed and saved beside, not written into RESULTS.md")
    saved = options.work / f"score_gates_{options.half}{seeded}.json"
    if options.rewrite:
        found = json.loads(saved.read_text())
        write_section(HERE / "RESULTS.md", title_of(options.half),
                      section(found["rows"], found["meta"], title_of(options.half),
                              READINGS.get(options.half, "")))
        return
    rows, start = {}, time.perf_counter()
    chosen = set(options.datasets.split(",")) if options.datasets else None
    shown = tuple(options.scores.split(",")) if options.scores else SCORES
    if unknown := [how for how in shown if how not in SCORES]:
        parser.error(f"unknown scores {unknown}; choose from {', '.join(SCORES)}")
    if chosen and saved.exists():
        rows = {cell: row for cell, row in json.loads(saved.read_text())["rows"].items()
                if cell.split("/")[0] not in chosen}
    for dataset in (d for d in DATASETS if d.half.value == options.half and (chosen is None or d.name in chosen)):
        for regime in REGIMES:
            cell = options.work / dataset.name / regime
            row = cell / "row.json"
            if not row.exists() or "stronger" not in json.loads(row.read_text())["methods"]:
                continue
            clean_new, folder = options.work / "data" / dataset.name / "new", "noisy_new"
            if options.new_seed is not None:
                folder = f"noisy_new{seeded}"
                corrupt(clean_new, cell / folder, REGIMES[regime].corrupt_args(dataset.classes, new=True),
                        options.new_seed, cell / "log.txt")
            rows[f"{dataset.name}/{regime}"] = measure(cell, clean_new, shown, folder)
            print(f"{dataset.name}/{regime} done", flush=True)
    if not rows:  # a half whose datasets moved on (the reserve, once read): keep the figures saved for it
        parser.error(f"no cell of the {options.half} half has a standard-preset run under {options.work}; "
                     f"{saved.name} is left as it is")
    meta = (f"Generated {time.strftime('%Y-%m-%d')} on {machine()}, in {time.perf_counter() - start:.0f} s; "
            f"{Half(options.half).title.lower()} half, the standard preset's fits (bench/suite.py --methods "
            f"stronger). Scores: {DESCRIBED} AP on the training set (out-of-fold softmax); new cases scored by "
            "the fold models' ensemble, flagged by `check`'s rule.")
    if seeded:
        meta += f" Corrupted new cases: the new cases corrupted again with seed {options.new_seed} (--new-seed)."
    saved.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = section(rows, meta, title_of(options.half), READINGS.get(options.half, ""))
    print(text)
    if options.results:
        write_section(HERE / "RESULTS.md", title_of(options.half), text)


if __name__ == "__main__":
    main()

"""Slice scores and their thresholds chosen together, on the development half only (defaults are chosen here).

cleanlab's softmin ranks slices better than labelaudit's slice score on the held-out half at the standard preset;
averaged with it, the slice score ranked better on the development half too, but its thresholds (median + k MADs
of the training slices) reached their ceiling of 1 and nothing was flagged (docs/decisions.md). A score is only
worth shipping with a threshold rule that works on it, so this script measures both at once: for each
development cell with a standard-preset run, each candidate score of the same probabilities

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

from suite import oof_cases, truth_of

from labelaudit.formats.manifest import read_manifest
from labelaudit.score import calibrate
from labelaudit.score.decide import decide
from labelaudit.score.formulas import (REGION_SHARE, case_noise_score, given_class_probability, normalised_entropy,
                                       pixel_noise_score, roi_radius, slice_stats)
from labelaudit.score.inference import dataset_probabilities
from labelaudit.config import PixelScore
from labelaudit.types import Threshold, ThresholdSource

HERE = Path(__file__).resolve().parent
TITLE = "## Slice scores with their thresholds (`python bench/score_gates.py`)"
LEVELS = ("slice", "pixel", "case")
SCORES = ("landed", "softmin", "mean", "product", "geo")


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


def score_cases(cases: list[CaseData], median_mm2: float) -> dict[str, Scored]:
    """Every score of SCORES on the same probabilities: landed (max(F, R), A₀ = 0.5 × the median area), softmin,
    mean (of max(F, R) at A₀ = 0.1 × the median and softmin), product (landed × softmin) and geo (their geometric
    mean). median_mm2: the training labels' median area (fit measures A₀ there, once)."""
    out = {how: Scored({}, {}, {}, []) for how in SCORES}
    for case in cases:
        p_given = given_class_probability(case.prob, case.classes)
        unc = normalised_entropy(case.prob)
        pred = case.prob.argmax(axis=1)
        noise = pixel_noise_score(p_given, unc, PixelScore.CONFIDENT_DISAGREEMENT)
        wrong = pixel_noise_score(p_given, unc, PixelScore.DISAGREEMENT)

        def ours(prior: float) -> np.ndarray:
            eps = max(1.0, prior * median_mm2 / (case.spacing[0] * case.spacing[1]))
            return slice_stats(noise, case.classes, pred, case.prob.shape[1], roi_radius(case.spacing), eps,
                               REGION_SHARE).noise_score.astype(np.float64)

        landed, soft = ours(0.5), _softmin(case)
        scores = {"landed": landed, "softmin": soft, "mean": (ours(0.1) + soft) / 2, "product": landed * soft,
                  "geo": np.sqrt(landed * soft)}
        has = ((case.classes != 0) | (pred != 0)).reshape(len(landed), -1).any(axis=1)
        for how, values in scores.items():
            scored = out[how]
            for i, value in enumerate(values):
                scored.slices[(case.case_id, i)] = float(value)
                scored.structure[(case.case_id, i)] = bool(has[i])
            scored.cases[case.case_id] = case_noise_score(values)
            scored.pixels.append((wrong * values[:, None, None]).reshape(-1).astype(np.float32))
    return out


#: What the development half's figures of 2026-12-02 said (kept with the table it reads).
READING = """What this says (development half, nine cells, the standard preset; nothing was changed):

- **No candidate keeps softmin's ranking and a threshold that flags.** softmin and the mean with it reach the
  ceiling of 1 under median + k MADs in every cell (mean: 43 of 600 corrupted training slices flagged, 0 of 67
  corrupted new cases); on logit scores they flag some training slices (130 of 600) but the gate catches 10 of
  67 corrupted new cases against the landed score's 38. Softmin puts the clean training slices with structure
  at 0.76–0.90 (brain_wm slice regime, 10th–90th percentile; ct_liver 0.72–0.93) and the corrupted ones at
  0.86–0.97 (0.93–0.99): a few uncertain boundary pixels dominate a softmin, so the clean bulk sits just below
  the corrupted one, at the top of the scale, with no room above it for k MADs.
- **The product and the geometric mean with softmin are thresholdable but add nothing**: product 0.818 /
  0.745 / 0.881 mean AP (slice / pixel / case) against the landed 0.817 / 0.746 / 0.884, with the same gate
  (0/72 clean, 38/67 corrupted); geo ties the APs and its gate catches 16 of 67.
- **On this half softmin alone ranks below the landed score** (0.804 / 0.708 / 0.799), while on the held-out
  half it ranks slices better: the halves disagree, so no change chosen here would be expected to carry.
- **ct_lesion saturates at 1 under every score and rule**: the model does not segment its lesions well enough
  (clean training slices where label and prediction both have a lesion score a median 0.54, corrupted ones
  0.81). Where landed misses a corruption on ct_liver's structure regime it is a spurious blob of 13 px,
  which A₀ (half the median labelled area, the liver's) shrinks to a score of 0.10 (softmin 0.94).
- The reserve half (ct_lesion_fine) was fit and left unread: nothing was chosen here to report on it."""


LOW, HIGH = 1e-3, 1 - 1e-3


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOW, HIGH)
    return np.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return float(1 / (1 + np.exp(-z)))


def mad_rule(k: float, gate_k: float, scale: str) -> Callable[[np.ndarray, np.ndarray], Threshold]:
    """median + k · 1.4826 · MAD of the training slices with structure (and of the cases), on the scores
    (`scale` raw) or on their logits (`scale` logit), mapped back to scores."""
    def rule(slices: np.ndarray, cases: np.ndarray) -> Threshold:
        if scale == "raw":
            return calibrate.threshold_from_scores(slices, cases, k=k, gate_k=gate_k)

        def at(values: np.ndarray, kk: float) -> float:
            z = _logit(values)
            med = float(np.median(z))
            return max(calibrate.THRESHOLD_FLOOR, _sigmoid(med + kk * calibrate.MAD_SCALE
                                                           * float(np.median(np.abs(z - med)))))
        sl = at(slices, k)
        case = at(cases, k) if calibrate.case_rule_applies(len(cases)) else sl
        return Threshold(sl, case, ThresholdSource.RUN, gate=max(sl, at(slices, gate_k)))
    return rule


RULES = {"MAD 3/6": mad_rule(3, 6, "raw"), "logit MAD 3/6": mad_rule(3, 6, "logit")}


def _gate(scored: Scored, threshold: Threshold, only: set[str] | None = None) -> list[int]:
    per_case: dict[str, list[float]] = {}
    for (case_id, _), value in scored.slices.items():
        per_case.setdefault(case_id, []).append(value)
    verdicts = [decide(scored.cases[c], v, threshold).flagged for c, v in per_case.items() if only is None or c in only]
    return [int(sum(verdicts)), len(verdicts)]


def measure(cell: Path, clean_new: Path) -> dict:
    run_dir = cell / "runs" / "stronger"
    manifest = read_manifest(cell / "noisy" / "corruption.json")
    order = sorted(manifest.cases)
    truth = truth_of(cell / "noisy", manifest.source, order)
    train = oof_cases(run_dir, cell / "noisy")
    assert [c.case_id for c in train] == order
    median = median_area_mm2(train)
    new = {"clean": oof_cases(run_dir, clean_new, out_of_fold=False),
           "noisy": oof_cases(run_dir, cell / "noisy_new", out_of_fold=False)}
    corrupted_new = {c for c, t in read_manifest(cell / "noisy_new" / "corruption.json").cases.items()
                     if any(t.slices.values())}
    found = {}
    all_train = score_cases(train, median)
    all_new = {name: score_cases(cases_, median) for name, cases_ in new.items()}
    for how in SCORES:
        scored = all_train[how]
        signal = Signal(how, scored.slices, scored.cases, scored.pixels)
        levels = {lv: (None if s.ap is None else float(s.ap)) for lv, s in level_scores(signal, truth).items()}
        keys = [k for k in scored.slices if scored.structure[k]]
        slices = np.array([scored.slices[k] for k in keys])
        corrupted = np.array([truth.slices.get(k, False) for k in keys])
        cases = np.array([scored.cases[c] for c in order])
        new_scored = {name: found_[how] for name, found_ in all_new.items()}
        rules = {}
        for name, rule in RULES.items():
            t = rule(slices, cases)
            flags = slices >= t.slice
            rules[name] = {"slice": t.slice, "case": t.case, "gate": t.worst_slice,
                           "corrupted_slices": [int((flags & corrupted).sum()), int(corrupted.sum())],
                           "clean_slices": [int((flags & ~corrupted).sum()), int((~corrupted).sum())],
                           "false_alarms": _gate(new_scored["clean"], t),
                           "detections": _gate(new_scored["noisy"], t, corrupted_new)}
        found[how] = {"ap": levels, "rules": rules}
    found["dice_new"] = float(np.mean([dice_per_case(c.prob.argmax(axis=1), c.classes, c.prob.shape[1] - 1)
                                       for c in new["clean"]]))  # the ensemble's prediction on clean new cases
    return found


def _pair(p) -> str:
    return f"{p[0]}/{p[1]}"


def section(rows: dict[str, dict], meta: str, reading: str = "") -> str:
    lines = [TITLE, "", meta, "", "| cell | score | AP slice · pixel · case | rule | slice / case / gate "
             "thresholds | corrupted / clean training slices flagged | clean new cases flagged | corrupted new cases "
             "flagged |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    totals: dict[tuple[str, str], list[list[int]]] = {}
    for cell, found in rows.items():
        for how in SCORES:
            entry = found[how]
            ap = " · ".join("—" if (v := entry["ap"].get(lv)) is None or np.isnan(v) else f"{v:.3f}"
                            for lv in LEVELS)
            for name, m in entry["rules"].items():
                lines.append(f"| {cell} | {how} | {ap} | {name} | {m['slice']:.3f} / {m['case']:.3f} / "
                             f"{m['gate']:.3f} | {_pair(m['corrupted_slices'])} · {_pair(m['clean_slices'])} | "
                             f"{_pair(m['false_alarms'])} | {_pair(m['detections'])} |")
                t = totals.setdefault((how, name), [[0, 0] for _ in range(4)])
                for pair, key in zip(t, ("corrupted_slices", "clean_slices", "false_alarms", "detections")):
                    pair[0] += m[key][0]
                    pair[1] += m[key][1]
    lines.append("")
    for how in SCORES:
        aps = [[v for e in rows.values() if (v := e[how]["ap"].get(lv)) is not None and not np.isnan(v)]
               for lv in LEVELS]
        lines.append(f"- {how}: mean AP slice · pixel · case " + " · ".join(f"{np.mean(a):.3f}" if a else "—"
                                                                           for a in aps) + "; " + "; ".join(
            f"{name}: training slices flagged corrupted {_pair(t[0])}, clean {_pair(t[1])}, new cases flagged "
            f"clean {_pair(t[2])}, corrupted {_pair(t[3])}" for (h, name), t in totals.items() if h == how) + ".")
    if reading:
        lines += ["", reading]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half", choices=[h.value for h in Half], default="dev")
    parser.add_argument("--work", type=Path, default=HERE / "suite_runs" / "full")
    parser.add_argument("--results", action="store_true", help="write the section into bench/RESULTS.md")
    parser.add_argument("--rewrite", action="store_true", help="write the section from the saved figures")
    options = parser.parse_args()
    saved = options.work / f"score_gates_{options.half}.json"
    if options.rewrite:
        found = json.loads(saved.read_text())
        write_section(HERE / "RESULTS.md", TITLE, section(found["rows"], found["meta"], READING))
        return
    rows, start = {}, time.perf_counter()
    for dataset in (d for d in DATASETS if d.half.value == options.half):
        for regime in REGIMES:
            cell = options.work / dataset.name / regime
            row = cell / "row.json"
            if not row.exists() or "stronger" not in json.loads(row.read_text())["methods"]:
                continue
            rows[f"{dataset.name}/{regime}"] = measure(cell, options.work / "data" / dataset.name / "new")
            print(f"{dataset.name}/{regime} done", flush=True)
    meta = (f"Generated {time.strftime('%Y-%m-%d')} on {machine()}, in {time.perf_counter() - start:.0f} s; "
            f"{Half(options.half).title.lower()} half, the standard preset's fits (bench/suite.py --methods "
            "stronger). Scores: landed = max(F, R) with A₀ = 0.5 × the median area; softmin = cleanlab's; mean = "
            "(max(F, R) at A₀ = 0.1 × the median + softmin) / 2; product = landed × softmin; geo = its square "
            "root. AP on the training set (out-of-fold softmax); new cases scored by the fold models' ensemble, "
            "flagged by `check`'s rule.")
    saved.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = section(rows, meta, READING if options.half == "dev" else "")
    print(text)
    if options.results:
        write_section(HERE / "RESULTS.md", TITLE, text)


if __name__ == "__main__":
    main()

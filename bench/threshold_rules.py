"""Calibration rules on the audit-quality suite: which thresholds each rule derives, and what they flag.

For every cell of bench/suite.py, from the audits it keeps (nothing is fit or scored again), each candidate rule
derives the slice, case and gate thresholds from the cell's out-of-fold training audit, as `fit` would; then:

- training slices flagged: how many of the corrupted and of the clean ones (what `fix` mends, what a reviewer
  reads), against the corruption manifest;
- new cases flagged by `check`'s rule (score/decide.py): clean ones (false alarms; the audit-quality issue asks
  for at most 1 in 20) and corrupted ones (detections; at least half).

Rules are chosen on the development half; the other halves are only reported (--half), after the choice.

    python bench/threshold_rules.py                  # the development half
    python bench/threshold_rules.py --results        # and write the section into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pint_audit import machine, write_section
from suite_data import DATASETS, Half
from suite_gate import flagged_by_case, read_rows

from labelaudit.formats.manifest import read_manifest
from labelaudit.score import calibrate
from labelaudit.types import Threshold, ThresholdSource

HERE = Path(__file__).resolve().parent
TITLE = "## Calibration rules on the audit-quality suite (`python bench/threshold_rules.py`)"
METHOD = "stronger"  # fit's default, the standard preset


@dataclass(frozen=True)
class TrainingScores:
    slices: np.ndarray  # float (N,): the training slices with structure, out-of-fold
    corrupted: np.ndarray  # bool (N,)
    cases: np.ndarray  # float (M,)
    slices_per_case: float  # median count of slices with structure per case


def training_scores(cell: Path) -> TrainingScores:
    manifest = read_manifest(cell / "noisy" / "corruption.json")
    truth = {(c, int(i)): bool(v) for c, t in manifest.cases.items() for i, v in t.slices.items()}
    kept = [r for r in read_rows(cell / "audits" / METHOD / "slices.csv")
            if calibrate.counts_for_calibration(int(r["label_pixels"]), int(r["pred_pixels"]))]
    per_case: dict[str, int] = {}
    for r in kept:
        per_case[r["case_id"]] = per_case.get(r["case_id"], 0) + 1
    cases = read_rows(cell / "audits" / METHOD / "cases.csv")
    return TrainingScores(np.array([float(r["noise_score"]) for r in kept]),
                          np.array([truth.get((r["case_id"], int(r["slice_index"])), False) for r in kept]),
                          np.array([float(r["noise_score"]) for r in cases]),
                          float(np.median(list(per_case.values()))) if per_case else 1.0)


Rule = Callable[[TrainingScores], Threshold]


def today(scores: TrainingScores) -> Threshold:
    """fit's calibration of the standard preset (score/calibrate.py)."""
    return calibrate.threshold_from_scores(scores.slices, scores.cases)


LOW, HIGH = 0.005, 0.995  # logit candidates: scores clipped so that 0 and 1 stay finite


def logit(p):
    p = np.clip(p, LOW, HIGH)
    return np.log(p / (1 - p))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def two_normals(z: np.ndarray, iterations: int = 300):
    """EM of a two-component normal mixture on z: (weights, means, sds), the lower mean first."""
    from scipy.stats import norm
    mu = np.percentile(z, [25, 75]).astype(float)
    sd = np.full(2, max(z.std(), 1e-2))
    w = np.array([0.5, 0.5])
    for _ in range(iterations):
        dens = w[:, None] * norm.pdf(z[None], mu[:, None], sd[:, None]) + 1e-300
        resp = dens / dens.sum(axis=0)
        n = resp.sum(axis=1) + 1e-12
        w = n / n.sum()
        mu = (resp * z).sum(axis=1) / n
        sd = np.sqrt(np.maximum((resp * (z - mu[:, None]) ** 2).sum(axis=1) / n, 1e-4))
    order = np.argsort(mu)
    return w[order], mu[order], sd[order]


def mixture(alpha_case: float = 0.05):
    """DivideMix's split of clean from noisy: two normals on logit scores; slices flagged where the noisy one is
    the likelier, the gate at the clean one's quantile 1 − alpha_case / (slices per case)."""
    def rule(s: TrainingScores) -> Threshold:
        from scipy.stats import norm
        z = logit(s.slices)
        w, mu, sd = two_normals(z)
        grid = np.linspace(mu[0], z.max(), 2000)
        noisy = w[1] * norm.pdf(grid, mu[1], sd[1])
        post = noisy / (w[0] * norm.pdf(grid, mu[0], sd[0]) + noisy + 1e-300)
        above = grid[post >= 0.5]
        t_slice = above[0] if above.size else z.max()
        t_gate = mu[0] + sd[0] * norm.ppf(1 - alpha_case / max(s.slices_per_case, 1))
        sl = max(calibrate.THRESHOLD_FLOOR, float(sigmoid(t_slice)))
        gate = max(sl, float(sigmoid(t_gate)))
        case = today(s).case
        return Threshold(sl, case, ThresholdSource.RUN, gate=gate)
    return rule


def logit_mad(k: float, gate_k: float):
    """The median and MAD rule on logit scores (the slice and gate thresholds), today's case threshold."""
    def rule(s: TrainingScores) -> Threshold:
        z = logit(s.slices)
        med = np.median(z)
        mad = np.median(np.abs(z - med)) * calibrate.MAD_SCALE
        sl = max(calibrate.THRESHOLD_FLOOR, float(sigmoid(med + k * mad)))
        gate = max(sl, float(sigmoid(med + gate_k * mad)))
        return Threshold(sl, today(s).case, ThresholdSource.RUN, gate=gate)
    return rule


def median_mad(gate_k: float, case_threshold: bool = True):
    """Today's rule with the gate at `gate_k` MADs; without `case_threshold`, cases are flagged by their worst
    slice alone."""
    def rule(s: TrainingScores) -> Threshold:
        t = calibrate.threshold_from_scores(s.slices, s.cases, gate_k=gate_k)
        return Threshold(t.slice, t.case if case_threshold else 1.0 + 1e-9, ThresholdSource.RUN, gate=t.gate)
    return rule


RULES: dict[str, Rule] = {
    "gate 8 (the rule before)": median_mad(8.0),
    "gate 6 (today)": today,
    "gate 5": median_mad(5.0),
    "gate 4": median_mad(4.0),
    "gate 8, no case threshold": median_mad(8.0, case_threshold=False),
    "gate 5, no case threshold": median_mad(5.0, case_threshold=False),
    "mixture, posterior 0.5": mixture(),
    "logit MAD 3/5": logit_mad(3, 5),
}


def flagged_cases(audit: Path, threshold: Threshold, only: set[str] | None = None) -> tuple[int, int]:
    """(cases flagged by `threshold`, cases) of an audit, among `only` where given."""
    verdicts = [v[0] for c, v in flagged_by_case(audit, threshold).items() if only is None or c in only]
    return sum(verdicts), len(verdicts)


def measure(cell: Path, rule: Rule) -> dict:
    scores = training_scores(cell)
    threshold = rule(scores)
    flags = scores.slices >= threshold.slice
    corrupted_new = {c for c, t in read_manifest(cell / "noisy_new" / "corruption.json").cases.items()
                     if any(t.slices.values())}
    return {"slice": threshold.slice, "case": threshold.case, "gate": threshold.worst_slice,
            "corrupted_slices": [int((flags & scores.corrupted).sum()), int(scores.corrupted.sum())],
            "clean_slices": [int((flags & ~scores.corrupted).sum()), int((~scores.corrupted).sum())],
            "false_alarms": flagged_cases(cell / "audits" / f"{METHOD}_new_clean", threshold),
            "detections": flagged_cases(cell / "audits" / f"{METHOD}_new_noisy", threshold, corrupted_new)}


def _share(pair) -> str:
    return f"{pair[0]}/{pair[1]}" if pair[1] else "—"


def section(results: list[tuple[Half, str, str, str, dict]], work: Path) -> str:
    lines = [TITLE, "", f"Generated {dt.date.today().isoformat()} on {machine()}, from the audits of fit's default "
             f"(the standard preset) under {work.relative_to(HERE) if work.is_relative_to(HERE) else work} "
             "(nothing fit or scored again). Training slices flagged at the slice threshold (what `fix` mends); "
             "new cases flagged by `check`'s rule: its score at `case` or its worst slice at `gate`.", ""]
    for half in Half:
        part = [r for r in results if r[0] is half]
        if not part:
            continue
        names = ", ".join(dict.fromkeys(r[1] for r in part))  # the datasets whose audits are here
        lines += [f"**{half.title} half** ({names}{'' if half is Half.DEV else '; read after the choice'})", "",
                  "| dataset | regime | rule | slice / case / gate | corrupted training "
                  "slices flagged | clean training slices flagged | clean new cases flagged | corrupted new cases "
                  "flagged |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        totals: dict[str, dict[str, list[int]]] = {}
        for _, name, regime, rule, m in part:
            lines.append(f"| {name} | {regime} | {rule} | {m['slice']:.3f} / {m['case']:.3f} / {m['gate']:.3f} | "
                         f"{_share(m['corrupted_slices'])} | {_share(m['clean_slices'])} | "
                         f"{_share(m['false_alarms'])} | {_share(m['detections'])} |")
            total = totals.setdefault(rule, {k: [0, 0] for k in ("corrupted_slices", "clean_slices", "false_alarms",
                                                                   "detections")})
            for key, pair in total.items():
                pair[0] += m[key][0]
                pair[1] += m[key][1]
        lines.append("")
        for rule, t in totals.items():
            lines.append(f"- {rule}, all cells: corrupted training slices flagged {_share(t['corrupted_slices'])}, "
                         f"clean {_share(t['clean_slices'])}; clean new cases flagged {_share(t['false_alarms'])}, "
                         f"corrupted {_share(t['detections'])}.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half", choices=[h.value for h in Half] + ["all"], default="dev")
    parser.add_argument("--work", type=Path, default=HERE / "suite_runs" / "full")
    parser.add_argument("--results", action="store_true", help="write the section into bench/RESULTS.md")
    args = parser.parse_args()
    results = []
    for dataset in DATASETS:
        if args.half not in ("all", dataset.half.value) or (args.half == "all" and not dataset.half.reported):
            continue
        for cell in sorted((args.work / dataset.name).glob("*")):
            if not (cell / "audits" / f"{METHOD}_new_noisy" / "cases.csv").is_file():
                continue
            for rule_name, rule in RULES.items():
                results.append((dataset.half, dataset.name, cell.name, rule_name, measure(cell, rule)))
    text = section(results, args.work)
    print(text)
    if args.results:
        write_section(HERE / "RESULTS.md", TITLE, text)


if __name__ == "__main__":
    main()

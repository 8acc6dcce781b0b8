"""Which noise-score formulas rank corrupted annotations best? Measured on a fitted run, no retraining.

Runs the run's ONNX graphs once per case (out-of-fold routing, as `score` does), keeps p̄ (mean class
probabilities over the perturbations), ũ (normalised entropy) and the given label, and evaluates candidate
pixel formulas and slice aggregations against a corruption manifest (slice AP / AUROC, pixel AP).

    python bench/score_formulas.py RUN_DIR NOISY_DATASET   # NOISY_DATASET/corruption.json is the truth

The candidates:
  pixel   conf     s = (1 - p̄_y)(1 - ũ)          confident disagreement (PINT §6.2)
          disagree s = 1 - p̄_y
          hard     s = 1[argmax p̄ ≠ y] (1 - ũ)    confident, thresholded disagreement
  slice   ratio    Σ_ROI s / (|y ∪ ŷ| + 1)                    (expected mislabelled fraction)
          shrunk   Σ_ROI s / (|y ∪ ŷ| + A₀), A₀ = median |y ∪ ŷ| over the dataset's slices with structure
          area     Σ_ROI s (pixels)                           (absolute mislabelled area)
          dice     1 - Dice(y, ŷ)                             (plain disagreement; the baseline)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from labelaudit import io
from labelaudit.data import discover_dataset
from labelaudit.evaluate.metrics import ranking_scores
from labelaudit.formats.manifest import read_manifest
from labelaudit.score.formulas import (class_counts, dice_disagreement, given_class_probability, region_of_interest,
                                       roi_radius)
from labelaudit.score.inference import dataset_probabilities

PIXEL = {
    "conf": lambda py, u, wrong: (1 - py) * (1 - u),
    "disagree": lambda py, u, wrong: 1 - py,
    "hard": lambda py, u, wrong: wrong * (1 - u),
}


def collect(run_dir: Path, dataset_dir: Path):
    """Per slice: (case, index, p̄_y, ũ, wrong, label classes, pred, radius, classes) at native resolution."""
    labels = {ref.case_id: ref.label_path for ref in discover_dataset(dataset_dir).cases}
    out = []
    for case in dataset_probabilities(run_dir, dataset_dir, device="cpu", out_of_fold=True):
        classes, prob, unc = case.classes, case.prob, case.uncertainty
        pred = prob.argmax(axis=1)
        py = given_class_probability(prob, classes)
        radius = roi_radius(io.read_geometry(labels[case.case_id]).in_plane_spacing())
        num_classes = prob.shape[1]
        for i in range(len(classes)):
            out.append((case.case_id, i, py[i], unc[i], (pred[i] != classes[i]).astype(np.float32), classes[i],
                        pred[i], radius, num_classes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("dataset", type=Path)
    args = parser.parse_args()
    manifest = read_manifest(args.dataset / "corruption.json")
    slices = collect(args.run_dir, args.dataset)
    truth = np.array([manifest.cases[c].slices[i] for c, i, *_ in slices])
    unions = np.array([((y != 0) | (p != 0)).sum() for *_, y, p, _r, _k in slices], dtype=np.float64)
    a0 = float(np.median(unions[unions > 0])) if (unions > 0).any() else 1.0
    dice = np.array([float(dice_disagreement(class_counts(y[None], p[None], k))[0])
                     for *_, y, p, _r, k in slices])
    print(f"{len(slices)} slices, {int(truth.sum())} corrupted; A0 = {a0:.0f} px")
    print(f"{'pixel':9} {'slice':7} {'AP':>6} {'AUROC':>6}")
    r = ranking_scores(dice, truth)
    print(f"{'-':9} {'dice':7} {r.ap:6.3f} {r.auroc:6.3f}")
    for name, formula in PIXEL.items():
        sums = []
        for _c, _i, py, u, wrong, y, p, radius, _k in slices:
            s = formula(py, u, wrong)
            roi = region_of_interest(y[None], p[None], radius)[0]
            sums.append(float(s[roi].sum()))
        sums = np.array(sums)
        for agg, scores in (("ratio", np.where(unions > 0, sums / (unions + 1), 0)),
                            ("shrunk/4", np.where(unions > 0, sums / (unions + a0 / 4), 0)),
                            ("shrunk/2", np.where(unions > 0, sums / (unions + a0 / 2), 0)),
                            ("shrunk", np.where(unions > 0, sums / (unions + a0), 0)),
                            ("area", sums)):
            r = ranking_scores(scores, truth)
            print(f"{name:9} {agg:7} {r.ap:6.3f} {r.auroc:6.3f}")
            if name == "conf" and agg == "shrunk/2":
                chosen = scores
    structured = unions > 0
    bulk = chosen[structured]
    print("threshold rules on conf/shrunk/2 (slices with structure): rule, threshold, clean flagged, corrupted flagged")
    med, mad = np.median(bulk), np.median(np.abs(bulk - np.median(bulk)))
    logs = np.log(np.maximum(bulk, 1e-6))
    lmed, lmad = np.median(logs), np.median(np.abs(logs - np.median(logs)))
    rules = {"median+3mad": med + 3 * 1.4826 * mad, "log median+3mad": float(np.exp(lmed + 3 * 1.4826 * lmad)),
             "log median+2mad": float(np.exp(lmed + 2 * 1.4826 * lmad)), "q90": float(np.quantile(bulk, 0.9))}
    for rule, t in rules.items():
        flagged = chosen >= t
        print(f"  {rule:18} {t:6.3f} {flagged[structured & ~truth].mean():6.3f} {flagged[truth].mean():6.3f}")


if __name__ == "__main__":
    main()

"""The baselines a user would pick instead of labelaudit, scored on the same data and runs.

1. plain U-Net's own disagreement: 1 − Dice(prediction, label) per slice, read from a plain audit's
   slices.csv (`disagreement` column), i.e. `bench/pint_audit.disagreement_baseline`;
2. cleanlab's segmentation label-quality score (`cleanlab.segmentation.rank.get_label_quality_scores`,
   method "softmin") on the OUT-OF-FOLD class probabilities of the same plain U-Net: a `fit --folds K`
   run, each case run through the fold model that held it out (as `score` routes it). cleanlab's score is
   LOW for a likely wrong label; the noise score is 1 − score, per slice (cleanlab's "image" = one slice).

cleanlab is an optional benchmark dependency (the `dev` extra), imported only here.

    python bench/baselines.py RUN_DIR NOISY_DATASET [AUDIT_DIR]   # NOISY_DATASET/corruption.json is the truth
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelaudit.evaluate.metrics import ranking_scores
from labelaudit.formats.manifest import Manifest, read_manifest
from labelaudit.score.inference import dataset_probabilities


@dataclass(frozen=True)
class BaselineResult:
    """Slice-level ranking quality of one baseline: AP and AUROC against the manifest (NaN when undefined)."""

    name: str
    ap: float
    auroc: float
    slices: int
    corrupted: int


def slice_truth(manifest: Manifest, keys: list[tuple[str, int]]) -> np.ndarray:
    """bool (N,): whether each (case_id, slice_index) is corrupted according to the manifest."""
    return np.array([manifest.cases[case].slices[index] for case, index in keys], dtype=bool)


def rank(name: str, scores: dict[tuple[str, int], float], manifest: Manifest) -> BaselineResult:
    """AP/AUROC of per-slice noise scores (higher = more likely wrong) against the manifest."""
    keys = sorted(scores)
    truth = slice_truth(manifest, keys)
    result = ranking_scores(np.array([scores[k] for k in keys], dtype=np.float64), truth)
    return BaselineResult(name, result.ap, result.auroc, len(keys), int(truth.sum()))


def disagreement_scores(audit_dir: Path) -> dict[tuple[str, int], float]:
    """Baseline 1: the plain model's 1 − Dice(prediction, label) per slice, from audit_dir/slices.csv."""
    import csv

    with (Path(audit_dir) / "slices.csv").open() as handle:
        return {(row["case_id"], int(row["slice_index"])): float(row["disagreement"])
                for row in csv.DictReader(handle)}


def cleanlab_noise_scores(labels: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Baseline 2 on one stack: labels int (N, H, W) class indices, prob float (N, K, H, W) -> float64 (N,).

    1 − cleanlab's softmin label-quality score, so that higher = more likely wrong, like labelaudit's scores.
    """
    from cleanlab.segmentation.rank import get_label_quality_scores

    quality, _ = get_label_quality_scores(labels.astype(np.int64), prob.astype(np.float32), method="softmin",
                                          verbose=False)
    return 1.0 - np.asarray(quality, dtype=np.float64)


def out_of_fold_probabilities(run_dir: Path, dataset_dir: Path):
    """Yield (case_id, labels int64 (S, H, W), prob float32 (S, K, H, W)) at native resolution, each case
    through the fold model(s) that held it out (a `--folds 1` run: the one model, in-sample)."""
    for case in dataset_probabilities(run_dir, dataset_dir, device="cpu", out_of_fold=True):
        # bilinear restoring keeps each class in [0, 1] but not the sum at 1 exactly; cleanlab expects a distribution
        prob = case.prob / np.maximum(case.prob.sum(axis=1, keepdims=True), 1e-12)
        yield case.case_id, case.classes.astype(np.int64), prob.astype(np.float32)


def cleanlab_scores(run_dir: Path, dataset_dir: Path) -> dict[tuple[str, int], float]:
    """Baseline 2 for a whole dataset: {(case_id, slice_index): 1 − cleanlab score}."""
    scores: dict[tuple[str, int], float] = {}
    for case_id, labels, prob in out_of_fold_probabilities(run_dir, dataset_dir):
        for index, value in enumerate(cleanlab_noise_scores(labels, prob)):
            scores[(case_id, index)] = float(value)
    return scores


def baselines(run_dir: Path, dataset_dir: Path, audit_dir: Path | None = None) -> list[BaselineResult]:
    """Both baselines for a plain run (K folds) and its audit of `dataset_dir` (whose corruption.json is the truth)."""
    manifest = read_manifest(Path(dataset_dir) / "corruption.json")
    results = []
    if audit_dir is not None:
        results.append(rank("plain 1−Dice", disagreement_scores(audit_dir), manifest))
    results.append(rank("cleanlab softmin (OOF)", cleanlab_scores(run_dir, dataset_dir), manifest))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("audit_dir", type=Path, nargs="?")
    args = parser.parse_args()
    for r in baselines(args.run_dir, args.dataset, args.audit_dir):
        print(f"{r.name:24} AP {r.ap:.3f}  AUROC {r.auroc:.3f}  ({r.corrupted} of {r.slices} slices corrupted)")


if __name__ == "__main__":
    main()

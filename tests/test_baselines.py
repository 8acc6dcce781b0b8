"""bench/baselines.py: the cleanlab baseline's direction (higher = more likely wrong) and its slice ranking."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from baselines import disagreement_scores, rank  # noqa: E402

from labelaudit.evaluate.evaluate import CaseTruth, Manifest  # noqa: E402


def _probs(classes: np.ndarray, num_classes: int, confidence: float) -> np.ndarray:
    """float32 (N, K, H, W): `confidence` on `classes`, the rest spread over the other classes."""
    prob = np.full((classes.shape[0], num_classes, *classes.shape[1:]), (1 - confidence) / (num_classes - 1),
                   dtype=np.float32)
    np.put_along_axis(prob, classes[:, None], confidence, axis=1)
    return prob


def _manifest(truth: dict[tuple[str, int], bool]) -> Manifest:
    cases: dict[str, dict[int, bool]] = {}
    for (case, index), wrong in truth.items():
        cases.setdefault(case, {})[index] = wrong
    return Manifest(Path("corruption.json"), None, {},
                    {c: CaseTruth(c, any(s.values()), None, Path(f"{c}.nii.gz"), s) for c, s in cases.items()})


def test_cleanlab_scores_rank_wrong_labels_first():
    pytest.importorskip("cleanlab")
    from baselines import cleanlab_noise_scores

    rng = np.random.default_rng(0)
    model = rng.integers(0, 3, size=(6, 16, 16))  # what the model is sure of
    labels = model.copy()
    wrong = np.array([False, True, False, True, False, False])
    labels[1, 4:12, 4:12] = (labels[1, 4:12, 4:12] + 1) % 3  # large error
    labels[3, 6:8, 6:8] = (labels[3, 6:8, 6:8] + 2) % 3  # small error
    scores = cleanlab_noise_scores(labels, _probs(model, 3, 0.9))
    assert scores.shape == (6,) and scores.dtype == np.float64
    assert scores[wrong].min() > scores[~wrong].max()  # 1 − quality: wrong slices score higher
    result = rank("cleanlab", {("c", i): float(s) for i, s in enumerate(scores)},
                  _manifest({("c", i): bool(w) for i, w in enumerate(wrong)}))
    assert result.ap == pytest.approx(1.0) and result.auroc == pytest.approx(1.0)
    assert (result.slices, result.corrupted) == (6, 2)


def test_rank_reads_truth_per_case_and_slice(tmp_path):
    path = tmp_path / "slices.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "slice_index", "disagreement"])
        writer.writerows([["a", 0, 0.9], ["a", 1, 0.1], ["b", 0, 0.2], ["b", 1, 0.8]])
    scores = disagreement_scores(tmp_path)
    assert scores[("b", 1)] == pytest.approx(0.8)
    # b/1 and a/0 are the wrong ones: a perfect ranking; swapping the truth reverses it
    good = rank("1-Dice", scores, _manifest({("a", 0): True, ("a", 1): False, ("b", 0): False, ("b", 1): True}))
    bad = rank("1-Dice", scores, _manifest({("a", 0): False, ("a", 1): True, ("b", 0): True, ("b", 1): False}))
    assert good.ap == pytest.approx(1.0) and good.auroc == pytest.approx(1.0)
    assert bad.auroc == pytest.approx(0.0) and bad.ap < 0.6

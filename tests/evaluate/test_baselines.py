"""bench/baselines.py: the cleanlab baseline's direction (higher = more likely wrong) and its slice ranking;
bench/score_formulas.py: what it collects per slice. Both read the run's output through the public
`labelaudit.score.inference.dataset_probabilities`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from labelaudit.data import discover_dataset, load_case
from labelaudit.formats.manifest import CaseTruth, Manifest
from labelaudit.synth import SynthConfig, write_synth_dataset


@pytest.fixture(scope="module")
def baselines(bench_script):
    return bench_script("baselines")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_run) -> tuple[Path, Path]:
    """3 cases, two folds of oracle models, resampled in-plane (so restoring to the native grid is exercised)."""
    base = tmp_path_factory.mktemp("bench")
    root = write_synth_dataset(base / "Dataset012_Bench",
                               SynthConfig(cases=3, size=(30, 26, 4), spacing=(0.8, 0.9, 3.0), seed=5))
    run = make_run(base / "run", root, folds=[["case_000"], ["case_001", "case_002"]], target_spacing=(1.2, 1.1))
    return run, root


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


def test_cleanlab_scores_rank_wrong_labels_first(baselines):
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    model = rng.integers(0, 3, size=(6, 16, 16))  # what the model is sure of
    labels = model.copy()
    wrong = np.array([False, True, False, True, False, False])
    labels[1, 4:12, 4:12] = (labels[1, 4:12, 4:12] + 1) % 3  # large error
    labels[3, 6:8, 6:8] = (labels[3, 6:8, 6:8] + 2) % 3  # small error
    scores = baselines.cleanlab_noise_scores(labels, _probs(model, 3, 0.9))
    assert scores.shape == (6,) and scores.dtype == np.float64
    assert scores[wrong].min() > scores[~wrong].max()  # 1 − quality: wrong slices score higher
    result = baselines.rank("cleanlab", {("c", i): float(s) for i, s in enumerate(scores)},
                  _manifest({("c", i): bool(w) for i, w in enumerate(wrong)}))
    assert result.ap == pytest.approx(1.0) and result.auroc == pytest.approx(1.0)
    assert (result.slices, result.corrupted) == (6, 2)


def test_rank_reads_truth_per_case_and_slice(tmp_path, baselines):
    path = tmp_path / "slices.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "slice_index", "disagreement"])
        writer.writerows([["a", 0, 0.9], ["a", 1, 0.1], ["b", 0, 0.2], ["b", 1, 0.8]])
    scores = baselines.disagreement_scores(tmp_path)
    assert scores[("b", 1)] == pytest.approx(0.8)
    # b/1 and a/0 are the wrong ones: a perfect ranking; swapping the truth reverses it
    good = baselines.rank("1-Dice", scores, _manifest({("a", 0): True, ("a", 1): False, ("b", 0): False, ("b", 1): True}))
    bad = baselines.rank("1-Dice", scores, _manifest({("a", 0): False, ("a", 1): True, ("b", 0): True, ("b", 1): False}))
    assert good.ap == pytest.approx(1.0) and good.auroc == pytest.approx(1.0)
    assert bad.auroc == pytest.approx(0.0) and bad.ap < 0.6


def test_out_of_fold_probabilities_are_distributions_on_the_native_grid(baselines, tiny_run):
    run, root = tiny_run
    dataset = discover_dataset(root)
    cases = list(baselines.out_of_fold_probabilities(run, root))
    assert [c for c, _, _ in cases] == ["case_000", "case_001", "case_002"]
    for (case_id, labels, prob), ref in zip(cases, dataset.cases):
        native = load_case(ref, dataset).label_slices()
        assert labels.dtype == np.int64 and labels.shape == native.shape and (labels == (native != 0)).all()
        assert prob.dtype == np.float32 and prob.shape == (native.shape[0], 2, *native.shape[1:])
        np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-6)  # renormalised for cleanlab


def test_score_formulas_collects_every_slice(bench_script, tiny_run):
    run, root = tiny_run
    slices = bench_script("score_formulas").collect(run, root)
    assert [(c, i) for c, i, *_ in slices] == [(f"case_{k:03d}", i) for k in range(3) for i in range(4)]
    for _c, _i, py, u, wrong, y, p, radius, k in slices:
        assert py.shape == u.shape == wrong.shape == y.shape == p.shape == (26, 30)
        assert 0 <= py.min() and py.max() <= 1 and k == 2 and len(radius) == 2
        assert ((p != y) == (wrong == 1)).all()

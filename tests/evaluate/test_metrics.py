"""Ranking and segmentation metrics on hand-built cases with known answers, and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from labelaudit.evaluate import metrics

# ----------------------------------------------------------------------------- ranking


def test_perfect_ranking_gives_one():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    truth = np.array([1, 1, 1, 0, 0], dtype=bool)
    assert metrics.average_precision(scores, truth) == 1.0
    assert metrics.auroc(scores, truth) == 1.0
    assert metrics.precision_at_k(scores, truth) == 1.0


def test_reversed_ranking_gives_the_minimum():
    # 2 positives of 5, ranked last: precision 1/4 at recall 1/2, 2/5 at recall 1 -> AP = (1/4 + 2/5) / 2
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    truth = np.array([0, 0, 0, 1, 1], dtype=bool)
    assert metrics.average_precision(scores, truth) == pytest.approx(0.325)
    assert metrics.minimum_average_precision(2, 5) == pytest.approx(0.325)
    assert metrics.auroc(scores, truth) == 0.0
    assert metrics.precision_at_k(scores, truth) == 0.0


def test_ties_count_as_one_threshold():
    # thresholds 0.9 (tp 1, fp 0) and 0.5 (tp 2, fp 1): AP = 1/2·1 + 1/2·2/3
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    truth = np.array([1, 0, 1, 0], dtype=bool)
    assert metrics.average_precision(scores, truth) == pytest.approx(0.5 + 1 / 3)
    # pairs: 0.9 beats both negatives, 0.5 ties one (½) and beats one -> 3.5 / 4
    assert metrics.auroc(scores, truth) == pytest.approx(0.875)
    # k = 2: one positive above the cut, one place left among two tied items of which one is positive
    assert metrics.precision_at_k(scores, truth) == pytest.approx(0.75)


def test_all_tied_scores_give_chance():
    truth = np.array([1, 0, 0, 0, 1, 0, 0, 0], dtype=bool)
    scores = np.full(truth.size, 0.3)
    assert metrics.average_precision(scores, truth) == pytest.approx(0.25)
    assert metrics.auroc(scores, truth) == pytest.approx(0.5)
    assert metrics.precision_at_k(scores, truth) == pytest.approx(0.25)


def test_undefined_ranking_metrics_are_nan():
    scores = np.array([0.1, 0.2, 0.3])
    assert math.isnan(metrics.average_precision(scores, np.zeros(3, bool)))
    assert math.isnan(metrics.auroc(scores, np.zeros(3, bool)))
    assert math.isnan(metrics.auroc(scores, np.ones(3, bool)))
    assert metrics.average_precision(scores, np.ones(3, bool)) == 1.0
    assert math.isnan(metrics.precision_at_k(scores, np.zeros(3, bool)))


def test_bad_ranking_input_is_refused():
    with pytest.raises(ValueError, match="3 items but truth holds 2"):
        metrics.auroc(np.zeros(3), np.zeros(2, bool))
    with pytest.raises(ValueError, match="NaN"):
        metrics.average_precision(np.array([0.1, np.nan]), np.array([True, False]))


@pytest.mark.parametrize("seed", range(6))
def test_matches_scikit_learn_on_random_data(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 3000))
    truth = rng.random(n) < rng.uniform(0.02, 0.6)
    truth[:2] = [True, False]
    # half the runs with heavy ties (scores on a coarse grid), half with a real signal
    scores = np.round(rng.random(n), 1) if seed % 2 else rng.normal(size=n) + truth * rng.uniform(0, 2)
    assert metrics.average_precision(scores, truth) == pytest.approx(
        sklearn_metrics.average_precision_score(truth, scores), abs=1e-12)
    assert metrics.auroc(scores, truth) == pytest.approx(sklearn_metrics.roc_auc_score(truth, scores), abs=1e-12)
    combined = metrics.ranking_scores(scores.astype(np.float32), truth)
    assert combined.ap == pytest.approx(sklearn_metrics.average_precision_score(truth, scores.astype(np.float32)))
    assert combined.positives == combined.k == truth.sum() and combined.total == n


def test_precision_at_k_matches_sorting_without_ties():
    rng = np.random.default_rng(3)
    scores, truth = rng.random(500), rng.random(500) < 0.2
    k = 37
    top = np.argsort(-scores)[:k]
    assert metrics.precision_at_k(scores, truth, k) == pytest.approx(truth[top].mean())


def test_subsampling_is_deterministic_and_close():
    rng = np.random.default_rng(0)
    truth = rng.random(200_000) < 0.05
    scores = rng.normal(size=truth.size) + truth
    full = metrics.auroc(scores, truth)
    a = metrics.auroc(scores, truth, max_items=20_000, seed=1)
    assert a == metrics.auroc(scores, truth, max_items=20_000, seed=1)
    assert a != metrics.auroc(scores, truth, max_items=20_000, seed=2)
    assert a == pytest.approx(full, abs=0.02)
    assert metrics.auroc(scores, truth, max_items=10**7) == full
    assert metrics.subsample_indices(10, None, rng) is None
    index = metrics.subsample_indices(100, 10, np.random.default_rng(0))
    assert index.size == 10 and np.all(np.diff(index) > 0)


# ----------------------------------------------------------------------------- overlap


def test_dice_and_iou_on_hand_masks():
    pred = np.zeros((4, 5), bool)
    truth = np.zeros((4, 5), bool)
    pred[1, 1:5] = True  # 4 pixels
    truth[1, 2:5] = True  # 3 of them overlap
    truth[2, 2:5] = True  # 6 pixels
    assert metrics.dice(pred, truth) == pytest.approx(2 * 3 / 10)
    assert metrics.iou(pred, truth) == pytest.approx(3 / 7)


def test_empty_mask_conventions():
    empty = np.zeros((3, 6, 6), bool)
    full = empty.copy()
    full[1, 2:4, 2:4] = True
    both_empty = metrics.segmentation_scores(empty, empty, (3.0, 1.0, 1.0))
    assert (both_empty.dice, both_empty.iou) == (1.0, 1.0)
    assert math.isnan(both_empty.hd95) and not both_empty.distances_defined
    for pred, truth in ((empty, full), (full, empty)):
        one_empty = metrics.segmentation_scores(pred, truth, (3.0, 1.0, 1.0))
        assert (one_empty.dice, one_empty.iou) == (0.0, 0.0)
        assert math.isnan(one_empty.hd95) and math.isnan(one_empty.assd) and math.isnan(one_empty.asd)
    same = metrics.segmentation_scores(full, full, (3.0, 1.0, 1.0))
    assert (same.dice, same.iou, same.hd95, same.assd, same.asd) == (1.0, 1.0, 0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- distances


def _planes(shape, axis, positions):
    mask = np.zeros(shape, bool)
    for p in positions:
        index = [slice(None)] * len(shape)
        index[axis] = p
        mask[tuple(index)] = True
    return mask


@pytest.mark.parametrize("axis, spacing, expected", [
    (0, (2.5, 0.7, 0.9), 7.5),  # 3 voxels apart along an axis of 2.5 mm
    (1, (2.5, 0.7, 0.9), 2.1),
    (2, (2.5, 0.7, 0.9), 2.7),
])
def test_distances_respect_anisotropic_spacing(axis, spacing, expected):
    shape = (10, 9, 8)
    pred, truth = _planes(shape, axis, [2]), _planes(shape, axis, [5])
    scores = metrics.segmentation_scores(pred, truth, spacing)
    assert scores.hd95 == pytest.approx(expected)
    assert scores.assd == pytest.approx(expected)
    assert scores.asd == pytest.approx(expected)
    assert metrics.hd95(pred, truth, spacing) == pytest.approx(expected)
    assert scores.dice == 0.0


def test_directed_and_symmetric_distances_differ():
    # the prediction finds one of two planes: its own surface is on the truth (ASD 0),
    # the missed plane is 6 mm away (ASSD = (0 + mean(0, 6)) / 2 = 1.5, HD95 = 6)
    shape = (12, 5, 5)
    pred, truth = _planes(shape, 0, [2]), _planes(shape, 0, [2, 8])
    scores = metrics.segmentation_scores(pred, truth, (1.0, 1.0, 1.0))
    assert scores.asd == 0.0
    assert scores.assd == pytest.approx(1.5)
    assert scores.hd95 == pytest.approx(6.0)
    assert metrics.asd(truth, pred, (1.0, 1.0, 1.0)) == pytest.approx(3.0)


def _brute_force(a, b, spacing):
    """Directed surface distances by pairwise distances between surface voxel centres."""
    structure = ndimage.generate_binary_structure(a.ndim, 1)
    surface_a = a & ~ndimage.binary_erosion(a, structure, border_value=0)
    surface_b = b & ~ndimage.binary_erosion(b, structure, border_value=0)
    pa, pb = np.argwhere(surface_a) * spacing, np.argwhere(surface_b) * spacing
    d = cdist(pa, pb)
    return d.min(axis=1), d.min(axis=0)


@pytest.mark.parametrize("seed", range(3))
def test_surface_distances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    spacing = np.array([3.0, 0.8, 1.1])
    shape = (7, 20, 18)
    a = ndimage.binary_dilation(rng.random(shape) < 0.01, iterations=2)
    b = ndimage.binary_dilation(rng.random(shape) < 0.01, iterations=2)
    a[0, 0, 0] = True  # touches the array border: border voxels count as surface
    got_ab, got_ba = metrics.surface_distances(a, b, spacing)
    want_ab, want_ba = _brute_force(a, b, spacing)
    np.testing.assert_allclose(np.sort(got_ab), np.sort(want_ab), atol=1e-9)
    np.testing.assert_allclose(np.sort(got_ba), np.sort(want_ba), atol=1e-9)


def test_two_d_masks_and_bad_spacing():
    pred, truth = _planes((6, 7), 0, [1]), _planes((6, 7), 0, [4])
    assert metrics.assd(pred, truth, (0.5, 2.0)) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="does not fit a 2D mask"):
        metrics.assd(pred, truth, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.dice(pred, pred[:3])

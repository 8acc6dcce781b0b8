"""The slice ranking (score/ranking.py): the softmin score is cleanlab's, the blend keeps the thresholds'
meaning on the training slices, and the tables travel through run.json and every scoring path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labelaudit.config import ScoreConfig
from labelaudit.errors import LabelauditError
from labelaudit.formats.run import load_run
from labelaudit.score.calibrate import calibrate_run, threshold_from_scores
from labelaudit.score.formulas import given_class_probability, softmin_noise
from labelaudit.score.pipeline import score_dataset
from labelaudit.score.ranking import (MAX_TABLE, RANKING_RULE, SliceOrder, ranked_scores, ranking_from_scores,
                                      ranking_of)
from labelaudit.synth import SynthConfig, write_synth_dataset


FOLDS = [["case_000", "case_001", "case_002"], ["case_003", "case_004", "case_005"]]


@pytest.fixture(scope="module")
def data3d(tmp_path_factory):
    return write_synth_dataset(tmp_path_factory.mktemp("rank") / "Dataset003_Synth",
                               SynthConfig(cases=6, size=(6, 36, 40), spacing=(3.0, 0.9, 0.8), seed=1))


def test_the_softmin_score_is_cleanlabs():
    rank = pytest.importorskip("cleanlab.segmentation.rank")
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, (6, 3, 9, 11))
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    classes = rng.integers(0, 3, (6, 9, 11))
    quality, _ = rank.get_label_quality_scores(classes, prob, method="softmin", verbose=False)
    ours = softmin_noise(given_class_probability(prob, classes))
    np.testing.assert_allclose(ours, 1.0 - quality, atol=1e-6)
    # one confidently wrong pixel among confident ones dominates, whatever the slice's size
    p = np.full((2, 64, 64), 0.99, np.float32)
    p[0, 3, 4] = 0.01
    assert softmin_noise(p)[0] > 0.75 > 0.05 > softmin_noise(p)[1]


def _training(n: int = 300, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    structure = rng.beta(1.2, 6.0, n)
    softmin = np.clip(structure + rng.normal(0.0, 0.15, n), 0.0, 1.0)  # related, not the same ranking
    return structure, softmin


def test_the_training_slices_keep_the_structure_scores_values_so_the_thresholds_keep_their_meaning():
    structure, softmin = _training()
    ranking = ranking_from_scores(structure, softmin)
    assert ranking.rule == RANKING_RULE and len(ranking.structure) == len(structure)
    ranked = ranked_scores(structure, softmin, np.ones(len(structure), bool), SliceOrder(ranking))
    assert set(np.round(ranked, 6)) <= set(ranking.structure)  # the training S values, in another order
    assert not np.array_equal(np.argsort(ranked, kind="stable"), np.argsort(structure, kind="stable"))
    # slices whose two ranks average alike share a value, so the distribution is S's up to those ties
    assert abs(np.median(ranked) - np.median(structure)) < 0.005
    threshold = threshold_from_scores(structure, np.zeros(3))
    assert abs(int((ranked >= threshold.slice).sum()) - int((structure >= threshold.slice).sum())) <= 2


def test_the_blend_ranks_by_both_scores_and_keeps_empty_slices_at_their_score():
    structure, softmin = _training()
    ranking = SliceOrder(ranking_from_scores(structure, softmin))
    s, q = np.quantile(structure, 0.5), np.quantile(softmin, 0.5)
    low, high_q, high_both = ranked_scores(np.array([s, s, 0.9]), np.array([q, 0.95, 0.95]), np.ones(3, bool),
                                           ranking)
    assert low < high_q < high_both
    # monotone in each score, and bounded by the training structure scores
    grid = np.linspace(0.0, 1.0, 21)
    for fixed in (0.1, 0.5):
        along = ranked_scores(grid, np.full(21, fixed), np.ones(21, bool), ranking)
        assert np.all(np.diff(along) >= 0) and along.min() >= structure.min() - 1e-6
        assert along.max() <= structure.max() + 1e-6
    empty = ranked_scores(np.array([0.0, 0.3]), np.array([0.9, 0.9]), np.array([False, True]), ranking)
    assert empty[0] == 0.0 and empty[1] > 0.0
    # without tables the structure score ranks alone
    np.testing.assert_array_equal(ranked_scores(grid, grid[::-1], np.ones(21, bool), None), grid)


def test_the_bands_keep_every_flag_of_the_structure_score_and_reorder_within_them():
    structure, softmin = _training()
    threshold = threshold_from_scores(structure, np.zeros(3))
    t, gate = threshold.slice, threshold.gate
    assert 0.0 < t < gate < 1.0
    order = SliceOrder(ranking_from_scores(structure, softmin), (t, gate))
    # new slices: far beyond every training S_i with an ordinary softmin, and ordinary S_i with a high softmin
    new_s = np.concatenate([structure, [0.95, 0.99, np.median(structure)]])
    new_q = np.concatenate([softmin, [np.median(softmin)] * 2, [0.99]])
    ranked = ranked_scores(new_s, new_q, np.ones(len(new_s), bool), order)
    for edge in (t, gate):
        np.testing.assert_array_equal(ranked >= edge, new_s >= edge)  # the same slices flagged, the same gate
    unbanded = ranked_scores(new_s, new_q, np.ones(len(new_s), bool), SliceOrder(order.tables))
    assert unbanded[-3] < gate <= ranked[-3]  # what the bands are for: unbanded, its ordinary softmin lowers it
    within = (structure < t)
    assert not np.array_equal(np.argsort(ranked[:-3][within], kind="stable"),
                              np.argsort(structure[within], kind="stable"))  # the order within a band changed


def test_large_training_sets_store_quantiles_and_tiny_ones_none():
    structure, softmin = _training(5 * MAX_TABLE)
    ranking = ranking_from_scores(structure, softmin)
    assert len(ranking.structure) == len(ranking.softmin) == len(ranking.blended) == MAX_TABLE
    ranked = ranked_scores(structure, softmin, np.ones(len(structure), bool), SliceOrder(ranking))
    assert abs(np.median(ranked) - np.median(structure)) < 0.01
    assert ranking_from_scores(structure[:5], softmin[:5]) is None


def test_calibration_stores_the_tables_and_scoring_ranks_by_them(data3d, tmp_path, make_run):
    run_dir = make_run(tmp_path / "run", data3d, folds=FOLDS)
    calibration = calibrate_run(run_dir, device="cpu")
    ranking = calibration.slice_ranking
    assert ranking is not None and ranking.rule == RANKING_RULE
    data = json.loads((run_dir / "run.json").read_text())
    data["threshold"] = calibration.to_json()
    (run_dir / "run.json").write_text(json.dumps(data))
    assert load_run(run_dir).threshold.slice_ranking == ranking  # run.json round trip
    audit = score_dataset(ScoreConfig(run_dir=run_dir, out_dir=tmp_path / "audit", device="cpu"))
    scores = np.array([s.noise_score for s in audit.slices])
    expected = ranked_scores(np.array([s.structure_score for s in audit.slices]),
                             np.array([s.softmin for s in audit.slices]),
                             np.array([s.label_pixels > 0 or s.pred_pixels > 0 for s in audit.slices]),
                             ranking_of(calibration))
    np.testing.assert_allclose(scores, expected)
    assert list(scores) == sorted(scores, reverse=True)
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["threshold"]["slice_ranking_rule"] == RANKING_RULE  # the tables stay in run.json
    assert "slice_ranking" not in summary["threshold"]
    header = (tmp_path / "audit" / "slices.csv").read_text().splitlines()[0].split(",")
    assert {"noise_score", "structure_score", "softmin"} <= set(header)


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(structure=r["structure"][::-1]), "structure"),
    (lambda r: r.update(softmin=r["softmin"][:-1]), "softmin"),
    (lambda r: r.update(blended=[2.0] * len(r["blended"])), "blended"),
    (lambda r: r.update(extra=1), "extra"),
])
def test_a_damaged_ranking_in_run_json_is_refused_naming_the_field(data3d, tmp_path, make_run, change, field):
    run_dir = make_run(tmp_path / "run", data3d, folds=FOLDS)
    structure, softmin = _training(40)
    block = {"slice": 0.3, "case": 1.0, "slice_ranking": ranking_from_scores(structure, softmin).to_json()}
    change(block["slice_ranking"])
    data = json.loads((run_dir / "run.json").read_text())
    data["threshold"] = block
    (run_dir / "run.json").write_text(json.dumps(data))
    with pytest.raises(LabelauditError, match=f"threshold.slice_ranking.{field}"):
        load_run(run_dir)

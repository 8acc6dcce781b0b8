"""Scoring on ONNX Runtime: pure aggregation functions, providers, end-to-end audits on tiny synthetic data.

The run folders here are built by hand with onnx.helper (no torch, conftest's `make_run`): an "oracle"
segmenter that follows the graph contract (image + noise in, prob_mean + uncertainty out) and classifies
smoothed intensities, so the audit has something real to find.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from labelaudit import io
from labelaudit.data import discover_dataset
from labelaudit.errors import ModelError, UsageError
from labelaudit.preprocess import ChannelNorm
from labelaudit.formats.run import FoldModel, load_run
from labelaudit.config import PixelScore, ScoreConfig
from labelaudit.score.decide import NO_CASE_THRESHOLD
from labelaudit.score.calibrate import (FAST_GATE_K, GATE_K, GATE_RULE, calibrate_run, gate_k_for, gate_rule,
                                        robust_threshold, structure_prior)
from labelaudit.noise_map import noise_map
from labelaudit.score.formulas import (
    CASE_SHARE, CASE_TOP_SLICES, case_noise_score, class_counts, dice_disagreement, given_class_probability,
    normalised_entropy, pixel_noise_score, region_of_interest, roi_radius, slice_mass, slice_stats, REGION_SHARE,
    SLICE_RULE, worst_region,
)
from labelaudit.score.pipeline import score_dataset
from labelaudit.score.routing import route_case
from labelaudit.training_scores import ScoreSpread
from labelaudit.types import Calibration, Geometry, Volume
from labelaudit.synth import SynthConfig, write_synth_dataset

# ----------------------------------------------------------------------------- tiny datasets and audits

@pytest.fixture(scope="module")
def data3d(tmp_path_factory) -> Path:
    # largest spacing on ITK x, so slices are taken along numpy axis 2 (not the first axis)
    config = SynthConfig(cases=3, size=(6, 36, 40), spacing=(3.0, 0.9, 0.8), seed=1)
    return write_synth_dataset(tmp_path_factory.mktemp("d3") / "Dataset003_Synth", config)


@pytest.fixture(scope="module")
def audit3d(data3d, tmp_path_factory, make_run):
    base = tmp_path_factory.mktemp("a3")
    run_dir = make_run(base / "run", data3d, target_spacing=(1.2, 1.1))  # resampled in-plane, then restored
    out = base / "audit"
    return score_dataset(ScoreConfig(run_dir=run_dir, out_dir=out, device="cpu", batch_size=4)), out


# ----------------------------------------------------------------------------- pure functions, by hand

def test_pixel_scores_by_hand():
    prob = np.array([[[[0.9, 0.2]], [[0.1, 0.8]]]], dtype=np.float32)  # (1, 2, 1, 2)
    classes = np.array([[[0, 0]]])  # both pixels labelled background
    p_given = given_class_probability(prob, classes)
    np.testing.assert_allclose(p_given, [[[0.9, 0.2]]], atol=1e-6)
    unc = normalised_entropy(prob)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)  # noqa: E731
    np.testing.assert_allclose(unc, [[[h(0.9), h(0.8)]]], atol=1e-5)
    np.testing.assert_allclose(pixel_noise_score(p_given, unc, PixelScore.DISAGREEMENT), [[[0.1, 0.8]]], atol=1e-6)
    np.testing.assert_allclose(pixel_noise_score(p_given, unc, PixelScore.CONFIDENT_DISAGREEMENT),
                               [[[0.1 * (1 - h(0.9)), 0.8 * (1 - h(0.8))]]], atol=1e-5)
    # a certain model that disagrees completely: score 1; one that agrees: 0
    assert pixel_noise_score(np.float32(0.0), np.float32(0.0)) == 1.0
    assert pixel_noise_score(np.float32(1.0), np.float32(0.0)) == 0.0


def test_noise_map_is_the_disagreement_times_the_slice_score():
    p_given = np.array([[[0.9, 0.2]], [[0.9, 0.2]]], dtype=np.float32)  # (2 slices, 1, 2)
    found = noise_map(p_given, np.array([0.0, 0.5]))
    np.testing.assert_allclose(found, [[[0.0, 0.0]], [[0.05, 0.4]]], atol=1e-7)
    assert found.dtype == np.float32


def test_roi_radius_follows_spacing():
    assert roi_radius((1.0, 1.0)) == (3, 3)
    assert roi_radius((0.5, 3.0)) == (6, 1)
    assert roi_radius((0.1, 100.0)) == (8, 1)  # clamped


def test_region_of_interest_dilates_each_slice_alone():
    classes = np.zeros((2, 7, 7), dtype=np.int64)
    pred = np.zeros_like(classes)
    classes[0, 3, 3] = 1
    roi = region_of_interest(classes, pred, (1, 1))
    assert roi[0].sum() == 5  # the cross of radius 1
    assert not roi[1].any()  # slice 1 is empty: dilation does not leak across slices


def test_slice_stats_by_hand():
    # one 1x8 row per slice; slice 0: label 4 px, prediction 2 of them + 1 outside
    classes = np.array([[[0, 1, 1, 1, 1, 0, 0, 0]], [[0] * 8]], dtype=np.int64)
    pred = np.array([[[0, 1, 1, 0, 0, 1, 0, 0]], [[0] * 8]], dtype=np.int64)
    noise = np.array([[[0.0, 0.1, 0.1, 0.9, 0.9, 0.8, 0.0, 0.7]], [[0.4] * 8]], dtype=np.float32)
    stats = slice_stats(noise, classes, pred, num_classes=2, radius=(0, 1), region_share=None)
    # ROI = union (px 1..5) dilated by 1 column = px 0..6; sum = 0+.1+.1+.9+.9+.8+0 = 2.8; |union| = 5
    np.testing.assert_allclose(stats.noise_score, [2.8 / (5 + 1.0), 0.0])
    np.testing.assert_allclose(stats.disagreement, [1 - 2 * 2 / (4 + 3), 0.0])  # empty slice: no disagreement
    np.testing.assert_allclose(stats.doubt_fraction, [2 / 4, 0.0])  # px 3 and 4 exceed 0.5
    assert stats.label_pixels.tolist() == [4, 0] and stats.pred_pixels.tolist() == [3, 0]
    # the score is clipped to 1 when the ROI holds more doubt than the union has pixels
    assert slice_stats(np.ones((1, 1, 8), np.float32), classes[:1], classes[:1], 2, (0, 3)).noise_score[0] == 1.0


def test_slice_score_shrinks_small_structures_by_the_prior():
    classes = np.array([[[0, 1, 1, 1, 1, 0, 0, 0]]], dtype=np.int64)
    pred = np.array([[[0, 1, 1, 0, 0, 1, 0, 0]]], dtype=np.int64)
    noise = np.array([[[0.0, 0.1, 0.1, 0.9, 0.9, 0.8, 0.0, 0.7]]], dtype=np.float32)
    stats = slice_stats(noise, classes, pred, num_classes=2, radius=(0, 1), eps=5.0, region_share=None)
    np.testing.assert_allclose(stats.noise_score, [2.8 / (5 + 5.0)])  # |union| 5 + A0 5 px
    np.testing.assert_allclose(stats.mislabelled, [2.8])
    assert stats.union.tolist() == [5]


def test_slice_score_is_the_larger_of_the_fraction_and_the_worst_region():
    # the row of the tests above: F = 2.8 / (5 + A0); the one region above REGION_LEVEL inside the ROI is
    # px 3..5 (mass 2.6; px 7 at 0.7 lies outside the ROI), scored against REGION_SHARE x A0
    classes = np.array([[[0, 1, 1, 1, 1, 0, 0, 0]], [[0] * 8]], dtype=np.int64)
    pred = np.array([[[0, 1, 1, 0, 0, 1, 0, 0]], [[0] * 8]], dtype=np.int64)
    noise = np.array([[[0.0, 0.1, 0.1, 0.9, 0.9, 0.8, 0.0, 0.7]], [[0.4] * 8]], dtype=np.float32)
    stats = slice_stats(noise, classes, pred, num_classes=2, radius=(0, 1), eps=20.0)
    region = 2.6 / (2.6 + REGION_SHARE * 20.0)
    np.testing.assert_allclose(stats.worst_region, [region, 0.0])  # an empty ROI has no region
    np.testing.assert_allclose(stats.noise_score, [max(2.8 / 25.0, region), 0.0])
    assert stats.noise_score[0] > 2 * 2.8 / 25.0  # the region dominates: F dilutes it over the prior


def test_a_small_confident_blob_beside_a_large_structure_outranks_boundary_doubt():
    # slice 0: a 40x40 structure with a spurious 3x3 blob beside it (certainly wrong); slice 1: the same
    # structure with 0.4 doubt all along its boundary (about as much mass, spread thin)
    classes = np.zeros((2, 64, 64), np.int64)
    classes[:, 10:50, 10:50] = 1
    pred = classes.copy()
    noise = np.zeros((2, 64, 64), np.float32)
    classes[0, 55:58, 30:33] = 1
    noise[0, 55:58, 30:33] = 0.95
    ring = np.zeros((64, 64), bool)
    ring[10:50, 10:50] = True
    ring[11:49, 11:49] = False
    noise[1][ring] = 0.25  # doubt below REGION_LEVEL: no region
    stats = slice_stats(noise, classes, pred, 2, (1, 1), eps=400.0)
    fraction = stats.mislabelled / (stats.union + 400.0)
    assert fraction[0] < fraction[1]  # the structure fraction alone ranks the boundary doubt first
    assert stats.noise_score[0] > stats.noise_score[1]  # the region term ranks the blob first
    assert stats.worst_region[1] == 0.0


def test_worst_region_is_per_slice_and_4_connected():
    noise = np.zeros((2, 6, 6), np.float32)
    noise[0, 1, 1] = noise[0, 2, 2] = 0.8  # diagonal neighbours: two regions of 0.8
    noise[1, 1:3, 1:3] = 0.8  # one region of 3.2
    np.testing.assert_allclose(worst_region(noise, 1.0), [0.8 / 1.8, 3.2 / 4.2])
    np.testing.assert_allclose(worst_region(np.full((1, 4, 4), 0.2, np.float32), 1.0), [0.0])  # below the level


def test_structure_prior_is_half_the_median_labelled_area(tmp_path):
    # one case, 3 slices along numpy axis 0 (largest spacing): labelled areas 10, 20 and 0 px of 0.5 x 2 mm
    geometry = Geometry((8, 6, 3), (2.0, 0.5, 4.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    label = np.zeros(geometry.shape, dtype=np.uint8)
    label[0].flat[:10] = 1
    label[1].flat[:20] = 1
    root = tmp_path / "ds"
    io.write_volume(Volume(label, geometry), root / "labels" / "a.nii.gz")
    io.write_volume(Volume(label.astype(np.int16), geometry), root / "images" / "a.nii.gz")
    dataset = discover_dataset(root)
    assert structure_prior(dataset) == pytest.approx(0.5 * 15.0)
    assert structure_prior(dataset, prior=1.0) == pytest.approx(15.0)


def test_multiclass_disagreement_is_macro_over_present_classes():
    classes = np.array([[[1, 1, 2, 2]]])
    pred = np.array([[[1, 1, 1, 1]]])
    counts = class_counts(classes, pred, num_classes=3)
    assert counts[:, :, 0].tolist() == [[2, 0], [2, 2], [4, 0]]
    # class 1: Dice 2*2/(2+4) = 2/3; class 2: Dice 0 -> mean 1/3
    np.testing.assert_allclose(dice_disagreement(counts), [1 - (2 / 3) / 2])


def test_case_score_is_mean_of_top_slices():
    assert CASE_TOP_SLICES == 3
    assert case_noise_score(np.array([0.1, 0.9, 0.0, 0.5, 0.7])) == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    assert case_noise_score(np.array([0.4, 0.2])) == pytest.approx(0.3)
    assert case_noise_score(np.array([])) == 0.0


def test_the_case_is_made_of_slice_masses_against_a0():
    """m_i = M_i / (M_i + CASE_SHARE · A₀): counted in pixels, not as a share of the structure, so one strip of
    wrong pixels weighs the same on a large structure as on a small one (F divides it by the structure)."""
    classes = np.zeros((2, 32, 32), dtype=np.int64)
    classes[0, 8:24, 8:24] = 1  # large
    classes[1, 14:18, 14:18] = 1  # small
    noise = np.zeros((2, 32, 32), dtype=np.float32)
    noise[0, 8:24, 8] = 1.0  # the same 16 wrong pixels on each
    noise[1, 14:18, 14:18] = 1.0
    stats = slice_stats(noise, classes, classes, 2, (1, 1), eps=64.0)
    np.testing.assert_allclose(stats.mass, stats.mislabelled / (stats.mislabelled + CASE_SHARE * 64.0))
    np.testing.assert_allclose(stats.mass, slice_mass(np.array([16.0, 16.0]), 64.0))
    fraction = stats.mislabelled / (stats.union + 64.0)  # F
    assert stats.mass[0] == pytest.approx(stats.mass[1]) and fraction[0] < fraction[1]
    # without A₀ (region_share None) there is no prior to weigh a mass against: the slice score itself
    plain = slice_stats(noise, classes, classes, 2, (1, 1), eps=64.0, region_share=None)
    np.testing.assert_array_equal(plain.mass, plain.noise_score)


def test_thresholds_without_case_calibration_leave_the_case_to_its_worst_slice():
    """--threshold, the default and a calibration of an earlier score are slice-score thresholds: a case score
    (a mean of masses) is not compared with them, so a case is flagged only by its worst slice."""
    from labelaudit.score.decide import decide, resolve_threshold
    override = resolve_threshold(None, 0.4)
    assert (override.slice, override.case) == (0.4, NO_CASE_THRESHOLD)
    assert resolve_threshold(None, None).case == NO_CASE_THRESHOLD
    assert not decide(0.99, [0.1, 0.3], override).flagged and decide(0.0, [0.1, 0.4], override).flagged
    current = Calibration(slice=0.2, case=0.7, slice_rule=SLICE_RULE, gate=0.3, structure_prior_mm2=80.0)
    assert resolve_threshold(current, None).case == 0.7
    earlier = replace(current, slice_rule="max(F, R): R over regions of s_v > 0.3 against 0.25 x A0")
    assert resolve_threshold(earlier, None).case == NO_CASE_THRESHOLD
    # without A₀ the scores are those of every earlier rule (S = F, case = mean of the 3 worst S): kept
    no_prior = replace(earlier, structure_prior_mm2=None)
    assert resolve_threshold(no_prior, None).case == 0.7


def test_robust_threshold_by_hand():
    scores = np.array([0.1, 0.2, 0.2, 0.3, 0.9])  # median 0.2, MAD 0.1
    assert robust_threshold(scores, k=3.0, floor=0.0) == pytest.approx(0.2 + 3 * 1.4826 * 0.1)
    assert robust_threshold(np.zeros(10), floor=0.05) == 0.05  # a perfect model: the floor
    assert robust_threshold(np.array([]), floor=0.05) == 0.05
    # the gate: the same rule with GATE_K MADs, capped at 1
    assert GATE_K == 6.0 and GATE_RULE == "median+6*mad"
    assert robust_threshold(scores / 10, k=GATE_K, floor=0.0) == pytest.approx(0.02 + 6 * 1.4826 * 0.01)
    assert robust_threshold(np.array([0.5, 0.9, 0.99]), k=GATE_K) == 1.0


def test_the_gate_keeps_more_mads_for_the_fast_presets_weaker_models():
    from labelaudit.config import Preset

    assert gate_k_for(Preset.STANDARD) == GATE_K == 6.0 and gate_k_for(None) == GATE_K
    assert gate_k_for(Preset.FAST) == FAST_GATE_K == 8.0
    assert gate_rule(FAST_GATE_K) == "median+8*mad"


def test_route_case():
    models = [FoldModel(0, "a", "a", held_out=["c0", "c1"]), FoldModel(1, "b", "b", held_out=["c2"])]
    assert route_case("c2", models, fit_dataset=True) == ([1], "out-of-fold")
    assert route_case("c9", models, fit_dataset=True) == ([0, 1], "in-sample")
    assert route_case("c0", models, fit_dataset=False) == ([0, 1], "new-data")
    assert route_case("c0", models, fit_dataset=True, out_of_fold=False) == ([0, 1], "in-sample")


# ----------------------------------------------------------------------------- providers

def test_device_choice_on_this_machine():
    from labelaudit.score.providers import CPU, choose_device, cuda_device_count, parse_device

    assert choose_device("cpu").provider == CPU
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        parse_device("gpu")
    assert parse_device("cuda:1") == ("cuda", 1)
    if cuda_device_count()[0] == 0:
        assert choose_device("auto").provider == CPU
        with pytest.raises(UsageError, match="no usable GPU"):
            choose_device("cuda")


# ----------------------------------------------------------------------------- end to end

def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_audit_files_and_map_geometry_3d(audit3d, data3d):
    audit, out = audit3d
    assert audit.provider == "CPUExecutionProvider"
    cases = _read_csv(out / "cases.csv")
    slices = _read_csv(out / "slices.csv")
    assert [c["case_id"] for c in cases] and {"case_id", "noise_score", "flagged", "worst_slice", "disagreement",
                                               "n_slices", "n_flagged_slices", "model", "routing"} <= set(cases[0])
    scores = [float(c["noise_score"]) for c in cases]
    assert scores == sorted(scores, reverse=True)
    slice_scores = [float(s["noise_score"]) for s in slices]
    assert slice_scores == sorted(slice_scores, reverse=True)
    # every slice of every case: 3 cases of 6 slices along ITK x
    assert sorted((s["case_id"], int(s["slice_index"])) for s in slices) == [
        (f"case_{i:03d}", j) for i in range(3) for j in range(6)]
    assert all(0.0 <= v <= 1.0 for v in slice_scores + scores)
    for ref in discover_dataset(data3d).cases:
        label = io.read_volume(ref.label_path)
        noise = io.read_volume(out / "maps" / f"{ref.case_id}_noise.nii.gz")
        pred = io.read_volume(out / "maps" / f"{ref.case_id}_pred.nii.gz")
        for written in (noise, pred):
            assert label.geometry.differences(written.geometry) == []
            assert written.geometry.size == label.geometry.size
        assert noise.array.dtype == np.float32
        assert 0.0 <= noise.array.min() and noise.array.max() <= 1.0
        # the oracle sees the structure: its prediction overlaps the label well
        fg, pf = label.array != 0, pred.array != 0
        assert 2 * (fg & pf).sum() / (fg.sum() + pf.sum()) > 0.8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provider"] == "CPUExecutionProvider"
    assert summary["counts"]["slices"] == 18 and summary["counts"]["cases"] == 3
    assert summary["threshold"]["source"].startswith("default")
    assert summary["dataset"]["fit_dataset"] is True
    report = (out / "report.html").read_text()
    assert "<table>" in report and "case_000" in report


def test_map_geometry_2d_png(tmp_path, make_run):
    config = SynthConfig(cases=2, size=(40, 36, 1), spacing=(1.0, 1.0, 1.0), two_d=True, classes=2, seed=2)
    root = write_synth_dataset(tmp_path / "Dataset004_Png", config)
    # PNG images are shifted by +1024: same means as CT_NORM after shifting its mean
    norm = ChannelNorm("ct", clip_low=0.0, clip_high=5000.0, mean=1024 - 60.0, std=40.0)
    run_dir = make_run(tmp_path / "run", root, num_classes=3, norm=norm)
    out = tmp_path / "audit"
    audit = score_dataset(ScoreConfig(run_dir=run_dir, out_dir=out, device="cpu"))
    assert len(audit.slices) == 2 and {s.slice_index for s in audit.slices} == {0}
    for ref in discover_dataset(root).cases:
        label = io.read_volume(ref.label_path)
        noise = io.read_volume(out / "maps" / f"{ref.case_id}_noise.nii.gz")  # PNG cannot hold float32
        pred = io.read_volume(out / "maps" / f"{ref.case_id}_pred.nii.gz")
        assert label.geometry.differences(noise.geometry) == [] and label.geometry.differences(pred.geometry) == []
        assert noise.array.shape == label.array.shape and noise.array.dtype == np.float32
        assert set(np.unique(pred.array)) <= {0, 1, 2}
        assert (pred.array == label.array).mean() > 0.9  # label values decoded, not class indices


def test_planted_error_ranks_first(tmp_path, make_run):
    config = SynthConfig(cases=3, size=(40, 36, 6), seed=3)
    root = write_synth_dataset(tmp_path / "Dataset005_Planted", config)
    path = root / "labelsTr" / "case_001.nii.gz"
    label = io.read_volume(path)
    label.array[3] = 0  # the annotator forgot the structure on slice 3 (numpy axis 0 = the slicing axis)
    io.write_volume(label, path)
    run_dir = make_run(tmp_path / "run", root)
    audit = score_dataset(ScoreConfig(run_dir=run_dir, out_dir=tmp_path / "audit", device="cpu"))
    top = audit.slices[0]
    assert (top.case_id, top.slice_index) == ("case_001", 3)
    assert top.noise_score > 0.5 and top.label_pixels == 0
    assert audit.cases[0].case_id == "case_001" and audit.cases[0].worst_slice == 3
    # with a threshold between the planted slice and the rest, only it is flagged
    second = audit.slices[1].noise_score
    flagged = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu",
                                        threshold=(second + top.noise_score) / 2))
    assert [(s.case_id, s.slice_index) for s in flagged.flagged_slices] == [("case_001", 3)]


def test_out_of_fold_routing_picks_the_holding_model(data3d, tmp_path, make_run):
    # fold 0 (an oracle) held out case_000; fold 1 (predicts background everywhere) held out the others
    run_dir = make_run(tmp_path / "run", data3d, folds=[["case_000"], ["case_001", "case_002"]],
                       constant_folds={1: 0})
    audit = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu"))
    by_case = {c.case_id: c for c in audit.cases}
    assert by_case["case_000"].model == "fold_0" and by_case["case_000"].routing == "out-of-fold"
    assert by_case["case_001"].model == "fold_1" and by_case["case_002"].model == "fold_1"
    pred_px = {c: sum(s.pred_pixels for s in audit.slices if s.case_id == c) for c in by_case}
    assert pred_px["case_000"] > 0 and pred_px["case_001"] == 0 == pred_px["case_002"]
    # the background-only model disagrees with every labelled pixel: those cases rank first
    assert audit.cases[-1].case_id == "case_000"
    # in-sample: every case by the ensemble of both
    ensemble = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu", out_of_fold=False))
    assert {c.model for c in ensemble.cases} == {"ensemble(fold_0+fold_1)"}
    assert {c.routing for c in ensemble.cases} == {"in-sample"}


def test_calibrate_run_takes_the_gate_of_the_runs_preset(data3d, tmp_path, make_run):
    from labelaudit.config import PRESET_BUDGETS, NetParams, Preset

    run_dir = make_run(tmp_path / "run", data3d, folds=[["case_000", "case_001"], ["case_002"]])
    epochs, features = PRESET_BUDGETS[Preset.FAST]
    data = json.loads((run_dir / "run.json").read_text())
    data["config"] = {"net": NetParams(features=features).to_json(), "loop": {"epochs": epochs}}
    (run_dir / "run.json").write_text(json.dumps(data))
    assert load_run(run_dir).settings.preset is Preset.FAST
    threshold = calibrate_run(run_dir, device="cpu")
    assert threshold.gate_rule == gate_rule(FAST_GATE_K) and threshold.gate_k == FAST_GATE_K
    stats = threshold.slice_stats
    assert threshold.gate == pytest.approx(max(threshold.slice, min(1.0, max(
        threshold.floor, stats.median + FAST_GATE_K * 1.4826 * stats.mad))))


def test_calibrate_run_writes_nothing(data3d, tmp_path, monkeypatch, make_run):
    monkeypatch.chdir(tmp_path)
    run_dir = make_run(tmp_path / "run", data3d, folds=[["case_000", "case_001"], ["case_002"]])
    threshold = calibrate_run(run_dir, device="cpu")
    assert threshold.rule == "median+k*mad" and threshold.k == 3.0
    assert threshold.floor <= threshold.slice <= 1.0 and threshold.case == NO_CASE_THRESHOLD  # 3 cases
    assert threshold.scored == "out-of-fold" and threshold.n_slices > 0
    assert "q90" in threshold.slice_stats.quantiles
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no audit folder written
    # A0 is measured on the fit dataset's labels and used by later scoring of the run
    assert threshold.structure_prior_mm2 == pytest.approx(structure_prior(discover_dataset(data3d)))
    assert threshold.structure_prior_mm2 > 0
    assert threshold.slice_rule == SLICE_RULE  # says which slice score the thresholds were calibrated on
    assert threshold.gate_rule == GATE_RULE and threshold.gate_k == GATE_K
    assert threshold.slice <= threshold.gate <= 1.0
    stats = threshold.slice_stats
    assert threshold.gate == pytest.approx(max(threshold.slice, min(1.0, max(
        threshold.floor, stats.median + GATE_K * 1.4826 * stats.mad))))
    # how well the model segments each class of the training labels (fix never mends one below min_agreement)
    assert threshold.class_agreement and all(0.0 <= v <= 1.0 for v in threshold.class_agreement.values())


def test_a_run_calibrated_on_an_earlier_slice_score_says_so_until_recalibrated(data3d, tmp_path, make_run):
    # thresholds as an earlier labelaudit stored them: with A0, without the slice rule
    stale = {"slice": 0.2, "case": 0.2, "rule": "median+k*mad", "structure_prior_mm2": 40.0}
    run_dir = make_run(tmp_path / "run", data3d, folds=[["case_000", "case_001"], ["case_002"]], threshold=stale)
    audit = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu"))
    assert any("calibrate RUN_DIR" in n for n in audit.notes)
    # the note names the rule the run was calibrated on (none stored: the structure fraction alone) and today's
    assert any("(the structure fraction alone)" in n and f"today's is {SLICE_RULE}" in n for n in audit.notes)
    overridden = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu", threshold=0.3))
    assert not any("calibrate RUN_DIR" in n for n in overridden.notes)  # the user chose the threshold
    result = _cli(["calibrate", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "thresholds slice" in result.output and "(was slice 0.200, case 0.200)" in result.output
    ranked = load_run(run_dir).threshold.slice_ranking is not None
    assert ("together" if ranked else "the structure score alone") in result.output  # how its slices are ranked
    info = load_run(run_dir)
    assert info.threshold.slice_rule == SLICE_RULE and info.threshold.scored == "out-of-fold"
    assert info.models and (run_dir / "fold_0" / "segmenter.onnx").is_file()  # the rest of run.json is kept
    again = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu"))
    assert not any("calibrate RUN_DIR" in n for n in again.notes)
    assert again.threshold.gate == info.threshold.gate is not None


def test_a_run_calibrated_without_a_gate_flags_as_before_and_says_so(data3d, tmp_path, make_run):
    ungated = {"slice": 0.2, "case": 0.9, "rule": "median+k*mad", "structure_prior_mm2": 40.0,
               "slice_rule": SLICE_RULE}
    run_dir = make_run(tmp_path / "run", data3d, folds=[["case_000", "case_001"], ["case_002"]], threshold=ungated)
    audit = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu"))
    assert audit.threshold.gate is None and audit.threshold.worst_slice == 0.2
    assert any("before cases had a gate" in n for n in audit.notes)
    by_slices = {c.case_id for c in audit.cases if c.n_flagged_slices}
    assert {c.case_id for c in audit.cases if c.flagged} >= by_slices  # any flagged slice flags its case


def test_a_calibration_without_ranking_tables_ranks_by_the_structure_score_and_says_so(data3d, tmp_path, make_run):
    untabled = {"slice": 0.2, "case": 0.9, "rule": "median+k*mad", "structure_prior_mm2": 40.0,
                "slice_rule": SLICE_RULE, "gate": 0.5, "n_slices": 40}
    run_dir = make_run(tmp_path / "run", data3d, folds=[["case_000", "case_001"], ["case_002"]], threshold=untabled)
    audit = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu"))
    assert any("no slice ranking tables" in n for n in audit.notes)
    assert all(s.noise_score == s.structure_score for s in audit.slices)  # S_i alone ranks
    table = [round(i / 11, 6) for i in range(12)]
    tabled = {**untabled, "slice_ranking": {"rule": "r", "structure": table, "softmin": table, "blended": table}}
    tabled_run = make_run(tmp_path / "tabled", data3d, folds=[["case_000", "case_001"], ["case_002"]],
                          threshold=tabled)
    again = score_dataset(ScoreConfig(run_dir=tabled_run, write=False, device="cpu"))
    assert not any("no slice ranking tables" in n for n in again.notes)
    assert any(s.noise_score != s.structure_score for s in again.slices)  # the tables rank


def test_a_calibration_at_its_ceiling_warns_that_nothing_will_be_flagged():
    from labelaudit.score.decide import saturated_calibration_note
    from labelaudit.types import Calibration

    # scores of a model that cannot segment the structure: high and spread, median + 3 MADs beyond 1
    scores = np.array([0.3, 0.45, 0.6, 0.62, 0.8, 0.85, 0.9])
    assert robust_threshold(scores) == 1.0
    note = saturated_calibration_note(Calibration(slice=1.0, case=1.0, slice_stats=ScoreSpread(0.6, 0.22)))
    assert "threshold is 1" in note and "median 0.60, MAD 0.22" in note and "--threshold" in note
    assert "--probabilities" in note  # the way to a stronger model: the user's own (e.g. nnU-Net's) probabilities
    assert saturated_calibration_note(Calibration(slice=1.0, case=1.0)) is not None  # stats not stored: still said
    assert saturated_calibration_note(Calibration(slice=0.99, case=1.0)) is None
    assert saturated_calibration_note(None) is None


def test_scoring_and_check_with_a_saturated_calibration_say_so(data3d, tmp_path, make_run):
    saturated = {"slice": 1.0, "case": 1.0, "gate": 1.0, "rule": "median+k*mad", "structure_prior_mm2": 40.0,
                 "slice_rule": SLICE_RULE, "slice_stats": {"median": 0.6, "mad": 0.22}}
    run_dir = make_run(tmp_path / "run", data3d, folds=[["case_000", "case_001"], ["case_002"]], threshold=saturated)
    audit = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu"))
    assert not any(c.flagged for c in audit.cases)
    assert any("threshold is 1" in n for n in audit.notes)
    overridden = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu", threshold=0.3))
    assert not any("threshold is 1" in n for n in overridden.notes)  # the user chose the threshold
    result = _cli(["check", str(data3d), "--model", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "threshold is 1" in " ".join(result.output.split())


def test_calibrate_finds_a_moved_dataset_with_dataset(data3d, tmp_path, make_run):
    import shutil

    original = shutil.copytree(data3d, tmp_path / "original")
    run_dir = make_run(tmp_path / "run", original, folds=[["case_000", "case_001"], ["case_002"]])
    moved = shutil.move(original, tmp_path / "moved")
    assert _cli(["calibrate", str(run_dir), "--device", "cpu"]).exit_code == 3  # no longer there (input error)
    result = _cli(["calibrate", str(run_dir), "--dataset", str(moved), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert load_run(run_dir).threshold.scored == "out-of-fold"  # the same dataset, by its fingerprint


# ----------------------------------------------------------------------------- CLI exit codes

def _cli(args: list[str]):
    from typer.testing import CliRunner

    from labelaudit.cli import app

    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("damage", ["missing", "empty", "corrupt", "wrong_inputs"])
def test_bad_onnx_exits_4(data3d, tmp_path, damage, make_run):
    run_dir = make_run(tmp_path / "run", data3d)
    graph = run_dir / "fold_0" / "segmenter.onnx"
    if damage == "missing":
        graph.unlink()
    elif damage == "empty":
        graph.write_bytes(b"")
    elif damage == "corrupt":
        graph.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    else:
        import onnx
        from onnx import TensorProto, helper

        node = helper.make_node("Identity", ["x"], ["y"])
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(graph))
    result = _cli(["score", str(data3d), "--model", str(run_dir), "--out", str(tmp_path / "a"), "--device", "cpu"])
    assert result.exit_code == 4, result.output
    assert "segmenter.onnx" in result.output


def test_run_from_another_label_set_exits_4(data3d, tmp_path, make_run):
    other = write_synth_dataset(tmp_path / "three_classes", SynthConfig(cases=1, classes=2, seed=4))
    run_dir = make_run(tmp_path / "run", data3d, num_classes=2)
    result = _cli(["score", str(other), "--model", str(run_dir), "--out", str(tmp_path / "a"), "--device", "cpu"])
    assert result.exit_code == 4, result.output
    assert "label values [2]" in result.output and "another label set" in result.output
    with pytest.raises(ModelError, match="label values"):
        score_dataset(ScoreConfig(run_dir=run_dir, dataset=other, write=False, device="cpu"))


def test_run_with_other_channels_exits_4(data3d, tmp_path, make_run):
    run_dir = make_run(tmp_path / "run", data3d, in_channels=2)
    result = _cli(["score", str(data3d), "--model", str(run_dir), "--out", str(tmp_path / "a"), "--device", "cpu"])
    assert result.exit_code == 4 and "2 image channel(s)" in result.output, result.output


def test_audit_inside_the_label_folder_is_refused(data3d, tmp_path, make_run):
    run_dir = make_run(tmp_path / "run", data3d)
    before = sorted(p.name for p in (data3d / "labelsTr").iterdir())
    result = _cli(["score", str(data3d), "--model", str(run_dir), "--out", str(data3d / "labelsTr" / "audit")])
    assert result.exit_code == 2 and "input folder" in result.output, result.output
    assert sorted(p.name for p in (data3d / "labelsTr").iterdir()) == before


def test_cli_score_defaults_to_latest_run_and_its_dataset(data3d, tmp_path, monkeypatch, make_run):
    from labelaudit.formats.run import record_latest

    monkeypatch.chdir(tmp_path)
    run_dir = make_run(tmp_path / "run", data3d)
    record_latest(run_dir)
    result = _cli(["score", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "CPUExecutionProvider" in result.output and "top 10 slices" in result.output
    assert (tmp_path / "audits" / "Dataset003_Synth" / "cases.csv").is_file()
    result = _cli(["score", "--device", "cuda:x"])
    assert result.exit_code == 2


def test_undeclared_label_values_skip_the_case_or_fail_the_run(tmp_path, make_run):
    root = write_synth_dataset(tmp_path / "paired", SynthConfig(cases=2, size=(24, 20, 3), seed=6), layout="paired")
    path = root / "labels" / "case_001.nii.gz"
    label = io.read_volume(path)
    label.array[1, :2, :2] = 2  # a value the (binary) run does not know; no dataset.json declares labels
    io.write_volume(label, path)
    run_dir = make_run(tmp_path / "run", root)
    audit = score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu"))
    assert [c.case_id for c in audit.cases] == ["case_000"]
    assert "label values [2] are not among the run's classes [0, 1]" in audit.skipped["case_001"][0]
    path0 = root / "labels" / "case_000.nii.gz"
    label0 = io.read_volume(path0)
    label0.array[0, 0, 0] = 2
    io.write_volume(label0, path0)
    with pytest.raises(ModelError, match="another label set"):
        score_dataset(ScoreConfig(run_dir=run_dir, write=False, device="cpu"))

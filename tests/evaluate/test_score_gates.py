"""bench/score_gates.py: its case rules keep the landed slice score and aggregate it as they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelaudit.config import PixelScore
from labelaudit.score.decide import NO_CASE_THRESHOLD
from labelaudit.score.formulas import (REGION_SHARE, case_noise_score, given_class_probability, normalised_entropy,
                                       pixel_noise_score, roi_radius, slice_stats)

BENCH = Path(__file__).resolve().parents[2] / "bench"
SPACING = (1.0, 1.0)
MEDIAN_MM2 = 64.0


@pytest.fixture()
def gates(bench_script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the script imports its sibling scripts by name
    return bench_script("score_gates")


def _case(gates, case_id: str, wrong: int):
    """A 4-slice binary case whose label is an 8x8 square; the model agrees, except `wrong` pixels per slice."""
    classes = np.zeros((4, 16, 16), dtype=np.int64)
    classes[:, 4:12, 4:12] = 1
    fg = np.where(classes == 1, 0.95, 0.05)
    fg[:, 4:12, 4:4 + wrong // 8] = 0.1  # the model calls a strip of the square background
    prob = np.stack([1 - fg, fg], axis=1).astype(np.float32)
    return gates.CaseData(case_id, classes, prob, SPACING)


def test_case_rules_keep_the_slice_score_and_aggregate_it(gates):
    cases = [_case(gates, "a", 0), _case(gates, "b", 16)]
    found = gates.score_cases(cases, MEDIAN_MM2)
    for how in ("case whole", "case mean", "case max", gates.TOP3, gates.STANDARDISED):
        assert found[how].slices == found["landed"].slices
    case = cases[1]
    noise = pixel_noise_score(given_class_probability(case.prob, case.classes), normalised_entropy(case.prob),
                              PixelScore.CONFIDENT_DISAGREEMENT)
    eps = 0.5 * MEDIAN_MM2
    stats = slice_stats(noise, case.classes, case.prob.argmax(axis=1), 2, roi_radius(SPACING), eps, REGION_SHARE)
    assert found["case whole"].cases["b"] == pytest.approx(stats.mislabelled.sum() / (stats.union.sum() + eps))
    assert found["case max"].cases["b"] == pytest.approx(stats.noise_score.max())
    mass = stats.mislabelled / (stats.mislabelled + 0.5 * eps)
    np.testing.assert_allclose(stats.mass, mass)
    assert found["landed"].cases["b"] == pytest.approx(case_noise_score(mass))  # today's case score
    assert found[gates.TOP3].cases["b"] == pytest.approx(case_noise_score(stats.noise_score))
    for how in ("landed", "case whole", gates.TOP3):  # the wrong strip raises every rule's case score
        assert found[how].cases["b"] > found[how].cases["a"]


def test_standardised_case_scores_order_the_cases_by_both_statistics(gates):
    cases = [_case(gates, f"c{w}", w) for w in (0, 8, 16, 24)]
    found = gates.score_cases(cases, MEDIAN_MM2)
    gates.standardise(found, [found])
    values = [found[gates.STANDARDISED].cases[c.case_id] for c in cases]
    assert all(0.0 < v < 1.0 for v in values)
    assert values == sorted(values)


def test_remapped_rankings_keep_the_landed_scores_training_distribution(gates):
    """The training slices keep the landed score's values (hence its thresholds) in the order of the mean CDF;
    slices without structure keep the landed score; a new slice lands on the landed scale by its rank."""
    def scored(landed, softmin, structure):
        keys = [("a", i) for i in range(len(landed))]
        out = {}
        for how in gates.SCORES:
            values = softmin if how == "softmin" else landed
            out[how] = gates.Scored(dict(zip(keys, map(float, values))), dict(zip(keys, structure)), {"a": 0.0},
                                    [np.ones((len(landed), 2, 2), np.float32) if how in gates.REMAPPED
                                     else np.zeros(len(landed) * 4, np.float32)])
        return out

    landed, softmin = [0.1, 0.2, 0.3, 0.4, 0.0], [0.9, 0.1, 0.5, 0.3, 0.7]
    train = scored(landed, softmin, [True, True, True, True, False])
    new = scored([0.35, 0.0], [0.95, 0.2], [True, True])
    gates.remap(train, [new, train])
    only_softmin = train["softmin → landed scale"].slices
    assert sorted(only_softmin[("a", i)] for i in range(4)) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert sorted(range(4), key=lambda i: only_softmin[("a", i)]) == [1, 3, 2, 0]  # softmin's order
    assert only_softmin[("a", 4)] == 0.0  # no structure: the landed score
    mean = train["rank mean → landed scale"].slices
    assert mean[("a", 0)] > mean[("a", 1)]  # (1 + 4) / 2 ranks above (2 + 1) / 2
    assert new["softmin → landed scale"].slices[("a", 0)] == pytest.approx(0.4)  # above every training softmin
    np.testing.assert_allclose(train["softmin → landed scale"].pixels[0].reshape(5, 4)[:, 0],
                               [only_softmin[("a", i)] for i in range(5)])


def test_the_lower_mad_rule_takes_the_spread_from_below_the_median(gates):
    """Wrong slices only raise scores: a heavy upper tail widens the two-sided MAD, not the lower one."""
    clean = np.array([0.10, 0.12, 0.14, 0.16, 0.18, 0.20])
    wrong = np.array([0.7, 0.8, 0.9, 0.95])
    slices = np.concatenate([clean, wrong])
    t = gates.lower_mad_rule(3, 6)(slices, np.array([0.5] * 3))
    med = float(np.median(slices))
    lower = float(np.median(med - slices[slices <= med]))
    assert t.slice == pytest.approx(med + 3 * 1.4826 * lower) and t.slice < 0.7  # the wrong slices stand out
    two_sided = gates.mad_rule(3, 6, "raw")(slices, np.array([0.5] * 3))
    assert t.slice < two_sided.slice and t.gate < two_sided.gate  # the upper tail widened the two-sided MAD
    assert t.case == NO_CASE_THRESHOLD  # 3 cases: no case threshold
    assert t.gate == pytest.approx(min(1.0, med + 6 * 1.4826 * lower))


def test_the_banded_ranking_is_the_products_and_flags_what_landed_flags(gates):
    from labelaudit.score.ranking import order_of, ranked_scores, ranking_from_scores

    rng = np.random.default_rng(0)
    landed = rng.beta(1.2, 6.0, 40)
    softmin = np.clip(landed + rng.normal(0.0, 0.2, 40), 0.0, 1.0)
    shifted = np.clip(landed + rng.normal(0.0, 0.2, 40), 0.0, 1.0)
    keys = [("a", i) for i in range(40)]
    values = {"softmin": softmin, gates.SHIFTED: shifted}

    def scored():
        return {how: gates.Scored(dict(zip(keys, map(float, values.get(how, landed)))),
                                  dict.fromkeys(keys, True), {"a": 0.0}, [np.ones((40, 2, 2), np.float32)])
                for how in gates.SCORES}

    train = scored()
    gates.remap(train, [train])
    t = gates.RULES[gates.TODAY](landed, np.zeros(1))  # the landed score's bands, as the bench calibrates
    for how, q in ((gates.BANDED, softmin), (gates.SHIFTED_BANDED, shifted)):
        banded = np.array([train[how].slices[k] for k in keys])
        order = order_of(ranking_from_scores(landed, q), t.slice, t.gate)
        np.testing.assert_allclose(banded, ranked_scores(landed, q, np.ones(40, bool), order))
        np.testing.assert_array_equal(banded >= t.slice, landed >= t.slice)
    for how in (gates.BOTH_BANDED, *gates.PRIOR_BANDED):
        both = np.array([train[how].slices[k] for k in keys])
        for edge in (t.slice, t.gate):
            np.testing.assert_array_equal(both >= edge, landed >= edge)  # the same flags
        assert not np.array_equal(np.argsort(both, kind="stable"), np.argsort(landed, kind="stable")), how


def test_ranked_cases_keep_the_landed_case_scores_training_distribution(gates):
    ids = ["c0", "c1", "c2", "c3"]

    def scored(landed, worst):
        out = {}
        for how in gates.SCORES:
            values = worst if how == gates.SOFTMIN_WORST else landed
            out[how] = gates.Scored({}, {}, dict(zip(ids, map(float, values))), [])
        return out

    train = scored([0.1, 0.2, 0.3, 0.4], [0.9, 0.1, 0.5, 0.3])
    new = scored([0.45, 0.0, 0.0, 0.0], [0.95, 0.0, 0.0, 0.0])
    gates.rank_cases(train, [new, train])
    ranked = train[gates.CASE_RANKED].cases
    assert set(np.round(list(ranked.values()), 9)) <= {0.1, 0.2, 0.3, 0.4}  # landed values (ties share one)
    assert ranked["c0"] > ranked["c1"]  # (1 + 4) / 2 ranks above (2 + 1) / 2
    assert new[gates.CASE_RANKED].cases["c0"] == pytest.approx(0.4)  # above every training case under both


def test_the_shifted_softmin_is_cleanlabs_on_probabilities_adjusted_by_its_confident_thresholds(gates):
    pytest.importorskip("cleanlab")
    from cleanlab.count import get_confident_thresholds
    from cleanlab.internal.label_quality_utils import _subtract_confident_thresholds
    from cleanlab.segmentation.rank import get_label_quality_scores

    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 2.0, (6, 3, 9, 11)) + np.array([1.5, 0.0, -1.0])[None, :, None, None]
    prob = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    classes = rng.integers(0, 3, (6, 9, 11))
    confidence = gates.training_confidence([gates.CaseData("a", classes, prob, SPACING)])
    flat = np.moveaxis(prob, 1, -1).reshape(-1, 3).astype(np.float64)
    theirs = get_confident_thresholds(classes.reshape(-1), flat)
    np.testing.assert_allclose(confidence, theirs, atol=1e-6)
    adjusted = np.moveaxis(_subtract_confident_thresholds(None, flat, confident_thresholds=theirs).reshape(
        6, 9, 11, 3), -1, 1)
    scale = 1.0 + 3 * theirs.max() - theirs.sum()  # cleanlab renormalises by it; the temperature stays on p's scale
    quality, _ = get_label_quality_scores(classes, adjusted, method="softmin", verbose=False,
                                          temperature=gates.SOFTMIN_TEMPERATURE / scale)
    ours = gates.shifted_softmin(given_class_probability(prob, classes), classes, confidence)
    np.testing.assert_allclose(ours, 1.0 - quality, atol=1e-5)


def test_the_region_level_candidates_are_the_landed_score_at_the_landed_level(gates, monkeypatch):
    cases = [_case(gates, "a", 0), _case(gates, "b", 16)]
    from labelaudit.score.formulas import REGION_LEVEL

    monkeypatch.setattr(gates, "LEVELS_R", {"R level 0.5": REGION_LEVEL, "R level 0.7": 0.95})
    found = gates.score_cases(cases, MEDIAN_MM2)
    assert found["R level 0.5"].slices == pytest.approx(found["landed"].slices)  # at the landed level
    assert found["R level 0.5"].cases == found["landed"].cases == found["R level 0.7"].cases  # case score kept
    assert all(found["R level 0.7"].slices[k] <= found["landed"].slices[k] + 1e-12 for k in found["landed"].slices)


def test_the_ap_per_kind_ranks_each_kind_against_the_clean_slices_only(gates):
    from types import SimpleNamespace as NS

    keys = [("a", i) for i in range(6)]
    # slices 0-1 spurious, 2-3 erosion, 4-5 clean; the landed score finds the erosions, misses the spurious ones
    landed = dict(zip(keys, [0.1, 0.2, 0.9, 0.8, 0.3, 0.4]))
    scored = {how: gates.Scored(landed, dict.fromkeys(keys, True), {"a": 0.0}, []) for how in gates.KIND_SCORES}
    kinds = ["spurious", "spurious", "erosion", "erosion", None, None]
    record = NS(cases={"a": NS(slices=[NS(slice_index=i, corrupted=k is not None,
                                          corruption=NS(kind=NS(value=k)) if k else None)
                                       for i, k in enumerate(kinds)])})
    truth = NS(slices={k: kind is not None for k, kind in zip(keys, kinds)})
    found = gates.kind_aps(scored, truth, record)
    assert found["erosion"]["n"] == 2 and found["erosion"]["landed"] == pytest.approx(1.0)
    assert found["spurious"]["landed"] == pytest.approx(0.5 * (1 / 3 + 2 / 4))  # both below the clean slices
    table = gates.kind_table({"ds/slice": {"kinds": found}, "ds2/slice": {"kinds": found}})
    assert any(line.startswith("| slice | erosion | 4 | 2 | 1.000") for line in table)


def test_the_region_prior_candidates_weigh_a_small_blob_whatever_the_structures_size(gates):
    """R against min(¼ A₀, k pixels): the landed score where k is not smaller; a blob beside a large structure
    scores higher where it is."""
    classes = np.zeros((2, 32, 32), dtype=np.int64)
    classes[:, 4:28, 4:28] = 1  # a large square
    classes[1, 1:3, 29:31] = 1  # and a spurious 4-pixel blob on the second slice
    fg = np.where(classes == 1, 0.97, 0.03)
    fg[1, 1:3, 29:31] = 0.02  # the model is sure the blob is background
    case = gates.CaseData("a", classes, np.stack([1 - fg, fg], axis=1).astype(np.float32), SPACING)
    found = gates.score_cases([case], 576.0)  # A₀ = 288 pixels: ¼ A₀ = 72
    landed, small, big = (np.array([found[how].slices[("a", i)] for i in range(2)])
                          for how in ("landed", "R prior 4 px", "R prior 16 px"))
    assert small[1] > big[1] > landed[1] + 0.05  # the smaller the prior, the more the blob counts
    entropy = -(0.02 * np.log(0.02) + 0.98 * np.log(0.98)) / np.log(2)
    blob = 4 * 0.98 * (1 - entropy)  # Σ s_v over the blob: confident disagreement
    assert small[1] == pytest.approx(blob / (blob + 4.0), rel=1e-4)  # against 4 pixels
    assert small[0] == pytest.approx(landed[0])  # no confident region: F alone
    assert found["R prior 4 px"].cases == found["landed"].cases  # the case score kept

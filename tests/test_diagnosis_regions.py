"""Error kinds per region: each planted error (the noise models of `corrupt`) is one region named right."""

from __future__ import annotations

import numpy as np
import pytest

from labelaudit.diagnosis import ErrorKind, ErrorKindParams, classify_slice, find_regions, region_weight
from labelaudit.formats.manifest import Corruption
from labelaudit.noise.ops import apply_corruption
from labelaudit.synth import synth_label

#: Two nested classes, as in the demo's brain (and the synthetic data): class 2 inside a ring of class 1.
CLEAN = synth_label((1, 48, 52), 2, np.random.default_rng(3))[0]
_RING = np.argwhere(CLEAN == 1)[0].tolist()

PLANTED = [  # (corruption, the kind, the class whose outline is wrong)
    (Corruption("missing", 2, {}), ErrorKind.MISSING, 2),
    (Corruption("missing", 1, {}), ErrorKind.MISSING, 1),
    (Corruption("spurious", 2, {"center": [5, 5], "radius": 3, "near": False}), ErrorKind.SPURIOUS, 2),
    (Corruption("dilation", 2, {"radius": 2}), ErrorKind.OVER, 2),
    (Corruption("dilation", 1, {"radius": 2}), ErrorKind.OVER, 1),
    (Corruption("erosion", 2, {"radius": 2}), ErrorKind.UNDER, 2),
    (Corruption("erosion", 1, {"radius": 2}), ErrorKind.UNDER, 1),
    (Corruption("shift", 2, {"dy": 0, "dx": 3}), ErrorKind.SHIFTED, 2),
    (Corruption("shift", 1, {"dy": 3, "dx": 0}), ErrorKind.SHIFTED, 1),
    (Corruption("wrong_class", 1, {"to": 2, "at": _RING}), ErrorKind.WRONG_CLASS, 2),
]


@pytest.mark.parametrize("corruption, kind, label_class", PLANTED,
                         ids=[f"{c.kind.value}-{c.label_class}" for c, _, _ in PLANTED])
def test_each_planted_error_is_named_right(corruption, kind, label_class):
    label = apply_corruption(CLEAN, corruption)
    regions = find_regions(label, CLEAN, slice_index=7)
    assert regions and {r.kind for r in regions} == {kind}, [(r.kind, r.pixels) for r in regions]
    assert {r.label_class for r in regions} == {label_class} and {r.slice_index for r in regions} == {7}
    # the regions cover every differing pixel, once
    covered = np.zeros(CLEAN.shape, dtype=int)
    for r in regions:
        covered += r.full_mask(CLEAN.shape)
    np.testing.assert_array_equal(covered, (label != CLEAN).astype(int))
    assert sum(r.pixels for r in regions) == int((label != CLEAN).sum())


def test_the_slice_takes_the_kind_of_its_weightiest_region():
    label = apply_corruption(CLEAN, Corruption("dilation", 2, {"radius": 2}))
    label = apply_corruption(label, Corruption("spurious", 1, {"center": [42, 46], "radius": 3, "near": False}))
    assert classify_slice(label, CLEAN) is ErrorKind.OVER  # by size: the dilation's ring is larger
    noise = np.where((label != CLEAN) & (label == 1), 0.9, 0.1)  # the model is sure only of the blob
    assert classify_slice(label, CLEAN, noise=noise) is ErrorKind.SPURIOUS
    blob = next(r for r in find_regions(label, CLEAN) if r.kind is ErrorKind.SPURIOUS)
    assert region_weight(blob, None) == blob.pixels
    assert region_weight(blob, noise) == pytest.approx(blob.pixels * (0.9 - ErrorKindParams().noise_floor))


def test_regions_of_wrong_class_name_the_class_given_and_the_class_seen():
    pred = np.zeros((30, 40), dtype=np.uint8)
    pred[5:15, 5:15], pred[18:27, 25:35] = 1, 2
    label = np.where(pred == 2, 1, pred).astype(np.uint8)  # the second structure labelled as class 1
    (region,) = find_regions(label, pred)
    assert (region.kind, region.label_value, region.pred_value, region.pixels) == (ErrorKind.WRONG_CLASS, 1, 2, 90)
    assert region.bbox == (18, 27, 25, 35)


def test_a_relabelled_structure_that_keeps_a_few_pixels_of_its_class_is_still_a_wrong_class():
    """Side by side, as gray matter beside white matter: the label gives a predicted class-2 structure to class 1
    but for a corner of 4 % of it; before swap_keep, the 1 % of match_overlap made that a moved border (an over-
    segmentation of class 1 on bench/kind_sweep.py's brain_wm_gm)."""
    pred = np.zeros((30, 40), dtype=np.uint8)
    pred[5:25, 5:15], pred[5:25, 15:35] = 1, 2
    label = np.where(pred == 2, 1, pred).astype(np.uint8)
    label[5:9, 31:35] = 2  # 16 of the structure's 400 pixels keep their class
    assert classify_slice(label, pred) is ErrorKind.WRONG_CLASS
    assert classify_slice(label, pred, ErrorKindParams(swap_keep=0.01)) is ErrorKind.SHIFTED


def test_small_pieces_are_no_regions_and_identical_slices_have_none():
    assert find_regions(CLEAN, CLEAN) == []
    label = CLEAN.copy()
    label[0, 0:3] = 1  # 3 pixels: below min_pixels
    assert find_regions(label, CLEAN) == []
    assert len(find_regions(label, CLEAN, params=ErrorKindParams(min_pixels=1))) == 1
    with pytest.raises(ValueError, match="shape"):
        find_regions(CLEAN, CLEAN[:10])


def test_pieces_an_erosion_removed_whole_are_under_segmentation():
    pred = np.zeros((40, 50), dtype=np.uint8)
    pred[np.hypot(*np.ogrid[-20:20, -15:35]) <= 8] = 1  # a blob ...
    pred[5:35, 40:43] = 1  # ... and a thin piece, 3 px wide
    label = np.zeros_like(pred)
    label[np.hypot(*np.ogrid[-20:20, -15:35]) <= 6] = 1  # eroded by 2 px: the thin piece is gone
    regions = find_regions(label, pred)
    assert {r.kind for r in regions} == {ErrorKind.UNDER}, [(r.kind, r.pixels) for r in regions]
    assert classify_slice(label, pred) is ErrorKind.UNDER
    # the same piece left out while the blob's outline is right is a missing structure
    whole = np.where(pred[:, :40] != 0, 1, 0).astype(np.uint8)
    whole = np.concatenate([whole, np.zeros((40, 10), dtype=np.uint8)], axis=1)
    assert classify_slice(whole, pred) is ErrorKind.MISSING

"""The kind of error per slice, on hand-made masks where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from labelaudit.diagnosis import (
    ErrorKind, ErrorKindParams, classify_slice, classify_slices, dominant_kind, kind_masses,
)


def disk(shape=(40, 40), center=(20, 20), radius=8.0, value=1) -> np.ndarray:
    y, x = np.ogrid[:shape[0], :shape[1]]
    return np.where((y - center[0]) ** 2 + (x - center[1]) ** 2 <= radius ** 2, value, 0).astype(np.uint8)


def test_identical_and_empty_slices_are_none():
    truth = disk()
    assert classify_slice(truth, truth) is ErrorKind.NONE
    empty = np.zeros_like(truth)
    assert classify_slice(empty, empty) is ErrorKind.NONE


def test_small_boundary_differences_are_none():
    truth = disk(radius=10)
    wobble = truth.copy()
    wobble[10, 18:23] = 0  # 5 pixels of a ~300 pixel disk: within the tolerance
    assert classify_slice(wobble, truth) is ErrorKind.NONE
    # without tolerance the same slice is an under-segmentation
    assert classify_slice(wobble, truth, ErrorKindParams(tolerance_px=0.0, min_pixels=1)) is ErrorKind.UNDER


def test_dilated_label_is_over_and_eroded_label_is_under():
    truth = disk(radius=8)
    assert classify_slice(disk(radius=11), truth) is ErrorKind.OVER
    assert classify_slice(disk(radius=5), truth) is ErrorKind.UNDER


def test_shifted_label_is_shifted_boundary():
    truth = disk(center=(20, 20))
    assert classify_slice(disk(center=(20, 24)), truth) is ErrorKind.SHIFTED


def test_missing_and_spurious_structures():
    truth = disk(center=(12, 12), radius=5) | disk(center=(28, 28), radius=5)
    only_one = disk(center=(12, 12), radius=5)
    # the prediction sees a second structure the label lacks
    assert classify_slice(only_one, truth) is ErrorKind.MISSING
    assert classify_slice(np.zeros_like(truth), truth) is ErrorKind.MISSING
    # the label has a structure the prediction does not support
    assert classify_slice(truth, only_one) is ErrorKind.SPURIOUS
    assert classify_slice(truth, np.zeros_like(truth)) is ErrorKind.SPURIOUS


def test_a_component_that_touches_its_match_is_not_missing():
    truth = disk(radius=8)
    small = disk(radius=3)  # overlaps the structure fully: under-segmentation, not a missing structure
    masses = kind_masses(small, truth)
    assert masses.missing == 0 and masses.lacking > 0
    assert classify_slice(small, truth) is ErrorKind.UNDER


def test_wrong_class_whole_structure():
    pred = disk(center=(12, 12), radius=5, value=1) + disk(center=(28, 28), radius=5, value=2)
    label = pred.copy()
    label[label == 2] = 1  # the second structure labelled as class 1
    assert classify_slice(label, pred) is ErrorKind.WRONG_CLASS
    masses = kind_masses(label, pred)
    assert masses.swapped == int((pred == 2).sum()) and masses.border == 0


def test_moved_border_between_classes_is_a_shifted_boundary():
    pred = np.zeros((40, 40), dtype=np.uint8)
    pred[10:30, 5:20] = 1
    pred[10:30, 20:35] = 2
    label = pred.copy()
    label[10:30, 20:26] = 1  # class 1 pushed into class 2: both classes still there, their border moved
    masses = kind_masses(label, pred)
    assert masses.swapped == 0 and masses.border == 120
    assert classify_slice(label, pred) is ErrorKind.SHIFTED


def test_classify_slices_stack_and_shape_check():
    truth = disk()
    label = np.stack([truth, disk(radius=11), np.zeros_like(truth)])
    pred = np.stack([truth, truth, truth])
    assert classify_slices(label, pred) == [ErrorKind.NONE, ErrorKind.OVER, ErrorKind.MISSING]
    with pytest.raises(ValueError, match="shape"):
        classify_slices(label, pred[:2])


def test_dominant_kind_weights_by_score_and_ignores_none():
    kinds = [ErrorKind.OVER, "missing_structure", ErrorKind.OVER, ErrorKind.NONE]
    assert dominant_kind(kinds, [0.3, 0.5, 0.3, 0.9]) is ErrorKind.OVER
    assert dominant_kind(kinds, [0.1, 0.5, 0.1, 0.9]) is ErrorKind.MISSING
    assert dominant_kind([ErrorKind.NONE], [1.0]) is ErrorKind.NONE
    assert dominant_kind([], []) is ErrorKind.NONE


def test_tokens_and_labels():
    assert ErrorKind("over_segmentation") is ErrorKind.OVER
    assert ErrorKind.MISSING.label == "missing structure"
    assert {k.value for k in ErrorKind} == {"none", "over_segmentation", "under_segmentation", "missing_structure",
                                           "spurious_structure", "shifted_boundary", "wrong_class"}


# ----------------------------------------------------------------------------- the rules, one planted case each

def test_the_tolerance_is_an_outline_displacement_not_an_area_fraction():
    truth = disk(shape=(60, 60), center=(30, 30), radius=20)
    one_px = disk(shape=(60, 60), center=(30, 30), radius=21)  # a 1 px dilation: ~10% of this large disk's area
    assert kind_masses(one_px, truth).differing <= 0.1 * (one_px != 0).sum()  # a 10% area tolerance forgives it
    assert classify_slice(one_px, truth) is ErrorKind.OVER
    assert classify_slice(truth, one_px) is ErrorKind.UNDER


def test_a_structure_one_of_them_lacks_is_not_forgiven_by_the_tolerance():
    truth = disk(shape=(60, 60), center=(30, 30), radius=20)
    label = truth | disk(shape=(60, 60), center=(4, 55), radius=2)  # a 13 px blob far from the structure
    label[10, 28:31] = 0  # and 3 px of outline wobble
    masses = kind_masses(label, truth)
    assert masses.differing <= ErrorKindParams().tolerance_px * masses.outline  # the outlines agree
    assert classify_slice(label, truth) is ErrorKind.SPURIOUS
    assert classify_slice(truth, label) is ErrorKind.MISSING


def test_a_structure_the_label_holds_a_little_of_is_under_segmented_not_missing():
    pred = np.zeros((30, 50), dtype=np.uint8)
    pred[10:17, 5:45] = 1  # a thin structure of 280 px
    label = np.zeros_like(pred)
    label[13, 15:35] = 1  # what an erosion leaves of it: 20 px, 7% of it, inside it
    assert classify_slice(label, pred) is ErrorKind.UNDER
    assert classify_slice(np.zeros_like(pred), pred) is ErrorKind.MISSING  # none of it: missing


def test_one_sided_pieces_on_a_structure_are_not_a_shift_unless_its_masses_balance():
    pred = np.zeros((40, 40), dtype=np.uint8)
    pred[10:30, 10:30] = 1
    label = pred.copy()
    label[10:30, 10:13] = 0  # 60 px short on the left
    label[10:13, 16:30] = 0  # 42 px short at the top
    label[18:25, 30:33] = 1  # 21 px too far on the right: a wobble, not the other side of a shift
    assert classify_slice(label, pred) is ErrorKind.UNDER
    moved = np.zeros_like(pred)
    moved[10:30, 13:33] = 1  # the same square 3 px to the right: 60 px each side
    assert classify_slice(moved, pred) is ErrorKind.SHIFTED


def test_the_noise_map_is_read_as_disagreement_given_the_slice_scores():
    truth = disk(shape=(60, 60), center=(30, 30), radius=10)
    label = disk(shape=(60, 60), center=(30, 30), radius=13) | disk(shape=(60, 60), center=(5, 5), radius=3)
    disagreement = np.where(label != truth, 0.6, 0.0)  # the model is unsure of the dilated ring ...
    disagreement[(label != 0) & (disk(shape=(60, 60), center=(5, 5), radius=3) != 0)] = 0.95  # ... sure of the blob
    score = 0.2
    noise = (disagreement * score)[None].astype(np.float32)  # the map as `score` writes it
    stack, pred = label[None], truth[None]
    assert classify_slices(stack, pred) == [ErrorKind.OVER]  # by size: the ring
    assert classify_slices(stack, pred, noise=noise, scores=np.array([score])) == [ErrorKind.SPURIOUS]
    assert classify_slices(stack, pred, noise=noise / score) == [ErrorKind.SPURIOUS]  # already a disagreement
    assert classify_slices(stack, pred, noise=noise, scores=np.array([0.0])) == [ErrorKind.OVER]  # unscored: size
    with pytest.raises(ValueError, match="scores"):
        classify_slices(stack, pred, scores=np.array([score]))

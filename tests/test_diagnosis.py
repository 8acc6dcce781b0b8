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
    assert classify_slice(wobble, truth, ErrorKindParams(tolerance=0.0, min_pixels=1)) is ErrorKind.UNDER


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

"""labelaudit.preprocess: label values <-> classes, CT vs per-case normalisation, padding and restoring; by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labelaudit.errors import InputError, ModelError
from labelaudit.preprocess import (
    ChannelNorm, LabelMap, Preprocessing, fit_preprocessing, is_ct, normalise_image, pad_to_multiple, prepare_case,
    restore_in_plane,
)
from labelaudit.types import Case, Geometry, Volume

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- LabelMap

def test_label_map_from_declared_labels_is_sorted_by_value():
    labels = LabelMap.from_declared({"tumour": 2, "background": 0, "liver": 1})
    assert labels.values == (0, 1, 2) and labels.names == ("background", "liver", "tumour")
    assert labels.num_classes == 3


def test_label_map_from_found_values_adds_background():
    labels = LabelMap.from_declared(None, [5, 2, 2])
    assert labels.values == (0, 2, 5) and labels.names == ("background", "label_2", "label_5")


def test_encode_maps_values_to_class_indices_and_decode_inverts_it():
    labels = LabelMap((0, 2, 5), ("background", "a", "b"))
    label = np.array([[0, 5], [2, 2]], dtype=np.uint8)
    classes = labels.encode(label)
    assert classes.dtype == np.int64 and classes.tolist() == [[0, 2], [1, 1]]
    decoded = labels.decode(classes)
    assert decoded.dtype == np.uint8 and decoded.tolist() == label.tolist()


def test_encode_without_a_lookup_table_for_negative_values():
    labels = LabelMap((-1, 0, 3), ("outside", "background", "c"))
    classes = labels.encode(np.array([[-1, 3, 0]], dtype=np.int16))
    assert classes.tolist() == [[0, 2, 1]]
    decoded = labels.decode(classes)
    assert decoded.dtype == np.int32 and decoded.tolist() == [[-1, 3, 0]]


def test_decode_uses_a_wider_type_for_large_values():
    assert LabelMap((0, 300), ("background", "big")).decode(np.array([1, 0])).dtype == np.int32


def test_unknown_label_values_are_an_input_error():
    labels = LabelMap((0, 2, 5), ("background", "a", "b"))
    with pytest.raises(InputError, match=r"label values \[3, 7\] are not among the model's classes \[0, 2, 5\]"):
        labels.encode(np.array([0, 3, 7, 2]))


# ----------------------------------------------------------------------------- normalisation

def test_ct_channel_is_clipped_then_standardised_with_the_fitted_values():
    prep = Preprocessing((ChannelNorm("ct", clip_low=-100.0, clip_high=100.0, mean=10.0, std=20.0),))
    image = np.array([-500.0, 0.0, 50.0, 900.0], dtype=np.float32).reshape(1, 1, 2, 2)
    out = normalise_image(image, prep)
    # clipped to [-100, 0, 50, 100], then (x - 10) / 20
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-5.5, -0.5, 2.0, 4.5])


def test_mr_channel_is_z_scored_over_the_whole_case_not_per_slice():
    prep = Preprocessing((ChannelNorm("zscore"),))
    image = np.stack([np.zeros((2, 2)), np.full((2, 2), 2.0)])[:, None].astype(np.float32)  # (S=2, C=1, 2, 2)
    out = normalise_image(image, prep)  # mean 1, std 1 over both slices
    np.testing.assert_allclose(out[:, 0], np.stack([np.full((2, 2), -1.0), np.full((2, 2), 1.0)]))


def test_channels_are_normalised_each_by_its_own_rule():
    prep = Preprocessing((ChannelNorm("ct", -1000.0, 1000.0, 0.0, 100.0), ChannelNorm("zscore")))
    image = np.array([[[[100.0, 300.0]], [[1.0, 3.0]]]], dtype=np.float32)  # (1, 2, 1, 2)
    out = normalise_image(image, prep)
    np.testing.assert_allclose(out[0, 0], [[1.0, 3.0]])  # CT: / 100, fixed
    np.testing.assert_allclose(out[0, 1], [[-1.0, 1.0]])  # MR: mean 2, std 1 of this case


def test_a_constant_mr_channel_becomes_zeros_not_nan():
    out = normalise_image(np.full((1, 1, 2, 2), 7.0, dtype=np.float32), Preprocessing((ChannelNorm("zscore"),)))
    assert np.all(out == 0.0)


def test_a_channel_count_the_run_does_not_expect_is_a_model_error():
    with pytest.raises(ModelError, match="image has 1 channels, the model expects 2"):
        normalise_image(np.zeros((1, 1, 2, 2), np.float32),
                        Preprocessing((ChannelNorm("zscore"), ChannelNorm("zscore"))))


def test_is_ct_reads_the_channel_name():
    assert is_ct("CT") and is_ct(" ct_hu ") and is_ct("HU")
    assert not is_ct("T1") and not is_ct("MR") and not is_ct("noncontrastCT")


def _case(case_id: str, image: np.ndarray, label: np.ndarray | None, spacing=(1.0, 1.0, 3.0)) -> Case:
    geometry = Geometry(tuple(reversed(image.shape)), spacing, (0.0, 0.0, 0.0), IDENTITY)
    return Case(case_id, (Volume(image, geometry),), Volume(label, geometry) if label is not None else None)


def test_fit_preprocessing_uses_foreground_percentiles_for_ct_and_z_score_for_mr():
    image = np.full((2, 10, 10), -1000.0, dtype=np.float32)  # background far outside: must not count
    image[0] = np.arange(100, dtype=np.float32).reshape(10, 10)
    label = np.zeros((2, 10, 10), dtype=np.uint8)
    label[0] = 1  # the foreground: exactly the values 0..99
    cases = [_case("a", image, label), _case("b", image, None), _case("c", image, np.zeros_like(label))]
    prep = fit_preprocessing(cases, ["CT"], LabelMap((0, 1), ("background", "fg")))
    (norm,) = prep.channels
    # numpy's linear percentiles of 0..99: 0.5 % -> 0.495, 99.5 % -> 98.505; the clipped values stay symmetric
    assert norm.kind == "ct"
    assert norm.clip_low == pytest.approx(0.495) and norm.clip_high == pytest.approx(98.505)
    assert norm.mean == pytest.approx(49.5)
    assert norm.std == pytest.approx(math.sqrt((100 ** 2 - 1) / 12), rel=1e-3)
    mr = fit_preprocessing([_case("a", image, label)], ["T2"], LabelMap((0, 1), ("background", "fg")))
    assert mr.channels == (ChannelNorm("zscore"),) and mr.target_spacing is None


def test_prepare_case_without_resampling_is_normalise_and_encode():
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (Z, Y, X): slices along numpy axis 0
    label = np.zeros((2, 3, 4), dtype=np.uint8)
    label[1, 1:, 2:] = 4
    prep = Preprocessing((ChannelNorm("ct", -1000.0, 1000.0, 0.0, 2.0),))
    net_image, classes = prepare_case(_case("a", image, label), prep, LabelMap((0, 4), ("background", "x")))
    assert net_image.shape == (2, 1, 3, 4) and classes.shape == (2, 3, 4)
    np.testing.assert_allclose(net_image[:, 0], image / 2.0)
    assert classes.dtype == np.int64 and classes.tolist() == (label // 4).tolist()
    assert prepare_case(_case("a", image, label), prep)[1] is None  # no label map: no classes


def test_resample_factor_is_input_over_target_spacing():
    case = _case("a", np.zeros((2, 4, 4), np.float32), None, spacing=(0.5, 1.0, 3.0))  # ITK x, y, z
    assert Preprocessing((ChannelNorm("zscore"),)).resample_factor(case) == (1.0, 1.0)
    # in-plane spacing (rows, columns) = (1.0, 0.5) mm; target (2.0, 1.0) mm -> half the pixels each way
    assert Preprocessing((ChannelNorm("zscore"),), (2.0, 1.0)).resample_factor(case) == (0.5, 0.5)


# ----------------------------------------------------------------------------- padding and restoring

def test_pad_to_multiple_pads_bottom_and_right_with_zeros():
    array = np.ones((2, 5, 7), dtype=np.float32)
    padded, size = pad_to_multiple(array, 4)
    assert size == (5, 7) and padded.shape == (2, 8, 8)
    assert padded[:, :5, :7].sum() == 2 * 5 * 7 and padded.sum() == 2 * 5 * 7  # zeros only in the margin
    four_d, _ = pad_to_multiple(np.ones((1, 3, 5, 7)), 16)
    assert four_d.shape == (1, 3, 16, 16)  # only the last two axes


def test_pad_to_multiple_returns_an_aligned_array_unchanged():
    array = np.ones((1, 8, 16))
    padded, size = pad_to_multiple(array, 8)
    assert padded is array and size == (8, 16)


def test_restore_in_plane_nearest_repeats_pixels():
    stack = np.array([[[1, 2], [3, 4]]], dtype=np.int64)
    restored = restore_in_plane(stack, (4, 4), order=0)
    assert restored.dtype == np.int64
    assert restored.tolist() == [[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]]


def test_restore_in_plane_linear_averages_neighbours_when_shrinking():
    stack = np.tile(np.arange(4, dtype=np.float32), (1, 4, 1))  # every row 0 1 2 3
    restored = restore_in_plane(stack, (2, 2), order=1)  # output pixel centres at input x = 0.5 and 2.5
    assert restored.dtype == np.float32
    np.testing.assert_allclose(restored, [[[0.5, 2.5], [0.5, 2.5]]])


def test_restore_in_plane_keeps_a_stack_of_the_right_size():
    stack = np.zeros((3, 4, 5), dtype=np.float32)
    assert restore_in_plane(stack, (4, 5), order=1) is stack

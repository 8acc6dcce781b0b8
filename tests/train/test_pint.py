"""labelaudit.train.pint's public functions on hand-computable inputs: EMA warm start, the threshold ramp, the loss.

The loss cases use one image of two pixels with logits (log 3, 0) and (0, log 3): softmax (3/4, 1/4) and
(1/4, 3/4). Labelled 0 and 1, each pixel's cross-entropy is -log(3/4), so the mean CE is log(4/3).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from labelaudit.errors import UsageError  # noqa: E402
from labelaudit.config import PintParams  # noqa: E402
from labelaudit.train.pint import (  # noqa: E402
    PintMethod, ema_decay, ema_update, pint_loss, pixel_threshold, roi_uncertainty,
)

CE = math.log(4 / 3)
#: 1 - soft Dice of class 1: intersection 3/4, |p| + |y| = 1 + 1, smoothed by 1: 1 - (1.5 + 1) / (2 + 1).
DICE_LOSS = 1 - 2.5 / 3


def _one_image():
    logits = torch.tensor([[[[math.log(3), 0.0]], [[0.0, math.log(3)]]]])  # (1, 2, 1, 2)
    classes = torch.tensor([[[0, 1]]])  # (1, 1, 2)
    opposite = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])  # a teacher sure of the other class at each pixel
    return logits, classes, opposite


# ----------------------------------------------------------------------------- EMA

def test_ema_decay_warm_start_then_gamma():
    # g_t = min(1 - 1/(t + 1), gamma) with t = step + 1
    assert ema_decay(0, 0.99) == 0.5
    assert ema_decay(1, 0.99) == pytest.approx(2 / 3)
    assert ema_decay(8, 0.9) == pytest.approx(0.9)  # t = 9: 1 - 1/10 reaches gamma
    assert [ema_decay(s, 0.9) for s in (9, 100, 10_000)] == [0.9, 0.9, 0.9]
    decays = [ema_decay(s, 0.999) for s in range(50)]
    assert decays == sorted(decays)


def test_ema_update_moves_floats_and_copies_integer_buffers():
    teacher, student = torch.nn.BatchNorm2d(1), torch.nn.BatchNorm2d(1)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
        student.running_mean.fill_(4.0)
    student.num_batches_tracked.fill_(7)
    ema_update(teacher, student, 0.75)
    assert teacher.weight.item() == pytest.approx(0.75 * 1 + 0.25 * 3)
    assert teacher.running_mean.item() == pytest.approx(0.25 * 4)  # teacher's was 0
    assert teacher.num_batches_tracked.item() == 7


# ----------------------------------------------------------------------------- the pixel threshold ramp

def test_pixel_threshold_ramps_from_start_to_one():
    # h(t) = start + (1 - start) exp(-5 (1 - t/T)^2)
    assert pixel_threshold(0, 100, 0.75) == pytest.approx(0.75 + 0.25 * math.exp(-5))
    assert pixel_threshold(50, 100, 0.75) == pytest.approx(0.75 + 0.25 * math.exp(-5 / 4))
    assert pixel_threshold(100, 100, 0.75) == pytest.approx(1.0)
    assert pixel_threshold(500, 100, 0.75) == pytest.approx(1.0)  # t/T clamped at 1
    assert pixel_threshold(0, 0, 0.5) == pytest.approx(0.5 + 0.5 * math.exp(-5))  # T = 0 read as 1


# ----------------------------------------------------------------------------- the loss

@pytest.mark.parametrize("variant", ["pint", "pnt"])
def test_alpha_one_is_the_cross_entropy_of_the_labels(variant):
    logits, classes, teacher = _one_image()
    loss, parts = pint_loss(logits, classes, teacher, torch.ones(1, 1, 2), torch.ones(1), 2.0, variant)
    assert loss.item() == pytest.approx(CE)
    assert parts["ce"].item() == pytest.approx(CE)
    assert parts["mse"].item() == pytest.approx(2 * 0.75 ** 2)  # (3/4)^2 + (3/4)^2 per pixel, reported anyway


def test_int_supervises_with_cross_entropy_plus_dice():
    logits, classes, teacher = _one_image()
    # INT ignores alpha_pixel: the label term is (CE + Dice) / 2
    loss, _ = pint_loss(logits, classes, teacher, torch.zeros(1, 1, 2), torch.ones(1), 1.0, "int")
    assert loss.item() == pytest.approx(0.5 * (CE + DICE_LOSS))


@pytest.mark.parametrize("variant", ["pint", "int"])
def test_alpha_image_zero_is_the_weighted_mse_to_the_pseudo_label(variant):
    logits, classes, teacher = _one_image()
    loss, _ = pint_loss(logits, classes, teacher, torch.ones(1, 1, 2), torch.zeros(1), 2.0, variant)
    assert loss.item() == pytest.approx(2.0 * 1.125)  # lambda * ((3/4)^2 + (3/4)^2)


def test_alpha_pixel_zero_is_the_mse_too():
    logits, classes, teacher = _one_image()
    loss, _ = pint_loss(logits, classes, teacher, torch.zeros(1, 1, 2), torch.ones(1), 2.0, "pint")
    assert loss.item() == pytest.approx(2.0 * 1.125)
    half = torch.tensor([[[1.0, 0.0]]])  # pixel 0 by its label, pixel 1 by the teacher
    loss, _ = pint_loss(logits, classes, teacher, half, torch.ones(1), 1.0, "pint")
    assert loss.item() == pytest.approx((-math.log(0.75) + 1.125) / 2)


def test_pnt_ignores_alpha_image():
    logits, classes, teacher = _one_image()
    loss, _ = pint_loss(logits, classes, teacher, torch.ones(1, 1, 2), torch.zeros(1), 2.0, "pnt")
    assert loss.item() == pytest.approx(CE)


def test_the_loss_averages_images_each_by_its_own_alpha():
    logits, classes, teacher = _one_image()
    two = [torch.cat([t, t]) for t in (logits, classes, teacher)]
    loss, _ = pint_loss(*two, torch.ones(2, 1, 2), torch.tensor([1.0, 0.0]), 1.0, "pint")
    assert loss.item() == pytest.approx((CE + 1.125) / 2)  # image 0 by its labels, image 1 by the teacher


def test_roi_uncertainty_is_the_mean_over_the_dilated_union():
    unc = torch.tensor([[[0.2, 0.4, 1.0, 0.0]], [[0.5, 0.5, 0.5, 0.9]]])  # (2, 1, 4)
    classes = torch.tensor([[[1, 0, 0, 0]], [[0, 0, 0, 0]]])
    teacher = torch.zeros(2, 2, 1, 4)
    teacher[:, 0] = 1.0  # background everywhere
    teacher[0, :, 0, 2] = torch.tensor([0.0, 1.0])  # image 0: foreground predicted at pixel 2
    u = roi_uncertainty(unc, classes, teacher, dilation=0)
    assert u[0].item() == pytest.approx((0.2 + 1.0) / 2)  # label pixel 0, predicted pixel 2
    assert u[1].item() == pytest.approx((0.5 * 3 + 0.9) / 4)  # nothing in either: the whole slice
    assert roi_uncertainty(unc, classes, teacher, dilation=1)[0].item() == pytest.approx((0.2 + 0.4 + 1.0 + 0.0) / 4)


def test_an_unknown_variant_is_a_usage_error():
    with pytest.raises(UsageError, match="--variant 'nope'"):
        PintMethod(PintParams(variant="nope"))

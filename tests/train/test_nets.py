"""The U-Net and the perturbed segmenter (the graph contract's PyTorch side)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from labelaudit.config import NetParams  # noqa: E402
from labelaudit.train.nets import PerturbedSegmenter, build_unet, perturbed_prediction  # noqa: E402

SMALL = NetParams(features=(4, 8, 8, 8, 8, 4), groups=4)


def _net(in_channels: int = 2, classes: int = 3):
    torch.manual_seed(0)
    return build_unet(in_channels, classes, SMALL).eval()


def test_unet_shapes_any_channels_and_classes():
    net = _net(2, 3)
    out = net(torch.randn(3, 2, 32, 48))
    assert out.shape == (3, 3, 32, 48)
    # a 16x16 input has a 1x1 bottleneck: GroupNorm copes where InstanceNorm would fail
    assert net(torch.randn(1, 2, 16, 16)).shape == (1, 3, 16, 16)


def test_groups_must_divide_features():
    with pytest.raises(ValueError, match="divide"):
        build_unet(1, 2, NetParams(features=(6, 8, 8, 8, 8, 4), groups=4))


def test_noise_free_single_pass_is_plain_softmax_and_entropy():
    net = _net()
    image = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        prob, unc = PerturbedSegmenter(net, 3)(image, torch.zeros(1, 2, 32, 32))
        want = torch.softmax(net(image), dim=1)
    assert prob.shape == (2, 3, 32, 32) and unc.shape == (2, 32, 32)
    torch.testing.assert_close(prob, want)
    entropy = -(want * torch.log(want)).sum(1) / math.log(3)
    torch.testing.assert_close(unc, entropy, atol=1e-6, rtol=1e-5)
    assert float(unc.min()) >= 0 and float(unc.max()) <= 1 + 1e-6


def test_pass_k_sees_image_plus_noise_k_broadcast_over_batch():
    net = _net()
    image, noise = torch.randn(3, 2, 32, 32), torch.randn(2, 2, 32, 32) * 0.5
    with torch.no_grad():
        prob, _ = perturbed_prediction(net, image, noise, 3)
        want = (torch.softmax(net(image + noise[0]), 1) + torch.softmax(net(image + noise[1]), 1)) / 2
        # per-image noise (K, N, C, H, W), as PINT's training passes use it
        per_image = noise[:, None].expand(2, 3, 2, 32, 32)
        prob5, _ = perturbed_prediction(net, image, per_image, 3)
    torch.testing.assert_close(prob, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(prob5, prob)

"""The networks: a 2D U-Net (MONAI's BasicUNet) and the perturbed segmenter that export and PINT share.

Array legend: N images, K perturbations, C_in input channels, C classes, H x W pixels
(H and W multiples of 16: the U-Net halves them four times).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import NetParams

__all__ = ["NetParams", "build_unet", "perturbed_prediction", "PerturbedSegmenter", "DIVISOR"]

#: The U-Net halves H and W four times, so inputs must be multiples of this.
DIVISOR = 16
#: Guards log(0) in the entropy; small enough not to move a probability of 1e-4 noticeably.
ENTROPY_EPS = 1e-8


def build_unet(in_channels: int, num_classes: int, params: NetParams = NetParams()) -> nn.Module:
    """A 2D U-Net mapping (N, C_in, H, W) float32 to logits (N, C, H, W); H, W multiples of 16."""
    from monai.networks.nets import BasicUNet

    if len(params.features) != 6:
        raise ValueError(f"features needs 6 values (5 encoder levels + last decoder), got {params.features}")
    bad = [f for f in params.features if f % params.groups]
    if bad:
        raise ValueError(f"GroupNorm groups={params.groups} must divide every feature count, not {bad}")
    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                     features=params.features, norm=("group", {"num_groups": params.groups, "affine": True}),
                     dropout=params.dropout)


def perturbed_prediction(net: nn.Module, image: torch.Tensor, noise: torch.Tensor,
                         num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean softmax over K perturbed passes and its normalised entropy.

    image: (N, C_in, H, W) float. noise: (K, C_in, H, W) (shared by every image, the ONNX contract) or
    (K, N, C_in, H, W) (one draw per image, as in PINT training). Pass k sees image + noise[k].
    Returns prob_mean (N, C, H, W) and uncertainty (N, H, W) = entropy(prob_mean) / log C in [0, 1].
    """
    n, c_in, h, w = image.shape
    if noise.dim() == 4:
        noise = noise.unsqueeze(1)
    perturbed = (image.unsqueeze(0) + noise).reshape(-1, c_in, h, w)  # (K*N, C_in, H, W), k-major
    logits = net(perturbed)
    probs = torch.softmax(logits.float(), dim=1).reshape(-1, n, num_classes, h, w)
    prob_mean = probs.mean(dim=0)
    # log C as a constant; a single-class map has no uncertainty, so guard the division
    log_c = math.log(max(num_classes, 2))
    entropy = -(prob_mean * torch.log(prob_mean + ENTROPY_EPS)).sum(dim=1)
    return prob_mean, entropy / log_c


class PerturbedSegmenter(nn.Module):
    """The graph that scoring runs: (image (N, C_in, H, W), noise (K, C_in, H, W)) -> (prob_mean, uncertainty).

    prob_mean: (N, C, H, W) = mean_k softmax(net(image + noise[k])); uncertainty: (N, H, W) =
    entropy(prob_mean) / log C. See runfolder.perturbation_noise for the noise bank scoring feeds it.
    """

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes

    def forward(self, image: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return perturbed_prediction(self.net, image, noise, self.num_classes)

"""Training methods (plain, PINT) and their hyperparameters.

This module is stdlib only, so a FitConfig can be built (and `--help` shown) without PyTorch; the
training code lives in `loop.py`, `plain.py` and `pint.py`, which import torch.
Every default below says where it comes from: the paper, a public implementation, or a stated choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

METHODS = ("pint", "plain", "mcpm")
VARIANTS = ("pint", "pnt", "int")


@dataclass(frozen=True)
class NetParams:
    """The U-Net's shape (MONAI BasicUNet, 2D).

    features: channels of the 5 encoder levels and of the last decoder level (BasicUNet's convention).
    Default (8, 16, 32, 64, 128, 8): a choice measured on 2 CPU cores, about 55 ms per training step
    at batch 8 of 80x80 (the 16-wide full-resolution levels double that); use wider features on a GPU.
    groups: GroupNorm groups; must divide every feature count. GroupNorm has no running statistics,
    so the EMA teacher needs no buffer averaging and training and inference behave alike; unlike
    InstanceNorm it also works on the 1x1 bottleneck of a 16x16 input.
    """

    features: tuple[int, ...] = (8, 16, 32, 64, 128, 8)
    groups: int = 4
    dropout: float = 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "features": list(self.features)}

    @classmethod
    def from_json(cls, data: dict) -> NetParams:
        return cls(features=tuple(int(f) for f in data.get("features", cls.features)),
                   groups=int(data.get("groups", cls.groups)), dropout=float(data.get("dropout", cls.dropout)))


@dataclass(frozen=True)
class LoopParams:
    """The shared training loop (methods/loop.py). Defaults fit the demo (about 12 cases of 20 slices at
    64-96 px) in about a minute per fold and method on 2 CPU cores; raise `epochs` for real data.

    Optimiser: AdamW (a stated choice: it converges in the few hundred steps a CPU budget allows, where
    nnU-Net's SGD 0.01/momentum 0.99 needs thousands), with nnU-Net's poly decay lr*(1-t/T)^0.9.
    Sampling: nnU-Net's rule, a third of every batch forced to hold foreground.
    Augmentation: flips, a small rotation/scaling with probability 0.2 (nnU-Net's probability) and an
    intensity scale/shift on every sample.
    """

    epochs: int = 10
    iterations_per_epoch: int = 25
    batch_size: int = 8
    patch_size: int | None = None  # largest H/W of a training patch; None: the largest slice, capped at 256
    foreground_fraction: float = 0.33  # nnU-Net's oversample_foreground_percent
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    poly_exponent: float = 0.9  # nnU-Net
    augment: bool = True
    rotation_deg: float = 15.0
    scale_range: float = 0.15  # zoom factor in [1 - r, 1 + r]
    affine_probability: float = 0.2  # nnU-Net's p_rot / p_scale
    intensity_scale: float = 0.1  # multiply by U(1 - s, 1 + s)
    intensity_shift: float = 0.1  # add U(-s, s) (images are z-scored)

    @property
    def total_iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch


@dataclass(frozen=True)
class PintParams:
    """PINT (Shi & Wu, MICCAI 2021) as in shared/docs/research/algorithms.md §4. The paper's values for
    these could not be read; each default is the proposal of §4.4 unless said otherwise.

    ema_decay: gamma of the EMA teacher, with UA-MT's warm start min(1 - 1/(t+1), gamma) [UA-MT code].
    teacher_passes: K perturbed teacher passes per step; §4.4 proposes 8, we train with 4 to halve the
    teacher's CPU cost (the exported graph uses run.json's `perturbations.k`, 8, at scoring).
    noise_sigma, noise_clip: pass k sees x + clip(N(0, sigma^2), -clip, clip); pass 0 is noise-free,
    as in the exported graph [UA-MT code].
    pixel_weight: "hard": alpha_v = 1[u < h(t)], h(t) = threshold_start + (1 - threshold_start) rho(t),
    rho(t) = exp(-5 (1 - t/T)^2) [UA-MT's schedule, u normalised by log C]; "soft": max(1 - u, soft_floor)
    (the floor is our choice: without it the soft form collapsed in the prototype, §9 item 11).
    image_weight: "hard": alpha_i = 1[U_i <= quantile_q(memory)]; "soft": clip(1 - (U_i - Q.5)/(Q.9 - Q.5), 0, 1).
    U_i is the mean of u over the slice's region of interest (label or teacher foreground, dilated by
    roi_dilation pixels; the whole slice when both are empty) [§4.2(v), §9 item 15]; the memory keeps the
    U_i of the last `memory_batches` batches (FIFO).
    image_quantile: q; §4.2 proposes 1 - (estimated noise rate) when one is known, else 0.5.
    pseudo_weight: lambda on the MSE to the teacher's mean prediction; 1 keeps the paper's convex form.
    warmup_fraction: the first 10 % of iterations train with alpha = 1 (no teacher passes) while the
    teacher forms [§4.3].
    variant: pint (both levels, nested form of §4.2(vi)), pnt (pixel only), int (image only, with
    L_seg = (CE + Dice) / 2).
    """

    variant: str = "pint"
    ema_decay: float = 0.99
    teacher_passes: int = 4
    noise_sigma: float = 0.1
    noise_clip: float = 0.2
    pixel_weight: str = "hard"
    threshold_start: float = 0.75
    soft_floor: float = 0.5
    image_weight: str = "hard"
    image_quantile: float = 0.5
    memory_batches: int = 50
    roi_dilation: int = 5
    pseudo_weight: float = 1.0
    warmup_fraction: float = 0.1


def params_from_json(cls, data: dict):
    """Rebuild a Params dataclass from its JSON form (unknown keys ignored, lists back to tuples)."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key in known:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)

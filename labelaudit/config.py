"""Training methods (plain, PINT, MCPM) and their hyperparameters.

This module is stdlib only, so a FitConfig can be built (and `--help` shown) without PyTorch; the
training code lives in `loop.py`, `plain.py`, `pint.py` and `mcpm.py`, which import torch.
Every default below says where it comes from: the paper, a public implementation, or a stated choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

METHODS = ("pint", "plain", "mcpm")
VARIANTS = ("pint", "pnt", "int")
#: The default PINT variant: the image level alone. In the noise-rate sweep (bench/RESULTS.md, 2 datasets x
#: 4 rates x slice/case corruption) the pixel level, whose label term is cross-entropy alone (algorithms.md
#: §4.2(iv)), lost 4-56 points of Dice against the clean labels in all 16 cells (PINT 0.38-0.82, PNT alike),
#: while INT's Dice (0.64-0.94) stayed within 0.07 of plain's in 15 of 16 cells and INT ranked corrupted
#: slices better than PINT in 14 of 16. The paper's two-level PINT stays available as --variant pint.
DEFAULT_VARIANT = "int"


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
    §4.4 proposes 0.99 for 6,000-30,000 iterations; our CPU budgets are a few hundred (10 x 25 by
    default), where a 100-step horizon leaves the deployed teacher behind the student. 0.95 (a ~20-step
    horizon) is our measured choice: bench/pint_sweep.py on the corrupted demo (r = 0.4, 250 steps), with
    warmup_fraction 0.3, raised the teacher's Dice against the clean labels from 0.81 to 0.87 and slice AP
    from 0.81 to 0.85 (GPU run, 2026-11-26; bench/RESULTS.md).
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
    warmup_fraction: the first 30 % of iterations train with alpha = 1 (no teacher passes) while the
    teacher forms. §4.3 proposes 10 % of a long run; after 25 steps the teacher is still near-uniform
    (mean normalised entropy 0.86 on the demo), so the pixel weights hand most pixels to a teacher that
    knows nothing yet. Measured with ema_decay above (bench/pint_sweep.py).
    variant: pint (both levels, nested form of §4.2(vi)), pnt (pixel only), int (image only, with
    L_seg = (CE + Dice) / 2); the default is int, see DEFAULT_VARIANT.
    """

    variant: str = DEFAULT_VARIANT
    ema_decay: float = 0.95
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
    warmup_fraction: float = 0.3


@dataclass(frozen=True)
class McpmParams:
    """MCPM (Wang et al., MICCAI 2020) as in shared/docs/research/algorithms.md §3 and §8. The paper's values
    could not be read; each default is the proposal of §3.4/§3.6 unless said otherwise.

    virtual_lr: alpha, the step of the virtual SGD update W' = W - alpha * grad. W trains with AdamW at ~2e-3,
    and a plain-SGD virtual step that small gives almost no meta signal (§3.4, §9 item 6), so alpha is its own
    option in the range §3.4 proposes ([1e-2, 1e-1]); it follows the same poly decay as W's learning rate.
    meta_lr, meta_weight_decay: beta, AdamW on the meta mask network (Adam because the meta gradients are tiny,
    §9 item 2; decoupled decay, see McpmMethod.setup). MW-Net.py uses 1e-3 over some 20k iterations; our CPU budgets are a few hundred, and in a toy
    (ellipses, 60 % of slices dilated/eroded 2-3 px, 150 iterations) Theta barely moved at 1e-3 (mean R 0.93
    on corrupted against 0.95 on clean pixels), while 3e-3 separated them (0.009 against 0.72): 3e-3.
    meta_batch_size: m, slices per meta batch (0: the training batch size n).
    meta_every: k, one meta (bilevel) step every k iterations; 1 is MW-Net's, larger is cheaper (§8.3).
    warmup_fraction: the first 10 % of iterations train W unweighted (R = 1, no meta steps), so that the
    first loss maps Theta sees are meaningful (§3.6 proposes 1-2 epochs; a choice).
    hidden, dilations: the meta mask network, 3x3 convolutions with these dilations (receptive field
    1 + 2 * sum(dilations) = 15 px), ReLU, no normalisation, then a 1x1 convolution and a sigmoid (§3.2).
    initial_weight: R at the start, through the final bias logit(0.9) (§9 item 1: start near the unweighted loss).
    normalise: "sum", sum(R * CE) / sum(R) [the earlier MW-Net script, pixel L2RW], with the gradient through
    the denominator, so Theta controls only how the weight is distributed, not its overall scale; or "mean",
    sum(R * CE) / (n |Omega|) [MW-Net.py, §3.4's default]. Measured in the toy above at 300 iterations: with
    "mean" the overall scale of R acts as a learning rate, and Theta drove R to 1 everywhere (beta 1e-2:
    no separation left, test Dice 0.908 against plain's 0.918); with "sum", test Dice 0.963 (beta 3e-3) and
    0.952 (1e-2), R 0.001-0.005 on corrupted pixels.
    train_dice: add an R-weighted soft Dice to the R-weighted CE (as plain adds Dice to CE), in the virtual and
    the real step alike, so that MCPM and plain differ only by the weights.
    meta_dice: the meta loss is CE + soft Dice instead of CE alone (§9 item 7: Theta must not win by
    suppressing the foreground).
    loss_eps: the loss map is -log(p_y + eps), in training and in meta_weight.onnx alike.
    """

    virtual_lr: float = 0.05
    meta_lr: float = 3e-3
    meta_weight_decay: float = 1e-4
    meta_batch_size: int = 0
    meta_every: int = 1
    warmup_fraction: float = 0.1
    hidden: int = 16
    dilations: tuple[int, ...] = (1, 2, 4)
    initial_weight: float = 0.9
    normalise: str = "sum"
    train_dice: bool = True
    meta_dice: bool = True
    loss_eps: float = 1e-6

    def to_json(self) -> dict:
        return {**asdict(self), "dilations": list(self.dilations)}


def params_from_json(cls, data: dict):
    """Rebuild a Params dataclass from its JSON form (unknown keys ignored, lists back to tuples)."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key in known:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


@dataclass(frozen=True)
class Perturbations:
    """Test-time perturbations of the segmentation/uncertainty graph (PINT's K teacher passes).

    Pass k adds clip(N(0, sigma^2), -clip, clip) noise drawn from `seed`; pass 0 is noise-free.
    """

    k: int = 8
    sigma: float = 0.1
    clip: float = 0.2
    seed: int = 0

"""Training: methods, variants, exporters, the Params of every method, Perturbations and FitConfig (stdlib only)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path

from ..errors import UsageError
from .choices import parse_choice


class Method(str, Enum):
    """A training method of `fit` (train/registry.py maps each to its implementation)."""

    PINT = "pint"
    PLAIN = "plain"  # the baseline: CE + soft Dice on the labels as given
    MCPM = "mcpm"

class Variant(str, Enum):
    """PINT's levels: pixel and image (the paper's), pixel only, image only."""

    PINT = "pint"
    PNT = "pnt"
    INT = "int"

class WeightRule(str, Enum):
    """How PINT turns uncertainty into a loss weight: a 0/1 cut (the paper's) or a soft ramp."""

    HARD = "hard"
    SOFT = "soft"

class MetaNormalise(str, Enum):
    """How MCPM normalises the meta weight R in the training loss (McpmParams.normalise)."""

    CLASS = "class"  # by the batch mean of R over the pixels of each given class (the default, see decisions)
    MEAN = "mean"  # not at all: the plain mean of R x CE
    SUM = "sum"  # by the sum of R (the paper's, which let R collapse on the foreground)

class ImageDtype(str, Enum):
    """How the preprocessed folder stores normalised images: float32 (exactly what training sees) or float16 (half the disk)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"

class Exporter(str, Enum):
    """The ONNX exporter: torch.export based (maintained) or the legacy TorchScript tracer."""

    DYNAMO = "dynamo"
    TORCHSCRIPT = "torchscript"

#: The baseline U-Net: on the audit-quality suite's development half it audited and segmented better than PINT
#: (see docs/decisions.md); PINT and MCPM stay available with --method.
DEFAULT_METHOD = Method.PLAIN

#: PINT's variant when --method pint: the image level alone, since the pixel level lost Dice in the noise-rate
#: sweep (see docs/decisions.md).
DEFAULT_VARIANT = Variant.INT

#: The fast exporter; both exporters pass the same parity check (see docs/decisions.md).
DEFAULT_EXPORTER = Exporter.TORCHSCRIPT

def params_to_json(params) -> dict:
    """A Params dataclass as JSON: enums as their values, tuples as lists (params_from_json reverses it)."""
    return {f.name: _plain(getattr(params, f.name)) for f in fields(params)}

def _plain(value):
    if isinstance(value, Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value

class Preset(str, Enum):
    """The training budget `fit` starts from; --epochs and --features override its parts.

    STANDARD, the default, is for real data (a GPU makes it quick; on 2 CPU cores a fit takes about three times
    FAST's time); FAST is the CPU budget of the demo, the tests and a first look (docs/decisions.md).
    """

    STANDARD = "standard"
    FAST = "fast"


#: (epochs, U-Net features) of each preset; LoopParams' and NetParams' defaults are STANDARD's.
PRESET_BUDGETS = {
    Preset.STANDARD: (30, (16, 16, 32, 64, 128, 16)),
    Preset.FAST: (10, (8, 16, 32, 64, 128, 8)),
}
DEFAULT_PRESET = Preset.STANDARD


@dataclass(frozen=True)
class NetParams:
    """The U-Net's shape (MONAI BasicUNet, 2D).

    features: channels of the 5 encoder levels and of the last decoder level (BasicUNet's convention);
    the default is the STANDARD preset's (Preset); FAST's is half as wide at full resolution.
    groups: GroupNorm groups; must divide every feature count. GroupNorm has no running statistics,
    so the EMA teacher needs no buffer averaging and training and inference behave alike; unlike
    InstanceNorm it also works on the 1x1 bottleneck of a 16x16 input.
    """

    features: tuple[int, ...] = PRESET_BUDGETS[DEFAULT_PRESET][1]
    groups: int = 4
    dropout: float = 0.0

    def problems(self) -> list[str]:
        """What is wrong with this shape, for a UsageError naming --features (empty when it can be built)."""
        found = []
        if len(self.features) != 6:
            found.append(f"expected 6 channel counts (5 encoder levels and the last decoder level), got "
                         f"{len(self.features)}")
        if any(f < 1 for f in self.features) or self.groups < 1:
            found.append("channel counts and groups must be 1 or more")
        elif any(f % self.groups for f in self.features):
            found.append(f"every channel count must be a multiple of the GroupNorm groups ({self.groups})")
        return found

    @staticmethod
    def parse_features(text: str) -> tuple[int, ...]:
        """'16,32,64,128,256,16' -> (16, 32, 64, 128, 256, 16); a UsageError naming --features otherwise."""
        try:
            return tuple(int(v) for v in text.replace(" ", "").split(","))
        except ValueError:
            raise UsageError(f"--features {text!r}: expected 6 comma-separated integers, "
                             "e.g. 16,32,64,128,256,16") from None

    def to_json(self) -> dict:
        return params_to_json(self)

    @classmethod
    def from_json(cls, data: dict) -> NetParams:
        return cls(features=tuple(int(f) for f in data.get("features", cls.features)),
                   groups=int(data.get("groups", cls.groups)), dropout=float(data.get("dropout", cls.dropout)))

@dataclass(frozen=True)
class LoopParams:
    """The shared training loop (train/loop.py); `epochs` defaults to the STANDARD preset's (Preset).

    Optimiser: AdamW, which converges within a CPU budget (see docs/decisions.md), with nnU-Net's poly decay
    lr*(1-t/T)^0.9.
    Sampling: nnU-Net's rule, a third of every batch forced to hold foreground.
    Augmentation: flips, a small rotation/scaling with probability 0.2 (nnU-Net's probability) and an
    intensity scale/shift on every sample.
    """

    epochs: int = PRESET_BUDGETS[DEFAULT_PRESET][0]
    iterations_per_epoch: int = 25
    batch_size: int = 8
    patch_size: int | None = None  # side of a training patch; None: the largest slice, capped at 256 (see docs/decisions.md)
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


def preset_budget(preset: Preset, loop: LoopParams | None = None, net: NetParams | None = None
                  ) -> tuple[LoopParams, NetParams]:
    """`loop` and `net` (default: the defaults) with `preset`'s epochs and features."""
    epochs, features = PRESET_BUDGETS[Preset(preset)]
    return (replace(loop or LoopParams(), epochs=epochs), replace(net or NetParams(), features=features))

@dataclass(frozen=True)
class PintParams:
    """PINT (Shi & Wu, MICCAI 2021) as in shared/docs/research/algorithms.md §4. The paper's values for
    these could not be read; each default is the proposal of §4.4 unless said otherwise.

    ema_decay: gamma of the EMA teacher, with UA-MT's warm start min(1 - 1/(t+1), gamma) [UA-MT code];
    0.95, not §4.4's 0.99, because our budgets are a few hundred steps (see docs/decisions.md).
    teacher_passes: K perturbed teacher passes per step; 4, not §4.4's 8, to halve the teacher's cost
    (scoring uses run.json's `perturbations.k`; see docs/decisions.md).
    noise_sigma, noise_clip: pass k sees x + clip(N(0, sigma^2), -clip, clip); pass 0 is noise-free,
    as in the exported graph [UA-MT code].
    pixel_weight: "hard": alpha_v = 1[u < h(t)], h(t) = threshold_start + (1 - threshold_start) rho(t),
    rho(t) = exp(-5 (1 - t/T)^2) [UA-MT's schedule, u normalised by log C]; "soft": max(1 - u, soft_floor)
    (the floor is our choice, against the collapse of §9 item 11).
    image_weight: "hard": alpha_i = 1[U_i <= quantile_q(memory)]; "soft": clip(1 - (U_i - Q.5)/(Q.9 - Q.5), 0, 1).
    U_i is the mean of u over the slice's region of interest (label or teacher foreground, dilated by
    roi_dilation pixels; the whole slice when both are empty) [§4.2(v), §9 item 15]; the memory keeps the
    U_i of the last `memory_batches` batches (FIFO).
    image_quantile: q; §4.2 proposes 1 - (estimated noise rate) when one is known, else 0.5.
    pseudo_weight: lambda on the MSE to the teacher's mean prediction; 1 keeps the paper's convex form.
    warmup_fraction: the first 30 % of iterations train with alpha = 1 (no teacher passes) while the
    teacher forms; more than §4.3's 10 % because a short run's teacher is still near-uniform (see
    docs/decisions.md).
    variant: pint (both levels, nested form of §4.2(vi)), pnt (pixel only), int (image only, with
    L_seg = (CE + Dice) / 2); the default is int, see DEFAULT_VARIANT. A string is checked and turned
    into a Variant when the params are built (a UsageError naming --variant).
    """

    variant: Variant = DEFAULT_VARIANT
    ema_decay: float = 0.95
    teacher_passes: int = 4
    noise_sigma: float = 0.1
    noise_clip: float = 0.2
    pixel_weight: WeightRule = WeightRule.HARD
    threshold_start: float = 0.75
    soft_floor: float = 0.5
    image_weight: WeightRule = WeightRule.HARD
    image_quantile: float = 0.5
    memory_batches: int = 50
    roi_dilation: int = 5
    pseudo_weight: float = 1.0
    warmup_fraction: float = 0.3

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", parse_choice(Variant, self.variant, "--variant"))
        object.__setattr__(self, "pixel_weight", parse_choice(WeightRule, self.pixel_weight, "PINT pixel_weight"))
        object.__setattr__(self, "image_weight", parse_choice(WeightRule, self.image_weight, "PINT image_weight"))

@dataclass(frozen=True)
class McpmParams:
    """MCPM (Wang et al., MICCAI 2020) as in shared/docs/research/algorithms.md §3 and §8. The paper's values
    could not be read; each default is the proposal of §3.4/§3.6 unless said otherwise.

    virtual_lr: alpha, the step of the virtual SGD update W' = W - alpha * grad. W trains with AdamW at ~2e-3,
    and a plain-SGD virtual step that small gives almost no meta signal (§3.4, §9 item 6), so alpha is its own
    option in the range §3.4 proposes ([1e-2, 1e-1]); it follows the same poly decay as W's learning rate.
    meta_lr, meta_weight_decay: beta, AdamW on the meta mask network (Adam because the meta gradients are tiny,
    §9 item 2; decoupled decay, see McpmMethod.setup); 3e-3, not MW-Net.py's 1e-3, because our budgets are a
    few hundred steps (see docs/decisions.md).
    meta_batch_size: m, slices per meta batch (0: the training batch size n).
    meta_every: k, one meta (bilevel) step every k iterations; 1 is MW-Net's, larger is cheaper (§8.3).
    warmup_fraction: the first 10 % of iterations train W unweighted (R = 1, no meta steps), so that the
    first loss maps Theta sees are meaningful (§3.6 proposes 1-2 epochs; a choice).
    hidden, dilations: the meta mask network, 3x3 convolutions with these dilations (receptive field
    1 + 2 * sum(dilations) = 15 px), ReLU, no normalisation, then a 1x1 convolution and a sigmoid (§3.2).
    initial_weight: R at the start, through the final bias logit(0.9) (§9 item 1: start near the unweighted loss).
    normalise: "class", each pixel's R divided by the batch mean of R over the pixels of its given class (with
    the gradient through that mean), so every class keeps its unweighted share of the loss and R's level is
    no lever; or "sum", sum(R * CE) / sum(R) [the earlier MW-Net script, pixel L2RW], the former default, which
    let Theta move all weight onto easy background pixels and switch the foreground off (the collapse of
    issue 12); or "mean", sum(R * CE) / (n |Omega|) [MW-Net.py, §3.4's default], where the scale of R acts as
    a learning rate (see docs/decisions.md).
    weight_floor: the loss uses floor + (1 - floor) * R, so no pixel's weight falls below ~floor of its class's
    mean (a collapsed R = 0 trains like plain instead of not at all); Theta's R itself (meta_weight.onnx,
    scoring) is unchanged.
    collapse_floor, collapse_patience, collapse_resets: the guard (train/mcpm.py CollapseGuard): mean R over
    the foreground of `patience` weighted training batches in a row below `floor` is a collapse; it is logged
    and counted in the fold log (`r_collapses`); the first `collapse_resets` reset Theta to its initial
    weights, the next turns the weighting off for the rest of the fold (`r_unweighted`). floor 0: no guard.
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
    normalise: MetaNormalise = MetaNormalise.CLASS
    train_dice: bool = True
    meta_dice: bool = True
    loss_eps: float = 1e-6
    weight_floor: float = 0.05
    collapse_floor: float = 0.05
    collapse_patience: int = 25
    collapse_resets: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalise", parse_choice(MetaNormalise, self.normalise, "MCPM normalise"))

    def to_json(self) -> dict:
        return params_to_json(self)

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

@dataclass(frozen=True)
class FitConfig:
    """Everything `labelaudit fit` needs; saved as run.json's `config`.

    folds: K models, each trained on the cases of the other folds (K = 1: one model on every case); 3 so
    that each case is scored by a model that did not see it (see docs/decisions.md). meta_set: MCPM's
    verified cases, a file of case ids or a dataset folder (train/meta_set.py), never in a training fold.
    preprocessed: the root of the preprocessed folder (labelaudit/preprocessed.py); None: .preprocessed/
    beside the run folder. image_dtype: how it stores images; float16 changes the numbers training sees.
    The PINT variant lives in `pint.variant` only. `method` and `exporter` may be given as strings; they
    are checked and turned into enums when the config is built (a UsageError naming the option).
    """

    dataset: Path
    out: Path | None = None
    method: Method = DEFAULT_METHOD
    folds: int = 3
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    force: bool = False
    strict: bool = False
    target_spacing: float | None = None  # in-plane mm; None keeps the native pixels
    meta_set: Path | None = None
    calibrate: bool = True
    exporter: Exporter = DEFAULT_EXPORTER
    preprocessed: Path | None = None
    image_dtype: ImageDtype = ImageDtype.FLOAT32
    loop: LoopParams = LoopParams()
    net: NetParams = NetParams()
    pint: PintParams = PintParams()
    mcpm: McpmParams = McpmParams()
    perturbations: Perturbations = Perturbations()  # the scoring-time noise bank of the exported graph

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_choice(Method, self.method, "--method"))
        object.__setattr__(self, "exporter", parse_choice(Exporter, self.exporter, "--exporter"))
        object.__setattr__(self, "image_dtype", parse_choice(ImageDtype, self.image_dtype, "--image-dtype"))

    @property
    def variant(self) -> Variant:
        """The PINT variant (a view of `pint.variant`)."""
        return self.pint.variant

    def to_json(self) -> dict:
        """run.json's `config`; `variant` is also written at the top level, where runs have always had it."""
        data: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _PATHS:
                data[f.name] = str(value) if value is not None else None
            elif f.name in _NESTED:
                data[f.name] = params_to_json(value)
            else:
                data[f.name] = _plain(value)
            if f.name == "method":
                data["variant"] = self.pint.variant.value
        return data

    @classmethod
    def from_json(cls, data: dict) -> FitConfig:
        """Rebuild from run.json's `config` (ValueError, TypeError or UsageError on a bad value)."""
        simple = {f.name for f in fields(cls)} - _NESTED
        kwargs = {k: v for k, v in data.items() if k in simple}
        for key in _PATHS:
            if kwargs.get(key) is not None:
                kwargs[key] = Path(kwargs[key])
        pint = dict(data.get("pint", {}))
        if "variant" in data:  # the top-level copy has always been the one that counts
            pint["variant"] = data["variant"]
        return cls(**kwargs, loop=params_from_json(LoopParams, data.get("loop", {})),
                   net=NetParams.from_json(data.get("net", {})), pint=params_from_json(PintParams, pint),
                   mcpm=params_from_json(McpmParams, data.get("mcpm", {})),
                   perturbations=Perturbations(**data.get("perturbations", {})))

_NESTED = frozenset({"loop", "net", "pint", "mcpm", "perturbations"})
_PATHS = ("dataset", "out", "meta_set", "preprocessed")

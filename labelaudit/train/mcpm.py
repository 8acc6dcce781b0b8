"""MCPM: meta corrupted pixels mining (Wang et al., MICCAI 2020), after Meta-Weight-Net (algorithms.md §2, §3, §8).

A segmentation network W and a small fully convolutional meta mask network Theta that gives every training
pixel a weight R in [0, 1]. Each meta step (every `meta_every` iterations after the warm-up):

1. virtual step, differentiable in Theta: W' = W - alpha * grad_W L_tr(W; R(Theta)), with
   L_tr = R-weighted CE (+ R-weighted soft Dice) of the training batch;
2. meta step: J = unweighted CE (+ soft Dice) of W' on a batch of the verified meta set; Theta <- Adam(dJ/dTheta);
3. actual step (the shared loop): W <- AdamW(grad_W L_tr(W; sg[R(Theta_new)])).

The virtual step uses torch.func.functional_call on the live parameters (no copied "meta modules", §8.1), so
the meta gradient visibly flows W' -> grad -> R -> Theta. W's parameters are untouched by the meta step and
Theta's by the actual step; GroupNorm in W has no running statistics to pollute (§9 item 4).

Collapse: normalised over all pixels ("sum"), Theta could meet the meta gradient's "take a smaller step"
by moving all weight onto easy background pixels, so R fell to ~0 on the foreground, where its gradient
(proportional to R) is gone. R is now normalised per class and floored, and a guard resets Theta, then turns
the weighting off, when the foreground's R stays near 0 (McpmParams; measurements in docs/decisions.md).

Array legend: B images, C_in input channels, C classes, H x W pixels.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..config import LoopParams, McpmParams, MetaNormalise
from ..errors import UsageError
from .distributed import SOLO, Team, unwrapped
from .loop import SliceSampler, augment_batch

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the meta mask network

class MetaMaskNet(nn.Module):
    """Theta: (image (N, C_in, H, W) float32, classes (N, H, W) int64, prob (N, C, H, W) float32) -> R (N, 1, H, W).

    Inputs, all treated as constants (no gradient flows into W through them):
    - the loss map log1p(-log(p_y + eps)), computed here from `classes` and `prob`: the paper's input (§3.1);
    - the image, the one-hot given label and the prediction `prob`: extensions (§3.2) that let Theta tell a
      band of high loss hugging a label boundary that the image does not support (a corrupted layer) from a
      hard but correct pixel (a fuzzy boundary, partial volume), which a loss-only input cannot (§9 item 8).
      They are also exactly what scoring has at hand (the image, the given label, the segmenter's prob_mean),
      so meta_weight.onnx needs no other graph's internals.
    Layers: 3x3 convolutions with `dilations` (receptive field 15 px by default), ReLU, no normalisation (R must
    not depend on the batch's composition; MW-Net's weight net has none either), a 1x1 convolution and a
    sigmoid whose bias starts at logit(initial_weight), so training starts near the unweighted loss (§9 item 1).
    """

    def __init__(self, in_channels: int, num_classes: int, params: McpmParams = McpmParams()) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.eps = float(params.loss_eps)
        channels = in_channels + 2 * num_classes + 1
        layers: list[nn.Module] = []
        for dilation in params.dilations:
            layers += [nn.Conv2d(channels, params.hidden, 3, padding=dilation, dilation=dilation), nn.ReLU()]
            channels = params.hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 1)
        w = min(max(params.initial_weight, 1e-4), 1 - 1e-4)
        nn.init.zeros_(self.head.weight)  # R = initial_weight everywhere at the start
        nn.init.constant_(self.head.bias, math.log(w / (1 - w)))
        self.register_buffer("class_index", torch.arange(num_classes).view(1, num_classes, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, classes: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        onehot = (classes.unsqueeze(1) == self.class_index).to(prob.dtype)  # (N, C, H, W); exports as Equal
        p_given = (prob * onehot).sum(dim=1, keepdim=True)
        loss_map = torch.log1p(-torch.log(p_given + self.eps))  # the pixel CE of the given label, compressed
        x = torch.cat([image.to(prob.dtype), onehot, prob, loss_map], dim=1)
        return torch.sigmoid(self.head(self.features(x)))


def build_meta_net(in_channels: int, num_classes: int, params: McpmParams = McpmParams()) -> MetaMaskNet:
    """The meta mask network Theta for images of `in_channels` channels and `num_classes` classes."""
    if not params.dilations or params.hidden < 1:
        raise ValueError(f"the meta mask network needs at least one layer, got dilations {params.dilations}")
    return MetaMaskNet(in_channels, num_classes, params)


# ----------------------------------------------------------------------------- losses

def weighted_dice_loss(probs: torch.Tensor, classes: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """1 - soft batch Dice over the foreground classes, each pixel counted with `weight` (None: 1).

    probs: (B, C, H, W); classes: (B, H, W) int64; weight: (B, H, W) or None. With weight 1 this equals
    loop.soft_dice_loss; a pixel of weight 0 leaves both the overlap and the sizes, as if unlabelled.
    """
    num_classes = probs.shape[1]
    onehot = F.one_hot(classes, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    w = 1.0 if weight is None else weight.unsqueeze(1).to(probs.dtype)
    intersection = (w * probs * onehot).sum((0, 2, 3))
    denominator = (w * (probs + onehot)).sum((0, 2, 3))
    dice = (2 * intersection + 1.0) / (denominator + 1.0)
    fg = dice[1:] if num_classes > 1 else dice
    return 1 - fg.mean()


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Losses in fp32 under mixed precision; float64 stays float64 (the finite-difference test)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def class_normalised(weight: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """R divided by its batch mean over the pixels of the same given class, with the gradient through the mean.

    weight R: (B, H, W) in [0, 1]; classes: (B, H, W) int64. Every class present keeps the total weight it has
    in the unweighted loss, so Theta can move weight between pixels of one class but cannot switch a class off,
    and R's overall level (a direction the meta loss barely sees) cannot act as a learning rate.
    """
    flat, index = weight.reshape(-1), classes.reshape(-1)
    sums = torch.zeros(num_classes, dtype=weight.dtype, device=weight.device).index_add(0, index, flat)
    counts = torch.bincount(index, minlength=num_classes).to(weight.dtype)
    means = sums / counts.clamp_min(1)
    return weight / means.clamp_min(1e-30)[classes]


def training_objective(logits: torch.Tensor, classes: torch.Tensor, weight: torch.Tensor,
                       params: McpmParams) -> tuple[torch.Tensor, torch.Tensor]:
    """L_tr: R-weighted CE (normalised per `params.normalise`) plus, with train_dice, R-weighted soft Dice.

    logits: (B, C, H, W); classes: (B, H, W) int64; weight R: (B, H, W) in [0, 1]. Returns (loss, CE map (B, H, W)).
    """
    logits = _at_least_fp32(logits)
    ce = F.cross_entropy(logits, classes, reduction="none")
    if params.weight_floor > 0:
        weight = params.weight_floor + (1 - params.weight_floor) * weight
    if params.normalise is MetaNormalise.CLASS:
        weight = class_normalised(weight, classes, logits.shape[1])
        loss = (weight * ce).mean()
    elif params.normalise is MetaNormalise.SUM:
        # not detached: the gradient then sees only how R is distributed, not its overall scale
        loss = (weight * ce).sum() / (weight.sum() + 1e-6)
    else:
        loss = (weight * ce).mean()
    if params.train_dice:
        loss = loss + weighted_dice_loss(torch.softmax(logits, dim=1), classes, weight)
    return loss, ce


def meta_objective(logits: torch.Tensor, classes: torch.Tensor, params: McpmParams) -> torch.Tensor:
    """J: the unweighted CE (+ soft Dice with meta_dice) of the meta batch. logits (B, C, H, W), classes (B, H, W)."""
    logits = _at_least_fp32(logits)
    loss = F.cross_entropy(logits, classes)
    if params.meta_dice:
        loss = loss + weighted_dice_loss(torch.softmax(logits, dim=1), classes, None)
    return loss


# ----------------------------------------------------------------------------- the bilevel step

def virtual_meta_loss(student: nn.Module, theta: nn.Module, image: torch.Tensor, classes: torch.Tensor,
                      meta_image: torch.Tensor, meta_classes: torch.Tensor, alpha: float,
                      params: McpmParams) -> torch.Tensor:
    """J(W'(Theta)): the meta loss after a virtual SGD step of W on the R-weighted training loss (steps 1-2).

    image: (B, C_in, H, W) training batch, classes (B, H, W) int64 its given labels; meta_image/meta_classes:
    the meta batch (verified labels). Returns a scalar whose graph reaches Theta's parameters (and W's).
    """
    names = [name for name, p in student.named_parameters() if p.requires_grad]
    live = dict(student.named_parameters())  # the live tensors, not copies, so the graph reaches them
    buffers = {name: b.clone() for name, b in student.named_buffers()}  # the real buffers stay untouched

    logits = _at_least_fp32(functional_call(student, {**live, **buffers}, (image,)))
    probs = torch.softmax(logits, dim=1)
    weight = theta(image, classes, probs.detach())[:, 0]  # depends on Theta only
    loss, _ = training_objective(logits, classes, weight, params)
    grads = torch.autograd.grad(loss, [live[n] for n in names], create_graph=True)
    fast = dict(live)
    for name, grad in zip(names, grads):
        fast[name] = live[name] - alpha * grad  # the virtual SGD step, a function of Theta
    return meta_objective(functional_call(student, {**fast, **buffers}, (meta_image,)), meta_classes, params)


def meta_step(student: nn.Module, theta: nn.Module, theta_optimizer: torch.optim.Optimizer, image: torch.Tensor,
              classes: torch.Tensor, meta_image: torch.Tensor, meta_classes: torch.Tensor, alpha: float,
              params: McpmParams, team: Team = SOLO) -> float:
    """One meta update of Theta: dJ/dTheta through the virtual step, then an optimiser step on Theta.

    Returns J before the update. W's parameters and their .grad are left as they were (only Theta's
    gradients are asked for). In a DDP team, Theta's gradients are averaged over the members (Theta is not
    under DDP: the virtual step calls W's parameters functionally), so every member takes the same step.
    """
    meta_loss = virtual_meta_loss(student, theta, image, classes, meta_image, meta_classes, alpha, params)
    theta_params = [p for p in theta.parameters() if p.requires_grad]
    theta_grads = torch.autograd.grad(meta_loss, theta_params, allow_unused=True)
    theta_optimizer.zero_grad(set_to_none=True)
    for p, g in zip(theta_params, theta_grads):
        p.grad = torch.zeros_like(p) if g is None else g.detach()
    team.average_gradients(theta_params)
    theta_optimizer.step()
    theta_optimizer.zero_grad(set_to_none=True)  # nothing of the meta step lingers into the actual step
    return float(meta_loss.detach())


# ----------------------------------------------------------------------------- the collapse guard

class CollapseGuard:
    """Watches the mean of R over the foreground pixels of each weighted training batch.

    `patience` batches in a row below `floor` is a collapse: the meta mask network then sits in the sigmoid's
    flat tail, where R's gradient (proportional to R) has vanished, so it cannot climb out by itself (seen in
    an independent benchmark: R ~ 2e-6 on every foreground pixel from epoch 9 of 20 on, training loss ~0).
    The first `max_resets` collapses of a fold are met by resetting Theta; the next one turns the weighting
    off (`unweighted`) for the rest of the fold. A batch without foreground (NaN) neither counts nor breaks
    the streak. floor <= 0 switches the guard off.
    """

    def __init__(self, floor: float, patience: int, max_resets: int) -> None:
        self.floor, self.patience, self.max_resets = floor, patience, max_resets
        self.streak = 0  # consecutive batches below the floor
        self.collapses = 0  # collapses seen so far in this fold
        self.unweighted = False  # the weighting is off for the rest of the fold

    def observe(self, weight_fg: float) -> bool:
        """Record one batch's foreground mean R; True when it completes a collapse (then see `unweighted`)."""
        if self.unweighted or self.floor <= 0 or math.isnan(weight_fg):
            return False
        self.streak = self.streak + 1 if weight_fg < self.floor else 0
        if self.streak < self.patience:
            return False
        self.streak, self.collapses = 0, self.collapses + 1
        self.unweighted = self.collapses > self.max_resets
        return True

    def state_dict(self) -> dict:
        return {"streak": self.streak, "collapses": self.collapses, "unweighted": self.unweighted}

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.collapses = int(state["streak"]), int(state["collapses"])
        self.unweighted = bool(state["unweighted"])


# ----------------------------------------------------------------------------- the method

class McpmMethod:
    """MCPM for the shared loop: Theta, its Adam optimiser and the meta-set sampler live here.

    meta_cases: the meta cases prepared like the training cases (loop.SliceSource: preprocessed.PreparedCase,
    or (image (S, C_in, h, w) float32, classes (S, h, w) int) arrays). `seed` drives the meta batches (a numpy Generator) and their flips (a torch.Generator);
    both are in state_dict, so a resumed run continues the same streams.
    """

    name = "mcpm"

    def __init__(self, params: McpmParams, meta_cases: list, seed: int,
                 loop: LoopParams = LoopParams()) -> None:
        if params.meta_every < 1 or params.meta_batch_size < 0 or params.virtual_lr < 0 or params.meta_lr < 0:
            raise UsageError("MCPM needs meta_every >= 1, meta_batch_size >= 0 and non-negative learning rates")
        if not 0 <= params.weight_floor < 1 or params.collapse_patience < 1 or params.collapse_resets < 0:
            raise UsageError("MCPM needs 0 <= weight_floor < 1, collapse_patience >= 1 and collapse_resets >= 0")
        if not meta_cases:
            raise UsageError("MCPM needs a meta set of at least one case")
        self.params = params
        self.loop = loop
        self.meta_sampler = SliceSampler(meta_cases, loop.patch_size, loop.foreground_fraction)
        self.meta_batch = params.meta_batch_size or loop.batch_size
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x3E7A]))
        self.generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0x3E7B]).generate_state(1)[0]))
        # flips only on the meta batch (§3.8): the meta set is the reference, not more training data
        self.meta_augment = replace(loop, affine_probability=0.0, intensity_scale=0.0, intensity_shift=0.0)
        self.theta: MetaMaskNet | None = None
        self.theta_init: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.guard = CollapseGuard(params.collapse_floor, params.collapse_patience, params.collapse_resets)
        self.total = 1
        self.device = torch.device("cpu")
        self.team = SOLO

    def setup(self, student: nn.Module, num_classes: int, total_iterations: int, device: torch.device,
              team: Team = SOLO) -> None:
        team.check_batch(self.meta_batch, "the meta batch size")
        self.team = team
        in_channels = self.meta_sampler.in_channels
        with torch.random.fork_rng(devices=[]):  # Theta's init from the method's own stream, not global state
            torch.manual_seed(int(self.rng.integers(2 ** 31)))
            self.theta = build_meta_net(in_channels, num_classes, self.params).to(device)
        self.theta_init = {k: v.detach().clone() for k, v in self.theta.state_dict().items()}
        self.optimizer = self._theta_optimizer()
        self.total = total_iterations
        self.device = device

    def _theta_optimizer(self) -> torch.optim.Optimizer:
        # decoupled weight decay: with Adam's L2 form, the decay term dominates the tiny meta gradients (zero
        # for the hidden layers until the zero-initialised head moves), and Adam's normalised step then shrinks
        # every hidden weight by ~meta_lr per step, killing Theta within a few dozen steps (seen in a test run)
        assert self.theta is not None
        return torch.optim.AdamW(self.theta.parameters(), lr=self.params.meta_lr,
                                 weight_decay=self.params.meta_weight_decay)

    def reset_theta(self) -> None:
        """The guard's recovery: Theta back to its initial weights (R = initial_weight everywhere), a fresh
        optimiser. A first collapse is met by a reset, which lets Theta learn again from the now trained W (as
        after the warm-up); on the demo it collapsed again 30-60 steps after every reset (8 resets in 500 steps
        at alpha 1e-3), so a repeated collapse turns the weighting off instead: the fold then trains like plain, which segmented
        better there, without the meta step's cost, and meta_weight.onnx holds the initial Theta (a uniform R
        that claims nothing) rather than a collapsed one."""
        assert self.theta is not None
        self.theta.load_state_dict(self.theta_init)
        self.optimizer = self._theta_optimizer()

    def warm(self, step: int) -> bool:
        return step < self.params.warmup_fraction * self.total

    def virtual_lr(self, step: int) -> float:
        """alpha_t: virtual_lr with W's poly decay (MW-Net uses W's current learning rate, §2.4)."""
        return self.params.virtual_lr * (1 - min(step / max(self.total, 1), 1.0)) ** self.loop.poly_exponent

    def sample_meta_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.team.rows(self.meta_batch) if self.team.size > 1 else None
        image, classes = self.meta_sampler.sample(self.meta_batch, self.rng, rows)
        image_t, classes_t = augment_batch(torch.from_numpy(image), torch.from_numpy(classes), self.meta_augment,
                                           self.generator, rows, self.meta_batch)
        return image_t.to(self.device), classes_t.to(self.device)

    def loss(self, student: nn.Module, image: torch.Tensor, classes: torch.Tensor, step: int,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.theta is not None and self.optimizer is not None
        stats: dict[str, float] = {"meta_step_s": 0.0}
        warm = self.warm(step)
        unweighted = warm or self.guard.unweighted
        if not unweighted and step % self.params.meta_every == 0:
            started = time.perf_counter()
            meta_image, meta_classes = self.sample_meta_batch()
            # fp32 without a GradScaler: the scaler does not scale torch.autograd.grad (§8.3 item 4)
            with torch.autocast(device_type=image.device.type, enabled=False):
                stats["meta_loss"] = meta_step(unwrapped(student), self.theta, self.optimizer, image.float(),
                                               classes, meta_image, meta_classes, self.virtual_lr(step),
                                               self.params, self.team)
            if image.device.type == "cuda":
                torch.cuda.synchronize(image.device)
            stats["meta_step_s"] = time.perf_counter() - started
        logits = student(image).float()
        if unweighted:
            weight = torch.ones_like(classes, dtype=torch.float32)
        else:
            with torch.no_grad(), torch.autocast(device_type=image.device.type, enabled=False):
                weight = self.theta(image.float(), classes, torch.softmax(logits.detach(), dim=1))[:, 0]
        loss, ce = training_objective(logits, classes, weight, self.params)
        foreground = classes != 0
        # over the whole team's batch (a solo team: this process's), so the guard resets Theta on every member
        # at the same step
        sums = self.team.sum(torch.stack([weight[foreground].sum(), foreground.sum().to(weight.dtype)]))
        weight_fg = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
        stats.update({
            "ce": float(ce.detach().mean()), "weight_mean": float(weight.mean()),
            "weight_low": float((weight < 0.1).float().mean()), "weight_fg": weight_fg,
            "weight_bg": float(weight[~foreground].mean()) if (~foreground).any() else float("nan"),
            "warmup": float(warm),
        })
        if not unweighted and self.guard.observe(weight_fg):
            then = ("training goes on with the unweighted loss (R = 1) for the rest of this fold"
                    if self.guard.unweighted else "the meta mask network was reset to its initial weights")
            log.warning("MCPM: the meta weight R collapsed (mean R over the foreground below %g for %d training "
                        "steps in a row, %.2g at step %d of %d; collapse %d of this fold): %s", self.guard.floor,
                        self.guard.patience, weight_fg, step + 1, self.total, self.guard.collapses, then)
            self.reset_theta()
        if (step + 1) % self.loop.iterations_per_epoch == 0:  # once an epoch, so the loop's average is exact
            stats["r_collapses"] = float(self.guard.collapses)
            stats["r_unweighted"] = float(self.guard.unweighted)
        return loss, {k: v for k, v in stats.items() if not math.isnan(v)}

    def after_step(self, student: nn.Module, step: int) -> None:
        return None

    def deploy_net(self, student: nn.Module) -> nn.Module:
        return student

    def deploy_meta_net(self) -> MetaMaskNet:
        assert self.theta is not None
        return self.theta.to("cpu").eval()

    def state_dict(self) -> dict:
        assert self.theta is not None and self.optimizer is not None
        return {"theta": self.theta.state_dict(), "theta_optimizer": self.optimizer.state_dict(),
                "rng": json.dumps(self.rng.bit_generator.state), "generator": self.generator.get_state(),
                "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        assert self.theta is not None and self.optimizer is not None
        self.theta.load_state_dict(state["theta"])
        self.optimizer.load_state_dict(state["theta_optimizer"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.generator.set_state(state["generator"])
        if "guard" in state:  # checkpoints written before the guard existed have none
            self.guard.load_state_dict(state["guard"])


def epoch_cost(log: list[dict], iterations_per_epoch: int) -> dict:
    """The measured cost of MCPM epochs against plain ones, from the per-epoch log of the loop.

    An MCPM iteration is a plain iteration (forward, backward, AdamW step on the same batch; plus Theta's
    forward, a few per cent) and, on meta iterations, the bilevel step timed as `meta_step_s`. So the plain
    epoch on the same data is estimated as the epoch's seconds minus its meta-step seconds. Warm-up epochs
    and those after the guard turned the weighting off (no meta steps) are left out when any other epoch exists.
    Returns {"epoch_s", "plain_equivalent_epoch_s", "ratio", "meta_seconds_per_epoch", "epochs", "measured"}.
    """
    rows = [r for r in log if r.get("warmup", 0.0) < 1.0 and r.get("r_unweighted", 0.0) < 1.0] or list(log)
    if not rows:
        return {}
    epoch_s = float(np.mean([r["seconds"] for r in rows]))
    meta_s = float(np.mean([r.get("meta_step_s", 0.0) * iterations_per_epoch for r in rows]))
    plain_s = max(epoch_s - meta_s, 1e-9)
    return {"epoch_s": round(epoch_s, 3), "plain_equivalent_epoch_s": round(plain_s, 3),
            "ratio": round(epoch_s / plain_s, 2), "meta_seconds_per_epoch": round(meta_s, 3),
            "epochs": len(rows), "measured": "meta-step time subtracted from the MCPM epoch (same batches)"}

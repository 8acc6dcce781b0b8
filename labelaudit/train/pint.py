"""PINT: pixel- and image-level noise-tolerant training (Shi & Wu, MICCAI 2021), and its PNT / INT variants.

algorithms.md §4: a student and an EMA teacher; the teacher's mean softmax over K perturbed passes is the
pseudo label and its normalised entropy u the pixel uncertainty. Per pixel the loss mixes CE to the label
(weight alpha_v, high where u is low) and lambda * MSE to the pseudo label; per image, alpha_i (low when the
image's ROI-mean uncertainty is high against recent batches) lets the teacher alone supervise noisy images.

Array legend: B images, C classes, H x W pixels, K perturbations.
"""

from __future__ import annotations

import copy
import math
from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PintParams, Variant, WeightRule
from ..errors import UsageError
from .distributed import SOLO, Team
from .loop import soft_dice_loss
from .nets import perturbed_prediction


def ema_decay(step: int, gamma: float) -> float:
    """UA-MT's warm start: g_t = min(1 - 1/(t + 1), gamma), t = number of updates so far (1 at the first)."""
    t = step + 1
    return min(1.0 - 1.0 / (t + 1), gamma)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, for parameters and float buffers alike."""
    for t_param, s_param in zip(teacher.parameters(), student.parameters()):
        t_param.mul_(decay).add_(s_param.detach(), alpha=1.0 - decay)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        if t_buf.dtype.is_floating_point:
            t_buf.mul_(decay).add_(s_buf.detach(), alpha=1.0 - decay)
        else:
            t_buf.copy_(s_buf)


def pixel_threshold(step: int, total: int, start: float) -> float:
    """h(t) = start + (1 - start) * rho(t), rho(t) = exp(-5 (1 - t/T)^2): UA-MT's ramp, in units of log C."""
    rho = math.exp(-5.0 * (1.0 - min(step / max(total, 1), 1.0)) ** 2)
    return start + (1.0 - start) * rho


def roi_uncertainty(uncertainty: torch.Tensor, classes: torch.Tensor, prob_mean: torch.Tensor,
                    dilation: int) -> torch.Tensor:
    """U_i: mean of u over the dilated union of label and teacher foreground; whole slice where both are empty.

    uncertainty: (B, H, W); classes: (B, H, W) int64; prob_mean: (B, C, H, W). Returns (B,) float32.
    """
    foreground = (classes != 0) | (prob_mean.argmax(dim=1) != 0)
    roi = foreground.float().unsqueeze(1)
    if dilation > 0:
        roi = F.max_pool2d(roi, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    roi = roi[:, 0]
    count = roi.sum(dim=(1, 2))
    inside = (uncertainty * roi).sum(dim=(1, 2)) / count.clamp(min=1)
    return torch.where(count > 0, inside, uncertainty.mean(dim=(1, 2)))


def pint_loss(logits: torch.Tensor, classes: torch.Tensor, prob_mean: torch.Tensor, alpha_pixel: torch.Tensor,
              alpha_image: torch.Tensor, pseudo_weight: float = 1.0, variant: Variant | str = Variant.PINT
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The nested PINT loss of algorithms.md §4.2(vi).

    logits: (B, C, H, W) student logits; classes: (B, H, W) int64 given labels; prob_mean: (B, C, H, W)
    teacher pseudo label (a constant); alpha_pixel: (B, H, W) in [0, 1]; alpha_image: (B,) in [0, 1].
    loss = mean_i[ a_i * mean_v(a_v CE_v + (1 - a_v) lambda MSE_v) + (1 - a_i) * lambda * mean_v MSE_v ],
    MSE_v = sum_c (p_vc - pbar_vc)^2. PNT: a_i = 1. INT: a_v = 1 and the label term is (CE + Dice) / 2.
    With every alpha = 1, PINT and PNT reduce to the mean cross-entropy.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=1)
    ce = F.cross_entropy(logits, classes, reduction="none")  # (B, H, W)
    mse = ((probs - prob_mean.detach()) ** 2).sum(dim=1)  # (B, H, W)
    pseudo = pseudo_weight * mse.mean(dim=(1, 2))  # (B,)
    if variant == Variant.INT:
        supervised = 0.5 * (ce.mean(dim=(1, 2)) + soft_dice_loss(probs, classes, per_image=True))
    else:
        supervised = (alpha_pixel * ce + (1 - alpha_pixel) * pseudo_weight * mse).mean(dim=(1, 2))
    if variant == Variant.PNT:
        alpha_image = torch.ones_like(alpha_image)
    loss = (alpha_image * supervised + (1 - alpha_image) * pseudo).mean()
    return loss, {"ce": ce.mean().detach(), "mse": mse.mean().detach()}


class PintMethod:
    """PINT / PNT / INT with an EMA teacher; the deployed network is the teacher (algorithms.md §4.6)."""

    name = "pint"

    def __init__(self, params: PintParams = PintParams()) -> None:
        if params.teacher_passes < 1:
            raise UsageError(f"PINT needs at least 1 teacher pass, got {params.teacher_passes}")
        self.params = params
        self.teacher: nn.Module | None = None
        self.memory: deque[torch.Tensor] = deque(maxlen=params.memory_batches)
        self.total = 1
        self.num_classes = 2
        self.team = SOLO

    def setup(self, student: nn.Module, num_classes: int, total_iterations: int, device: torch.device,
              team: Team = SOLO) -> None:
        self.num_classes = num_classes
        self.team = team
        self.teacher = copy.deepcopy(student).eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.total = total_iterations
        self.memory.clear()

    def teacher_prediction(self, image: torch.Tensor, generator: torch.Generator
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean softmax (B, C, H, W) and normalised entropy (B, H, W) over K perturbed teacher passes."""
        assert self.teacher is not None
        p = self.params
        noise = torch.randn((p.teacher_passes, *image.shape), generator=generator) * p.noise_sigma
        noise = noise.clamp(-p.noise_clip, p.noise_clip)
        noise[0] = 0.0  # pass 0 is the clean prediction, as in the exported graph
        with torch.no_grad():
            return perturbed_prediction(self.teacher, image, noise.to(image.device, image.dtype), self.num_classes)

    def weights(self, uncertainty: torch.Tensor, classes: torch.Tensor, prob_mean: torch.Tensor,
                step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_v (B, H, W) and alpha_i (B,) from the teacher's uncertainty; pushes U_i into the memory."""
        p = self.params
        if p.pixel_weight is WeightRule.HARD:
            alpha_pixel = (uncertainty < pixel_threshold(step, self.total, p.threshold_start)).float()
        else:
            alpha_pixel = (1 - uncertainty).clamp(min=p.soft_floor)
        image_u = roi_uncertainty(uncertainty, classes, prob_mean, p.roi_dilation)
        # the memory holds the whole batch's U_i on every member of a DDP team, as in one process
        self.memory.append(self.team.concat(image_u.detach().float()).cpu())
        history = torch.cat(list(self.memory))
        if p.image_weight is WeightRule.HARD:
            alpha_image = (image_u.cpu() <= torch.quantile(history, p.image_quantile)).float()
        else:
            q50, q90 = torch.quantile(history, 0.5), torch.quantile(history, 0.9)
            alpha_image = (1 - (image_u.cpu() - q50) / (q90 - q50).clamp(min=1e-6)).clamp(0, 1)
        if p.variant is Variant.INT:
            alpha_pixel = torch.ones_like(alpha_pixel)
        if p.variant is Variant.PNT:
            alpha_image = torch.ones_like(alpha_image)
        return alpha_pixel, alpha_image.to(uncertainty.device)

    def loss(self, student: nn.Module, image: torch.Tensor, classes: torch.Tensor, step: int,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        p = self.params
        logits = student(image)
        warm = step < p.warmup_fraction * self.total
        if warm:
            # warm-up: plain supervised training on the labels while the teacher forms (no teacher passes)
            b = image.shape[0]
            ones = torch.ones(b, device=image.device)
            prob_mean = torch.softmax(logits.detach().float(), dim=1)
            loss, parts = pint_loss(logits, classes, prob_mean, torch.ones_like(classes, dtype=torch.float32),
                                    ones, p.pseudo_weight, p.variant)
            return loss, {"ce": float(parts["ce"]), "mse": 0.0, "alpha_pixel": 1.0, "images_alpha0": 0.0,
                          "uncertainty": 0.0, "warmup": 1.0}
        prob_mean, uncertainty = self.teacher_prediction(image, generator)
        alpha_pixel, alpha_image = self.weights(uncertainty, classes, prob_mean, step)
        loss, parts = pint_loss(logits, classes, prob_mean, alpha_pixel, alpha_image, p.pseudo_weight, p.variant)
        return loss, {"ce": float(parts["ce"]), "mse": float(parts["mse"]),
                      "alpha_pixel": float(alpha_pixel.mean()), "images_alpha0": float((alpha_image == 0).float().mean()),
                      "uncertainty": float(uncertainty.mean()), "warmup": 0.0}

    def after_step(self, student: nn.Module, step: int) -> None:
        assert self.teacher is not None
        ema_update(self.teacher, student, ema_decay(step, self.params.ema_decay))

    def deploy_net(self, student: nn.Module) -> nn.Module:
        assert self.teacher is not None
        return self.teacher

    def state_dict(self) -> dict:
        assert self.teacher is not None
        return {"teacher": self.teacher.state_dict(), "memory": [m.clone() for m in self.memory]}

    def load_state_dict(self, state: dict) -> None:
        assert self.teacher is not None
        self.teacher.load_state_dict(state["teacher"])
        self.memory.clear()
        self.memory.extend(state["memory"])

"""plain: a U-Net trained with cross-entropy + soft Dice on the labels as given (the baseline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import SOLO, Team
from .loop import soft_dice_loss


class PlainMethod:
    """CE + soft Dice (nnU-Net's loss, weights 1:1); the deployed network is the trained one."""

    name = "plain"

    def setup(self, student: nn.Module, num_classes: int, total_iterations: int, device: torch.device,
              team: Team = SOLO) -> None:
        return None

    def loss(self, student: nn.Module, image: torch.Tensor, classes: torch.Tensor, step: int,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        logits = student(image).float()
        ce = F.cross_entropy(logits, classes)
        dice = soft_dice_loss(torch.softmax(logits, dim=1), classes)
        return ce + dice, {"ce": float(ce.detach()), "dice_loss": float(dice.detach())}

    def after_step(self, student: nn.Module, step: int) -> None:
        return None

    def deploy_net(self, student: nn.Module) -> nn.Module:
        return student

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

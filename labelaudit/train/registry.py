"""The training methods by name: what `fit` builds and saves for each Method.

Importable without PyTorch (fit checks its configuration first): a method's module, which imports torch,
is imported only when that method is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import FitConfig, Method

if TYPE_CHECKING:
    from .loop import SliceSource, TrainingMethod

    #: a case as fit prepares it (preprocessed.PreparedCase), or (image, classes) arrays
    PreparedCase = SliceSource


@dataclass(frozen=True)
class MethodSpec:
    """One method: build(config, seed, meta_cases) -> the loop's TrainingMethod, and what fit saves for it.

    role: what weights.safetensors holds (its metadata). meta_net: the method learns a meta mask network
    from a verified meta set (--meta-set), saved as meta_weight.safetensors and exported as meta_weight.onnx.
    """

    build: Callable[[FitConfig, int, list[PreparedCase]], TrainingMethod]
    role: str = "network"
    meta_net: bool = False


def _plain(config: FitConfig, seed: int, meta_cases: list[PreparedCase]) -> TrainingMethod:
    from .plain import PlainMethod

    return PlainMethod()


def _pint(config: FitConfig, seed: int, meta_cases: list[PreparedCase]) -> TrainingMethod:
    from .pint import PintMethod

    return PintMethod(config.pint)


def _mcpm(config: FitConfig, seed: int, meta_cases: list[PreparedCase]) -> TrainingMethod:
    from .mcpm import McpmMethod

    return McpmMethod(config.mcpm, meta_cases, seed, config.loop)


METHODS: dict[Method, MethodSpec] = {
    Method.PINT: MethodSpec(_pint, role="ema_teacher"),  # the deployed network is the EMA teacher
    Method.PLAIN: MethodSpec(_plain),
    Method.MCPM: MethodSpec(_mcpm, meta_net=True),
}

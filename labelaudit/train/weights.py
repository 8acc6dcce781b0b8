"""A run's safetensors weights: write and read them, and rebuild a fold's networks from them.

Safetensors cannot execute code on load, unlike a pickle; a missing, truncated or corrupt file, or weights
of another network, is a ModelError naming the file (exit 4).
"""

from __future__ import annotations

from pathlib import Path

from ..config import McpmParams, NetParams
from ..errors import ModelError
from ..formats.run import RunInfo
from ..io.atomic import atomic_path

_REFIT = "re-fit the run with: labelaudit fit DATASET --force"


def save_weights(net, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write the network's state as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata or {})


def load_weights(path: Path) -> dict:
    """Read safetensors weights; a missing, truncated or corrupt file is a ModelError naming it (exit 4)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"{path}: weights file missing", hint=_REFIT)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: weights file is truncated or corrupt ({exc})", hint=_REFIT) from exc


def load_net(weights: Path, in_channels: int, num_classes: int, params: NetParams):
    """A U-Net of the given shape with the safetensors `weights` loaded (eval mode); ModelError on mismatch."""
    from .nets import build_unet

    return _with_weights(build_unet(in_channels, num_classes, params), weights, "weights")


def load_meta_net(weights: Path, in_channels: int, num_classes: int, params: McpmParams):
    """MCPM's meta mask network with the safetensors `weights` loaded (eval mode); ModelError on mismatch."""
    from .mcpm import build_meta_net

    return _with_weights(build_meta_net(in_channels, num_classes, params), weights, "meta mask weights")


def build_fold_net(info: RunInfo, weights: Path):
    """The deployment network of one fold, rebuilt from run.json's net parameters and its weights."""
    return load_net(weights, len(info.channel_names), info.label_map.num_classes, info.settings.net)


def _with_weights(module, weights: Path, what: str):
    """`module` with the safetensors `weights` loaded, in eval mode; ModelError when they do not fit."""
    try:
        module.load_state_dict(load_weights(weights))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{weights}: {what} do not fit the network described in run.json ({first})",
                         hint=_REFIT) from exc
    return module.eval()

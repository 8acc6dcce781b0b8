"""torch -> ONNX: write each fold's segmenter.onnx from its safetensors weights, verified with ONNX Runtime.

The graph contract (scoring depends on it exactly): inputs `image` float32 [N, C_in, H, W] (H, W multiples
of 16) and `noise` float32 [K, C_in, H, W]; outputs `prob_mean` float32 [N, C, H, W] (mean over k of
softmax(net(image + noise[k]))) and `uncertainty` float32 [N, H, W] (entropy(prob_mean) / log C).
N, K, H and W are dynamic.

MCPM runs add `meta_weight.onnx` (methods.mcpm.MetaMaskNet): inputs `image` float32 [N, C_in, H, W], `label`
int64 [N, H, W] (class indices), `prob` float32 [N, C, H, W] (the segmenter's prob_mean); output `weight`
float32 [N, 1, H, W], the meta weight R in [0, 1]. The loss map -log(p_label + eps) is computed inside the graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path
from ..data import no_track
from ..errors import TRAINING_EXTRA, MissingDependencyError, ModelError
from ..formats.run import (
    Perturbations,
    RunInfo,
    perturbation_noise,
    read_run_info,
    save_run,
)

OPSET = 18
#: Export fails when ONNX Runtime and PyTorch differ by more than this (algorithms.md §7.2).
PARITY_TOLERANCE = 1e-4
EXPORTERS = ("dynamo", "torchscript")
#: 0.6 s per fold against 15-25 s for dynamo on 2 cores; both pass the same parity check (fit.FitConfig).
DEFAULT_EXPORTER = "torchscript"
#: The example shape used for tracing, and a different one for the parity check (so frozen shapes show).
_EXAMPLE_HW = (32, 32)
_CHECK_N, _CHECK_HW = 3, (48, 80)


def require_training_extra() -> None:
    """Raise MissingDependencyError (exit 5) when a package of the training extra cannot be imported."""
    for module, what in (("torch", "PyTorch (training)"), ("monai", "MONAI (training)"),
                         ("safetensors", "safetensors (training)"), ("onnx", "onnx (export)")):
        try:
            __import__(module)
        except ImportError:
            raise MissingDependencyError(what, TRAINING_EXTRA) from None


# ----------------------------------------------------------------------------- weights

def save_weights(net, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write the network's state as safetensors (cannot execute code on load), atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata or {})


def load_weights(path: Path) -> dict:
    """Read safetensors weights; a missing, truncated or corrupt file is a ModelError naming it (exit 4)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"{path}: weights file missing", hint="re-fit the run with: labelaudit fit DATASET --force")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: weights file is truncated or corrupt ({exc})",
                         hint="re-fit the run with: labelaudit fit DATASET --force") from exc


# ----------------------------------------------------------------------------- one graph

def export_segmenter(net, num_classes: int, in_channels: int, path: Path, perturbations: Perturbations,
                     exporter: str = DEFAULT_EXPORTER, opset: int = OPSET) -> dict:
    """Export PerturbedSegmenter(net) to `path` and verify it with ONNX Runtime (CPU).

    The check runs on a shape different from the export example, with the run's noise bank
    (runfolder.perturbation_noise). Returns {"opset", "exporter", "max_abs_diff", "checked_shape", ...};
    raises ModelError when the graph differs from PyTorch by more than PARITY_TOLERANCE.
    """
    import torch

    from .nets import PerturbedSegmenter

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    model = PerturbedSegmenter(net.to("cpu").eval(), num_classes).eval()
    image = torch.zeros(1, in_channels, *_EXAMPLE_HW)
    noise = torch.zeros(2, in_channels, *_EXAMPLE_HW)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".onnx") as tmp:
        exporter = _export_graph(
            model, (image, noise), tmp, exporter, opset, inputs={"image": "N?HW", "noise": "K?HW"},
            outputs={"prob_mean": "N?HW", "uncertainty": "NHW"})
        diff = verify_segmenter(model, tmp, in_channels, perturbations)
        if diff > PARITY_TOLERANCE:
            raise ModelError(f"{path}: ONNX Runtime differs from PyTorch by {diff:.2e} (tolerance {PARITY_TOLERANCE:g})",
                             hint="try the other exporter, or report this as a bug")
    return {"opset": opset, "exporter": exporter, "max_abs_diff": diff,
            "checked_shape": [_CHECK_N, in_channels, *_CHECK_HW], "noise_passes": perturbations.k,
            "torch": torch.__version__}


def verify_segmenter(model, onnx_path: Path, in_channels: int, perturbations: Perturbations) -> float:
    """Max |ONNX Runtime - PyTorch| over both outputs, on random images of shape (3, C_in, 48, 80)."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    image = rng.normal(size=(_CHECK_N, in_channels, *_CHECK_HW)).astype(np.float32)
    noise = perturbation_noise(perturbations, in_channels, *_CHECK_HW)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    got = session.run(["prob_mean", "uncertainty"], {"image": image, "noise": noise})
    with torch.no_grad():
        want = model(torch.from_numpy(image), torch.from_numpy(noise))
    return float(max(np.abs(g - w.numpy()).max() for g, w in zip(got, want)))


def export_meta_weight(theta, num_classes: int, in_channels: int, path: Path, exporter: str = DEFAULT_EXPORTER,
                       opset: int = OPSET) -> dict:
    """Export MCPM's meta mask network to `path` (the meta_weight.onnx contract above), verified with ONNX Runtime.

    Returns {"opset", "exporter", "max_abs_diff", "checked_shape", "torch"}; ModelError beyond PARITY_TOLERANCE.
    """
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    model = theta.to("cpu").eval()
    image = torch.zeros(1, in_channels, *_EXAMPLE_HW)
    label = torch.zeros(1, *_EXAMPLE_HW, dtype=torch.int64)
    prob = torch.full((1, num_classes, *_EXAMPLE_HW), 1.0 / num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".onnx") as tmp:
        exporter = _export_graph(
            model, (image, label, prob), tmp, exporter, opset, inputs={"image": "N?HW", "label": "NHW", "prob": "N?HW"},
            outputs={"weight": "N?HW"})
        diff = verify_meta_weight(model, tmp, in_channels, num_classes)
        if diff > PARITY_TOLERANCE:
            raise ModelError(f"{path}: ONNX Runtime differs from PyTorch by {diff:.2e} (tolerance {PARITY_TOLERANCE:g})",
                             hint="try the other exporter, or report this as a bug")
    return {"opset": opset, "exporter": exporter, "max_abs_diff": diff,
            "checked_shape": [_CHECK_N, in_channels, *_CHECK_HW], "torch": torch.__version__}


def verify_meta_weight(model, onnx_path: Path, in_channels: int, num_classes: int) -> float:
    """Max |ONNX Runtime - PyTorch| of `weight` on random images, labels and probabilities of shape (3, ., 48, 80)."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    image = rng.normal(size=(_CHECK_N, in_channels, *_CHECK_HW)).astype(np.float32)
    label = rng.integers(0, num_classes, size=(_CHECK_N, *_CHECK_HW)).astype(np.int64)
    logits = rng.normal(scale=3.0, size=(_CHECK_N, num_classes, *_CHECK_HW))
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob = (prob / prob.sum(axis=1, keepdims=True)).astype(np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(["weight"], {"image": image, "label": label, "prob": prob})
    with torch.no_grad():
        want = model(torch.from_numpy(image), torch.from_numpy(label), torch.from_numpy(prob))
    if got.shape != tuple(want.shape):
        raise ModelError(f"{onnx_path}: weight has shape {got.shape}, PyTorch gives {tuple(want.shape)}")
    return float(np.abs(got - want.numpy()).max())


def load_meta_net(weights: Path, in_channels: int, num_classes: int, params):
    """MCPM's meta mask network with the safetensors `weights` loaded (eval mode); ModelError on mismatch."""
    from .mcpm import build_meta_net

    return _with_weights(build_meta_net(in_channels, num_classes, params), weights, "meta mask weights")


def _with_weights(module, weights: Path, what: str):
    """`module` with the safetensors `weights` loaded, in eval mode; ModelError when they do not fit."""
    try:
        module.load_state_dict(load_weights(weights))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{weights}: {what} do not fit the network described in run.json ({first})",
                         hint="re-fit the run with: labelaudit fit DATASET --force") from exc
    return module.eval()


def _export_graph(model, example: tuple, path: Path, exporter: str, opset: int, inputs: dict[str, str],
                  outputs: dict[str, str]) -> str:
    """Write `model` to `path` as ONNX with the named inputs/outputs; returns the exporter actually used.

    `inputs`/`outputs` give each tensor's axes as letters, `?` for a fixed one (channels): "N?HW" is
    [N, C, H, W] with N, H, W dynamic. Where the TorchScript exporter is missing or fails (it is deprecated
    and may leave PyTorch), the dynamo exporter is used instead; the caller's parity check verifies either.
    """
    import torch

    if exporter == "torchscript":
        dynamic_axes = {name: {i: axis for i, axis in enumerate(axes) if axis != "?"}
                        for name, axes in {**inputs, **outputs}.items()}
        try:
            with _quiet():
                torch.onnx.export(model, example, str(path), dynamo=False, opset_version=opset,
                                  input_names=list(inputs), output_names=list(outputs), dynamic_axes=dynamic_axes)
            return "torchscript"
        except Exception:  # noqa: BLE001 - any failure of the legacy path: the maintained exporter takes over
            exporter = "dynamo"
    from torch.export import Dim

    dims = {axis: Dim(axis) for axes in inputs.values() for axis in set(axes) - {"?"}}
    # positional, one spec per example input: the forward's argument names need not match the ONNX input names
    dynamic_shapes = tuple({i: dims[axis] for i, axis in enumerate(axes) if axis != "?"} for axes in inputs.values())
    with _quiet():
        program = torch.onnx.export(model, example, None, dynamo=True, opset_version=opset, external_data=False,
                                    dynamic_shapes=dynamic_shapes, input_names=list(inputs),
                                    output_names=list(outputs), verbose=False)
        program.save(str(path), external_data=False)
    return exporter


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' warnings and log lines: library code never prints."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(open(os.devnull, "w")) as sink:
                try:
                    yield
                finally:
                    sink.close()
    finally:
        logger.setLevel(level)


# ----------------------------------------------------------------------------- a whole run

def build_fold_net(info: RunInfo, weights: Path):
    """The deployment network of one fold, rebuilt from run.json's net parameters and its weights."""
    from ..config import NetParams

    params = NetParams.from_json(info.config.get("net", {}))
    return load_net(weights, len(info.channel_names), info.label_map.num_classes, params)


def load_net(weights: Path, in_channels: int, num_classes: int, params):
    """A U-Net of the given shape with the safetensors `weights` loaded (eval mode); ModelError on mismatch."""
    from .nets import build_unet

    return _with_weights(build_unet(in_channels, num_classes, params), weights, "weights")


def export_run(run_dir: Path | str, track: Callable[[Iterable, str], Iterable] = no_track,
               exporter: str | None = None) -> RunInfo:
    """Re-create and re-verify every fold's segmenter.onnx (and MCPM's meta_weight.onnx) from its weights.

    Updates run.json. `exporter`: dynamo or torchscript; default: the one run.json's configuration names.
    """
    require_training_extra()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: run folder not found", hint="train one with: labelaudit fit DATASET")
    info = read_run_info(run_dir)
    if not info.models:
        raise ModelError(f"{run_dir / 'run.json'}: lists no models (the fit did not finish)",
                         hint="finish it with: labelaudit fit DATASET --resume")
    exporter = exporter or info.config.get("exporter", "dynamo")
    for model in track(info.models, "exporting"):
        net = build_fold_net(info, run_dir / model.weights)
        model.export = export_segmenter(net, info.label_map.num_classes, len(info.channel_names),
                                        run_dir / model.segmenter, info.perturbations, exporter)
        if model.meta_weight:
            from ..config import McpmParams, params_from_json

            theta = load_meta_net(run_dir / Path(model.weights).parent / "meta_weight.safetensors",
                                  len(info.channel_names), info.label_map.num_classes,
                                  params_from_json(McpmParams, info.config.get("mcpm", {})))
            model.export["meta_weight"] = export_meta_weight(theta, info.label_map.num_classes,
                                                             len(info.channel_names), run_dir / model.meta_weight,
                                                             exporter)
    save_run(run_dir, info)
    return info

"""torch -> ONNX: write each fold's segmenter.onnx from its network, verified with ONNX Runtime.

The graph contract (scoring depends on it exactly): inputs `image` float32 [N, C_in, H, W] (H, W multiples
of 16) and `noise` float32 [K, C_in, H, W]; outputs `prob_mean` float32 [N, C, H, W] (mean over k of
softmax(net(image + noise[k]))) and `uncertainty` float32 [N, H, W] (entropy(prob_mean) / log C).
N, K, H and W are dynamic.

MCPM runs add `meta_weight.onnx` (train.mcpm.MetaMaskNet): inputs `image` float32 [N, C_in, H, W], `label`
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

from ..config import DEFAULT_EXPORTER, Exporter
from ..data import no_track
from ..errors import ModelError
from ..formats.run import Perturbations, RunInfo, perturbation_noise, read_run_info, save_run
from ..io.atomic import atomic_path
from .extra import require_training_extra
from .weights import build_fold_net, load_meta_net

OPSET = 18
#: Export fails when ONNX Runtime and PyTorch differ by more than this (algorithms.md §7.2).
PARITY_TOLERANCE = 1e-4
#: The example shape used for tracing, and a different one for the parity check (so frozen shapes show).
_EXAMPLE_HW = (32, 32)
_CHECK_N, _CHECK_HW = 3, (48, 80)


# ----------------------------------------------------------------------------- one graph

def export_segmenter(net, num_classes: int, in_channels: int, path: Path, perturbations: Perturbations,
                     exporter: Exporter | str = DEFAULT_EXPORTER, opset: int = OPSET) -> dict:
    """Export PerturbedSegmenter(net) to `path` and verify it with ONNX Runtime (CPU).

    The check runs on a shape different from the export example, with the run's noise bank
    (runfolder.perturbation_noise). Returns {"opset", "exporter", "max_abs_diff", "checked_shape", ...};
    raises ModelError when the graph differs from PyTorch by more than PARITY_TOLERANCE.
    """
    import torch

    from .nets import PerturbedSegmenter

    exporter = _exporter(exporter)
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
    return {"opset": opset, "exporter": exporter.value, "max_abs_diff": diff,
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


def export_meta_weight(theta, num_classes: int, in_channels: int, path: Path,
                       exporter: Exporter | str = DEFAULT_EXPORTER, opset: int = OPSET) -> dict:
    """Export MCPM's meta mask network to `path` (the meta_weight.onnx contract above), verified with ONNX Runtime.

    Returns {"opset", "exporter", "max_abs_diff", "checked_shape", "torch"}; ModelError beyond PARITY_TOLERANCE.
    """
    import torch

    exporter = _exporter(exporter)
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
    return {"opset": opset, "exporter": exporter.value, "max_abs_diff": diff,
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


def _exporter(value: Exporter | str) -> Exporter:
    try:
        return Exporter(value)
    except ValueError:
        raise ValueError(f"exporter must be one of {', '.join(e.value for e in Exporter)}, not {value!r}") from None


def _export_graph(model, example: tuple, path: Path, exporter: Exporter, opset: int, inputs: dict[str, str],
                  outputs: dict[str, str]) -> Exporter:
    """Write `model` to `path` as ONNX with the named inputs/outputs; returns the exporter actually used.

    `inputs`/`outputs` give each tensor's axes as letters, `?` for a fixed one (channels): "N?HW" is
    [N, C, H, W] with N, H, W dynamic. Where the TorchScript exporter is missing or fails (it is deprecated
    and may leave PyTorch), the dynamo exporter is used instead; the caller's parity check verifies either.
    """
    import torch

    if exporter is Exporter.TORCHSCRIPT:
        dynamic_axes = {name: {i: axis for i, axis in enumerate(axes) if axis != "?"}
                        for name, axes in {**inputs, **outputs}.items()}
        try:
            with _quiet():
                torch.onnx.export(model, example, str(path), dynamo=False, opset_version=opset,
                                  input_names=list(inputs), output_names=list(outputs), dynamic_axes=dynamic_axes)
            return Exporter.TORCHSCRIPT
        except Exception:  # noqa: BLE001 - any failure of the legacy path: the maintained exporter takes over
            exporter = Exporter.DYNAMO
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

def export_run(run_dir: Path | str, track: Callable[[Iterable, str], Iterable] = no_track,
               exporter: Exporter | str | None = None) -> RunInfo:
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
    exporter = _exporter(exporter or info.settings.exporter or Exporter.DYNAMO)  # runs of before: dynamo
    for model in track(info.models, "exporting"):
        net = build_fold_net(info, run_dir / model.weights)
        model.export = export_segmenter(net, info.label_map.num_classes, len(info.channel_names),
                                        run_dir / model.segmenter, info.perturbations, exporter)
        if model.meta_weight:
            theta = load_meta_net(run_dir / Path(model.weights).parent / "meta_weight.safetensors",
                                  len(info.channel_names), info.label_map.num_classes,
                                  info.settings.mcpm)
            model.export["meta_weight"] = export_meta_weight(theta, info.label_map.num_classes,
                                                             len(info.channel_names), run_dir / model.meta_weight,
                                                             exporter)
    save_run(run_dir, info)
    return info

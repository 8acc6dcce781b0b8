"""Scoring throughput: ONNX Runtime against PyTorch eager, same network, same slices; prints a Markdown table.

    python bench/score_throughput.py [--slices 64] [--size 256] [--k 1 4] [--batch 16]

The network is labelaudit.train.nets' U-Net inside the PerturbedSegmenter (the graph `score` runs), exported with
torch.onnx.export (TorchScript exporter, dynamic axes) and run through labelaudit.score.providers.Segmenter, i.e.
with the session options scoring uses. Both runtimes get the same threads and the same noise bank; each
figure is the best of `--repeats` timed passes over all slices after one warm-up batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def build_segmenter(in_channels: int, num_classes: int):
    import torch

    try:
        from labelaudit.config import NetParams
        from labelaudit.train.nets import PerturbedSegmenter, build_unet

        net, source = build_unet(in_channels, num_classes, NetParams()), f"labelaudit.train.nets {NetParams().features}"
        return PerturbedSegmenter(net, num_classes).eval(), source
    except ImportError:  # before nets.py existed: the same BasicUNet, softmax mean and entropy inline
        from monai.networks.nets import BasicUNet

        features = (16, 16, 32, 64, 128, 16)
        net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, features=features)

        class Segmenter(torch.nn.Module):
            def forward(self, image, noise):
                n, c, h, w = image.shape
                probs = torch.softmax(net((image.unsqueeze(0) + noise.unsqueeze(1)).reshape(-1, c, h, w)), 1)
                mean = probs.reshape(-1, n, num_classes, h, w).mean(0)
                entropy = -(mean * torch.log(mean + 1e-8)).sum(1)
                return mean, entropy / np.log(max(num_classes, 2))

        return Segmenter().eval(), f"monai BasicUNet {features}"


def export(model, path: Path, in_channels: int, size: int) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=UserWarning)  # tracer notes about shape asserts, not errors
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    image = torch.zeros(2, in_channels, size, size)
    noise = torch.zeros(2, in_channels, size, size)
    torch.onnx.export(
        model, (image, noise), str(path), input_names=["image", "noise"],
        output_names=["prob_mean", "uncertainty"], opset_version=17, dynamo=False,
        dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "noise": {0: "K", 2: "H", 3: "W"},
                      "prob_mean": {0: "N", 2: "H", 3: "W"}, "uncertainty": {0: "N", 1: "H", 2: "W"}},
    )


def timed(run, slices: np.ndarray, batch: int, repeats: int) -> float:
    """Best slices/second over `repeats` passes through all slices, after one warm-up batch."""
    run(slices[:batch])
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(slices), batch):
            run(slices[i:i + batch])
        best = max(best, len(slices) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import onnxruntime
    import torch

    from labelaudit.config import Perturbations
    from labelaudit.formats.run import perturbation_noise
    from labelaudit.score.providers import Segmenter, choose_device

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, source = build_segmenter(1, args.classes)
    slices = np.random.default_rng(0).normal(size=(args.slices, 1, args.size, args.size)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "segmenter.onnx"
        export(model, path, 1, args.size)
        choice = choose_device("cpu")
        ort = Segmenter(path, choice, 1, args.classes)
        for k in args.k:
            noise = perturbation_noise(Perturbations(k=k), 1, args.size, args.size)
            noise_t = torch.from_numpy(noise)

            def run_torch(batch: np.ndarray):
                with torch.inference_mode():
                    return model(torch.from_numpy(batch), noise_t)

            def run_ort(batch: np.ndarray):
                return ort.run(batch, noise)

            diff = float(np.abs(run_torch(slices[:2])[0].numpy() - run_ort(slices[:2])[0]).max())
            eager = timed(run_torch, slices, args.batch, args.repeats)
            onnx_rt = timed(run_ort, slices, args.batch, args.repeats)
            rows.append((k, eager, onnx_rt, diff))

    print(f"Scoring throughput, {args.slices} slices of {args.size}×{args.size}, batch {args.batch} slices, "
          f"{args.classes} classes; network: {source}.")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} "
          f"threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__} ({choice.provider}); "
          f"{time.strftime('%Y-%m-%d')}.\n")
    print("| K (passes) | PyTorch eager (slices/s) | ONNX Runtime (slices/s) | ORT / eager | max abs diff prob |")
    print("| --- | --- | --- | --- | --- |")
    for k, eager, onnx_rt, diff in rows:
        print(f"| {k} | {eager:.1f} | {onnx_rt:.1f} | {onnx_rt / eager:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()

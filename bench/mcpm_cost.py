"""Benchmark: the cost of an MCPM training epoch against a plain one, same network, batches and device.

Runs the shared training loop (methods/loop.py: sampling, augmentation, AMP on CUDA, checkpoints) with the
plain method and with MCPM (a meta step every `--meta-every` iterations, no warm-up) on synthetic disks with
a dilated label on half of the slices, and prints one JSON line per method plus the ratio. Needs torch and
MONAI, not SimpleITK (no files are read).

    python bench/mcpm_cost.py --device cpu --iterations 10             # a CPU smoke run
    python bench/mcpm_cost.py --device cuda --size 128 --batch 16      # on a GPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from labelaudit.config import LoopParams, McpmParams, NetParams
from labelaudit.train.loop import SliceSampler, resolve_device, train
from labelaudit.train.mcpm import McpmMethod
from labelaudit.train.plain import PlainMethod


def disks(n: int, size: int, grow: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n slices (n, 1, size, size) float32 with a noisy bright disk; labels (n, size, size) int64, every other
    one dilated by `grow` px."""
    yy, xx = np.mgrid[:size, :size]
    image = np.empty((n, 1, size, size), np.float32)
    label = np.empty((n, size, size), np.int64)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        r = rng.uniform(0.1, 0.25) * size
        dist = np.hypot(yy - cy, xx - cx)
        image[i, 0] = (dist < r) + rng.normal(0, 0.4, (size, size))
        label[i] = dist < r + (grow if i % 2 == 0 else 0)
    return image, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=25, help="per epoch; 3 epochs, the first not timed")
    parser.add_argument("--meta-every", type=int, default=1)
    parser.add_argument("--features", default="8,16,32,64,128,8")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    train_cases = [disks(20, args.size, 3, rng) for _ in range(4)]
    meta_cases = [disks(20, args.size, 0, rng)]
    loop = LoopParams(epochs=3, iterations_per_epoch=args.iterations, batch_size=args.batch)
    net = NetParams(features=tuple(int(f) for f in args.features.split(",")))
    mcpm = replace(McpmParams(), warmup_fraction=0.0, meta_every=args.meta_every)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("plain", "mcpm"):
            method = PlainMethod() if name == "plain" else McpmMethod(mcpm, meta_cases, 0, loop)
            started = time.perf_counter()
            result = train(method, SliceSampler(train_cases), 2, loop, net, 0, device, Path(tmp) / f"{name}.pt")
            wall = time.perf_counter() - started
            seconds[name] = float(np.mean([row["seconds"] for row in result.log[1:]]))  # epoch 1: warm-up
            last = result.log[-1]
            print(json.dumps({"method": name, "device": result.device, "epoch_s": seconds[name], "wall_s": wall,
                              "loss": last["loss"], "meta_loss": last.get("meta_loss"),
                              "weight_mean": last.get("weight_mean"),
                              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}),
                  flush=True)
    print(json.dumps({"ratio_mcpm_over_plain": seconds["mcpm"] / seconds["plain"], "size": args.size,
                      "batch": args.batch, "iterations_per_epoch": args.iterations, "meta_every": args.meta_every,
                      "features": args.features}), flush=True)


if __name__ == "__main__":
    main()

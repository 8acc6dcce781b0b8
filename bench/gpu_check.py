"""The device checks, in one short script for a session that is lent a GPU machine.

    python bench/gpu_check.py [--model RUN_DIR] [--size 512] [--slices 32] [--batch 8] [--fit] [--out FILE]

1. ONNX Runtime's CUDA provider against its CPU provider on the run's segmenter.onnx (default: fold 0 of the
   shipped models/demo-pint) at SIZE² with the run's K perturbations: the largest difference of prob_mean and of
   the uncertainty, and slices/s of the CPU provider, of CUDA through session.run and of CUDA through IOBinding
   (labelaudit.score.providers.NoiseBinding, what `score` uses on CUDA); each the best of 3 passes after a warm-up
   (score_throughput.timed).
2. --fit: `labelaudit fit` of the embedded demo under `torchrun --nproc_per_node G` (G = the visible GPUs, 2 folds,
   2 epochs): its wall time, the run.json `distributed` block, and that the run scores (`labelaudit score`).

Prints one JSON object (and writes it to --out); on a machine without a GPU, --device cpu runs part 1 with the
CPU provider in every column, which only checks the script. A benchmark: asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from score_throughput import timed

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "models" / "demo-pint"


def provider_parity(args) -> dict:
    from labelaudit.config import Perturbations
    from labelaudit.formats.run import perturbation_noise
    from labelaudit.score.providers import CPU, Segmenter, choose_device

    info = json.loads((args.model / "run.json").read_text())
    segmenter = args.model / info["models"][0]["segmenter"]
    c_in, classes = len(info["channel_names"]), len(info["classes"]["values"])
    k = int(info["perturbations"]["k"])
    noise = perturbation_noise(Perturbations(**info["perturbations"]), c_in, args.size, args.size)
    images = np.random.default_rng(0).normal(size=(args.slices, c_in, args.size, args.size)).astype(np.float32)
    cpu = Segmenter(segmenter, choose_device("cpu"), c_in, classes)
    gpu_choice = choose_device(args.device)
    plain = Segmenter(segmenter, gpu_choice, c_in, classes, bound=False)
    bound = Segmenter(segmenter, gpu_choice, c_in, classes, bound=True)
    want_prob, want_unc = cpu.run(images[:args.batch], noise)
    prob, unc = bound.run(images[:args.batch], noise)
    same_prob, _ = plain.run(images[:args.batch], noise)
    return {
        "segmenter": str(segmenter), "size": args.size, "k": k, "batch": args.batch, "slices": args.slices,
        "provider": bound.provider, "cuda_ran": bound.provider != CPU,
        "max_abs_diff_prob": float(np.abs(prob - want_prob).max()),
        "max_abs_diff_uncertainty": float(np.abs(unc - want_unc).max()),
        "bound_vs_run_max_abs_diff": float(np.abs(prob - same_prob).max()),
        "slices_per_s": {
            "cpu": timed(lambda x: cpu.run(x, noise), images, args.batch, 3),
            "gpu_run": timed(lambda x: plain.run(x, noise), images, args.batch, 3),
            "gpu_iobinding": timed(lambda x: bound.run(x, noise), images, args.batch, 3),
        },
    }


def ddp_fit(args) -> dict:
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        return {"skipped": "no CUDA device visible to torch"}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        from labelaudit.demo import demo_dataset_path

        data, run, audit = demo_dataset_path(), Path(tmp) / "run", Path(tmp) / "audit"
        start = time.perf_counter()
        fit = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus), "-m",
                              "labelaudit", "fit", str(data), "--out", str(run), "--folds", "2", "--epochs", "2",
                              "--seed", "0"], capture_output=True, text=True)
        wall = time.perf_counter() - start
        result = {"gpus": gpus, "fit_rc": fit.returncode, "fit_wall_s": round(wall, 1), "fit_tail": fit.stderr[-2000:]}
        if fit.returncode == 0:
            result["distributed"] = json.loads((run / "run.json").read_text()).get("distributed")
            score = subprocess.run([sys.executable, "-m", "labelaudit", "score", str(data), "--model", str(run),
                                    "--out", str(audit)], capture_output=True, text=True)
            result["score_rc"] = score.returncode
            result["score_tail"] = score.stderr[-1000:]
        if args.keep:
            shutil.copytree(run, args.keep / "run", dirs_exist_ok=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHIPPED)
    parser.add_argument("--device", default="cuda", help="the provider compared with CPU (cpu: a dry run)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--fit", action="store_true", help="also a DDP fit of the demo under torchrun")
    parser.add_argument("--keep", type=Path, help="copy the fitted run here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {"parity": provider_parity(args)}
    if args.fit:
        result["fit"] = ddp_fit(args)
    result["threads"] = os.cpu_count()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

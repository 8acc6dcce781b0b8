"""Sweep PINT's unreported knobs (EMA decay, warm-up, image quantile, variant) on the corrupted demo data.

Each variant is fit in-sample (--folds 1, same budget) on the demo corrupted at slice level (r = 0.4,
seed 0) and its audit is measured with bench/score_formulas.py (slice AP/AUROC of several formulas) and
the robust model's Dice against the clean labels. Variants run `--jobs` at a time (a GPU holds several).

    python bench/pint_sweep.py --device cuda --jobs 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

VARIANTS = {
    "plain": ["--method", "plain"],
    "pint default": ["--method", "pint"],
    "ema 0.95": ["--method", "pint", "--ema-decay", "0.95"],
    "image q 0.8": ["--method", "pint", "--image-quantile", "0.8"],
    "warmup 0.3": ["--method", "pint", "--warmup", "0.3"],
    "ema .95 wu .3 q .8": ["--method", "pint", "--ema-decay", "0.95", "--warmup", "0.3", "--image-quantile", "0.8"],
    "pnt": ["--method", "pint", "--variant", "pnt"],
    "pnt ema .95 wu .3": ["--method", "pint", "--variant", "pnt", "--ema-decay", "0.95", "--warmup", "0.3"],
    # the image level's FIFO memory (PintParams.memory_batches, default 50): does a shorter one make it act?
    "int": ["--method", "pint", "--variant", "int"],
    "int memory 10": ["--method", "pint", "--variant", "int", "--memory-batches", "10"],
    "int memory 3": ["--method", "pint", "--variant", "int", "--memory-batches", "3"],
    "pint memory 10": ["--method", "pint", "--memory-batches", "10"],
    "pint memory 3": ["--method", "pint", "--memory-batches", "3"],
}


def images_set_aside(run_dir: Path) -> str:
    """Mean share of slices with alpha_i = 0 (learning from the teacher only) over the epochs after warm-up."""
    log = json.loads((run_dir / "run.json").read_text()).get("log", {})
    shares = [row["images_alpha0"] for rows in log.values() for row in rows if row.get("warmup") == 0.0]
    return f"images with alpha_i = 0 after warm-up: {sum(shares) / len(shares):.1%}" if shares else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--work", type=Path, default=HERE / "out" / "pint_sweep")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    args = parser.parse_args()
    from labelaudit.demo import materialize_demo

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    clean = materialize_demo(args.work / "clean")
    noisy = args.work / "noisy"
    cli = [sys.executable, "-m", "labelaudit"]
    subprocess.run([*cli, "corrupt", str(clean), str(noisy), "--rate", "0.4", "--seed", "0"], check=True,
                   stdout=subprocess.DEVNULL)

    def one(item):
        name, extra = item
        run_dir = args.work / name.replace(" ", "_")
        start = time.perf_counter()
        fit = [*cli, "fit", str(noisy), "--folds", "1", "--out", str(run_dir), "--device", args.device,
               "--exporter", "torchscript", "--force", "--preset", "fast", *extra]
        if args.epochs:
            fit += ["--epochs", str(args.epochs)]
        done = subprocess.run(fit, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if done.returncode:
            return name, f"fit failed ({done.returncode}): {done.stderr[-400:]}"
        seconds = time.perf_counter() - start
        formulas = subprocess.run([sys.executable, str(HERE / "score_formulas.py"), str(run_dir), str(noisy)],
                                  capture_output=True, text=True)
        audit = args.work / ("audit_" + run_dir.name)
        subprocess.run([*cli, "score", str(noisy), "--model", str(run_dir), "--out", str(audit)],
                       capture_output=True)
        evaluation = subprocess.run([*cli, "evaluate", str(audit), "--truth", str(noisy / "corruption.json"),
                                     "--clean", str(clean)], capture_output=True, text=True,
                                    env={**os.environ, "COLUMNS": "150"})
        return name, (f"fit {seconds:.0f} s; {images_set_aside(run_dir)}\n{formulas.stdout}{formulas.stderr[-300:]}\n"
                      f"{evaluation.stdout[-2500:]}")

    with ThreadPoolExecutor(args.jobs) as pool:
        chosen = {k: v for k, v in VARIANTS.items() if not args.only or k in args.only.split(",")}
        for name, text in pool.map(one, chosen.items()):
            print(f"=== {name}\n{text}\n", flush=True)


if __name__ == "__main__":
    main()

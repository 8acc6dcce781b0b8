"""Does a longer fit lift a calibration off its ceiling? One development cell, the standard preset at 30 epochs
(the suite's `stronger` run) against the same fit at more epochs.

`fit` warns when its calibrated slice threshold is 1 (score/decide.saturated_calibration_note) and names ways to
a stronger model. This measures one of them where it happens on the development half (ct_lesion): AP on the
training set (out-of-fold), Dice of the ensemble's prediction on the clean new cases, the calibrated thresholds
and what `check`'s rule flags (bench/score_gates.py's measurement of the landed score).

    python bench/longer_fit.py [--cell ct_lesion/slice] [--epochs 90] [--work bench/suite_runs/full]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from score_gates import measure

HERE = Path(__file__).resolve().parent


def fit_longer(cell: Path, epochs: int, dest: Path) -> float:
    """The cell's `stronger` fit at `epochs` under dest/runs/stronger (reused when there); returns seconds."""
    run_dir = dest / "runs" / "stronger"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("noisy", "noisy_new"):  # measure() reads the cell's corrupted copies beside the run
        link = dest / name
        if not link.exists():
            link.symlink_to((cell / name).resolve())
    if (run_dir / "run.json").is_file() and (run_dir / "fold_2").is_dir():
        return float("nan")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "labelaudit", "fit", str(cell / "noisy"), "--method", "plain", "--preset",
                    "standard", "--epochs", str(epochs), "--out", str(run_dir), "--seed", "0", "--force"], check=True)
    return time.perf_counter() - start


def summary(name: str, cell: Path, clean_new: Path) -> str:
    found = measure(cell, clean_new)
    landed, dice = found["landed"], found["dice_new"]
    rule = landed["rules"]["MAD 3/6"]
    ap = " / ".join(f"{landed['ap'][lv]:.3f}" for lv in ("slice", "pixel"))
    return (f"{name}: slice / pixel AP {ap}, Dice on the clean new cases {dice:.3f}, thresholds slice / case / gate "
            f"{rule['slice']:.3f} / {rule['case']:.3f} / {rule['gate']:.3f}, corrupted training slices flagged "
            f"{rule['corrupted_slices'][0]}/{rule['corrupted_slices'][1]}, corrupted new cases flagged "
            f"{rule['detections'][0]}/{rule['detections'][1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="ct_lesion/slice", help="a development cell with a `stronger` run")
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--work", type=Path, default=HERE / "suite_runs" / "full")
    options = parser.parse_args()
    cell = options.work / options.cell
    clean_new = options.work / "data" / options.cell.split("/")[0] / "new"
    longer = options.work / "longer_fit" / options.cell.replace("/", "_") / f"epochs_{options.epochs}"
    seconds = fit_longer(cell, options.epochs, longer)
    print(summary("30 epochs (the standard preset)", cell, clean_new))
    print(summary(f"{options.epochs} epochs", longer, clean_new) + ("" if np.isnan(seconds) else
                                                                    f", fit {seconds:.0f} s"))


if __name__ == "__main__":
    main()

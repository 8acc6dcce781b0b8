"""Peak memory of `fit` on CT-like datasets of two sizes: it should not grow with the number of cases.

Writes N CT-like cases (bench/inspect_memory.ct_like: air, body, organ, spine, noise; int16 HU, channel "CT")
in the nnU-Net layout, the smaller dataset linking the first cases of the larger, then runs `fit` on each in
a child process (1 epoch, a few iterations, 2 folds, plain, CPU, no calibration, which is scoring's memory)
and reads the child's peak resident memory (os.wait4's ru_maxrss). A third run fits the smaller dataset
again, reusing its preprocessed folder. Prints the slope per case and its extrapolation to 500 cases;
--results appends a section to bench/RESULTS.md. A benchmark, not a test: it asserts nothing.

    python bench/fit_memory.py [--cases 10 40] [--size 512 512 80] [--iterations 4] [--keep DIR] [--results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from inspect_memory import ct_like
from pint_audit import machine

from labelaudit.io.image import write_volume
from labelaudit.types import Geometry, Volume

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

CHILD = """
import sys
from pathlib import Path
from labelaudit.config import FitConfig, LoopParams
from labelaudit.train.fit import fit_dataset
data, out, iterations = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
fit_dataset(FitConfig(dataset=data, out=out, method="plain", folds=2, device="cpu", calibrate=False, force=True,
                      loop=LoopParams(epochs=1, iterations_per_epoch=iterations)))
"""


def write_dataset(root: Path, cases: int, size: tuple[int, int, int]) -> None:
    """`cases` CT-like cases, each from its own seed."""
    geometry = Geometry(size, (0.78, 0.78, 2.5), (-200.0, -180.0, -600.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for i, seq in enumerate(np.random.SeedSequence(0).spawn(cases)):
        image, label = ct_like(size, np.random.default_rng(seq))
        write_volume(Volume(image, geometry), root / "imagesTr" / f"ct_{i:03d}_0000.nii.gz")
        write_volume(Volume(label, geometry), root / "labelsTr" / f"ct_{i:03d}.nii.gz")
    _dataset_json(root, cases)


def _dataset_json(root: Path, cases: int) -> None:
    (root / "dataset.json").write_text(json.dumps({
        "name": root.name, "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1},
        "numTraining": cases, "file_ending": ".nii.gz"}))


def link_subset(source: Path, root: Path, cases: int) -> None:
    """A dataset of the first `cases` cases of `source`, as symbolic links."""
    for folder, suffix in (("imagesTr", "_0000"), ("labelsTr", "")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(cases):
            name = f"ct_{i:03d}{suffix}.nii.gz"
            (root / folder / name).symlink_to(source / folder / name)
    _dataset_json(root, cases)


def measure_fit(dataset: Path, out: Path, iterations: int) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, output tail) of one fit in a child process, reaped by os.wait4."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(dataset), str(out), str(iterations)],
                                 stdout=output, stderr=output, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own usage, not the maximum over all children
        child.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        output.seek(0)
        tail = output.read()[-3000:]
    if child.returncode != 0:
        raise SystemExit(f"fit on {dataset} failed (exit {child.returncode}):\n{tail}")
    return usage.ru_maxrss / 2**10, elapsed, tail


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs=2, default=(10, 40), metavar=("SMALL", "LARGE"))
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 80), help="ITK order x y z")
    parser.add_argument("--iterations", type=int, default=4, help="training steps per fold (batch 8)")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    parser.add_argument("--results", action="store_true", help=f"append a section to {RESULTS}")
    args = parser.parse_args()
    small, large = sorted(args.cases)
    with tempfile.TemporaryDirectory(prefix="fit_memory_") as tmp:
        work = args.keep or Path(tmp)
        started = time.perf_counter()
        big = work / "Dataset910_CtLarge"
        write_dataset(big, large, tuple(args.size))
        little = work / "Dataset911_CtSmall"
        link_subset(big, little, small)
        print(f"wrote {large} cases of {'x'.join(map(str, args.size))} in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        rows = []
        for name, dataset, cases in (("small", little, small), ("large", big, large), ("small, reused", little, small)):
            peak, elapsed, _ = measure_fit(dataset, work / "runs" / dataset.name, args.iterations)
            rows.append((name, cases, peak, elapsed))
            print(f"fit {name}: {cases} cases, peak RSS {peak:.0f} MB, {elapsed:.0f} s", file=sys.stderr)
        cache_mb = folder_mb(work / "runs" / ".preprocessed")
    slope = (rows[1][2] - rows[0][2]) / (large - small)
    at_500 = rows[0][2] + slope * (500 - small)
    lines = [f"| {name} | {cases} | {peak:.0f} | {elapsed:.0f} |" for name, cases, peak, elapsed in rows]
    growth = f"extrapolated to 500 cases: {at_500:.0f} MB" if slope > 0 else "no growth to extrapolate"
    summary = (f"slope {slope:+.1f} MB per case; {growth}; preprocessed folders "
               f"{cache_mb / 1024:.1f} GB ({cache_mb / (small + large):.0f} MB per case)")
    print("\n".join(lines) + "\n" + summary)
    if args.results:
        section = [
            "", "", "## fit peak memory (bench/fit_memory.py)", "",
            f"- date: {dt.date.today().isoformat()}; machine: {machine()}",
            f"- data: CT-like cases of {'x'.join(map(str, args.size))} int16 .nii.gz (channel CT); fit: plain, 2 folds, "
            f"1 epoch of {args.iterations} steps at batch 8, default patch and network, CPU, no calibration",
            "", "| run | cases | peak RSS (MB) | wall (s) |", "| --- | --- | --- | --- |", *lines, "",
            f"- {summary}",
        ]
        with open(RESULTS, "a", encoding="utf-8") as handle:
            handle.write("\n".join(section) + "\n")


if __name__ == "__main__":
    main()

"""Peak memory of `labelaudit inspect` on one 512×512×300 int16 CT volume and its label (target: < 2 GB).

Writes a CT-like volume (air, an elliptic body with soft tissue and bone, noise) and a label (an
ellipsoid "organ") in the nnU-Net layout into a temporary folder, runs `labelaudit inspect` on it in
a child process and prints the child's peak resident memory (ru_maxrss). A benchmark, not a test:
it asserts nothing.

    python bench/inspect_memory.py [--size 512 512 300] [--ending .nii.gz] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from labelaudit.io.image import write_volume
from labelaudit.types import Geometry, Volume

TARGET_MB = 2048


def ct_like(size: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image int16 HU, label uint8), numpy order (Z, Y, X), built slice by slice to stay light."""
    nx, ny, nz = size
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    y, x = (y - ny / 2) / (ny / 2), (x - nx / 2) / (nx / 2)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1
    spine = ((x / 0.08) ** 2 + ((y - 0.4) / 0.08) ** 2) <= 1
    image = np.empty((nz, ny, nx), np.int16)
    label = np.zeros((nz, ny, nx), np.uint8)
    for k in range(nz):
        t = 2 * k / max(nz - 1, 1) - 1
        radius = max(0.0, 1 - t * t) ** 0.5
        organ = ((x + 0.3) / (0.35 * radius + 1e-6)) ** 2 + ((y + 0.05) / (0.3 * radius + 1e-6)) ** 2 <= 1
        plane = np.where(body, 40.0, -1000.0) + np.where(organ, 20.0, 0.0) + np.where(spine, 700.0, 0.0)
        plane += rng.normal(0.0, 12.0, size=plane.shape).astype(np.float32)
        image[k] = np.clip(np.round(plane), -1024, 3071)
        label[k][organ] = 1
    return image, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300), help="ITK order x y z")
    parser.add_argument("--ending", default=".nii.gz", choices=(".nii.gz", ".nii", ".nrrd", ".mha"))
    parser.add_argument("--keep", type=Path, help="write the dataset here and keep it (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="inspect_memory_") as tmp:
        root = (args.keep or Path(tmp)) / "Dataset900_BigCT"
        started = time.perf_counter()
        image, label = ct_like(tuple(args.size), np.random.default_rng(0))
        geometry = Geometry(tuple(args.size), (0.78, 0.78, 2.5), (-200.0, -180.0, -600.0),
                            (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        write_volume(Volume(image, geometry), root / "imagesTr" / f"ct_000_0000{args.ending}")
        write_volume(Volume(label, geometry), root / "labelsTr" / f"ct_000{args.ending}")
        (root / "dataset.json").write_text(json.dumps({
            "name": root.name, "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1},
            "numTraining": 1, "file_ending": args.ending}))
        array_mb = image.nbytes / 2**20
        del image, label
        print(f"wrote {root} ({array_mb:.0f} MB int16 image in memory) in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)

        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "labelaudit", "inspect", str(root)],
                                capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        # ru_maxrss is in KiB on Linux, bytes on macOS; the only child waited for is the inspect run
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
        print(result.stdout, end="")
        print(result.stderr, end="", file=sys.stderr)
        print(f"inspect {'x'.join(map(str, args.size))} int16 {args.ending}: exit {result.returncode}, "
              f"{elapsed:.1f} s, peak RSS {peak_mb:.0f} MB (target < {TARGET_MB} MB) "
              f"on {platform.node()} ({platform.machine()}, Python {platform.python_version()})")


if __name__ == "__main__":
    main()

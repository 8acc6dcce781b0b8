"""`labelaudit check` start-up: whole-process wall time, median of several runs; prints a Markdown table.

    python bench/check_startup.py [--model models/demo-pint] [--runs 5] [--cases 20] [--startup-only]

Run it with the interpreter of the install to measure (e.g. a fresh venv: /tmp/v/bin/python bench/check_startup.py):
each labelaudit process starts in a temporary folder, so the installed package runs, not this source tree.
The header line names the install: ONNX Runtime distribution, and the environment's size (du -sm sys.prefix).

Measured, each in a fresh process (`python -m labelaudit ...`, as a CI runner would start it):
- `--help`: interpreter + Typer start-up (no numpy, SimpleITK or ONNX Runtime imported);
- check on a 1-case 2D dataset: start-up to the first score (imports, run.json, ONNX Runtime session,
  reading and scoring one image), i.e. the fixed cost of a CI step;
- check on a `--cases` 2D dataset (labelaudit.synth, two_d=True, 96x80 PNG), the issue's figure;
- the same again with `--cache` warm (nothing to score).
`--startup-only` measures the first two alone (the figures README "Installation" gives per install).

The synthetic images get the shipped model's channel name and label set, so the real network runs (its
scores on synthetic data mean nothing; only the time counts). Exit 0 and 1 both count as a completed check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, cases: int, model: Path) -> Path:
    from labelaudit.synth import SynthConfig, write_synth_dataset

    info = json.loads((model / "run.json").read_text())
    names = info["classes"]["names"]
    channel = info["channel_names"][0]
    root = write_synth_dataset(root, SynthConfig(cases=cases, size=(96, 80, 1), two_d=True, modality=channel,
                                                 classes=len(names) - 1, seed=0))
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = dict(zip(names, info["classes"]["values"]))
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def install_facts() -> str:
    """Which ONNX Runtime this environment has and how big the environment is (MB, as du -sm reports it)."""
    from importlib import metadata

    runtimes = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            runtimes.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    try:
        size = subprocess.run(["du", "-sm", sys.prefix], capture_output=True, text=True).stdout.split()[0] + " MB"
    except (OSError, IndexError):
        size = "unknown size"
    return f"environment {sys.prefix}: {size}, {' + '.join(runtimes) or 'no ONNX Runtime'}"


def timed(args: list[str], runs: int, env: dict, cwd: str) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "labelaudit", *args], capture_output=True, text=True,
                                env=env, cwd=cwd)
        times.append(time.perf_counter() - start)
        if result.returncode not in (0, 1):
            raise SystemExit(f"labelaudit {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "demo-pint")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--startup-only", action="store_true", help="only --help and the 1-case check")
    args = parser.parse_args()
    args.model = args.model.resolve()
    env = {**os.environ, "COLUMNS": "120"}
    with tempfile.TemporaryDirectory(prefix="labelaudit-bench-") as tmp:
        one = make_dataset(Path(tmp) / "one", 1, args.model)
        check = ["check", "--model", str(args.model), "--device", "cpu", "--format", "json"]
        rows = [
            ("labelaudit --help", timed(["--help"], args.runs, env, tmp)),
            ("check, 1 case (start-up to first score)", timed([*check, str(one)], args.runs, env, tmp)),
        ]
        if not args.startup_only:
            many = make_dataset(Path(tmp) / "many", args.cases, args.model)
            cache = str(Path(tmp) / "cache")
            rows.append((f"check, {args.cases} cases", timed([*check, str(many)], args.runs, env, tmp)))
            timed([*check, "--cache", cache, str(many)], 1, env, tmp)  # fill the cache
            rows.append((f"check, {args.cases} cases, warm --cache",
                         timed([*check, "--cache", cache, str(many)], args.runs, env, tmp)))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; model {args.model.name}; median of {args.runs} runs, whole process")
    print(f"{install_facts()}\n")
    print("| what | median s | runs (s) |\n| --- | ---: | --- |")
    for name, (median, times) in rows:
        print(f"| {name} | {median:.2f} | {', '.join(f'{t:.2f}' for t in times)} |")


if __name__ == "__main__":
    main()

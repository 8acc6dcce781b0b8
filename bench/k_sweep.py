"""Audit quality against K, the test-time perturbations of scoring, on the suite's development half.

Scoring costs K network passes a slice, so K is the main lever on its speed. For every development cell of
bench/suite.py that has a plain run, the training set is scored out-of-fold again with K in KS (the run's
graphs take any K; pass 0 is the clean image) and slice, pixel and case AP are measured as the suite does.
Nothing is fit; the held-out half is never scored here.

    python bench/suite.py --half dev       # first: the runs
    python bench/k_sweep.py [--results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from pint_audit import machine, write_section
from suite import audit_signal, levels_json, truth_of
from suite_data import DATASETS, Half

from labelaudit.config import ScoreConfig
from labelaudit.formats.manifest import read_manifest
from labelaudit.score.pipeline import score_dataset

HERE = Path(__file__).resolve().parent
KS = (1, 2, 4, 8)
TITLE = "## Audit quality against K, the scoring perturbations (`python bench/k_sweep.py`)"
LEVELS = ("slice", "pixel", "case")


def measure_cell(cell: Path, scratch: Path) -> dict[int, dict]:
    noisy = cell / "noisy"
    manifest = read_manifest(noisy / "corruption.json")
    order = sorted(manifest.cases)
    truth = truth_of(noisy, manifest.source, order)
    found = {}
    for k in KS:
        out = scratch / f"k{k}"
        started = time.perf_counter()
        score_dataset(ScoreConfig(run_dir=cell / "runs" / "plain", dataset=noisy, out_dir=out, device="cpu",
                                  perturbations=k))
        seconds = time.perf_counter() - started
        found[k] = {"levels": levels_json(audit_signal(f"K={k}", out, order), truth), "seconds": seconds}
        shutil.rmtree(out)
    return found


def section(rows: list[tuple[str, str, dict[int, dict]]]) -> str:
    lines = [TITLE, "", f"Generated {dt.date.today().isoformat()} on {machine()}, development half only (the default "
             "is chosen here). Each plain run of bench/suite.py scores its training set out-of-fold with K "
             "perturbed passes (pass 0 unperturbed); AP as in the suite section; seconds: the whole `score` of the "
             "cell (read, infer, score, write), on a machine shared with other jobs.", "",
             "| cell | " + " | ".join(f"K={k} slice · pixel · case AP" for k in KS) + " |",
             "| --- | " + " | ".join("---" for _ in KS) + " |"]

    def ap(entry: dict, level: str) -> str:
        value = entry["levels"].get(level, {}).get("ap")
        return "—" if value is None or np.isnan(value) else f"{value:.3f}"

    for name, regime, found in rows:
        lines.append(f"| {name}/{regime} | " + " | ".join(" · ".join(ap(found[k], lv) for lv in LEVELS)
                                                          for k in KS) + " |")
    means = []
    for k in KS:
        parts = []
        for level in LEVELS:
            values = [f[k]["levels"].get(level, {}).get("ap") for _, _, f in rows]
            values = [v for v in values if v is not None and not np.isnan(v)]
            parts.append(f"{np.mean(values):.3f}" if values else "—")
        seconds = np.mean([f[k]["seconds"] / f[max(KS)]["seconds"] for _, _, f in rows])
        means.append(f"K={k}: mean AP {' · '.join(parts)}, score time {seconds:.2f}× that of K={max(KS)}")
    lines += ["", *[f"- {m}" for m in means], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "suite_runs" / "full")
    parser.add_argument("--results", action="store_true", help="write the section into bench/RESULTS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="labelaudit-k-") as tmp:
        for dataset in DATASETS:
            if dataset.half is not Half.DEV:
                continue
            for cell in sorted(p for p in (args.work / dataset.name).glob("*") if (p / "runs" / "plain").is_dir()):
                found = measure_cell(cell, Path(tmp))
                rows.append((dataset.name, cell.name, found))
                print(f"{dataset.name}/{cell.name}: " + ", ".join(
                    f"K={k} slice {v['levels']['slice']['ap']:.3f}" for k, v in found.items()), flush=True)
    text = section(rows)
    print(text)
    if args.results:
        write_section(HERE / "RESULTS.md", TITLE, text)


if __name__ == "__main__":
    main()

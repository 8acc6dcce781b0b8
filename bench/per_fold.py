"""Per-fold ranking of a sweep cell: labelaudit's slice noise score vs cleanlab, fold by fold.

A pooled AP mixes the folds' models; this separates "the score ranks badly" from "one fold's model is bad".
Reads a finished `bench/sweep.py` work folder (its plain run, audit and corrupted data of one cell).

    python bench/per_fold.py bench/out/sweep-synth slice-r0.2 [more cells…]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from baselines import cleanlab_scores  # bench/ is sys.path[0] when run as `python bench/per_fold.py`

from labelaudit.evaluate.metrics import ranking_scores
from labelaudit.formats.manifest import read_manifest


def per_fold(work: Path, cell: str) -> list[str]:
    run, noisy, audit = work / "runs" / f"{cell}-plain", work / "noisy" / cell, work / "audits" / f"{cell}-plain"
    manifest = read_manifest(noisy / "corruption.json")
    theirs = cleanlab_scores(run, noisy)
    with (audit / "slices.csv").open() as handle:
        ours = {(row["case_id"], int(row["slice_index"])): float(row["noise_score"]) for row in csv.DictReader(handle)}
    lines = []
    for fold, held_out in enumerate(json.loads((run / "run.json").read_text())["folds"]):
        keys = [key for key in ours if key[0] in held_out]
        truth = [manifest.cases[case].slices[index] for case, index in keys]
        a = ranking_scores([ours[k] for k in keys], truth)
        b = ranking_scores([theirs[k] for k in keys], truth)
        lines.append(f"| {cell} | {fold} | {sum(truth)} of {len(keys)} | {a.ap:.3f} / {a.auroc:.3f} "
                     f"| {b.ap:.3f} / {b.auroc:.3f} |")
    return lines


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    work = Path(sys.argv[1])
    print("| cell | fold | corrupted slices | labelaudit (plain) AP / AUROC | cleanlab AP / AUROC |")
    print("|---|---|---|---|---|")
    for cell in sys.argv[2:]:
        print("\n".join(per_fold(work, cell)))


if __name__ == "__main__":
    main()

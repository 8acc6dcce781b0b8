"""cleanlab's segmentation methods against labelaudit, on the same out-of-fold probabilities (issue: probabilities).

For every cell of bench/suite.py with a plain run, its out-of-fold softmax (CELL/oof_probabilities/CASE.npz, as
suite.py wrote it for `score --probabilities`), and for every cell with a run at fit's default budget (`stronger`,
the standard preset) its own (CELL/stronger_probabilities), is ranked by each method cleanlab 2.x offers for
segmentation:

- `get_label_quality_scores(method="softmin")`: slice score 1 − image quality, pixel score 1 − p_y;
- `get_label_quality_scores(method="num_pixel_issues")`: the share of the slice's pixels that
  `find_label_issues` (confident learning per pixel) marks, at `downsample=1` (the suite's slices are not
  multiples of cleanlab's default 16); pixel score: that mask, marked pixels first, ties broken by 1 − p_y.

Case score = max over slices, as in the suite. labelaudit's figures are the suite's own (rows.json): the audit of
the run the probabilities came from, and `score --probabilities` on these same files. Both halves are reported; nothing is chosen from this.

    python bench/cleanlab_methods.py [--work bench/suite_runs/full] [--cells ds/regime,...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pint_audit import machine, write_section
from suite_data import Half
from suite_signals import Signal, level_scores

from suite import truth_of

from labelaudit.formats.manifest import read_manifest

HERE = Path(__file__).resolve().parent
TITLE = "## cleanlab's segmentation methods on the same probabilities (`python bench/cleanlab_methods.py`)"
LEVELS = ("slice", "pixel", "case")


def cleanlab_signals(probabilities: Path, noisy: Path, order: list[str]) -> tuple[list[Signal], str]:
    """The two signals of the module docstring, and how find_label_issues saw the data: the whole training set
    at once (its per-class thresholds are the dataset's, as cleanlab intends) when every slice has one shape,
    else case by case. The noisy labels' values are their class indices (0..C-1)."""
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    from labelaudit.io.image import read_volume

    labels, probs = [], []
    for case_id in order:
        prob = np.load(probabilities / f"{case_id}.npz")["probabilities"].transpose(1, 0, 2, 3)  # (S, C, H, W)
        probs.append((prob / np.maximum(prob.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32))
        labels.append(read_volume(noisy / "labelsTr" / f"{case_id}.nii.gz").to_slices().astype(np.int64))
        assert labels[-1].min() >= 0 and labels[-1].max() < prob.shape[1], "label values are not class indices"
    if len({p.shape[1:] for p in probs}) == 1:
        together = find_label_issues(np.concatenate(labels), np.concatenate(probs), downsample=1, n_jobs=1,
                                     verbose=False)
        masks, seen = np.split(together, np.cumsum([len(x) for x in labels])[:-1]), "the whole training set at once"
    else:
        masks = [find_label_issues(y, p, downsample=1, n_jobs=1, verbose=False) for y, p in zip(labels, probs)]
        seen = "case by case (slices of several shapes)"
    softmin, issues = Signal("cleanlab softmin"), Signal("cleanlab num_pixel_issues")
    for case_id, y, prob, mask in zip(order, labels, probs, masks):
        quality, pixel_quality = get_label_quality_scores(y, prob, method="softmin", verbose=False)
        wrong = (1.0 - np.asarray(pixel_quality, dtype=np.float32)).reshape(-1)
        shares = mask.reshape(len(mask), -1).mean(axis=1)  # num_pixel_issues' image score is 1 − this share
        for signal, slice_scores in ((softmin, 1.0 - np.asarray(quality)), (issues, shares)):
            for index, value in enumerate(slice_scores):
                signal.slices[(case_id, index)] = float(value)
            signal.cases[case_id] = float(np.max(slice_scores)) if len(slice_scores) else 0.0
        softmin.pixels.append(wrong)
        issues.pixels.append(mask.reshape(-1).astype(np.float32) + wrong * 1e-3)  # marked first, then by 1 − p_y
    return [softmin, issues], seen


@dataclass(frozen=True)
class Source:
    """Whose out-of-fold softmax is ranked: a suite method's run, its probabilities folder, and the row entry of
    labelaudit's `score --probabilities` on the same files."""

    method: str
    folder: str
    given: str
    heading: str


SOURCES = (
    Source("plain", "oof_probabilities", "labelaudit on the same probabilities",
           "the fast preset (`plain`, every cell)"),
    Source("stronger", "stronger_probabilities", "labelaudit on stronger probabilities",
           "the standard preset, fit's default (`stronger`)"),
)


def measure(cell: Path, row: dict, source: Source) -> dict:
    manifest = read_manifest(cell / "noisy" / "corruption.json")
    order = sorted(manifest.cases)
    truth = truth_of(cell / "noisy", manifest.source, order)
    start = time.perf_counter()
    signals, seen = cleanlab_signals(cell / source.folder, cell / "noisy", order)
    seconds = time.perf_counter() - start
    found = {s.name: {lv: vars(v) for lv, v in level_scores(s, truth).items()} for s in signals}
    found["labelaudit (its fit's audit)"] = row["methods"][source.method]["levels"]
    found["labelaudit on the same probabilities"] = row["baselines"][source.given]
    return {"signals": found, "cleanlab_s": seconds, "seen": seen}


def _ap(levels: dict, level: str) -> str:
    value = levels.get(level, {}).get("ap")
    return "—" if value is None or value != value else f"{value:.3f}"


def tables(results: list[tuple[dict, dict]]) -> list[str]:
    """Per half, one row per cell of every signal's AP; then how often each signal is the best of its row."""
    names = list(results[0][1]["signals"])
    lines = []
    for half in (Half.HELD_OUT, Half.DEV):
        part = [(r, m) for r, m in results if r["half"] == half.value]
        if not part:
            continue
        lines += [f"**{half.title} half**", "",
                  "| dataset | regime | " + " | ".join(names) + " |", "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
        for row, m in part:
            cells = []
            best = {lv: max((m["signals"][n].get(lv, {}).get("ap") or -1) for n in names) for lv in LEVELS}
            for n in names:
                levels = m["signals"][n]
                parts = []
                for lv in LEVELS:
                    text = _ap(levels, lv)
                    value = levels.get(lv, {}).get("ap")
                    parts.append(f"**{text}**" if text != "—" and value == best[lv] else text)
                cells.append(" · ".join(parts))
            lines.append(f"| {row['dataset']} | {row['regime']} | " + " | ".join(cells) + " |")
        lines.append("")
    wins = {n: 0 for n in names}
    for _, m in results:
        for lv in LEVELS:
            values = {n: m["signals"][n].get(lv, {}).get("ap") for n in names}
            values = {n: v for n, v in values.items() if v is not None and v == v}
            for n, v in values.items():  # ties count for each
                wins[n] += v == max(values.values())
    return lines + ["Best of the row (ties counted for each), over both halves and every level: "
                    + ", ".join(f"{n} {w}" for n, w in wins.items()) + f"; cleanlab's two methods took "
                    f"{sum(m['cleanlab_s'] for _, m in results):.0f} s in all.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "suite_runs" / "full")
    parser.add_argument("--cells", help="comma-separated dataset/regime cells (default: every cell with a run)")
    args = parser.parse_args()
    rows = [r for r in json.loads((args.work / "rows.json").read_text()) if Half(r["half"]).reported]
    wanted = set(args.cells.split(",")) if args.cells else None
    lines = [TITLE, "", f"- date: {time.strftime('%Y-%m-%d')}; machine: {machine()}; cleanlab "
             f"{__import__('cleanlab').__version__}. AP slice · pixel · case over the training set, out-of-fold; "
             "in each table every column ranks the same run's out-of-fold softmax, except labelaudit's own audit "
             "(K perturbations through the same fold models). Bold: the best of the row at each level.", ""]
    for source in SOURCES:
        results = []
        for row in rows:
            cell = args.work / row["dataset"] / row["regime"]
            if wanted is not None and f"{row['dataset']}/{row['regime']}" not in wanted:
                continue
            if source.method not in row["methods"] or not (cell / source.folder).is_dir():
                continue
            results.append((row, measure(cell, row, source)))
            print(f"{source.method} {row['dataset']}/{row['regime']}: find_label_issues on {results[-1][1]['seen']}",
                  flush=True)
        if results:
            lines += [f"### The out-of-fold softmax of {source.heading}", "", *tables(results)]
    write_section(HERE / "RESULTS.md", TITLE, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The gate on the audit-quality suite: false alarms on clean new cases and detections of corrupted ones.

For every cell of bench/suite.py, from the audits it keeps (nothing is fit or scored again): the thresholds
are derived from the cell's out-of-fold training audit with today's calibration (labelaudit.score.calibrate,
as `fit` and `labelaudit calibrate` derive them), and the flag rule (labelaudit.score.decide) is applied to
the new cases' scores, clean and corrupted. Scores do not depend on thresholds, so this is what `check` with a
recalibrated run gives; "as scored" is the `flagged` column the audits were written with (the rule of the
day the cell ran). The rule is chosen on the development half; the held-out half is reported.

    python bench/suite.py ...              # first: the audits
    python bench/suite_gate.py             # the development half
    python bench/suite_gate.py --half all --results
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
from pathlib import Path

import numpy as np

from pint_audit import machine, write_section
from suite_data import DATASETS, Half

from labelaudit.formats.manifest import read_manifest
from labelaudit.formats.run import load_run
from labelaudit.config import Preset
from labelaudit.score.calibrate import GATE_K, gate_k_for, threshold_from_scores
from labelaudit.score.ranking import counts_for_calibration
from labelaudit.score.decide import decide
from labelaudit.types import Threshold

HERE = Path(__file__).resolve().parent
TITLE = "## The gate on the audit-quality suite (`python bench/suite_gate.py`)"
#: The rows summed per half: plain at the fast preset (every cell) and fit's default, the standard preset.
SUMMED = {"plain": "`plain` at the fast preset", "stronger": "fit's default, the standard preset (`stronger`)"}


def read_rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _training_threshold(audit: Path, gate_k: float = GATE_K) -> Threshold:
    """Today's calibration rule on a training audit's CSVs: the slices with structure, every case."""
    slices = [float(r["noise_score"]) for r in read_rows(audit / "slices.csv")
              if counts_for_calibration(int(r["label_pixels"]), int(r["pred_pixels"]))]
    cases = [float(r["noise_score"]) for r in read_rows(audit / "cases.csv")]
    return threshold_from_scores(np.array(slices), np.array(cases), gate_k=gate_k)


def flagged_by_case(audit: Path, threshold) -> dict[str, tuple[bool, bool]]:
    """case id -> (flagged with `threshold`, flagged as scored)."""
    per_case: dict[str, list[float]] = {}
    for r in read_rows(audit / "slices.csv"):
        per_case.setdefault(r["case_id"], []).append(float(r["noise_score"]))
    return {r["case_id"]: (decide(float(r["noise_score"]), per_case.get(r["case_id"], []), threshold).flagged,
                           r["flagged"].strip().lower() in ("true", "1", "yes"))
            for r in read_rows(audit / "cases.csv")}


def measure_cell(cell: Path, method: str, gate_k: float = GATE_K) -> dict | None:
    audits = cell / "audits"
    needed = [audits / name / "cases.csv" for name in (method, f"{method}_new_clean", f"{method}_new_noisy")]
    if not all(p.is_file() for p in needed):
        return None
    threshold = _training_threshold(audits / method, gate_k)
    corrupted = {c for c, t in read_manifest(cell / "noisy_new" / "corruption.json").cases.items()
                 if any(t.slices.values())}
    clean = flagged_by_case(audits / f"{method}_new_clean", threshold)
    noisy = {c: v for c, v in flagged_by_case(audits / f"{method}_new_noisy", threshold).items() if c in corrupted}
    return {"slice": threshold.slice, "case": threshold.case, "gate": threshold.worst_slice,
            "false_alarms": [sum(v[0] for v in clean.values()), len(clean)],
            "false_alarms_as_scored": [sum(v[1] for v in clean.values()), len(clean)],
            "detections": [sum(v[0] for v in noisy.values()), len(noisy)],
            "detections_as_scored": [sum(v[1] for v in noisy.values()), len(noisy)]}


def _share(pair: list[int]) -> str:
    return f"{pair[0]}/{pair[1]} ({pair[0] / pair[1]:.0%})" if pair[1] else "—"


def section(rows: list[tuple[str, str, str, str, dict]], work: Path) -> str:
    lines = [TITLE, "", f"Generated {dt.date.today().isoformat()} on {machine()}, from the audits under "
             f"{work.relative_to(HERE)} (nothing fit or scored again). Thresholds: today's calibration of each "
             "cell's out-of-fold training audit; a case is flagged when its score reaches `case` or its worst "
             "slice reaches `gate` (score/decide.py). \"As scored\": the audits' own `flagged` column, with the "
             "rule of the day the cell ran (a case flagged when any slice reaches `slice`). Target (audit-quality "
             "issue): at most 1 in 20 clean new cases flagged, at least half of the corrupted ones.", ""]
    for half in (Half.DEV, Half.HELD_OUT, Half.FRESH):
        part = [r for r in rows if r[0] == half.value]
        if not part:
            continue
        lines += [f"**{half.title} half**", "",
                  "| dataset | regime | method | slice / case / gate threshold | clean flagged | as scored | "
                  "corrupted flagged | as scored |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        keys = ("false_alarms", "false_alarms_as_scored", "detections", "detections_as_scored")
        totals = {method: {k: [0, 0] for k in keys} for method in SUMMED}
        for _, name, regime, method, m in part:
            lines.append(f"| {name} | {regime} | {method} | {m['slice']:.3f} / {m['case']:.3f} / {m['gate']:.3f} | "
                         f"{_share(m['false_alarms'])} | {_share(m['false_alarms_as_scored'])} | "
                         f"{_share(m['detections'])} | {_share(m['detections_as_scored'])} |")
            for key, total in totals.get(method, {}).items():
                total[0] += m[key][0]
                total[1] += m[key][1]
        lines.append("")
        for method, words in SUMMED.items():
            t = totals[method]
            if t["false_alarms"][1]:
                lines.append(f"{words}, all its cells: clean flagged {_share(t['false_alarms'])} (as scored "
                             f"{_share(t['false_alarms_as_scored'])}), corrupted flagged {_share(t['detections'])} "
                             f"(as scored {_share(t['detections_as_scored'])}).")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half", choices=["dev", "held-out", "fresh", "all"], default="dev")
    parser.add_argument("--work", type=Path, default=HERE / "suite_runs" / "full")
    parser.add_argument("--results", action="store_true", help="write the section into bench/RESULTS.md")
    parser.add_argument("--gate-k", type=float, default=GATE_K, help="the gate's MADs to try for fit's default, the "
                        "standard preset (choose on dev; --results always writes the default's)")
    args = parser.parse_args()
    if args.results:
        args.gate_k = GATE_K
    rows = []
    for dataset in DATASETS:
        if args.half not in ("all", dataset.half.value) or not dataset.half.reported:
            continue
        for cell in sorted(p for p in (args.work / dataset.name).glob("*") if (p / "audits").is_dir()):
            for method in sorted(p.name for p in (cell / "audits").iterdir() if (cell / "runs" / p.name).is_dir()):
                # fit's calibration: the gate of the run's preset (--gate-k stands in for the standard one's)
                preset = load_run(cell / "runs" / method).settings.preset
                gate_k = gate_k_for(preset) if preset is Preset.FAST else args.gate_k
                measured = measure_cell(cell, method, gate_k)
                if measured is not None:
                    rows.append((dataset.half.value, dataset.name, cell.name, method, measured))
    text = section(rows, args.work)
    print(text)
    if args.results:
        write_section(HERE / "RESULTS.md", TITLE, text)


if __name__ == "__main__":
    main()

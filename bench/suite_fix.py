"""Corrected labels on the audit-quality suite: does `fix` make the training labels better? (issue: fix)

For every cell of bench/suite.py that has a plain audit of its training set (out-of-fold), apply the fix rule
(labelaudit.fix.rule: regions of the disagreement on flagged slices whose own noise score reaches the region
score) at several region scores, and measure against the clean labels: Dice of the noisy labels, of the raw
prediction and of the fixed labels (`--mode replace`); for `--mode ignore`, the share of wrong pixels masked and
of right pixels lost. Region scores are compared on the development half; the held-out half is reported.

    python bench/suite.py ...           # first: the audits
    python bench/suite_fix.py           # then: a section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pint_audit import write_section
from suite_data import Half, dataset_named
from suite_signals import dice_per_case

from labelaudit.config import FixMode, FixParams
from labelaudit.diagnosis import classify_slices
from labelaudit.evaluate.kinds import CLEAN, EXPECTED_KIND, kind_confusion
from labelaudit.fix.dataset import read_audit
from labelaudit.fix.rule import agreement_counts, apply_fix, class_agreement, judge_regions, untrusted_classes
from labelaudit.formats.audit import find_map
from labelaudit.formats.manifest import read_manifest
from labelaudit.io.image import read_volume

HERE = Path(__file__).resolve().parent
REGION_SCORES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT = FixParams().region_score  # the ignore-mode column: the default rule
TITLE = "## Corrected labels on the audit-quality suite (`python bench/suite_fix.py`)"


def measure_cell(cell: Path, classes: int, audit_name: str = "plain") -> dict:
    audit = read_audit(cell / "audits" / audit_name)
    clean_root = read_manifest(cell / "noisy" / "corruption.json").source
    sums = {"noisy": [], "prediction": [], **{f"fixed@{r}": [] for r in REGION_SCORES}}
    masked = {r: [0, 0, 0, 0] for r in REGION_SCORES}  # wrong masked, wrong, right lost, right
    named: dict[tuple[str, int], str] = {}
    arrays, counts = {}, {}
    for case_id in audit.cases:
        arrays[case_id] = (read_volume(cell / "noisy" / "labelsTr" / f"{case_id}.nii.gz").to_slices(),
                           read_volume(clean_root / "labelsTr" / f"{case_id}.nii.gz").to_slices(),
                           read_volume(find_map(audit.path, case_id, "pred")).to_slices(),
                           read_volume(find_map(audit.path, case_id, "noise")).to_slices().astype(np.float32))
        agreement_counts(arrays[case_id][0], arrays[case_id][2], counts)
    # the classes the calibration of this (out-of-fold, training) audit would find the model does not segment
    untrusted = untrusted_classes(class_agreement(counts))
    for case_id in audit.cases:
        noisy, clean, pred, noise = arrays[case_id]
        # the kinds the current rules name (as `score` calls them), whenever the audit was written
        for index, kind in enumerate(classify_slices(noisy, pred, noise=noise, scores=audit.scores[case_id])):
            named[(case_id, index)] = kind.value
        sums["noisy"].append(dice_per_case(noisy, clean, classes))
        sums["prediction"].append(dice_per_case(pred, clean, classes))
        wrong = noisy != clean
        for r in REGION_SCORES:
            judged = judge_regions(noisy, pred, noise, audit.flags[case_id], audit.scores[case_id], FixParams(r),
                                   untrusted=untrusted)
            sums[f"fixed@{r}"].append(dice_per_case(apply_fix(noisy, pred, judged), clean, classes))
            ignored = apply_fix(noisy, pred, judged, FixMode.IGNORE, ignore_value=255) == 255
            m = masked[r]
            m[0] += int((ignored & wrong).sum()); m[1] += int(wrong.sum())
            m[2] += int((ignored & ~wrong).sum()); m[3] += int((~wrong).sum())
    manifest = read_manifest(cell / "noisy" / "corruption.json")
    confusion = kind_confusion(manifest, named)
    # what a reviewer reads: the kinds of the slices the audit flags
    flagged = kind_confusion(manifest, {k: v for k, v in named.items() if audit.flags[k[0]][k[1]]})
    return {"kinds": confusion.counts if confusion is not None else {},
            "kinds_flagged": flagged.counts if flagged is not None else {}, "unmended": sorted(untrusted),
            "dice": {k: float(np.mean(v)) for k, v in sums.items()},
            "ignore": {str(r): {"wrong_masked": m[0] / max(m[1], 1), "right_lost": m[2] / max(m[3], 1)}
                       for r, m in masked.items()}}


def kind_lines(part: list[tuple[dict, dict]]) -> list[str]:
    """The error kind slices.csv names against the corruption that made each slice, summed over the half's
    cells: a confusion matrix (rows the truth; `clean`: uncorrupted slices with structure) and each row's
    accuracy (elastic has no single right kind)."""
    def summed(key: str) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for _, m in part:
            for truth, named in m.get(key, {}).items():
                row = found.setdefault(truth, {})
                for kind, n in named.items():
                    row[kind] = row.get(kind, 0) + n
        return found

    total, flagged = summed("kinds"), summed("kinds_flagged")
    if not total:
        return []
    columns = [c for c in next(iter(total.values())) if any(r.get(c, 0) for r in total.values())]
    order = [k for k in (*EXPECTED_KIND, "elastic") if k in total and k != CLEAN] + ([CLEAN] if CLEAN in total else [])
    lines = ["Error kind named (slices.csv `error_kind`, by the current rules from each audit's prediction "
             "and noise map; rows: the corruption that made the slice; every training slice, flagged or not):", "",
             "| truth | " + " | ".join(columns) + " | right | right among the flagged slices |",
             "| --- | " + " | ".join("---" for _ in columns) + " | --- | --- |"]

    def right(row: dict[str, int], expected) -> str:
        n = sum(row.values())
        return f"{row.get(expected.value, 0) / n:.0%} of {n}" if expected is not None and n else "—"

    for truth in order:
        row, expected = total[truth], EXPECTED_KIND.get(truth)
        lines.append(f"| {truth} | " + " | ".join(str(row.get(c, 0)) for c in columns)
                     + f" | {right(row, expected)} | {right(flagged.get(truth, {}), expected)} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "suite_runs" / "full")
    parser.add_argument("--half", choices=("dev", "held-out", "fresh"), help="measure this half only and print its table "
                        "(RESULTS.md and fix_rows.json are left as they are): choose on dev")
    parser.add_argument("--audit", default="plain", help="the cells' audit (audits/NAME; not plain: printed, "
                        "like --half)")
    args = parser.parse_args()
    rows = json.loads((args.work / "rows.json").read_text())
    found = measure_audits(args.work, rows, args.audit, args.half)
    lines = [TITLE, "", "Dice against the clean labels (mean over the training cases) of the noisy labels, the "
             "model's out-of-fold prediction and the labels fixed with `--mode replace` at each region "
             "score; for `--mode ignore`, the share of wrong pixels masked / of right pixels lost. Classes whose "
             "prediction agrees with the training labels below FixParams.min_agreement (Dice over the training "
             "audit, as the run's calibration records it) are never mended. The audits of `plain` at the fast "
             "preset (every cell), then of fit's default, the standard preset (`stronger`, on the cells it was run on).", ""]
    lines += half_tables(found, "")
    standard = []
    if args.audit == "plain" and not args.half:
        standard = measure_audits(args.work, rows, "stronger", None)
        if standard:
            lines += ["### The standard preset (fit's default): corrected labels and error kinds", "",
                      *half_tables(standard, "#")]
    if args.half or args.audit != "plain":
        print("\n".join(lines))
        return
    write_section(HERE / "RESULTS.md", TITLE, "\n".join(lines) + "\n")
    (args.work / "fix_rows.json").write_text(json.dumps([{"dataset": r["dataset"], "regime": r["regime"],
                                                          "half": r["half"], "audit": audit, **m}
                                                         for audit, part in (("plain", found), ("stronger", standard))
                                                         for r, m in part], indent=1))


def measure_audits(work: Path, rows: list[dict], audit: str, half: str | None) -> list[tuple[dict, dict]]:
    """(row, measure_cell) of every cell with audits/`audit` (of `half` only, when given)."""
    found = []
    for row in rows:
        cell = work / row["dataset"] / row["regime"]
        if (half and row["half"] != half) or not Half(row["half"]).reported:
            continue
        if audit in row["methods"] and (cell / "audits" / audit / "summary.json").exists():
            found.append((row, measure_cell(cell, dataset_named(row["dataset"]).classes, audit)))
    return found


def half_tables(found: list[tuple[dict, dict]], deeper: str) -> list[str]:
    """Each half's Dice table and kind confusion matrix; `deeper`: '#' to nest the headings one level down."""
    lines = []
    for half in (Half.FRESH, Half.HELD_OUT, Half.DEV):
        part = [(r, m) for r, m in found if r["half"] == half.value]
        if not part:
            continue
        lines += [f"###{deeper} {half.title} half", "",
                  "| dataset | regime | noisy | prediction | " + " | ".join(f"replace @{r}" for r in REGION_SCORES)
                  + f" | ignore @{DEFAULT}: wrong masked / right lost | classes not mended |",
                  "| --- | --- | --- | --- | " + " | ".join("---" for _ in REGION_SCORES) + " | --- | --- |"]
        for row, m in part:
            d, ig = m["dice"], m["ignore"][str(DEFAULT)]
            best = max(d[f"fixed@{r}"] for r in REGION_SCORES)
            lines.append(f"| {row['dataset']} | {row['regime']} | {d['noisy']:.3f} | {d['prediction']:.3f} | "
                         + " | ".join(("**%.3f**" if d[f'fixed@{r}'] == best else "%.3f") % d[f"fixed@{r}"]
                                      for r in REGION_SCORES)
                         + f" | {ig['wrong_masked']:.1%} / {ig['right_lost']:.2%} | "
                         + (", ".join(str(v) for v in m["unmended"]) or "—") + " |")
        lines.append("")
        lines += kind_lines(part)
    return lines


if __name__ == "__main__":
    main()

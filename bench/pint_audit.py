"""Benchmark: do PINT and MCPM rank corrupted slices better than plain U-Net's own disagreement?

Corrupts the embedded demo data (slice level, r = 0.4, mixed kinds), fits plain, PINT and MCPM
with the same budget (MCPM's meta set: the clean copies of the 2 cases with the fewest corrupted
slices, given as a dataset folder, so their noisy copies are left out of its training; plain-clean:
plain U-Net on the clean labels, the reference for "how much of the noisy-vs-clean Dice gap is recovered"), in-sample (one model scoring its own training data, --folds 1) and
out-of-fold (--folds K), scores each run with ONNX Runtime and evaluates the audit against
the corruption manifest and the clean labels. Writes a Markdown section to bench/RESULTS.md.

    python bench/pint_audit.py            # full (demo data, default epochs)
    python bench/pint_audit.py --quick    # a smoke run: few epochs, fewer cases' worth of time
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from labelaudit.config import EvaluateConfig, PixelScore, ScoreConfig
from labelaudit.demo import materialize_demo
from labelaudit.evaluate.evaluate import evaluate_audit
from labelaudit.evaluate.metrics import ranking_scores
from labelaudit.formats.manifest import read_manifest
from labelaudit.score.formulas import MCPM_PIXEL_SCORE, PIXEL_SCORE
from labelaudit.score.pipeline import score_dataset

HERE = Path(__file__).resolve().parent


def run(args: list[str], log: Path) -> float:
    """Run a labelaudit command, log its output, return its wall time in seconds."""
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n$ labelaudit {' '.join(args)}\n")
        handle.flush()
        result = subprocess.run([sys.executable, "-m", "labelaudit", *args], stdout=handle, stderr=handle,
                                env={**os.environ, "COLUMNS": "120"})
    if result.returncode != 0:
        raise SystemExit(f"labelaudit {' '.join(args)} failed with exit {result.returncode}; see {log}")
    return time.perf_counter() - start


def disagreement_baseline(audit: Path, manifest_path: Path) -> tuple[float, float]:
    """Slice AP/AUROC of 1 - Dice(prediction, label), the plain model's own disagreement."""
    manifest = read_manifest(manifest_path)
    scores, truth = [], []
    with (audit / "slices.csv").open() as handle:
        for row in csv.DictReader(handle):
            case = manifest.cases[row["case_id"]]
            scores.append(float(row["disagreement"]))
            truth.append(case.slices[int(row["slice_index"])])
    result = ranking_scores(scores, truth)
    return result.ap, result.auroc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few epochs: checks the pipeline, not the figures")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="plain,pint,mcpm,plain-clean")
    parser.add_argument("--meta-cases", type=int, default=2, help="MCPM: verified cases in the meta set")
    parser.add_argument("--device", default="cpu", help="training device (scoring runs on ONNX Runtime's CPU "
                                                          "provider either way, for comparable score times)")
    parser.add_argument("--work", type=Path, default=HERE / "out" / "pint_audit")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.quick else None)

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    clean = materialize_demo(work / "clean")
    noisy = work / "noisy"
    run(["corrupt", str(clean), str(noisy), "--rate", str(args.rate), "--level", "slice",
         "--seed", str(args.seed)], log)
    manifest = noisy / "corruption.json"
    methods = args.methods.split(",")
    meta_dir = write_meta_set(clean, manifest, work / "meta", args.meta_cases) if "mcpm" in methods else None

    rows = []
    for method in methods:
        # plain-clean: the same plain U-Net on the clean labels, scoring them (only its Dice is of interest)
        data = clean if method == "plain-clean" else noisy
        for folds, setting in ((1, "in-sample"), (args.folds, "out-of-fold")):
            run_dir = work / "runs" / f"{method}-k{folds}"
            audit = work / "audits" / f"{method}-k{folds}"
            fit_args = ["fit", str(data), "--method", "plain" if method == "plain-clean" else method,
                        "--folds", str(folds), "--out", str(run_dir),
                        "--seed", str(args.seed), "--device", args.device, "--force", "--preset", "fast"]
            if method == "mcpm":
                fit_args += ["--meta-set", str(meta_dir)]
            if epochs:
                fit_args += ["--epochs", str(epochs)]
            fit_s = run(fit_args, log)
            score_s = run(["score", str(data), "--model", str(run_dir), "--out", str(audit), "--device", "cpu"], log)
            result = evaluate_audit(EvaluateConfig(audit, manifest, clean=clean))
            ev = result.to_json()
            (audit / "evaluation.json").write_text(json.dumps(ev, indent=2))
            ranking = ev["ranking"]
            seg = ev["segmentation"]
            dis_ap, dis_auroc = disagreement_baseline(audit, manifest)
            # the other pixel formula, same run and slices: which one ranks corrupted annotations better?
            # (for MCPM: the same score without the meta weight R, i.e. what R adds)
            other = PixelScore.CONFIDENT_DISAGREEMENT if method == "mcpm" else PixelScore.DISAGREEMENT
            other_ranking = {"slice": {"ap": None, "auroc": None}}
            if method != "plain-clean":
                other_dir = audit.with_name(audit.name + f"-{other.value}")
                score_dataset(ScoreConfig(run_dir=run_dir, dataset=data, out_dir=other_dir, device="cpu",
                                          pixel_score=other, out_of_fold=True))
                other_ranking = evaluate_audit(EvaluateConfig(other_dir, manifest, clean=clean)).to_json()["ranking"]
            rows.append({
                "method": method, "setting": setting, "folds": folds,
                "slice_ap": ranking["slice"]["ap"], "slice_auroc": ranking["slice"]["auroc"],
                "case_ap": ranking["case"]["ap"], "pixel_ap": ranking.get("pixel", {}).get("ap"),
                "pixel_roi_ap": ranking.get("pixel_roi", {}).get("ap"),
                "disagreement_ap": dis_ap, "disagreement_auroc": dis_auroc,
                "dice": seg.get("prediction", {}).get("foreground_mean", {}).get("dice"),
                "noisy_dice": seg.get("noisy_label", {}).get("foreground_mean", {}).get("dice"),
                "fit_s": fit_s, "score_s": score_s, "other_formula": other.value,
                "other_slice_ap": other_ranking["slice"]["ap"], "other_slice_auroc": other_ranking["slice"]["auroc"],
                "other_pixel_ap": other_ranking.get("pixel", {}).get("ap"),
            })
            print(json.dumps(rows[-1]), flush=True)

    write_results(args, rows, epochs)


def write_meta_set(clean: Path, manifest_path: Path, dest: Path, count: int) -> Path:
    """A dataset folder with the clean copies of the `count` cases that have the fewest corrupted slices."""
    manifest = read_manifest(manifest_path)
    order = sorted(manifest.cases, key=lambda c: (sum(manifest.cases[c].slices.values()), c))
    chosen = order[:count]
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    meta = json.loads((clean / "dataset.json").read_text())
    meta["numTraining"] = len(chosen)
    (dest / "dataset.json").write_text(json.dumps(meta, indent=2))
    for case in chosen:
        for image in (clean / "imagesTr").glob(f"{case}_*"):
            shutil.copy2(image, dest / "imagesTr" / image.name)
        for label in (clean / "labelsTr").glob(f"{case}.*"):
            shutil.copy2(label, dest / "labelsTr" / label.name)
    return dest


def gap_recovered(rows: list[dict]) -> list[str]:
    """(Dice_method - Dice_plain) / (Dice_plain-clean - Dice_plain) per setting: the paper's "gap recovered"."""
    lines = []
    for setting in ("in-sample", "out-of-fold"):
        dice = {r["method"]: r["dice"] for r in rows if r["setting"] == setting and r["dice"] is not None}
        if not {"plain", "plain-clean"} <= set(dice):
            continue
        gap = dice["plain-clean"] - dice["plain"]
        for method in (m for m in dice if m not in ("plain", "plain-clean")):
            share = f"{(dice[method] - dice['plain']) / gap:+.0%}" if abs(gap) > 1e-6 else "– (no gap)"
            lines.append(f"- {setting}: {method} recovers {share} of the Dice gap between plain on noisy labels "
                         f"({dice['plain']:.3f}) and plain on clean labels ({dice['plain-clean']:.3f}); "
                         f"{method} {dice[method]:.3f}")
    return lines


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def machine() -> str:
    """This machine in a RESULTS.md line: cores, CPU model, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}; python {platform.python_version()}"


def write_results(args, rows: list[dict], epochs: int | None) -> None:
    lines = [
        f"## PINT vs plain audit ({'quick' if args.quick else 'full'} run)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}",
        f"- data: embedded demo (MNI152-derived), corrupted at slice level, r = {args.rate}, mixed kinds, seed {args.seed}",
        f"- budget: same for both methods ({'epochs ' + str(epochs) if epochs else 'default epochs'});"
        f" out-of-fold = {args.folds} folds; training device {args.device}",
        "- command: `python bench/pint_audit.py" + (" --quick" if args.quick else "") + "`",
        "",
        "| method | audit | slice AP | slice AUROC | case AP | pixel AP | pixel AP (ROI) | 1−Dice AP | 1−Dice AUROC "
        "| Dice vs clean | fit s | score s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['setting']} | {fmt(r['slice_ap'])} | {fmt(r['slice_auroc'])} | {fmt(r['case_ap'])} "
            f"| {fmt(r['pixel_ap'])} | {fmt(r['pixel_roi_ap'])} | {fmt(r['disagreement_ap'])} "
            f"| {fmt(r['disagreement_auroc'])} | {fmt(r['dice'])} | {r['fit_s']:.0f} | {r['score_s']:.0f} |")
    if rows:
        lines += ["", f"Pixel formula: the table uses `{PIXEL_SCORE.value}` (MCPM runs: `{MCPM_PIXEL_SCORE.value}`); "
                  "and with another pixel formula instead (same runs; for MCPM the same score without R):", "",
                  "| method | audit | pixel formula | slice AP | slice AUROC | pixel AP |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['setting']} | {r['other_formula']} | {fmt(r['other_slice_ap'])} "
                  f"| {fmt(r['other_slice_auroc'])} | {fmt(r.get('other_pixel_ap'))} |" for r in rows
                  if r["method"] != "plain-clean"]
    recovered = gap_recovered(rows)
    if recovered:
        lines += ["", "Dice against the clean labels, gap recovered (plain-clean's ranking columns score clean labels "
                  "and mean nothing):", "", *recovered]
    cost = mcpm_cost(args)
    if cost:
        lines += ["", f"MCPM epoch cost (run.json `mcpm_cost`, meta-step time subtracted from the same epochs): {cost}"]
    if rows and rows[0].get("noisy_dice") is not None:
        lines += ["", f"The noisy labels themselves have Dice {fmt(rows[0]['noisy_dice'])} against the clean ones."]
    lines += ["", "slice AP/AUROC rank slices by labelaudit's noise score; 1−Dice ranks them by the model's own "
              "disagreement with the label (the plain baseline).", ""]
    write_section(args.results, f"## PINT vs plain audit ({'quick' if args.quick else 'full'} run)",
                  "\n".join(lines))


def write_section(results: Path, title: str, section: str) -> None:
    """Put `section` (which starts with the heading `title`) into RESULTS.md, replacing an earlier run's."""
    text = results.read_text() if results.exists() else "# Benchmark results\n\n"
    if title in text:  # re-running replaces this section only
        head, _, tail = text.partition(title)
        rest = tail.split("\n## ", 1)
        text = head + section + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    results.write_text(text)
    print(f"wrote {results}")


def mcpm_cost(args) -> str:
    """The ratio of an MCPM epoch to a plain one, per run, as fit measured it."""
    parts = []
    for run_json in sorted((args.work / "runs").glob("mcpm-k*/run.json")):
        cost = json.loads(run_json.read_text()).get("mcpm_cost", {})
        ratios = [c["ratio"] for c in cost.values() if "ratio" in c]
        if ratios:
            parts.append(f"{run_json.parent.name}: {min(ratios):.1f}-{max(ratios):.1f}x")
    return ", ".join(parts)


if __name__ == "__main__":
    main()

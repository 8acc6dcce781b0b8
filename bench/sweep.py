"""Noise-rate sweep: labelaudit's methods vs the baselines users would pick instead, at r ∈ {0.2, 0.4, 0.6, 0.8}
× slice-level and case-level corruption.

For each (level, r): `labelaudit corrupt` the clean data, fit each method out-of-fold (`--folds 2` by default:
K-fold by case as cleanlab recommends, at 2/3 of the product's 3-fold cost, spent on more epochs instead; the same
budget for all), score, and evaluate against the manifest (slice/case/pixel AP, AUROC, P@k) and the clean labels
(the robust model's Dice). Methods: plain, pint (variant pint), pnt, int (PINT's pixel-only / image-only
variants) and mcpm (meta set: the clean copies of the 2 cases with the fewest corrupted slices, as
bench/pint_audit.py builds it). Beside them: plain U-Net fit on the CLEAN labels (the Dice upper bound, one fit
per dataset) and, from each plain run, the two baselines of bench/baselines.py (plain 1 − Dice; cleanlab's
softmin label quality on the out-of-fold probabilities). Writes a section to bench/RESULTS.md.

    python bench/sweep.py --quick                  # r = 0.4 × {slice, case}, plain, pint, int, 3 epochs: minutes
    python bench/sweep.py                          # the full sweep on the demo (sized ~1 h on 2 CPU cores)
    python bench/sweep.py --dataset synth          # the same on the synthetic second dataset
    python bench/sweep.py --rewrite [--dataset …]  # re-write the RESULTS.md section from the last run's rows
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

# sibling scripts: bench/ is sys.path[0] when run as `python bench/sweep.py`
from baselines import cleanlab_scores, disagreement_scores, rank
from pint_audit import fmt, machine, run, write_meta_set, write_section

from labelaudit.config import EvaluateConfig
from labelaudit.demo import materialize_demo
from labelaudit.evaluate.evaluate import evaluate_audit
from labelaudit.formats.manifest import read_manifest
from labelaudit.synth import SynthConfig, write_synth_dataset

HERE = Path(__file__).resolve().parent

RATES = (0.2, 0.4, 0.6, 0.8)
LEVELS = ("slice", "case")
METHODS = ("plain", "pint", "pnt", "int", "mcpm")
# `labelaudit fit` arguments of each method of the sweep
# (the fast preset, the CPU budget these sweeps and the suite's seed-method rows were measured at)
FIT_ARGS = {
    "plain": ["--method", "plain", "--preset", "fast"],
    "pint": ["--method", "pint", "--variant", "pint", "--preset", "fast"],
    "pnt": ["--method", "pint", "--variant", "pnt", "--preset", "fast"],
    "int": ["--method", "pint", "--variant", "int", "--preset", "fast"],
    "mcpm": ["--method", "mcpm", "--preset", "fast"],
}
QUICK = {"rates": (0.4,), "levels": LEVELS, "methods": ("plain", "pint", "int"), "epochs": 3}
FULL_EPOCHS = 6
# synthetic second dataset: small, multi-class, anisotropic, rotated (unlike the demo's brain MRI)
SYNTH = SynthConfig(cases=12, size=(64, 64, 16), spacing=(1.0, 1.0, 2.5), classes=2, seed=0)


def make_clean(dataset: str, dest: Path) -> Path:
    if dataset == "demo":
        return materialize_demo(dest)
    return write_synth_dataset(dest, SYNTH)


def fit_score_evaluate(method: str, data: Path, manifest: Path, clean: Path, name: str, args, log: Path,
                       meta_dir: Path | None = None) -> tuple[dict, Path, Path, float, float]:
    """Fit `method` on `data` out-of-fold, score `data`, evaluate; (evaluation JSON, run, audit, fit s, score s)."""
    run_dir = args.work / "runs" / name
    audit = args.work / "audits" / name
    fit_args = ["fit", str(data), *FIT_ARGS[method], "--folds", str(args.folds), "--out", str(run_dir),
                "--seed", str(args.seed), "--device", args.device, "--epochs", str(args.epochs), "--force"]
    if method == "mcpm":
        fit_args += ["--meta-set", str(meta_dir)]
    fit_s = run(fit_args, log)
    score_s = run(["score", str(data), "--model", str(run_dir), "--out", str(audit), "--device", "cpu"], log)
    ev = evaluate_audit(EvaluateConfig(audit, manifest, clean=clean)).to_json()
    (audit / "evaluation.json").write_text(json.dumps(ev, indent=2))
    return ev, run_dir, audit, fit_s, score_s


def level_metrics(ev: dict, level: str) -> dict:
    r = ev["ranking"].get(level, {})
    return {f"{level}_ap": r.get("ap"), f"{level}_auroc": r.get("auroc"), f"{level}_pk": r.get("precision_at_k")}


def dice_of(ev: dict, source: str = "prediction") -> float | None:
    return ev["segmentation"].get(source, {}).get("foreground_mean", {}).get("dice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="r = 0.4 × both levels, plain, pint and int, 3 epochs")
    parser.add_argument("--dataset", choices=("demo", "synth"), default="demo")
    parser.add_argument("--rates", default=None, help="comma-separated, e.g. 0.2,0.4")
    parser.add_argument("--levels", default=None, help="comma-separated: slice,case")
    parser.add_argument("--methods", default=None, help="comma-separated of " + ",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--meta-cases", type=int, default=2, help="MCPM: verified cases in the meta set")
    parser.add_argument("--device", default="cpu", help="training device (scoring always on ONNX Runtime's CPU)")
    parser.add_argument("--no-clean", action="store_true", help="skip the plain-on-clean-labels upper bound")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--rewrite", action="store_true",
                        help="only re-write the RESULTS.md section from WORK/rows.jsonl of a finished run")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    preset = QUICK if args.quick else {"rates": RATES, "levels": LEVELS, "methods": METHODS, "epochs": FULL_EPOCHS}
    args.rates = [float(r) for r in args.rates.split(",")] if args.rates else list(preset["rates"])
    args.levels = args.levels.split(",") if args.levels else list(preset["levels"])
    args.methods = args.methods.split(",") if args.methods else list(preset["methods"])
    args.epochs = args.epochs or preset["epochs"]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; expected some of {', '.join(METHODS)}")
    args.work = args.work or HERE / "out" / f"sweep-{args.dataset}{'-quick' if args.quick else ''}"

    if args.rewrite:
        return rewrite(args)
    started = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    log = args.work / "log.txt"
    clean = make_clean(args.dataset, args.work / "clean")
    rows: list[dict] = []
    upper: dict | None = None
    with (args.work / "rows.jsonl").open("w") as out:
        for level in args.levels:
            for rate in args.rates:
                cell = f"{level}-r{rate:g}"
                noisy = args.work / "noisy" / cell
                run(["corrupt", str(clean), str(noisy), "--rate", str(rate), "--level", level,
                     "--seed", str(args.seed)], log)
                manifest = noisy / "corruption.json"
                meta_dir = (write_meta_set(clean, manifest, args.work / "meta" / cell, args.meta_cases)
                            if "mcpm" in args.methods else None)
                if upper is None and not args.no_clean:
                    # plain on the clean labels: only its Dice vs clean means something (any manifest will do)
                    ev, _, _, fit_s, score_s = fit_score_evaluate("plain", clean, manifest, clean, "plain-clean",
                                                                  args, log)
                    upper = {"dice": dice_of(ev), "fit_s": fit_s, "score_s": score_s}
                    out.write(json.dumps({"plain-clean": upper}) + "\n")
                    print(json.dumps({"plain-clean": upper}), flush=True)
                for method in args.methods:
                    ev, run_dir, audit, fit_s, score_s = fit_score_evaluate(method, noisy, manifest, clean,
                                                                            f"{cell}-{method}", args, log,
                                                                            meta_dir)
                    row = {"level": level, "rate": rate, "method": method,
                           **level_metrics(ev, "slice"), **level_metrics(ev, "case"), **level_metrics(ev, "pixel"),
                           "slices_corrupted": ev["ranking"]["slice"]["positives"],
                           "slices": ev["ranking"]["slice"]["total"],
                           "dice": dice_of(ev), "noisy_dice": dice_of(ev, "noisy_label"),
                           "fit_s": fit_s, "score_s": score_s}
                    if method == "plain":
                        truth = read_manifest(manifest)
                        start = time.perf_counter()
                        dis = rank("1-Dice", disagreement_scores(audit), truth)
                        cl = rank("cleanlab", cleanlab_scores(run_dir, noisy), truth)
                        row.update({"dis_ap": dis.ap, "dis_auroc": dis.auroc, "cl_ap": cl.ap, "cl_auroc": cl.auroc,
                                    "baseline_s": time.perf_counter() - start})
                    rows.append(row)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(json.dumps(row), flush=True)
    total = time.perf_counter() - started
    with (args.work / "rows.jsonl").open("a") as out:
        out.write(json.dumps({"total_s": total, "command": command_line()}) + "\n")
    write_results(args, rows, upper, total, command_line())


def rewrite(args) -> None:
    """Re-write the RESULTS.md section from a finished run's rows.jsonl (rows, upper bound, total time)."""
    rows, upper, total, command = [], None, None, None
    for line in (args.work / "rows.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "plain-clean" in record:
            upper = record["plain-clean"]
        elif "total_s" in record:
            total, command = record["total_s"], record["command"]
        else:
            rows.append(record)
    if total is None:
        raise SystemExit(f"{args.work / 'rows.jsonl'}: the run did not finish")
    write_results(args, rows, upper, total, command)


def command_line() -> str:
    return " ".join(["python bench/sweep.py", *sys.argv[1:]])


# ----------------------------------------------------------------------------- report

def full_estimate(rows: list[dict], upper: dict | None) -> str:
    """Wall time of the full sweep at the same epochs, from this run's per-method fit + score times.

    Methods not run here are estimated from measured ratios: PNT/INT cost what PINT costs (same trainer);
    MCPM ≈ 1.9× plain out-of-fold (346 s vs 179 s in the "PINT vs plain audit (full run)" section).
    """
    per = {}
    for method in {r["method"] for r in rows}:
        times = [r["fit_s"] + r["score_s"] + r.get("baseline_s", 0.0) for r in rows if r["method"] == method]
        per[method] = sum(times) / len(times)
    if "plain" not in per:
        return ""
    pint = per.get("pint", per["plain"])
    cost = {"plain": per["plain"], "pint": pint, "pnt": per.get("pnt", pint), "int": per.get("int", pint),
            "mcpm": per.get("mcpm", 1.9 * per["plain"])}
    cell = sum(cost.values())
    clean = (upper["fit_s"] + upper["score_s"]) if upper else per["plain"]
    total = len(RATES) * len(LEVELS) * cell + clean
    measured = ", ".join(f"{m} {per[m]:.0f} s" for m in sorted(per))
    return (f"one (level, r) cell of the full sweep ≈ {cell / 60:.1f} min (measured per method, fit + score + "
            f"baselines: {measured}; PNT/INT taken as PINT and MCPM as 1.9× plain where not measured), so the "
            f"full sweep ({len(RATES)} rates × {len(LEVELS)} levels × {len(METHODS)} methods + the clean upper "
            f"bound) ≈ **{total / 60:.0f} min** on this machine per dataset")


def write_results(args, rows: list[dict], upper: dict | None, total_s: float, command: str) -> None:
    mode = "quick" if args.quick else "full"
    title = f"## Noise-rate sweep ({mode}, {args.dataset})"
    data = ("embedded demo (MNI152-derived brain MRI)" if args.dataset == "demo" else
            f"synthetic: {SYNTH.cases} cases of {'×'.join(map(str, SYNTH.size))} voxels, {SYNTH.classes} "
            f"foreground classes, spacing {SYNTH.spacing} mm (labelaudit.synth)")
    lines = [
        title, "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}; total wall time {total_s / 60:.1f} min "
        "(the 2 cores were shared with other jobs: times are upper bounds)",
        f"- data: {data}; `labelaudit corrupt` default kinds, seed {args.seed}; rates {args.rates}, levels "
        f"{args.levels}",
        f"- every model: {args.epochs} epochs × 25 steps (the same budget for all), out-of-fold with "
        f"{args.folds} folds, training device {args.device}; scoring on ONNX Runtime CPU",
        f"- command: `{command}`",
        "",
        "| level | r | method | slice AP | slice AUROC | slice P@k | case AP | case AUROC | case P@k | pixel AP "
        "| pixel AUROC | Dice vs clean | fit s | score s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['level']} | {r['rate']:g} | {r['method']} | {fmt(r['slice_ap'])} | {fmt(r['slice_auroc'])} "
            f"| {fmt(r['slice_pk'])} | {fmt(r['case_ap'])} | {fmt(r['case_auroc'])} | {fmt(r['case_pk'])} "
            f"| {fmt(r['pixel_ap'])} | {fmt(r['pixel_auroc'])} | {fmt(r['dice'])} | {r['fit_s']:.0f} "
            f"| {r['score_s']:.0f} |")
    if upper:
        lines.append(f"| – | 0 | plain on clean labels (upper bound) | | | | | | | | | {fmt(upper['dice'])} "
                     f"| {upper['fit_s']:.0f} | {upper['score_s']:.0f} |")
    noisy = {(r["level"], r["rate"]): r["noisy_dice"] for r in rows}
    if noisy:
        lines += ["", "Dice of the noisy labels themselves against the clean ones: " + "; ".join(
            f"{level} r={rate:g}: {fmt(d)}" for (level, rate), d in noisy.items()) + "."]

    # baselines vs labelaudit, slice level
    lines += ["", "Slice-level ranking, labelaudit vs the baselines (plain 1−Dice: the plain run's own "
              "disagreement; cleanlab: 1 − `get_label_quality_scores(method=\"softmin\")` on the same plain "
              "run's out-of-fold probabilities):", "",
              "| level | r | corrupted slices | best labelaudit (AP / AUROC) | plain 1−Dice AP / AUROC "
              "| cleanlab AP / AUROC |", "|---|---|---|---|---|---|"]
    losses = []
    for level in args.levels:
        for rate in args.rates:
            cell = [r for r in rows if r["level"] == level and r["rate"] == rate]
            base = next((r for r in cell if "cl_ap" in r), None)
            if not cell or base is None:
                continue
            best = max(cell, key=lambda r: r["slice_ap"] if r["slice_ap"] is not None else -1)
            lines.append(f"| {level} | {rate:g} | {base['slices_corrupted']} of {base['slices']} "
                         f"| {best['method']} {fmt(best['slice_ap'])} / {fmt(best['slice_auroc'])} "
                         f"| {fmt(base['dis_ap'])} / {fmt(base['dis_auroc'])} "
                         f"| {fmt(base['cl_ap'])} / {fmt(base['cl_auroc'])} |")
            for r in cell:
                for name, ap, auroc in (("plain 1−Dice", base["dis_ap"], base["dis_auroc"]),
                                        ("cleanlab", base["cl_ap"], base["cl_auroc"])):
                    if r["slice_ap"] is not None and ap is not None and ap > r["slice_ap"]:
                        losses.append(f"{level} r={rate:g}: labelaudit {r['method']} slice AP "
                                      f"{fmt(r['slice_ap'])} < {name} {fmt(ap)}"
                                      + (f" (AUROC {fmt(r['slice_auroc'])} vs {fmt(auroc)})" if auroc else ""))
    lines += ["", "**Where labelaudit loses to a baseline** (slice AP, each method against each baseline):", ""]
    lines += [f"- {line}" for line in losses] if losses else ["- nowhere in this run."]
    if upper:
        lines += ["", "Dice vs clean: each method's deployed (out-of-fold) prediction against the clean labels; "
                  f"plain on the clean labels reaches {fmt(upper['dice'])} at the same budget."]
        below = [f"{r['level']} r={r['rate']:g} {r['method']} {fmt(r['dice'])}" for r in rows
                 if r["method"] != "plain" and r["dice"] is not None
                 and any(p["dice"] is not None and p["dice"] > r["dice"] for p in rows
                         if p["method"] == "plain" and p["level"] == r["level"] and p["rate"] == r["rate"])]
        if below:
            lines.append("Robust methods whose Dice is below plain's on the same noisy labels: " + "; ".join(below) + ".")
    estimate = full_estimate(rows, upper) if args.quick else ""
    if estimate:
        lines += ["", f"Cost of the full mode at this run's {args.epochs} epochs (the full mode trains "
                  f"{FULL_EPOCHS}), estimated from this run: {estimate}."]
    if args.quick:
        lines += ["", f"Quick mode ({args.epochs} epochs) checks the pipeline and gives first figures; with so few "
                  "epochs the robust methods' warm-up barely ends, so read method differences with care."]
    lines.append("")
    write_section(args.results, title, "\n".join(lines))


if __name__ == "__main__":
    main()

"""Reproduce models/demo-pint: the small PINT model shipped for trying `labelaudit check` without training.

    python tools/train_shipped_model.py            # trains, exports, calibrates, then trims to models/demo-pint
    python tools/train_shipped_model.py --out DIR  # somewhere else

Steps (each one a plain `labelaudit` command, so the model card can quote them):
1. copy the embedded demo dataset (12 cases) and keep the first TRAIN_CASES as the training set; the
   others stay unseen, for the model card's held-out figures and for tests/test_check_cli.py;
2. `labelaudit fit TRAIN --method pint --variant pint --folds 3 --epochs 10 --iterations-per-epoch 25 --seed 0
   --device cpu`;
3. keep run.json and the three ONNX graphs (not the weights nor the training checkpoints) and
   replace run.json's absolute dataset path by the dataset's name (check never reads it).

Needs the training extra (torch). CPU only, a few minutes on 2 cores.

    python tools/train_shipped_model.py --benchmark   # only the model card's figures, for an existing model
    python tools/train_shipped_model.py --recalibrate # only its thresholds again (`labelaudit calibrate`), after
                                                      # a change of the noise score; the graphs are kept

The benchmark corrupts a copy of the demo data (`labelaudit corrupt --rate 0.3 --seed S`, slice level, the
default kinds), scores it with the shipped model (`labelaudit score --model`; every case by the model, as
`check` does) and measures the audit with `labelaudit evaluate`: once on the 3 held-out cases, once on all 12
(9 of them seen, with their clean labels, in training: optimistic), for seeds 0, 1, 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_CASES = 9  # mni_001 … mni_009; mni_010 … mni_012 are held out
# 3 folds: the threshold is calibrated on out-of-fold scores (a model scores its own training slices lower
# than new ones, so an in-sample threshold flags clean new data), and `check` ensembles the three models.
FOLDS = 3
FIT_ARGS = ["--method", "pint", "--variant", "pint", "--folds", str(FOLDS), "--epochs", "10",
            "--iterations-per-epoch", "25", "--seed", "0", "--device", "cpu"]
# the ONNX graphs `check` runs; the weights (for `labelaudit export`) are left out to keep the model small:
# re-create them with this script
KEEP = ("run.json", *(f"fold_{i}/segmenter.onnx" for i in range(FOLDS)))


def training_subset(dest: Path, keep: int = TRAIN_CASES) -> Path:
    """Copy the demo dataset to `dest` with only its first `keep` cases (dataset.json updated)."""
    from labelaudit.demo import materialize_demo

    root = materialize_demo(dest)
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (root / "imagesTr").glob("*_0000.nii.gz"))
    for case_id in cases[keep:]:
        (root / "imagesTr" / f"{case_id}_0000.nii.gz").unlink()
        (root / "labelsTr" / f"{case_id}.nii.gz").unlink()
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = keep
    meta["description"] = f"{meta.get('description', '')} (labelaudit shipped model: first {keep} cases)"
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def trim(run_dir: Path, out: Path) -> Path:
    """Copy the files `check` needs from run_dir to out; make run.json portable."""
    if out.exists():
        shutil.rmtree(out)
    for rel in KEEP:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / rel, out / rel)
    info = json.loads((out / "run.json").read_text())
    # absolute paths of the machine that trained it mean nothing elsewhere; check never reads them
    info["dataset"]["path"] = info["dataset"]["name"]
    info["config"]["dataset"] = info["dataset"]["name"]
    info["config"]["out"] = str(out.relative_to(REPO)) if out.is_relative_to(REPO) else out.name
    for model in info["models"]:
        model.pop("checkpoint", None)
    info["shipped"] = {"script": "tools/train_shipped_model.py", "train_cases": info["dataset"]["cases"],
                       "fit_args": FIT_ARGS}
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def labelaudit(*args: object, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "labelaudit", *map(str, args)]
    print("+ labelaudit", " ".join(map(str, args)), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL)


def benchmark(model: Path, seeds: tuple[int, ...] = (0, 1, 2), rate: float = 0.3) -> list[dict]:
    """Slice- and case-level AP/AUROC of the model's audit of corrupted copies of the demo data."""
    from labelaudit.demo import materialize_demo

    rows = []
    with tempfile.TemporaryDirectory(prefix="labelaudit-shipped-bench-") as tmp:
        tmp = Path(tmp)
        full = materialize_demo(tmp / "all" / "mni_brain")
        held = materialize_demo(tmp / "held_out" / "mni_brain")
        for path in sorted((held / "labelsTr").glob("*.nii.gz"))[:TRAIN_CASES]:
            path.unlink()
            (held / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz")).unlink()
        for name, clean in (("held-out (3 cases)", held), ("all 12 cases (9 seen in training)", full)):
            for seed in seeds:
                noisy, audit = tmp / f"noisy-{clean.parent.name}-{seed}", tmp / f"audit-{clean.parent.name}-{seed}"
                labelaudit("corrupt", clean, noisy, "--rate", rate, "--seed", seed, cwd=tmp)
                labelaudit("score", noisy, "--model", model, "--out", audit, "--device", "cpu", cwd=tmp)
                labelaudit("evaluate", audit, "--truth", noisy / "corruption.json", "--clean", clean, cwd=tmp)
                result = json.loads((audit / "evaluation.json").read_text())
                ranking = result["ranking"]
                rows.append({"data": name, "seed": seed, **{f"{level}_{m}": ranking[level][m] for level in
                                                            ("slice", "case") for m in ("ap", "auroc")},
                             "slice_positives": f"{ranking['slice']['positives']}/{ranking['slice']['total']}",
                             **flag_rates(audit, noisy / "corruption.json")})
    return rows


def flag_rates(audit: Path, manifest: Path) -> dict:
    """At the run's calibrated threshold: the share of corrupted slices flagged, and of clean slices with
    structure flagged (false alarms)."""
    import csv

    truth = {(cid, int(s["slice_index"])): (bool(s["corrupted"]), bool(s.get("eligible", True)))
             for cid, case in json.loads(manifest.read_text())["cases"].items() for s in case["slices"]}
    hit = bad = alarm = clean = 0
    with open(audit / "slices.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            corrupted, eligible = truth[(row["case_id"], int(row["slice_index"]))]
            flagged = row["flagged"] == "true"
            if corrupted:
                bad, hit = bad + 1, hit + flagged
            elif eligible:
                clean, alarm = clean + 1, alarm + flagged
    return {"recall": hit / bad if bad else None, "false_alarms": alarm / clean if clean else None}


def print_benchmark(rows: list[dict]) -> None:
    print("| data | seed | corrupted slices | slice AP | slice AUROC | case AP | case AUROC | corrupted flagged | "
          "clean flagged |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        print(f"| {r['data']} | {r['seed']} | {r['slice_positives']} | {fmt(r['slice_ap'])} | "
              f"{fmt(r['slice_auroc'])} | {fmt(r['case_ap'])} | {fmt(r['case_auroc'])} | {fmt(r['recall'])} | "
              f"{fmt(r['false_alarms'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / "demo-pint")
    parser.add_argument("--benchmark", action="store_true", help="only measure an existing model (--out)")
    parser.add_argument("--recalibrate", action="store_true", help="only derive its thresholds again (--out)")
    args = parser.parse_args()
    if args.benchmark:
        print_benchmark(benchmark(args.out.resolve()))
        return
    if args.recalibrate:
        with tempfile.TemporaryDirectory(prefix="labelaudit-shipped-") as tmp:
            train = training_subset(Path(tmp) / "mni_brain")
            labelaudit("calibrate", args.out.resolve(), "--dataset", train, "--device", "cpu", cwd=Path(tmp))
        return
    with tempfile.TemporaryDirectory(prefix="labelaudit-shipped-") as tmp:
        train = training_subset(Path(tmp) / "mni_brain")
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "labelaudit", "fit", str(train), "--out", str(run_dir), *FIT_ARGS]
        print("+", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, cwd=tmp)  # cwd: the runs/.latest pointer lands in the temp folder
        out = trim(run_dir, args.out.resolve())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"shipped model: {out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

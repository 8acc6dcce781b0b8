"""Kind accuracy of labelaudit.diagnosis on the audit-quality suite's development cells, without re-scoring.

For each development cell (DS/REGIME with audits/plain/summary.json) it reads the noisy labels the audit judged,
the audit's out-of-fold prediction and noise map, and corruption.json; classifies every slice the manifest
records with the current diagnosis code; and prints the confusion matrix per truth row, per cell and in total.

    python bench/kind_sweep.py                       # the current defaults, called as `score` calls them
    python bench/kind_sweep.py --noise none          # without the noise map (by region size)
    python bench/kind_sweep.py --set one_sided=0.7   # ErrorKindParams overrides
    python bench/kind_sweep.py --show erosion        # the misnamed slices of one row, with their masses
    python bench/kind_sweep.py --audit stronger      # the kinds from the stronger model's audit
    python bench/kind_sweep.py --skip ct_lesion/slice --quiet   # leave a cell out; print only the total
    mkdir -p /tmp/old && git archive HEAD labelaudit/diagnosis | tar -x -C /tmp/old
    python bench/kind_sweep.py --diagnosis /tmp/old/labelaudit/diagnosis --check   # another version of the rules
                                       # (a copy of the package folder, or of the one file diagnosis.py was
                                       # before it became a package); --check: against the error_kind the
                                       # audits' slices.csv recorded

Only the development half's datasets (bench/suite_data.py) are read. Takes ~10 s on one core.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

SUITE = Path(__file__).resolve().parent / "suite_runs" / "full"
KINDS = ("none", "over_segmentation", "under_segmentation", "missing_structure", "spurious_structure",
         "shifted_boundary", "wrong_class")  # the ErrorKind values, in its order
SHORT = {k: k.split("_")[0][:5] for k in KINDS}


def import_labelaudit(diagnosis: Path | None = None) -> None:
    """Import what the harness uses; with `diagnosis`, that stands in for labelaudit.diagnosis (imported first,
    since most of the package imports it): a folder (a copy of the package labelaudit/diagnosis/, whose modules
    then come from it) or one file (the single module it was before it became a package)."""
    if diagnosis is not None:
        import importlib.util

        import labelaudit  # noqa: F401 - the package, without its diagnosis package
        if any(name == "labelaudit.diagnosis" or name.startswith("labelaudit.diagnosis.") for name in sys.modules):
            raise SystemExit("labelaudit.diagnosis is already imported; --diagnosis cannot replace it")
        if diagnosis.is_dir():
            spec = importlib.util.spec_from_file_location("labelaudit.diagnosis", diagnosis / "__init__.py",
                                                          submodule_search_locations=[str(diagnosis)])
        elif diagnosis.is_file():
            spec = importlib.util.spec_from_file_location("labelaudit.diagnosis", diagnosis)
        else:
            raise SystemExit(f"--diagnosis {diagnosis}: no such file or folder")
        module = importlib.util.module_from_spec(spec)
        sys.modules["labelaudit.diagnosis"] = module
        spec.loader.exec_module(module)
    global ErrorKind, ErrorKindParams, classify_slices, find_regions, kind_masses
    global CLEAN, EXPECTED_KIND, KindConfusion, kind_confusion, read_slice_kinds, truth_name
    global find_map, read_manifest, read_volume
    from labelaudit.diagnosis import ErrorKind, ErrorKindParams, classify_slices, find_regions, kind_masses
    from labelaudit.evaluate.kinds import (CLEAN, EXPECTED_KIND, KindConfusion, kind_confusion, read_slice_kinds,
                                           truth_name)
    from labelaudit.formats.audit import find_map
    from labelaudit.formats.manifest import read_manifest
    from labelaudit.io.image import read_volume
    assert tuple(k.value for k in ErrorKind) == KINDS


@dataclass(frozen=True)
class SliceData:
    truth: str  # the confusion row
    corruption: object  # Corruption or None
    label: np.ndarray  # (H, W) label values
    pred: np.ndarray
    noise: np.ndarray  # (H, W) float, the noise map as written: (1 - p̄_y) x the slice's score
    score: float  # the slice's noise score (slices.csv)
    flagged: bool  # the audit flagged it (slices.csv): what a reviewer reads


@dataclass(frozen=True)
class Cell:
    name: str
    folder: Path
    manifest: object
    slices: dict[tuple[str, int], SliceData]


def development_cells(audit: str = "plain") -> list[Path]:
    from suite_data import DATASETS, REGIMES, Half

    found = []
    for dataset in (d.name for d in DATASETS if d.half is Half.DEV):
        for regime in REGIMES:
            folder = SUITE / dataset / regime
            if (folder / "audits" / audit / "summary.json").is_file():
                found.append(folder)
    return found


def read_slice_scores(path: Path) -> dict[tuple[str, int], tuple[float, bool]]:
    """(noise score, flagged) of every slice of an audit's slices.csv."""
    with path.open(newline="", encoding="utf-8") as handle:
        return {(row["case_id"], int(row["slice_index"])): (float(row["noise_score"]),
                                                            row["flagged"].strip().lower() in ("true", "1", "yes"))
                for row in csv.DictReader(handle)}


def load_cell(folder: Path, audit_name: str = "plain") -> Cell:
    """Every slice the manifest records (corrupted, or clean with structure), with label, prediction, noise."""
    manifest = read_manifest(folder / "noisy" / "corruption.json")
    audit = folder / "audits" / audit_name
    scores = read_slice_scores(audit / "slices.csv")
    slices = {}
    for case_id, case in sorted(manifest.record.cases.items()):
        wanted = [r for r in case.slices if r.corrupted or r.eligible]
        if not wanted:
            continue
        label = read_volume(folder / "noisy" / case.label_file).to_slices()
        pred = read_volume(find_map(audit, case_id, "pred")).to_slices()
        noise = read_volume(find_map(audit, case_id, "noise")).to_slices()
        for r in wanted:
            i = r.slice_index
            slices[(case_id, i)] = SliceData(truth_name(r.corruption if r.corrupted else None),
                                             r.corruption if r.corrupted else None,
                                             np.array(label[i]), np.array(pred[i]), np.array(noise[i], np.float32),
                                             *scores[(case_id, i)])
    return Cell(f"{folder.parent.name}/{folder.name}", folder, manifest, slices)


def classify(cell: Cell, params: ErrorKindParams, noise: str) -> dict[tuple[str, int], str]:
    """The kinds classify_slices names, given the noise map and slice scores as `score` passes them (noise
    "scored"), the map alone ("map", the former call), or nothing ("none")."""
    keys = list(cell.slices)
    if not keys:
        return {}
    label = np.stack([cell.slices[k].label for k in keys])
    pred = np.stack([cell.slices[k].pred for k in keys])
    kw = {}
    if noise != "none":
        kw["noise"] = np.stack([cell.slices[k].noise for k in keys])
    if noise == "scored":
        kw["scores"] = np.array([cell.slices[k].score for k in keys], dtype=np.float32)
    kinds = classify_slices(label, pred, params, **kw)
    return {k: ErrorKind(v).value for k, v in zip(keys, kinds)}


def row_table(counts: dict[str, dict[str, int]]) -> list[str]:
    cols = list(KINDS)
    lines = [f"  {'truth':<12}{'n':>5}{'acc':>7}  " + " ".join(f"{SHORT[c]:>5}" for c in cols)]
    for row, named in counts.items():
        n = sum(named.values())
        exp = EXPECTED_KIND.get(row)
        acc = f"{named[exp.value] / n:7.0%}" if exp is not None and n else f"{'-':>7}"
        lines.append(f"  {row:<12}{n:>5}{acc}  " + " ".join(f"{named[c]:>5}" for c in cols))
    return lines


def merge(total: dict, counts: dict) -> None:
    for row, named in counts.items():
        t = total.setdefault(row, {k: 0 for k in KINDS})
        for c, v in named.items():
            t[c] += v


def describe(key, s: SliceData, named: str, params: ErrorKindParams) -> str:
    m = kind_masses(s.label, s.pred, params)
    regions = find_regions(s.label, s.pred, key[1], params)
    reg = ", ".join(f"{r.kind.value[:5]}:{r.pixels}" for r in sorted(regions, key=lambda r: -r.pixels)[:5])
    c = s.corruption
    return (f"  {key[0]}[{key[1]}] {named:<19} {c.kind.value if c else '-'} c{c.label_class if c else ''} "
            f"{c.params if c and c.kind.value != 'elastic' else ''} | lab {int((s.label != 0).sum())} "
            f"pred {int((s.pred != 0).sum())} | miss {m.missing} spur {m.spurious} swap {m.swapped} "
            f"bord {m.border} extra {m.extra} lack {m.lacking} | regions {reg}")


def parse_sets(items: list[str]) -> dict:
    types = {f.name: f.type for f in fields(ErrorKindParams)}
    out = {}
    for item in items:
        name, value = item.split("=", 1)
        if name not in types:
            raise SystemExit(f"unknown ErrorKindParams field {name!r}; known: {', '.join(types)}")
        out[name] = int(value) if types[name] in (int, "int") else float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noise", default="scored", choices=("scored", "map", "none"),
                    help="what classify_slices gets besides label and prediction: the noise map and the slice "
                         "scores, as score passes them (scored, the default); the map alone; nothing")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="ErrorKindParams override")
    ap.add_argument("--show", action="append", default=[], metavar="ROW", help="print the misnamed slices of ROW")
    ap.add_argument("--limit", type=int, default=40, help="at most this many slices per --show row")
    ap.add_argument("--check", action="store_true", help="count the slices whose kind differs from the "
                    "error_kind of the audit's slices.csv (which the code of the audit's day wrote)")
    ap.add_argument("--diagnosis", type=Path, metavar="PATH", help="classify with this copy of the package "
                    "folder labelaudit/diagnosis/ (or of the file diagnosis.py it was before; e.g. an earlier "
                    "version) instead of the installed one")
    ap.add_argument("--quiet", action="store_true", help="print only the total")
    ap.add_argument("--audit", default="plain", help="the cells' audit to read (audits/NAME: plain, or e.g. "
                    "stronger, the audit of suite.py --methods stronger)")
    ap.add_argument("--skip", action="append", default=[], metavar="DS/REGIME", help="leave a cell out")
    ap.add_argument("--flagged", action="store_true", help="the slices the audit flagged only (what a reviewer "
                    "reads; each is classified as in the whole stack)")
    args = ap.parse_args(argv)
    import_labelaudit(args.diagnosis)
    params = replace(ErrorKindParams(), **parse_sets(args.set))
    taken = inspect.signature(classify_slices).parameters
    if (args.noise != "none" and "noise" not in taken) or (args.noise == "scored" and "scores" not in taken):
        raise SystemExit(f"classify_slices takes no {'scores' if 'noise' in taken else 'noise map'}; "
                         f"pass --noise {'map' if 'noise' in taken else 'none'}")
    total: dict = {}
    shown = {row: 0 for row in args.show}
    for folder in development_cells(args.audit):
        if f"{folder.parent.name}/{folder.name}" in args.skip:
            continue
        cell = load_cell(folder, args.audit)
        kinds = classify(cell, params, args.noise)
        if args.flagged:
            kinds = {k: v for k, v in kinds.items() if cell.slices[k].flagged}
        confusion = kind_confusion(cell.manifest, kinds)
        if confusion is None:
            continue
        merge(total, confusion.counts)
        if not args.quiet:
            print(f"{cell.name}  ({len(cell.slices)} slices, accuracy {confusion.accuracy():.1%})")
            print("\n".join(row_table(confusion.counts)))
        if args.check:
            recorded = read_slice_kinds(folder / "audits" / args.audit / "slices.csv")
            differ = [k for k in kinds if recorded.get(k) is not None and recorded[k] != kinds[k]]
            print(f"  check: {len(differ)} of {len(kinds)} slices differ from slices.csv {differ[:5]}")
        for key, s in cell.slices.items():
            if (s.truth in shown and key in kinds and shown[s.truth] < args.limit
                    and kinds[key] != EXPECTED_KIND[s.truth].value):
                shown[s.truth] += 1
                print(f"{cell.name}" + describe(key, s, kinds[key], params))
    rows = [r for r in total if r != CLEAN] + ([CLEAN] if CLEAN in total else [])
    confusion = KindConfusion({r: total[r] for r in rows})
    print(f"TOTAL  (accuracy {confusion.accuracy():.1%})")
    print("\n".join(row_table(confusion.counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A fixed-seed fit of the demo gives the same slices.csv as before the restructuring (tests/golden/).

The reference was written by the code before the package was split into stages; refactors must not move a
number. Its error_kind column was regenerated twice, when diagnosis moved to per-region kinds and when its
rules were chosen on the audit-quality suite's development half (the noise scores and every other column
stayed identical). Every column of the reference is compared as text, row by row; new columns (e.g. `axis`) are allowed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden" / "demo_slices.csv"
#: The columns that must match exactly, as text.
COLUMNS = ("case_id", "slice_index", "noise_score", "flagged", "disagreement", "doubt_fraction", "label_pixels",
           "pred_pixels", "error_kind")


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def differences(new: Path, golden: Path = GOLDEN, limit: int = 20) -> list[str]:
    """How `new` differs from `golden` in COLUMNS (row order included); empty when they match."""
    new_columns, new_rows = read_rows(new)
    _, old_rows = read_rows(golden)
    missing = [c for c in COLUMNS if c not in new_columns]
    if missing:
        return [f"{new}: lacks the column(s) {', '.join(missing)} (has {', '.join(new_columns)})"]
    found = []
    if len(new_rows) != len(old_rows):
        found.append(f"{len(new_rows)} rows, expected {len(old_rows)}")
    for i, (a, b) in enumerate(zip(new_rows, old_rows)):
        changed = [f"{c}={a[c]!r} (golden {b[c]!r})" for c in COLUMNS if a[c] != b[c]]
        if changed:
            found.append(f"row {i + 2} ({b['case_id']} slice {b['slice_index']}): " + ", ".join(changed))
    return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])


def fit_and_score_demo(work: Path) -> Path:
    """Materialize the demo into `work`, fit 2 folds x 2 epochs x 4 iterations on the CPU, score; slices.csv."""
    from labelaudit.config import FitConfig, LoopParams, Method, PintParams, Preset, ScoreConfig, Variant, preset_budget
    from labelaudit.demo import materialize_demo
    from labelaudit.score.pipeline import score_dataset
    from labelaudit.train.fit import fit_dataset

    data = materialize_demo(work / "demo")
    # the method and network the golden file was made with, whatever the defaults are now
    run = fit_dataset(FitConfig(dataset=data, out=work / "run", method=Method.PINT, folds=2, seed=0, device="cpu",
                                loop=LoopParams(epochs=2, iterations_per_epoch=4, batch_size=4),
                                net=preset_budget(Preset.FAST)[1],
                                pint=PintParams(variant=Variant.INT)))
    score_dataset(ScoreConfig(run_dir=run, out_dir=work / "audit", device="cpu"))
    return work / "audit" / "slices.csv"


@pytest.mark.slow
def test_fixed_seed_demo_fit_reproduces_the_golden_slices(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # fit points ./runs/.latest at its run
    found = differences(fit_and_score_demo(tmp_path))
    assert not found, f"slices.csv differs from {GOLDEN.name}:\n" + "\n".join(found)


def test_the_comparison_ignores_new_columns_and_names_changed_cells(tmp_path):
    _, rows = read_rows(GOLDEN)
    new = tmp_path / "slices.csv"

    def write(rows: list[dict]) -> Path:
        with open(new, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return new

    assert differences(write([{**r, "axis": "0"} for r in rows])) == []
    changed = [dict(r) for r in rows]
    changed[3]["noise_score"] = "0.5"
    assert differences(write(changed)) == [
        f"row 5 ({rows[3]['case_id']} slice {rows[3]['slice_index']}): noise_score='0.5' "
        f"(golden {rows[3]['noise_score']!r})"]
    assert differences(write(rows[:-1])) == [f"{len(rows) - 1} rows, expected {len(rows)}"]

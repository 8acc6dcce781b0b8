"""The embedded demo dataset (shape, geometry, labels, licence) and `labelaudit demo`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from labelaudit.data import discover_dataset, inspect_dataset, iter_cases
from labelaudit.demo import (DEMO_CASES, DEMO_LABELS, DEMO_NAME, DEMO_SLICES, DemoConfig, demo_dataset_path,
                             is_demo_copy, materialize_demo, run_demo)
from labelaudit.errors import UsageError

#: The smallest training that still runs every step of the demo (the figures are not the point here).
TINY_FIT = {"folds": 2, "epochs": 1, "iterations_per_epoch": 2, "exporter": "torchscript", "device": "cpu"}
TINY_FIT_ARGS = ("--folds", "1", "--epochs", "1", "--iterations-per-epoch", "2", "--device", "cpu")


@pytest.fixture(scope="module")
def demo_cases():
    """Every case of the embedded dataset, read and checked (strict: any problem fails)."""
    dataset = discover_dataset(demo_dataset_path())
    return dataset, [case for case, _ in iter_cases(dataset, strict=True)]


def test_embedded_dataset_is_discoverable_and_clean():
    root = demo_dataset_path()
    assert root.is_dir() and root.name == DEMO_NAME
    dataset = discover_dataset(root)
    assert dataset.layout == "nnunet" and dataset.name == DEMO_NAME
    assert dataset.problems == [] and dataset.skipped == {}
    summary = inspect_dataset(dataset, strict=True)  # raises on any problem
    assert [info.case_id for info in summary.cases] == [f"mni_{i:03d}" for i in range(1, DEMO_CASES + 1)]


def test_dataset_json_declares_what_the_readme_says():
    meta = json.loads((demo_dataset_path() / "dataset.json").read_text())
    assert meta["labels"] == DEMO_LABELS
    assert meta["channel_names"] == {"0": "MR"}
    assert meta["numTraining"] == DEMO_CASES
    assert meta["file_ending"] == ".nii.gz"
    assert "NOTICE" in meta["licence"]
    assert set(meta["generator"]["cases"]) == {f"mni_{i:03d}" for i in range(1, DEMO_CASES + 1)}


def test_case_sizes_and_geometry(demo_cases):
    _, cases = demo_cases
    assert len(cases) == DEMO_CASES
    for case in cases:
        geometry = case.geometry
        assert geometry.size[:2] == (80, 96)
        assert DEMO_SLICES[0] <= geometry.size[2] <= DEMO_SLICES[1]
        assert geometry.spacing == pytest.approx((2.0, 2.0, 4.0))
        assert geometry.slicing_axis() == 0  # the 4 mm ITK z axis is numpy axis 0
        assert case.label_slices().shape == (geometry.size[2], 96, 80)
        direction = np.array(geometry.direction).reshape(3, 3)
        assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-6)  # a rotation ...
        assert not np.allclose(np.abs(direction), np.eye(3), atol=1e-3)  # ... that is oblique
        assert np.linalg.norm(geometry.origin) > 10.0
        assert case.channels[0].array.dtype == np.int16 and case.label.array.dtype.kind in "iu"


def test_labels_are_declared_and_follow_the_image(demo_cases):
    """Every case holds all three classes, and T1 contrast orders them: white > gray > background."""
    _, cases = demo_cases
    for case in cases:
        label, image = case.label.array, case.channels[0].array
        assert set(np.unique(label).tolist()) == set(DEMO_LABELS.values())
        median = {v: float(np.median(image[label == v])) for v in DEMO_LABELS.values()}
        assert median[1] > median[2] > median[0], case.case_id


def test_slabs_differ_between_cases(demo_cases):
    _, cases = demo_cases
    heights = {round(case.geometry.origin[2]) for case in cases}
    assert len(heights) == DEMO_CASES


def test_notice_ships_with_the_data():
    package_notice = (demo_dataset_path().parent / "NOTICE").read_text()
    dataset_notice = (demo_dataset_path() / "NOTICE").read_text()
    assert package_notice == dataset_notice
    assert "Louis Collins" in package_notice and "Permission to use, copy" in package_notice
    assert (demo_dataset_path().parent / "README.md").exists()


def test_demo_data_stays_small():
    total = sum(p.stat().st_size for p in demo_dataset_path().parent.rglob("*") if p.is_file())
    assert total < 2.5e6


def test_materialize_demo_copies_writable_files(tmp_path):
    dest = materialize_demo(tmp_path / "copy")
    source = demo_dataset_path()
    originals = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    copies = sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file())
    assert copies == originals
    for rel in copies:
        assert (dest / rel).read_bytes() == (source / rel).read_bytes()
        assert os.access(dest / rel, os.W_OK)
    assert is_demo_copy(dest)


def test_materialize_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(UsageError, match="exists and is not empty"):
        materialize_demo(tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"


def test_run_demo_steps_and_result(tmp_path):
    announced = []
    result = run_demo(DemoConfig(out=tmp_path / "demo", rate=0.2, seed=3, **TINY_FIT),
                      announce=lambda i, n, name: announced.append((i, n, name)))
    assert [step.name for step in result.steps] == [name for _, _, name in announced]
    assert result.num_cases == DEMO_CASES and result.num_slices == sum(
        info.num_slices for info in result.summary.cases)
    assert result.manifest.rate == 0.2
    assert sum(row["slices"] for row in result.corrupted_by_kind.values()) == result.manifest.corrupted_count > 0
    from labelaudit.config import PRESET_BUDGETS, Preset
    from labelaudit.formats.run import load_run

    # the demo trains the fast preset's network on a CPU budget, whatever fit's default is
    assert load_run(result.run_dir).settings.net.features == PRESET_BUDGETS[Preset.FAST][1]


def test_cli_demo_writes_clean_and_noisy_copies(tmp_path, cli):
    out = tmp_path / "demo"
    result = cli("demo", "--out", out, *TINY_FIT_ARGS)
    assert result.exit_code == 0, result.output
    assert is_demo_copy(out / "clean")
    manifest = json.loads((out / "noisy" / "corruption.json").read_text())
    assert manifest["corrupted_count"] > 0
    assert "noisy dataset:" in result.stdout and "corruption.json" in result.stdout
    # the clean copy is the embedded data byte for byte; a corrupted case's noisy label differs from it
    case_id = next(cid for cid, case in manifest["cases"].items() if case["corrupted"])
    clean_label = (out / "clean" / "labelsTr" / f"{case_id}.nii.gz").read_bytes()
    assert clean_label == (demo_dataset_path() / "labelsTr" / f"{case_id}.nii.gz").read_bytes()
    assert (out / "noisy" / "labelsTr" / f"{case_id}.nii.gz").read_bytes() != clean_label
    # the pipeline ran to the end: an audit of every case, its report and its evaluation
    assert "report.html" in result.stdout
    for name in ("cases.csv", "slices.csv", "summary.json", "report.html", "evaluation.json"):
        assert (out / "audit" / name).is_file(), name
    assert len((out / "audit" / "cases.csv").read_text().strip().splitlines()) == DEMO_CASES + 1
    # a rerun replaces the demo's own outputs
    assert cli("demo", "--out", out, *TINY_FIT_ARGS).exit_code == 0


def test_cli_demo_does_not_replace_foreign_folders(tmp_path, cli):
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "mine.txt").write_text("keep")
    result = cli("demo", "--out", tmp_path)
    assert result.exit_code == 2
    assert "not a copy of the demo dataset" in result.stderr
    assert (tmp_path / "clean" / "mine.txt").read_text() == "keep"

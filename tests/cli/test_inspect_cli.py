"""`labelaudit inspect`: the summary, the problems on stderr, and the exit codes of interface.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from labelaudit import io
from labelaudit.types import Volume


def test_inspect_ok_exits_0_and_prints_the_summary(cli, nnunet_dataset: Path) -> None:
    result = cli("inspect", nnunet_dataset)
    assert result.exit_code == 0, result.output
    assert "Dataset001_Tiny" in result.stdout and "nnunet layout" in result.stdout
    assert "2 cases read" in result.stdout and "case_000" in result.stdout and "case_001" in result.stdout
    assert "24×20×4" in result.stdout and "0.8×0.9×3" in result.stdout
    assert re.search(r"label values: 0 \(background\) \d+ voxels, 1 \(class_1\) \d+ voxels", result.stdout)
    assert "skipped" not in result.stdout and result.stderr.strip() == ""


def test_voxel_counts_are_short_in_the_table() -> None:
    from labelaudit.cli.render import _count

    assert [_count(n) for n in (0, 99_999, 100_000, 74_333_916, 4_309_284, 2_000_000_000)] == [
        "0", "99999", "100k", "74.3M", "4.31M", "2G"]


def test_labels_without_names_are_shown_as_plain_values(cli, paired_dataset: Path) -> None:
    result = cli("inspect", paired_dataset)
    assert result.exit_code == 0, result.output
    assert re.search(r"label values: 0 \d+ voxels, 1 \d+ voxels", result.stdout)
    assert "()" not in result.stdout


def test_undeclared_value_is_named_so(cli, nnunet_dataset: Path) -> None:
    meta = json.loads((nnunet_dataset / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "class_1": 1, "class_2": 2}
    (nnunet_dataset / "dataset.json").write_text(json.dumps(meta))
    result = cli("inspect", nnunet_dataset)
    assert result.exit_code == 0 and "1 (class_1)" in result.stdout


def test_problem_case_is_skipped_and_reported(cli, nnunet_dataset: Path) -> None:
    (nnunet_dataset / "labelsTr" / "case_001.nii.gz").unlink()
    result = cli("inspect", nnunet_dataset)
    assert result.exit_code == 0, result.output
    assert "1 cases read, 1 skipped" in result.stdout
    assert "skipped 1 case(s) with problems: case_001" in result.stdout
    assert "1 problem(s):" in result.stderr
    assert re.search(r"case case_001: \S*imagesTr/case_001_0000\.nii\.gz: image without label: expected "
                     r"\S*labelsTr/case_001\.nii\.gz, found none", result.stderr)


def test_strict_with_a_problem_exits_3(cli, nnunet_dataset: Path) -> None:
    path = nnunet_dataset / "labelsTr" / "case_000.nii.gz"
    label = io.read_volume(path)
    io.write_volume(Volume(label.array + np.uint8(5), label.geometry), path)
    assert cli("inspect", nnunet_dataset).exit_code == 0
    result = cli("inspect", "--strict", nnunet_dataset)
    assert result.exit_code == 3
    assert re.search(r"error: case case_000: \S*case_000\.nii\.gz: label values \[5, 6\] are not declared in "
                     r"dataset\.json", result.stderr)
    assert "without --strict, problem cases are skipped" in result.stderr


def test_missing_folder_exits_3(cli, tmp_path: Path) -> None:
    result = cli("inspect", tmp_path / "nope")
    assert result.exit_code == 3
    assert "nope: no such folder, expected a dataset folder" in result.stderr


def test_unknown_flag_exits_2(cli, nnunet_dataset: Path) -> None:
    result = cli("inspect", "--bogus", nnunet_dataset)
    assert result.exit_code == 2 and "No such option" in result.output


def test_missing_argument_exits_2(cli) -> None:
    result = cli("inspect")
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_every_case_bad_exits_3(cli, nnunet_dataset: Path) -> None:
    for path in (nnunet_dataset / "imagesTr").iterdir():
        path.write_bytes(b"")
    result = cli("inspect", nnunet_dataset)
    assert result.exit_code == 3
    assert "no readable case" in result.stderr and "2 problem(s):" in result.stderr
    assert result.stderr.count("empty file (0 bytes)") == 2


def test_invalid_dataset_json_exits_3_naming_line_and_column(cli, nnunet_dataset: Path) -> None:
    (nnunet_dataset / "dataset.json").write_text('{"labels": {"background": 0}\n"file_ending": ".nii.gz"}')
    result = cli("inspect", nnunet_dataset)
    assert result.exit_code == 3
    assert re.search(r"dataset\.json: not valid JSON \(line 2, column 1: Expecting ',' delimiter\)", result.stderr)


def test_dataset_json_without_labels_exits_3_naming_the_field(cli, nnunet_dataset: Path) -> None:
    (nnunet_dataset / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    result = cli("inspect", nnunet_dataset)
    assert result.exit_code == 3 and "required field 'labels' is missing" in result.stderr

"""labelaudit.data: layouts are discovered, every problem is reported with its file, expected and found."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from labelaudit import data, integrity, io
from labelaudit.errors import DatasetError, InputError
from labelaudit.synth import SynthConfig, rotated_direction, write_synth_dataset
from labelaudit.types import Geometry, Problem, Volume


def texts(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


def inspect(root: Path, strict: bool = False) -> data.DatasetSummary:
    return data.inspect_dataset(data.discover_dataset(root), strict=strict)


def only_problem(summary: data.DatasetSummary, case_id: str) -> str:
    """The single problem of the one skipped case; the other case was read."""
    assert list(summary.dataset.skipped) == [case_id]
    assert [c.case_id for c in summary.cases] != [] and case_id not in [c.case_id for c in summary.cases]
    [problem] = summary.dataset.skipped[case_id]
    assert problem in summary.dataset.problems
    return str(problem)


# ----------------------------------------------------------------------------- layouts and formats


def test_nnunet_layout(nnunet_dataset: Path) -> None:
    dataset = data.discover_dataset(nnunet_dataset)
    assert (dataset.layout, dataset.file_ending, dataset.name) == ("nnunet", ".nii.gz", "Dataset001_Tiny")
    assert dataset.labels == {"background": 0, "class_1": 1}
    assert [r.case_id for r in dataset.cases] == ["case_000", "case_001"]
    assert dataset.cases[0].image_paths == (nnunet_dataset / "imagesTr" / "case_000_0000.nii.gz",)
    assert dataset.cases[0].label_path == nnunet_dataset / "labelsTr" / "case_000.nii.gz"
    assert dataset.problems == [] and dataset.num_channels == 1
    summary = data.inspect_dataset(dataset)
    info = summary.cases[0]
    assert (info.size, info.channels, info.slicing_axis, info.num_slices) == ((24, 20, 4), 1, 0, 4)
    assert info.spacing == pytest.approx((0.8, 0.9, 3.0), rel=1e-6)  # NIfTI holds float32
    assert set(info.label_counts) == {0, 1} and sum(info.label_counts.values()) == 24 * 20 * 4
    assert -400 < info.intensity_range[0] < info.intensity_range[1] < 300


@pytest.mark.parametrize("ending,two_d", [(".nrrd", False), (".mha", False), (".nii", False),
                                          (".png", True), (".tif", True)])
def test_nnunet_layout_in_every_ending(tmp_path: Path, ending: str, two_d: bool) -> None:
    config = SynthConfig(cases=2, size=(20, 16, 3), two_d=two_d)
    root = write_synth_dataset(tmp_path / "ds", config, file_ending=ending)
    summary = inspect(root)
    assert summary.dataset.file_ending == ending and summary.dataset.problems == []
    assert [c.case_id for c in summary.cases] == ["case_000", "case_001"]
    info = summary.cases[0]
    assert info.size == ((20, 16) if two_d else (20, 16, 3))
    assert info.num_slices == (1 if two_d else 3)
    case = data.load_case(summary.dataset.cases[0], summary.dataset)
    assert case.image_slices().shape == ((1, 1, 16, 20) if two_d else (3, 1, 16, 20))
    assert case.label_slices().dtype == np.int16


def test_files_with_another_ending_are_ignored_in_nnunet_layout(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "imagesTr" / "notes.txt").write_text("x")
    (nnunet_dataset / "imagesTr" / ".hidden_0000.nii.gz").write_text("x")
    assert len(data.discover_dataset(nnunet_dataset).cases) == 2


def test_msd_style_dataset_json(tmp_path: Path) -> None:
    """MSD: labels map "value" -> name, `modality` instead of channel_names, no file_ending, no _0000."""
    root = write_synth_dataset(tmp_path / "Task02_Heart", SynthConfig(cases=2, size=(16, 12, 3)))
    for path in (root / "imagesTr").iterdir():
        path.rename(path.with_name(path.name.replace("_0000", "")))
    (root / "dataset.json").write_text(json.dumps({
        "name": "Heart", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
        "numTraining": 2, "training": [{"image": f"./imagesTr/case_00{i}.nii.gz",
                                        "label": f"./labelsTr/case_00{i}.nii.gz"} for i in range(2)],
    }))
    summary = inspect(root)
    assert summary.dataset.labels == {"background": 0, "left atrium": 1}
    assert summary.dataset.channel_names == {"0": "MRI"} and summary.dataset.file_ending == ".nii.gz"
    assert summary.dataset.name == "Heart"
    assert [c.case_id for c in summary.cases] == ["case_000", "case_001"] and not summary.dataset.problems


def test_case_names_ending_in_four_digits_without_channel_suffix(tmp_path: Path) -> None:
    """images/case_0001.nii.gz pairs with labels/case_0001.nii.gz; _0001 is not a channel here."""
    root = write_synth_dataset(tmp_path / "p", SynthConfig(cases=1, size=(16, 12, 3)), layout="paired")
    for folder in ("images", "labels"):
        (root / folder / "case_000.nii.gz").rename(root / folder / "case_0001.nii.gz")
    summary = inspect(root)
    assert [c.case_id for c in summary.cases] == ["case_0001"] and not summary.dataset.problems


def test_multi_channel_images(tmp_path: Path) -> None:
    root = write_synth_dataset(tmp_path / "mc", SynthConfig(cases=2, size=(16, 12, 3), channels=2, modality="MR"))
    dataset = data.discover_dataset(root)
    assert [p.name for p in dataset.cases[0].image_paths] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    assert dataset.num_channels == 2
    case = data.load_case(dataset.cases[0], dataset)
    assert len(case.channels) == 2
    slices = case.image_slices()
    assert slices.shape == (3, 2, 12, 16) and slices.dtype == np.float32
    assert not np.array_equal(slices[:, 0], slices[:, 1])  # channel order kept, channels differ


def test_multi_channel_problems(tmp_path: Path) -> None:
    root = write_synth_dataset(tmp_path / "mc", SynthConfig(cases=2, size=(16, 12, 3), channels=2, modality="MR"))
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    summary = inspect(root)
    assert re.search(r"case case_001: .*case_001_0000\.nii\.gz: expected 2 channel files \(_0000…, as "
                     r"channel_names declares\), found 1", only_problem(summary, "case_001"))
    (root / "imagesTr" / "case_001_0000.nii.gz").rename(root / "imagesTr" / "case_001_0002.nii.gz")
    (root / "imagesTr" / "case_000_0001.nii.gz").rename(root / "imagesTr" / "case_001_0000.nii.gz")
    shutil.copy(root / "imagesTr" / "case_000_0000.nii.gz", root / "imagesTr" / "case_000_0001.nii.gz")
    summary = inspect(root)
    assert re.search(r"channel files are not numbered 0\.\.1: expected _0000…_0001, found channels \[0, 2\]",
                     only_problem(summary, "case_001"))


def test_channel_grid_mismatch(tmp_path: Path) -> None:
    root = write_synth_dataset(tmp_path / "mc", SynthConfig(cases=2, size=(16, 12, 3), channels=2, modality="MR"))
    path = root / "imagesTr" / "case_001_0001.nii.gz"
    volume = io.read_volume(path)
    io.write_volume(Volume(volume.array, Geometry(**{**volume.geometry.__dict__, "spacing": (0.8, 0.9, 2.0)})), path)
    assert re.search(r"case_001_0001\.nii\.gz: channel grid does not match channel 0 case_001_0000\.nii\.gz "
                     r"\(channel 0 vs this: spacing 0\.8×0\.9×3 vs 0\.8×0\.9×2 mm\)",
                     only_problem(inspect(root), "case_001"))


def test_paired_layout_with_a_dicom_series_folder(tmp_path: Path, dicom_writer) -> None:
    root = write_synth_dataset(tmp_path / "paired", SynthConfig(cases=2, size=(16, 12, 3)), layout="paired")
    image = io.read_volume(root / "images" / "case_001.nii.gz")
    (root / "images" / "case_001.nii.gz").unlink()
    dicom_writer(image, root / "images" / "case_001")
    (root / "images" / "not_dicom").mkdir()  # a folder without a series is not a case
    dataset = data.discover_dataset(root)
    assert dataset.layout == "paired" and dataset.labels is None and dataset.file_ending == ".nii.gz"
    assert [r.image_paths[0].name for r in dataset.cases] == ["case_000.nii.gz", "case_001"]
    case = data.load_case(dataset.cases[1], dataset)
    np.testing.assert_array_equal(case.channels[0].array, image.array)
    assert case.channels[0].geometry.differences(case.label.geometry) == []


def test_paired_layout_reads_labels_from_its_dataset_json(paired_dataset: Path) -> None:
    (paired_dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    summary = inspect(paired_dataset)
    assert summary.dataset.layout == "paired" and summary.cases == []
    assert re.search(r"label values \[1\] are not declared in dataset\.json \(found in \d+ voxels; declared: \[0\]\)",
                     texts(summary.dataset.problems))


def test_paired_layout_with_mixed_endings(tmp_path: Path) -> None:
    root = write_synth_dataset(tmp_path / "p", SynthConfig(cases=2, size=(16, 12, 3)), layout="paired")
    for folder in ("images", "labels"):
        volume = io.read_volume(root / folder / "case_001.nii.gz")
        (root / folder / "case_001.nii.gz").unlink()
        io.write_volume(volume, root / folder / "case_001.nrrd")
    assert [c.case_id for c in inspect(root).cases] == ["case_000", "case_001"]


# ----------------------------------------------------------------------------- every problem, with its message


def test_unreadable_label(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "labelsTr" / "case_001.nii.gz").write_bytes(b"not an image at all" * 4)
    assert re.search(r"case case_001: .*labelsTr/case_001\.nii\.gz: cannot read label: Unable to determine ImageIO "
                     r"reader", only_problem(inspect(nnunet_dataset), "case_001"))


def test_empty_image_file(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "imagesTr" / "case_000_0000.nii.gz").write_bytes(b"")
    assert re.search(r"imagesTr/case_000_0000\.nii\.gz: cannot read image: empty file \(0 bytes\), expected an image",
                     only_problem(inspect(nnunet_dataset), "case_000"))


def test_image_without_label(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "labelsTr" / "case_001.nii.gz").unlink()
    message = only_problem(inspect(nnunet_dataset), "case_001")
    assert re.search(r"imagesTr/case_001_0000\.nii\.gz: image without label: expected .*labelsTr/case_001\.nii\.gz, "
                     r"found none", message)


def test_label_without_image(paired_dataset: Path) -> None:
    (paired_dataset / "images" / "case_000.nii.gz").unlink()
    message = only_problem(inspect(paired_dataset), "case_000")
    assert re.search(r"labels/case_000\.nii\.gz: label without image: expected .*images/case_000\.\*, found none",
                     message)


def _rewrite_label(root: Path, case_id: str, **changes) -> None:
    path = root / "labelsTr" / f"{case_id}.nii.gz"
    label = io.read_volume(path)
    array = changes.pop("array", label.array)
    io.write_volume(Volume(array, Geometry(**{**label.geometry.__dict__, **changes})), path)


@pytest.mark.parametrize("changes,message", [
    ({"spacing": (0.8, 0.9, 2.5)}, r"spacing 0\.8×0\.9×3 vs 0\.8×0\.9×2\.5 mm"),
    ({"origin": (-12.5, 30.0, 9.25)}, r"origin -12\.5×30×7\.25 vs -12\.5×30×9\.25 mm"),
    ({"direction": rotated_direction(0.0)}, r"direction 0\.965926×-0\.258819×.* vs 1×0×0×0×1×0×0×0×1"),
    ({"size": (24, 20, 3), "array": np.zeros((3, 20, 24), np.uint8)}, r"size 24×20×4 vs 24×20×3"),
])
def test_label_grid_mismatch(nnunet_dataset: Path, changes: dict, message: str) -> None:
    _rewrite_label(nnunet_dataset, "case_001", **changes)
    found = only_problem(inspect(nnunet_dataset), "case_001")
    assert re.search(r"labelsTr/case_001\.nii\.gz: label grid does not match the image \(image vs label: " + message,
                     found), found


def test_origin_within_tolerance_is_not_a_mismatch(nnunet_dataset: Path) -> None:
    _rewrite_label(nnunet_dataset, "case_001", origin=(-12.5 + 4e-7, 30.0 - 4e-7, 7.25 + 4e-7))
    summary = inspect(nnunet_dataset, strict=True)
    assert len(summary.cases) == 2 and not summary.dataset.problems


def test_non_integer_label_values(nnunet_dataset: Path) -> None:
    label = io.read_volume(nnunet_dataset / "labelsTr" / "case_000.nii.gz")
    values = label.array.astype(np.float32)
    values[0, 0, :3] = 0.5
    _rewrite_label(nnunet_dataset, "case_000", array=values)
    assert re.search(r"labelsTr/case_000\.nii\.gz: label holds non-integer values \(e\.g\. 0\.5 in 3 voxels\), "
                     r"expected integer class values", only_problem(inspect(nnunet_dataset), "case_000"))


def test_float_label_with_integer_values_is_fine(nnunet_dataset: Path) -> None:
    label = io.read_volume(nnunet_dataset / "labelsTr" / "case_000.nii.gz")
    _rewrite_label(nnunet_dataset, "case_000", array=label.array.astype(np.float32))
    dataset = data.discover_dataset(nnunet_dataset)
    case = data.load_case(dataset.cases[0], dataset)
    assert case.label.array.dtype == np.int16
    np.testing.assert_array_equal(case.label.array, label.array)


def test_nan_in_label(nnunet_dataset: Path) -> None:
    label = io.read_volume(nnunet_dataset / "labelsTr" / "case_000.nii.gz").array.astype(np.float32)
    label[1, 2, 3] = np.nan
    _rewrite_label(nnunet_dataset, "case_000", array=label)
    assert "label holds 1 NaN/Inf voxels, expected integer class values" in only_problem(inspect(nnunet_dataset),
                                                                                       "case_000")


def test_undeclared_label_values(nnunet_dataset: Path) -> None:
    label = io.read_volume(nnunet_dataset / "labelsTr" / "case_001.nii.gz").array.copy()
    label[0, :2, :2] = 7
    _rewrite_label(nnunet_dataset, "case_001", array=label)
    assert re.search(r"labelsTr/case_001\.nii\.gz: label values \[7\] are not declared in dataset\.json "
                     r"\(found in 4 voxels; declared: \[0, 1\]\)", only_problem(inspect(nnunet_dataset), "case_001"))


def test_negative_labels_without_dataset_json(paired_dataset: Path) -> None:
    path = paired_dataset / "labels" / "case_000.nii.gz"
    label = io.read_volume(path)
    io.write_volume(Volume(label.array.astype(np.int16) - 1, label.geometry), path)
    assert re.search(r"label holds negative values \[-1\], expected class values >= 0",
                     only_problem(inspect(paired_dataset), "case_000"))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_image(nnunet_dataset: Path, bad: float) -> None:
    path = nnunet_dataset / "imagesTr" / "case_000_0000.nii.gz"
    image = io.read_volume(path)
    array = image.array.astype(np.float32)
    array[0, 0, :2] = bad
    io.write_volume(Volume(array, image.geometry), path)
    assert re.search(r"imagesTr/case_000_0000\.nii\.gz: image holds 2 NaN/Inf voxels, expected finite values",
                     only_problem(inspect(nnunet_dataset), "case_000"))


def test_four_d_image_where_3d_expected(nnunet_dataset: Path) -> None:
    path = nnunet_dataset / "imagesTr" / "case_001_0000.nii.gz"
    geometry = Geometry((24, 20, 4, 2), (0.8, 0.9, 3.0, 1.0), (0.0,) * 4, tuple(np.eye(4).ravel().tolist()))
    io.write_volume(Volume(np.zeros((2, 4, 20, 24), np.int16), geometry), path)
    assert re.search(r"imagesTr/case_001_0000\.nii\.gz: image is 4D \(size 24×20×4×2\), expected 2D or 3D",
                     only_problem(inspect(nnunet_dataset), "case_001"))


def test_four_d_label_where_3d_expected(nnunet_dataset: Path) -> None:
    geometry = Geometry((24, 20, 4, 2), (0.8, 0.9, 3.0, 1.0), (0.0,) * 4, tuple(np.eye(4).ravel().tolist()))
    io.write_volume(Volume(np.zeros((2, 4, 20, 24), np.uint8), geometry),
                    nnunet_dataset / "labelsTr" / "case_001.nii.gz")
    assert re.search(r"labelsTr/case_001\.nii\.gz: label is 4D \(size 24×20×4×2\), expected 2D or 3D",
                     only_problem(inspect(nnunet_dataset), "case_001"))


def test_duplicate_case_ids_in_labels(paired_dataset: Path) -> None:
    label = io.read_volume(paired_dataset / "labels" / "case_001.nii.gz")
    io.write_volume(label, paired_dataset / "labels" / "case_001.nrrd")
    assert re.search(r"case case_001: .*labels: duplicate case id: 2 label files "
                     r"\(case_001\.nii\.gz, case_001\.nrrd\), expected one", only_problem(inspect(paired_dataset), "case_001"))


def test_duplicate_case_ids_in_images(paired_dataset: Path) -> None:
    shutil.copy(paired_dataset / "images" / "case_000.nii.gz", paired_dataset / "images" / "case_000.mha")
    assert re.search(r"duplicate case id: 2 image files for channel 0 \(case_000\.mha, case_000\.nii\.gz\), "
                     r"expected one", only_problem(inspect(paired_dataset), "case_000"))


def test_dataset_json_not_valid_json(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "dataset.json").write_text('{\n  "labels": {"background": 0,}\n}')
    with pytest.raises(DatasetError,
                       match=r"dataset\.json: not valid JSON \(line 2, column 30: Expecting property name"):
        data.discover_dataset(nnunet_dataset)


@pytest.mark.parametrize("field", ["labels", "channel_names", "file_ending"])
def test_dataset_json_lacks_a_field(nnunet_dataset: Path, field: str) -> None:
    meta = json.loads((nnunet_dataset / "dataset.json").read_text())
    del meta[field]
    (nnunet_dataset / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=rf"dataset\.json: required field '{field}' is missing") as info:
        data.discover_dataset(nnunet_dataset)
    assert info.value.exit_code == 3


@pytest.mark.parametrize("labels,message", [
    ({"background": 0, "liver": "one"}, r"label 'liver' has value 'one', expected an integer"),
    ({"liver": 1}, r"'labels' declares no background \(value 0\), found values \[1\]"),
    (["background"], r"field 'labels' must map names to integers, found list"),
])
def test_dataset_json_bad_labels(nnunet_dataset: Path, labels, message: str) -> None:
    meta = json.loads((nnunet_dataset / "dataset.json").read_text())
    (nnunet_dataset / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    with pytest.raises(DatasetError, match=message):
        data.discover_dataset(nnunet_dataset)


def test_region_labels_count_as_their_values(nnunet_dataset: Path) -> None:
    meta = json.loads((nnunet_dataset / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    (nnunet_dataset / "dataset.json").write_text(json.dumps(meta))
    assert data.discover_dataset(nnunet_dataset).labels == {"background": 0, "whole": 2, "core": 2}


@pytest.mark.parametrize("make,message", [
    (lambda root: None, r"no such folder, expected a dataset folder"),
    (lambda root: root.write_text("x"), r"not a folder, expected a dataset folder"),
    (lambda root: root.mkdir(), r"no dataset layout found \(expected dataset\.json with imagesTr/ and labelsTr/, "
                                r"or images/ and labels/\)"),
])
def test_not_a_dataset(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "thing"
    make(root)
    with pytest.raises(DatasetError, match=message):
        data.discover_dataset(root)


def test_missing_labels_folder_is_fatal(paired_dataset: Path) -> None:
    shutil.rmtree(paired_dataset / "labels")
    dataset = data.discover_dataset(paired_dataset)
    assert dataset.problems[0].fatal
    with pytest.raises(InputError, match=r"paired/labels: folder missing, expected labels/ next to images/"):
        data.inspect_dataset(dataset)


def test_missing_labelstr_folder_is_fatal(nnunet_dataset: Path) -> None:
    shutil.rmtree(nnunet_dataset / "labelsTr")
    with pytest.raises(InputError, match=r"labelsTr: folder missing, expected labelsTr/ next to dataset\.json"):
        inspect(nnunet_dataset)


def test_empty_images_folder_is_fatal(nnunet_dataset: Path) -> None:
    for path in (nnunet_dataset / "imagesTr").iterdir():
        path.unlink()
    for path in (nnunet_dataset / "labelsTr").iterdir():
        path.unlink()
    with pytest.raises(InputError, match=r"Dataset001_Tiny: no cases found"):
        inspect(nnunet_dataset)


# ----------------------------------------------------------------------------- default skip vs --strict


def test_strict_makes_a_discovery_problem_fatal(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case case_001: .*image without label") as info:
        inspect(nnunet_dataset, strict=True)
    assert info.value.hint is None


def test_strict_makes_a_case_problem_fatal(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "imagesTr" / "case_000_0000.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match=r"case case_000: .*empty file") as info:
        inspect(nnunet_dataset, strict=True)
    assert info.value.exit_code == 3 and "skipped" in info.value.hint


def test_load_case_raises_the_problem(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "labelsTr" / "case_000.nii.gz").write_bytes(b"")
    dataset = data.discover_dataset(nnunet_dataset)
    with pytest.raises(InputError, match=r"case_000\.nii\.gz: cannot read label: empty file"):
        data.load_case(dataset.cases[0], dataset)


def test_iter_cases_keeps_voxels_only_when_asked(nnunet_dataset: Path) -> None:
    dataset = data.discover_dataset(nnunet_dataset)
    [(case, info), _] = list(data.iter_cases(dataset))
    assert case.case_id == info.case_id == "case_000"
    assert case.label.array.dtype == np.int16 and case.channels[0].array.dtype == np.int16
    counts = dict(zip(*np.unique(case.label.array, return_counts=True)))
    assert info.label_counts == {int(k): int(v) for k, v in counts.items()}
    assert info.intensity_range == (float(case.channels[0].array.min()), float(case.channels[0].array.max()))
    assert [c for c, _ in data.iter_cases(dataset, keep=False)] == [None, None]


def test_track_sees_every_case(nnunet_dataset: Path) -> None:
    seen = []

    def track(items, description):
        seen.append(description)
        return items

    data.inspect_dataset(data.discover_dataset(nnunet_dataset), track=track)
    assert seen == ["reading cases"]


@pytest.mark.parametrize("dtype,low,high", [(np.uint8, 0, 5), (np.int16, -3, 4), (np.int32, -70000, 70000),
                                            (np.float32, -2, 3)])
def test_value_counts_match_unique(dtype, low: int, high: int, monkeypatch) -> None:
    monkeypatch.setattr(integrity, "_CHUNK", 1000)  # several chunks
    array = np.random.default_rng(3).integers(low, high, size=(7, 30, 40)).astype(dtype)
    values, counts = np.unique(array, return_counts=True)
    assert integrity.value_counts(array) == {int(v): int(n) for v, n in zip(values, counts)}


def test_fingerprint_changes_with_the_files(nnunet_dataset: Path) -> None:
    before = data.fingerprint(data.discover_dataset(nnunet_dataset))
    assert before == data.fingerprint(data.discover_dataset(nnunet_dataset))
    (nnunet_dataset / "labelsTr" / "case_001.nii.gz").unlink()
    (nnunet_dataset / "imagesTr" / "case_001_0000.nii.gz").unlink()
    assert data.fingerprint(data.discover_dataset(nnunet_dataset)) != before

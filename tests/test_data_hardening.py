"""labelaudit.data on hostile or unusual datasets: mistyped dataset.json fields, RGB images, MSD's 4D images,
unprintable file names and dataset names that are paths. Every command sees the same decision."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from labelaudit import data, io
from labelaudit.errors import DatasetError
from labelaudit.synth import SynthConfig, write_synth_dataset
from labelaudit.types import Geometry, Volume


def rewrite_json(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is ...:
            meta.pop(key, None)
        else:
            meta[key] = value
    (root / "dataset.json").write_text(json.dumps(meta))


# ----------------------------------------------------------------------------- dataset.json field types

@pytest.mark.parametrize("changes,message", [
    ({"labels": 3}, r"field 'labels' must map names to integers, found int"),
    ({"labels": "background"}, r"field 'labels' must map names to integers, found str"),
    ({"labels": {"background": 0, "liver": {"value": 1}}},
     r"label 'liver' has value \{'value': 1\}, expected an integer"),
    ({"labels": {"0": "background", "1": 5.5}}, r"label '1' has value 5\.5, expected an integer"),
    ({"channel_names": "CT"}, r"field 'channel_names': expected an object such as \{\"0\": \"CT\"\}, found 'CT'"),
    ({"channel_names": 1}, r"field 'channel_names': expected an object .*, found 1"),
    ({"channel_names": ["CT"]}, r"field 'channel_names': expected an object .*, found a list"),
    ({"channel_names": None}, r"field 'channel_names': expected an object .*, found None"),
    ({"channel_names": {"CT": "0"}}, r"field 'channel_names': key 'CT' is not a channel index, expected \"0\", \"1\""),
    ({"channel_names": {"0": 1}}, r"field 'channel_names\.0': expected a string, found 1"),
    ({"channel_names": ..., "modality": "MR"}, r"field 'modality': expected an object .*, found 'MR'"),
    ({"file_ending": 5}, r"field 'file_ending': expected one of '\.nii\.gz', '\.nii', .*, found 5"),
    ({"file_ending": None}, r"field 'file_ending': expected one of .*, found None"),
    ({"file_ending": ".bmp"}, r"field 'file_ending': expected one of .*'\.tiff', found '\.bmp'"),
    ({"numTraining": "2"}, r"field 'numTraining': expected an integer of at least 0, found '2'"),
    ({"numTraining": -1}, r"field 'numTraining': expected an integer of at least 0, found -1"),
    ({"numTraining": True}, r"field 'numTraining': expected an integer of at least 0, found True"),
    ({"name": 7}, r"field 'name': expected a string, found 7"),
    ({"file_ending": ..., "training": "all"}, r"field 'training': expected a list, found 'all'"),
])
def test_mistyped_dataset_json_field_is_a_dataset_error(nnunet_dataset: Path, changes: dict, message: str) -> None:
    rewrite_json(nnunet_dataset, **changes)
    with pytest.raises(DatasetError, match=rf"dataset\.json: {message}") as info:
        data.discover_dataset(nnunet_dataset)
    assert info.value.exit_code == 3


@pytest.mark.parametrize("changes", [{"channel_names": "CT"}, {"labels": 3}, {"channel_names": ..., "modality": 4}])
def test_mistyped_field_exits_3_in_every_command(cli, nnunet_dataset: Path, tmp_path: Path, changes: dict) -> None:
    """The fuzz finding: these were AttributeErrors ('str' object has no attribute 'items'), exit 70."""
    rewrite_json(nnunet_dataset, **changes)
    for args in (("inspect", nnunet_dataset), ("corrupt", nnunet_dataset, tmp_path / "noisy")):
        result = cli(*args)
        assert result.exit_code == 3, (args, result.output)
        assert "dataset.json: " in result.stderr and "has no attribute" not in result.output


def test_paired_layout_reads_only_labels(paired_dataset: Path) -> None:
    (paired_dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "class_1": 1},
                                                             "channel_names": "whatever", "name": 3}))
    assert data.discover_dataset(paired_dataset).labels == {"background": 0, "class_1": 1}


# ----------------------------------------------------------------------------- RGB images

def _rgb_dataset(root: Path, rgb_cases: tuple[int, ...]) -> Path:
    """A paired 2D PNG dataset; the cases in `rgb_cases` have RGB images."""
    import SimpleITK as sitk

    config = SynthConfig(cases=2, size=(40, 36, 1), spacing=(1.0, 1.0, 1.0), two_d=True)
    root = write_synth_dataset(root, config, layout="paired", file_ending=".png")
    for i in rgb_cases:
        path = root / "images" / f"case_00{i}.png"
        grey = io.read_volume(path).array.astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(np.stack([grey, grey // 2, grey // 3], axis=-1), isVector=True),
                        str(path))
    return root


RGB = r"RGB image \(3 values per pixel\), expected one: convert it to greyscale or split the channels into " \
      r"_0000/_0001/_0002 files"


def test_rgb_image_is_a_case_problem(tmp_path: Path) -> None:
    root = _rgb_dataset(tmp_path / "rgb", (1,))
    summary = data.inspect_dataset(data.discover_dataset(root))
    assert [c.case_id for c in summary.cases] == ["case_000"] and list(summary.dataset.skipped) == ["case_001"]
    assert re.search(r"case case_001: \S*case_001\.png: " + RGB, str(summary.dataset.skipped["case_001"][0]))


def test_inspect_fit_and_score_agree_on_rgb(cli, tmp_path: Path, make_run) -> None:
    root = _rgb_dataset(tmp_path / "rgb", (1,))
    inspect = cli("inspect", root)
    assert inspect.exit_code == 0 and "1 cases read, 1 skipped" in inspect.stdout
    assert re.search(RGB, inspect.stderr)
    strict = cli("inspect", "--strict", root)
    assert strict.exit_code == 3 and re.search(RGB, strict.stderr)

    run_dir = make_run(tmp_path / "run", root)
    scored = cli("score", root, "--model", run_dir, "--out", tmp_path / "audit", "--device", "cpu")
    assert scored.exit_code == 0, scored.output
    assert (tmp_path / "audit" / "maps" / "case_000_noise.nii.gz").is_file()
    assert not (tmp_path / "audit" / "maps" / "case_001_noise.nii.gz").exists()
    scored = cli("score", root, "--model", run_dir, "--out", tmp_path / "audit2", "--device", "cpu", "--strict")
    assert scored.exit_code == 3 and re.search(RGB, scored.stderr)


def test_fit_on_rgb_only_exits_3_before_training(cli, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    root = _rgb_dataset(tmp_path / "rgb", (0, 1))
    result = cli("fit", root, "--out", tmp_path / "run", "--epochs", "1", "--device", "cpu")
    assert result.exit_code == 3, result.output  # was: trained to the end, then exit 4
    assert "no readable case to train on" in result.stderr


# ----------------------------------------------------------------------------- MSD 4D images

def _msd_dataset(root: Path, volumes: int = 2, declared: int = 2) -> Path:
    """MSD's layout: one 4D NIfTI per case in imagesTr (no _0000), `modality` and `training`, no file_ending."""
    import SimpleITK as sitk

    config = SynthConfig(cases=2, size=(24, 20, 4), spacing=(0.8, 0.9, 3.0), channels=volumes, modality="MR")
    root = write_synth_dataset(root, config)
    for case in ("case_000", "case_001"):
        files = [root / "imagesTr" / f"{case}_{c:04d}.nii.gz" for c in range(volumes)]
        four = sitk.JoinSeries([sitk.ReadImage(str(f)) for f in files])
        sitk.WriteImage(four, str(root / "imagesTr" / f"{case}.nii.gz"))
        for f in files:
            f.unlink()
    (root / "dataset.json").write_text(json.dumps({
        "name": "BrainTumour", "tensorImageSize": "4D", "modality": {str(i): f"MR{i}" for i in range(declared)},
        "labels": {"0": "background", "1": "tumour"}, "numTraining": 2,
        "training": [{"image": f"./imagesTr/case_00{i}.nii.gz", "label": f"./labelsTr/case_00{i}.nii.gz"}
                     for i in range(2)]}))
    return root


def test_msd_4d_image_is_split_into_channels(tmp_path: Path) -> None:
    root = _msd_dataset(tmp_path / "Task01_BrainTumour")
    dataset = data.discover_dataset(root)
    assert [r.case_id for r in dataset.cases] == ["case_000", "case_001"] and dataset.num_channels == 2
    assert dataset.problems == [] and dataset.channel_names == {"0": "MR0", "1": "MR1"}
    summary = data.inspect_dataset(dataset)
    assert [c.channels for c in summary.cases] == [2, 2] and summary.cases[0].size == (24, 20, 4)
    case = data.load_case(dataset.cases[0], dataset)
    four = io.read_volume(dataset.cases[0].image_paths[0])
    for t, channel in enumerate(case.channels):
        assert channel.geometry.differences(case.label.geometry) == []
        np.testing.assert_array_equal(channel.array, four.array[t])
    assert case.image_slices().shape == (4, 2, 20, 24)
    assert not np.array_equal(case.channels[0].array, case.channels[1].array)


def test_msd_4d_image_with_the_wrong_number_of_volumes(tmp_path: Path) -> None:
    root = _msd_dataset(tmp_path / "Task01_BrainTumour", volumes=3, declared=2)
    dataset = data.discover_dataset(root)
    assert dataset.cases == [] and sorted(dataset.skipped) == ["case_000", "case_001"]
    assert re.search(r"case case_000: \S*imagesTr/case_000\.nii\.gz: a 4D image with 3 volumes, but channel_names "
                     r"declares 2 channels", str(dataset.skipped["case_000"][0]))


def test_msd_4d_dataset_is_inspected_and_scored(cli, tmp_path: Path, make_run) -> None:
    root = _msd_dataset(tmp_path / "Task01_BrainTumour")
    result = cli("inspect", "--strict", root)
    assert result.exit_code == 0, result.output
    assert "2 cases read" in result.stdout
    run_dir = make_run(tmp_path / "run", root, in_channels=2)
    result = cli("score", root, "--model", run_dir, "--out", tmp_path / "audit", "--device", "cpu", "--strict")
    assert result.exit_code == 0, result.output
    noise = io.read_volume(tmp_path / "audit" / "maps" / "case_001_noise.nii.gz")
    assert noise.geometry.differences(io.read_volume(root / "labelsTr" / "case_001.nii.gz").geometry) == []


def test_a_4d_file_where_one_3d_channel_is_declared_stays_a_problem(nnunet_dataset: Path) -> None:
    geometry = Geometry((24, 20, 4, 2), (0.8, 0.9, 3.0, 1.0), (0.0,) * 4, tuple(np.eye(4).ravel().tolist()))
    io.write_volume(Volume(np.zeros((2, 4, 20, 24), np.int16), geometry),
                    nnunet_dataset / "imagesTr" / "case_001_0000.nii.gz")
    summary = data.inspect_dataset(data.discover_dataset(nnunet_dataset))
    assert "image is 4D (size 24×20×4×2), expected 2D or 3D" in str(summary.dataset.skipped["case_001"][0])


# ----------------------------------------------------------------------------- unprintable file names

@pytest.mark.parametrize("bad", ["case\n002", "case\x1b[31m002", "case\u202e002", "case\u2028002"])
def test_control_character_in_a_file_name_is_refused_by_repr(cli, nnunet_dataset: Path, bad: str) -> None:
    (nnunet_dataset / "imagesTr" / "case_000_0000.nii.gz").rename(nnunet_dataset / "imagesTr" / f"{bad}_0000.nii.gz")
    (nnunet_dataset / "labelsTr" / "case_000.nii.gz").rename(nnunet_dataset / "labelsTr" / f"{bad}.nii.gz")
    dataset = data.discover_dataset(nnunet_dataset)
    assert [r.case_id for r in dataset.cases] == ["case_001"] and list(dataset.skipped) == [repr(bad)]
    assert all("holds a control or invisible character, expected a printable name: rename the file" in str(p)
               for p in dataset.skipped[repr(bad)])
    result = cli("inspect", nnunet_dataset)
    assert result.exit_code == 0 and "1 cases read, 1 skipped" in result.stdout
    assert repr(f"{bad}_0000.nii.gz") in result.stderr and repr(f"{bad}.nii.gz") in result.stderr
    assert bad not in result.output  # never raw
    strict = cli("inspect", "--strict", nnunet_dataset)
    assert strict.exit_code == 3 and bad not in strict.output


# ----------------------------------------------------------------------------- dataset names

@pytest.mark.parametrize("name,safe", [
    ("/abs/path", "_abs_path"), ("../../x", "_.._x"), ("..", "Dataset001_Tiny"), (".", "Dataset001_Tiny"),
    ("", "Dataset001_Tiny"), ("Brain Tumour [v2]", "Brain_Tumour_v2_"), ("Dataset001_Tiny", "Dataset001_Tiny"),
    ("..\\..\\win", "_.._win"), ("ok.v1.", "ok.v1"),
])
def test_dataset_name_is_one_safe_folder_name(nnunet_dataset: Path, name: str, safe: str) -> None:
    rewrite_json(nnunet_dataset, name=name)
    assert data.discover_dataset(nnunet_dataset).name == safe


def test_folder_names_dot_and_dotdot_give_a_real_name(nnunet_dataset: Path, monkeypatch) -> None:
    rewrite_json(nnunet_dataset, name=...)
    monkeypatch.chdir(nnunet_dataset / "imagesTr")
    assert data.discover_dataset(Path("..")).name == "Dataset001_Tiny"
    monkeypatch.chdir(nnunet_dataset)
    assert data.discover_dataset(Path(".")).name == "Dataset001_Tiny"


def test_score_default_output_stays_in_the_working_folder(cli, nnunet_dataset: Path, tmp_path: Path, make_run,
                                                          monkeypatch) -> None:
    rewrite_json(nnunet_dataset, name="../../escaped")
    run_dir = make_run(tmp_path / "run", nnunet_dataset)
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    result = cli("score", nnunet_dataset, "--model", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (work / "audits" / "_.._escaped" / "cases.csv").is_file()
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "a" / "escaped").exists()

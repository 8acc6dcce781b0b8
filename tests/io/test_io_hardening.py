"""labelaudit.io under failure: truncated inputs are refused, short writes never land under their final names,
and any legal file name can be written."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from labelaudit import io
from labelaudit.errors import ImageReadError, OutputError
from labelaudit.io import atomic, nifti
from labelaudit.types import Geometry, Volume


@pytest.fixture
def volume() -> Volume:
    geometry = Geometry((30, 20, 10), (0.8, 0.9, 3.0), (-5.0, 2.5, 7.0), tuple(np.eye(3).ravel().tolist()))
    array = np.random.default_rng(0).integers(0, 1000, geometry.shape).astype(np.int16)
    return Volume(array, geometry)


# ----------------------------------------------------------------------------- truncated inputs

@pytest.mark.parametrize("keep", [200, 30, 5])
def test_gzip_cut_short_of_the_header_is_truncated_not_zero_filled(tmp_path: Path, volume: Volume, keep: int) -> None:
    """200 bytes of gzip decompress to less than the 544 bytes io reads for a header: still refused."""
    path = io.write_volume(volume, tmp_path / "x.nii.gz")
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ImageReadError, match=r"x\.nii\.gz: cannot read image \(truncated file: ") as info:
        io.read_volume(path)
    assert info.value.exit_code == 3 and info.value.path == path


def test_uncompressed_nifti_shorter_than_its_header(tmp_path: Path, volume: Volume) -> None:
    path = io.write_volume(volume, tmp_path / "x.nii")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"truncated file: holds 200 bytes, less than a NIfTI header \(348 bytes"):
        io.read_volume(path)


def test_complete_tiny_nifti_is_read(tmp_path: Path) -> None:
    """A whole file shorter than the 544 bytes io reads for a header is fine (one voxel: 352 + 1 bytes)."""
    one = Volume(np.array([[[7]]], np.uint8), Geometry((1, 1, 1), (1.0, 1.0, 1.0), (0.0,) * 3,
                                                         tuple(np.eye(3).ravel().tolist())))
    for ending in (".nii", ".nii.gz"):
        assert io.read_volume(io.write_volume(one, tmp_path / f"one{ending}")).array.item() == 7


def test_inspect_strict_exits_3_naming_the_truncated_file(cli, nnunet_dataset: Path) -> None:
    path = nnunet_dataset / "imagesTr" / "case_001_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    result = cli("inspect", "--strict", nnunet_dataset)
    assert result.exit_code == 3, result.output
    assert re.search(r"case case_001: \S*case_001_0000\.nii\.gz: cannot read image: truncated file", result.stderr)
    lenient = cli("inspect", nnunet_dataset)
    assert lenient.exit_code == 0 and "1 cases read, 1 skipped" in lenient.stdout


def test_gzip_that_is_not_gzip_is_left_to_itk(tmp_path: Path) -> None:
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b" + b"not really" * 40)
    with pytest.raises(ImageReadError) as info:
        io.read_volume(tmp_path / "junk.nii.gz")
    assert "truncated" not in info.value.reason


# ----------------------------------------------------------------------------- short writes (disk full)

def _short_writer(monkeypatch, keep: float) -> list[str]:
    """Make SimpleITK write only the first `keep` share of every file, and return normally (as on ENOSPC)."""
    import SimpleITK as sitk

    real = sitk.WriteImage
    written: list[str] = []

    def short(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        for path in [Path(name)] + ([Path(name).with_suffix(".raw")] if name.endswith(".mhd") else []):
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * keep)])
            written.append(path.name)

    monkeypatch.setattr(sitk, "WriteImage", short)
    return written


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_short_write_is_an_output_error_and_leaves_nothing(tmp_path: Path, volume: Volume, monkeypatch,
                                                           ending: str, keep: float) -> None:
    written = _short_writer(monkeypatch, keep)
    target = tmp_path / "maps" / f"case_000_noise{ending}"
    with pytest.raises(OutputError, match=rf"case_000_noise{re.escape(ending)}: cannot write image: the written file "
                                          r"is incomplete \(.+\); disk full\? \(.* MB free on /") as info:
        io.write_like(volume.array.astype(np.float32), volume.geometry, target)
    assert written and info.value.exit_code == 3
    assert list((tmp_path / "maps").iterdir()) == []  # no truncated map under its final name, no temp file


def test_short_write_keeps_the_previous_file(tmp_path: Path, volume: Volume, monkeypatch) -> None:
    target = io.write_volume(volume, tmp_path / "label.nii.gz")
    before = target.read_bytes()
    _short_writer(monkeypatch, 0.6)
    with pytest.raises(OutputError, match=r"of \d+ bytes"):
        io.write_volume(Volume(volume.array + 1, volume.geometry), target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["label.nii.gz"]


def test_short_png_write(tmp_path: Path, monkeypatch) -> None:
    _short_writer(monkeypatch, 0.5)
    geometry = Geometry((14, 10), (0.5, 0.75), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(OutputError, match=r"a\.png: cannot write image: the written file is incomplete \(cannot read "
                                          r"it back"):
        io.write_volume(Volume(np.arange(140, dtype=np.uint8).reshape(10, 14), geometry), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_written_nifti_must_end_its_gzip_stream(tmp_path: Path, volume: Volume) -> None:
    """Reading forgives a missing gzip trailer once the voxels are there; a fresh write must be whole."""
    path = io.write_volume(volume, tmp_path / "x.nii.gz")
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(path.read_bytes()[:-8])  # the voxels, without CRC and size
    assert nifti.written_problem(path, volume.array.size) == f"{len(raw)} of {len(raw)} bytes, gzip stream cut off"
    np.testing.assert_array_equal(io.read_volume(path).array, volume.array)


def test_oserror_while_writing_is_an_output_error(tmp_path: Path) -> None:
    target = tmp_path / "out" / "summary.json"

    with pytest.raises(OutputError, match=r"summary\.json: cannot write \(No space left on device\)") as info:
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("{")
            raise OSError(28, os.strerror(28))
    assert info.value.exit_code == 3 and list(target.parent.iterdir()) == []


# ----------------------------------------------------------------------------- long names

LONG = "c" * 240


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha", ".mhd", ".png"])
def test_a_name_of_the_longest_legal_length_can_be_written(tmp_path: Path, volume: Volume, ending: str) -> None:
    """255 characters (the usual file-system limit), ending included; the MHD pair needs no longer temp names."""
    stem = "c" * (255 - len(ending))
    if ending == ".png":
        volume = Volume(volume.array[0].astype(np.uint16), Geometry((30, 20), (0.8, 0.9), (0.0, 0.0),
                                                                    (1.0, 0.0, 0.0, 1.0)))
    path = io.write_volume(volume, tmp_path / f"{stem}{ending}")
    assert len(path.name) == 255
    np.testing.assert_array_equal(io.read_volume(path).array, volume.array)


def test_atomic_text_with_a_240_character_name(tmp_path: Path) -> None:
    path = atomic.write_text(tmp_path / f"{LONG}.json", "{}\n")
    assert path.read_text() == "{}\n" and [p.name for p in tmp_path.iterdir()] == [f"{LONG}.json"]


def test_atomic_keeps_ordinary_permissions(tmp_path: Path) -> None:
    path = atomic.write_text(tmp_path / "a.txt", "x")
    assert path.stat().st_mode & 0o777 == atomic.FILE_MODE


def test_a_name_past_the_file_system_limit_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"cannot write \(File name too long\)"):
        atomic.write_text(tmp_path / ("c" * 300 + ".json"), "{}")


def test_corrupt_with_a_240_character_case_id(cli, tmp_path: Path) -> None:
    from labelaudit.synth import SynthConfig, write_synth_dataset

    root = write_synth_dataset(tmp_path / "Dataset003_Long", SynthConfig(cases=2, size=(24, 20, 4)))
    case = "k" * 240
    (root / "imagesTr" / "case_000_0000.nii.gz").rename(root / "imagesTr" / f"{case}_0000.nii.gz")
    (root / "labelsTr" / "case_000.nii.gz").rename(root / "labelsTr" / f"{case}.nii.gz")
    result = cli("corrupt", root, tmp_path / "noisy", "--rate", "1", "--level", "case", "--seed", "0")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "noisy" / "labelsTr" / f"{case}.nii.gz").is_file()

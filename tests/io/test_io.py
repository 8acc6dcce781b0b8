"""labelaudit.io.image: every format round-trips voxels and geometry; unreadable files fail with the reason."""

from __future__ import annotations

import gzip
import locale
import math
import re
from pathlib import Path

import numpy as np
import pytest

from labelaudit import io
from labelaudit.errors import ImageReadError, InputError
from labelaudit.synth import SynthConfig, rotated_direction, synth_case, synth_geometry
from labelaudit.types import Geometry, Volume, from_slices, to_slices

CONFIG = SynthConfig(size=(12, 10, 4), spacing=(0.7, 1.3, 2.9), origin=(-12.5, 30.25, 7.125), rotation_deg=23.0)


@pytest.fixture
def case() -> tuple[Volume, Volume]:
    """(int16 CT image, uint8 label) on a rotated, anisotropic, offset grid."""
    channels, label = synth_case(CONFIG, np.random.default_rng(0))
    return channels[0], label


def assert_same_grid(expected: Geometry, found: Geometry, origin_atol: float = 1e-4) -> None:
    assert found.size == expected.size
    assert np.allclose(found.spacing, expected.spacing, rtol=1e-6, atol=0)
    assert np.allclose(found.origin, expected.origin, rtol=0, atol=origin_atol)
    assert np.allclose(found.direction, expected.direction, rtol=0, atol=1e-6)
    assert expected.differences(found) == []


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_3d_round_trip_keeps_voxels_and_geometry(tmp_path: Path, case, ending: str) -> None:
    image, label = case
    for volume, name in ((image, "image"), (label, "label")):
        path = io.write_volume(volume, tmp_path / f"{name}{ending}")
        back = io.read_volume(path)
        assert back.array.dtype == volume.array.dtype
        np.testing.assert_array_equal(back.array, volume.array)
        assert_same_grid(volume.geometry, back.geometry)
        assert_same_grid(volume.geometry, io.read_geometry(path))  # header-only read agrees
    # atomic writes leave no temporary files behind (MetaImage: exactly the .mhd + .raw pair)
    expected = {f"image{ending}", f"label{ending}"} | ({"image.raw", "label.raw"} if ending == ".mhd" else set())
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_mhd_rewrite_replaces_the_pair(tmp_path: Path, case) -> None:
    image, _ = case
    path = tmp_path / "image.mhd"
    io.write_volume(image, path)
    io.write_volume(Volume(image.array + 1, image.geometry), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.mhd", "image.raw"]
    np.testing.assert_array_equal(io.read_volume(path).array, image.array + 1)


@pytest.mark.parametrize("ending,dtype", [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint16),
                                          (".tiff", np.float32)])
def test_2d_round_trip(tmp_path: Path, ending: str, dtype) -> None:
    rng = np.random.default_rng(1)
    array = (rng.random((10, 14)) * 200).astype(dtype)
    geometry = Geometry((14, 10), (0.5, 0.75), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    path = io.write_volume(Volume(array, geometry), tmp_path / f"slice{ending}")
    back = io.read_volume(path)
    assert back.geometry.ndim == 2 and back.geometry.size == (14, 10)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, array)
    assert np.allclose(back.geometry.spacing, (0.5, 0.75), rtol=1e-6)  # PNG pHYs and TIFF resolution keep it
    assert back.geometry.slicing_axis() == -1 and back.to_slices().shape == (1, 10, 14)


def test_png_write_converts_small_integers_and_refuses_negative(tmp_path: Path) -> None:
    geometry = Geometry((3, 2), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    path = io.write_volume(Volume(np.array([[0, 1, 2], [3, 4, 5]], np.int16), geometry), tmp_path / "a.png")
    assert io.read_volume(path).array.dtype == np.uint8
    with pytest.raises(InputError, match=r"b\.png: PNG holds only unsigned 8/16-bit integers, got int16"):
        io.write_volume(Volume(np.array([[-1, 0, 0], [0, 0, 0]], np.int16), geometry), tmp_path / "b.png")


def test_rgb_png_reads_as_three_channels(tmp_path: Path) -> None:
    import SimpleITK as sitk

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 1] = 7
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png"))
    volumes = io.read_volumes(tmp_path / "rgb.png")
    assert [v.array.shape for v in volumes] == [(4, 5)] * 3
    assert [int(v.array.max()) for v in volumes] == [0, 7, 0]
    with pytest.raises(ImageReadError, match=r"rgb\.png: .*expected a single-component image, found 3 components"):
        io.read_volume(tmp_path / "rgb.png")


def test_dicom_series_folder_round_trip(tmp_path: Path, case, dicom_writer) -> None:
    image, _ = case
    encoding = locale.getpreferredencoding(False)
    folder = dicom_writer(image, tmp_path / "series")
    assert locale.getpreferredencoding(False) == encoding  # GDCM's writer must not leave the locale at "C"
    assert io.is_dicom_dir(folder) and io.is_image_path(folder)
    assert not io.is_dicom_dir(tmp_path)
    back = io.read_volume(folder)
    np.testing.assert_array_equal(back.array, image.array)
    assert_same_grid(image.geometry, back.geometry)


def test_dicom_folder_problems(tmp_path: Path, case, dicom_writer) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match=r"empty: cannot read image \(folder holds no DICOM series, expected one"):
        io.read_volume(empty)
    image, _ = case
    two = tmp_path / "two"
    dicom_writer(image, two / "a", series_uid="1.2.3.1")
    dicom_writer(image, two / "b", series_uid="1.2.3.2")
    for path in (two / "b").iterdir():
        path.rename(two / f"b_{path.name}")
    for path in (two / "a").iterdir():
        path.rename(two / f"a_{path.name}")
    with pytest.raises(ImageReadError, match=r"folder holds 2 DICOM series, expected one"):
        io.read_volume(two)


def test_nifti_origin_moves_less_than_the_tolerance(tmp_path: Path) -> None:
    """NIfTI stores the origin in float32: ~4e-7 mm off, which must not count as a mismatch."""
    geometry = Geometry((4, 3, 2), (0.7, 0.7, 2.5), (-123.4567891, 87.6543219, 301.123457),
                        rotated_direction(23.0))
    back = io.read_volume(io.write_volume(Volume(np.zeros((2, 3, 4), np.int16), geometry), tmp_path / "x.nii.gz"))
    moved = max(abs(a - b) for a, b in zip(back.geometry.origin, geometry.origin))
    assert 0 < moved < 1e-4
    assert geometry.differences(back.geometry) == []


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_nan_and_inf_survive_reading(tmp_path: Path, case, ending: str) -> None:
    """ITK's NIfTI reader turns NaN/Inf into 0; io puts them back so that the check can see them."""
    image, _ = case
    array = image.array.astype(np.float32)
    array[0, 1, 2], array[3, 4, 5], array[2, 0, 0] = np.nan, np.inf, -np.inf
    back = io.read_volume(io.write_volume(Volume(array, image.geometry), tmp_path / f"f{ending}")).array
    np.testing.assert_array_equal(back, array)  # NaN == NaN here
    assert np.isnan(back[0, 1, 2]) and back[3, 4, 5] == np.inf and back[2, 0, 0] == -np.inf


def test_big_endian_nifti_with_nan(tmp_path: Path) -> None:
    nibabel = pytest.importorskip("nibabel")
    array = np.arange(60, dtype=">f8").reshape(3, 4, 5)
    array[1, 2, 3] = np.nan
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), tmp_path / "be.nii")
    back = io.read_volume(tmp_path / "be.nii").array  # ITK: numpy (z, y, x) = nibabel's (x, y, z) reversed
    assert np.isnan(back[3, 2, 1]) and np.isnan(back).sum() == 1


def test_write_like_puts_array_on_the_reference_grid(tmp_path: Path, case) -> None:
    image, _ = case
    noise = np.linspace(0, 1, image.array.size, dtype=np.float32).reshape(image.array.shape)
    back = io.read_volume(io.write_like(noise, image.geometry, tmp_path / "noise.nrrd"))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, noise)
    assert_same_grid(image.geometry, back.geometry)


def test_four_d_array_is_written_and_read_as_4d(tmp_path: Path) -> None:
    geometry = Geometry((5, 4, 3, 2), (1.0, 1.0, 2.0, 1.0), (0.0,) * 4, tuple(np.eye(4).ravel().tolist()))
    path = io.write_volume(Volume(np.ones((2, 3, 4, 5), np.float32), geometry), tmp_path / "t.nii.gz")
    back = io.read_volumes(path)
    assert len(back) == 1 and back[0].geometry.ndim == 4 and back[0].array.shape == (2, 3, 4, 5)


# ----------------------------------------------------------------------------- unreadable files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"nope\.nii\.gz: cannot read image \(file not found\)"):
        io.read_volume(tmp_path / "nope.nii.gz")
    with pytest.raises(ImageReadError, match=r"file not found"):
        io.read_geometry(tmp_path / "nope.nii.gz")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(ImageReadError,
                       match=r"empty\.nrrd: cannot read image \(empty file \(0 bytes\), expected an image"):
        io.read_volume(tmp_path / "empty.nrrd")


@pytest.mark.parametrize("name,content,reason", [
    ("junk.nii.gz", b"hello, not an image" * 10, r"Unable to determine ImageIO reader"),
    ("junk.nrrd", b"NRRD0004\ntype: short\n", r"hit end of header"),
])
def test_garbage_file_reason_is_short_and_specific(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        io.read_volume(tmp_path / name)
    assert info.value.path == tmp_path / name
    assert ".cxx" not in info.value.reason and "0x" not in info.value.reason  # no C++ locations or addresses


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
def test_truncated_nifti_is_unreadable_not_zero_filled(tmp_path: Path, case, ending: str) -> None:
    """ITK reads a truncated NIfTI silently (missing voxels become 0); io must refuse it."""
    image, _ = case
    path = io.write_volume(image, tmp_path / f"image{ending}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match=r"truncated file: expected \d+ bytes from its header, found"):
        io.read_volume(path)


def test_multi_member_gzip_nifti_is_accepted(tmp_path: Path, case) -> None:
    """A valid file whose gzip trailer does not give the full size (two members) is checked, not refused."""
    image, _ = case
    raw = io.write_volume(image, tmp_path / "image.nii").read_bytes()
    path = tmp_path / "two.nii.gz"
    path.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    np.testing.assert_array_equal(io.read_volume(path).array, image.array)


# ----------------------------------------------------------------------------- names and the slicing axis


@pytest.mark.parametrize("name,stem,ending", [
    ("case_0000.nii.gz", "case_0000", ".nii.gz"), ("a.b.NII.GZ", "a.b", ".NII.GZ"), ("x.nrrd", "x", ".nrrd"),
    ("y.tiff", "y", ".tiff"), ("notes.txt", "notes", ".txt"),
])
def test_split_ending(name: str, stem: str, ending: str) -> None:
    assert io.split_ending(name) == (stem, ending)


def _grid(spacing: tuple[float, ...]) -> Geometry:
    ndim = len(spacing)
    return Geometry(tuple(range(5, 5 + ndim)), spacing, (0.0,) * ndim, tuple(np.eye(ndim).ravel().tolist()))


@pytest.mark.parametrize("spacing,axis", [
    ((0.8, 0.8, 3.0), 0),  # thick ITK z slices -> numpy axis 0
    ((5.0, 1.0, 1.0), 2),  # largest spacing along ITK x -> numpy axis 2
    ((1.0, 4.0, 1.0), 1),
    ((1.0, 1.0, 1.0), 0),  # tie: the last ITK axis, numpy axis 0
    ((2.0, 2.0, 1.0), 1),  # tie between ITK x and y: the later one, y -> numpy axis 1
    ((1.0, 1.0, 1.0 + 1e-7), 0),  # within tolerance counts as a tie
])
def test_slicing_axis(spacing, axis: int) -> None:
    grid = _grid(spacing)
    assert grid.slicing_axis() == axis
    array = np.arange(math.prod(grid.shape)).reshape(grid.shape)
    stack = to_slices(array, grid)
    assert stack.shape[0] == grid.shape[axis]
    np.testing.assert_array_equal(stack[1], np.take(array, 1, axis=axis))
    np.testing.assert_array_equal(from_slices(stack, grid), array)


def test_slicing_axis_of_a_volume_read_from_disk(tmp_path: Path) -> None:
    """A sagittal stack (largest spacing along ITK x) is sliced along numpy axis 2, with in-plane spacing (z, y)."""
    geometry = Geometry((3, 6, 7), (4.0, 0.6, 0.9), (1.0, 2.0, 3.0), rotated_direction(10.0))
    array = np.arange(3 * 6 * 7, dtype=np.int16).reshape(7, 6, 3)
    back = io.read_volume(io.write_volume(Volume(array, geometry), tmp_path / "sag.nrrd"))
    assert back.geometry.slicing_axis() == 2
    assert back.to_slices().shape == (3, 7, 6)
    np.testing.assert_array_equal(back.to_slices()[2], array[:, :, 2])
    assert back.geometry.in_plane_spacing() == pytest.approx((0.9, 0.6))


def test_synth_geometry_is_rotated_and_anisotropic() -> None:
    geometry = synth_geometry(CONFIG)
    assert geometry.direction != tuple(np.eye(3).ravel().tolist())
    assert len(set(geometry.spacing)) == 3 and all(o != 0 for o in geometry.origin)


@pytest.mark.parametrize("field,value,message", [
    ("size", (12, 10, 5), r"size 12×10×4 vs 12×10×5"),
    ("spacing", (0.7, 1.3, 3.0), r"spacing 0\.7×1\.3×2\.9 vs 0\.7×1\.3×3 mm"),
    ("origin", (-12.5, 30.25, 7.135), r"origin .* mm"),
    ("direction", rotated_direction(24.0), r"direction "),
])
def test_geometry_differences(field: str, value, message: str) -> None:
    grid = synth_geometry(CONFIG)
    other = Geometry(**{**grid.__dict__, field: value})
    found = grid.differences(other)
    assert len(found) == 1 and re.search(message, found[0]), found


def test_geometry_differences_names_tiny_origin_shifts_distinctly() -> None:
    grid = Geometry((2, 2, 2), (1.0, 1.0, 1.0), (1000.0, 0.0, 0.0), tuple(np.eye(3).ravel().tolist()))
    other = Geometry((2, 2, 2), (1.0, 1.0, 1.0), (1000.002, 0.0, 0.0), tuple(np.eye(3).ravel().tolist()))
    [found] = grid.differences(other)
    assert "1000×" in found and "1000.002×" in found  # not "1000 vs 1000"
    assert grid.differences(Geometry((2, 2, 2), (1.0, 1.0, 1.0), (1000.0 + 4e-7, 0.0, 0.0),
                                     tuple(np.eye(3).ravel().tolist()))) == []

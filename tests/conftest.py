"""Shared fixtures: tiny synthetic datasets (rotated, anisotropic grids), a CLI runner, a DICOM writer."""

from __future__ import annotations

import locale
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from labelaudit.synth import SynthConfig, write_synth_dataset
from labelaudit.types import Volume

#: Small enough for fast tests, still anisotropic (largest spacing along ITK z), offset and rotated.
TINY = SynthConfig(cases=2, size=(24, 20, 4), spacing=(0.8, 0.9, 3.0))


@pytest.fixture
def tiny_config() -> SynthConfig:
    return TINY


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    """A 2-case nnU-Net v2 dataset (dataset.json, imagesTr/case_00N_0000.nii.gz, labelsTr/)."""
    return write_synth_dataset(tmp_path / "Dataset001_Tiny", TINY)


@pytest.fixture
def paired_dataset(tmp_path: Path) -> Path:
    """A 2-case paired dataset (images/case_00N.nii.gz, labels/case_00N.nii.gz), no dataset.json."""
    return write_synth_dataset(tmp_path / "paired", TINY, layout="paired")


@pytest.fixture
def cli() -> Callable:
    """Run the CLI in-process: `cli("inspect", path)` -> typer.testing.Result (.exit_code, .stdout, .stderr)."""
    from typer.testing import CliRunner

    from labelaudit.cli import app

    runner = CliRunner()

    def invoke(*args: object):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def write_dicom_series(volume: Volume, folder: Path, series_uid: str = "1.2.826.0.1.3680043.2.1125.1") -> Path:
    """Write a 3D integer `volume` as a DICOM series, one file per slice, with its geometry.

    After SimpleITK's "Dicom Series From Array" example: position and orientation tags per slice.
    """
    from labelaudit.io.image import to_sitk

    folder.mkdir(parents=True, exist_ok=True)
    saved = {category: locale.setlocale(category) for category in (locale.LC_CTYPE, locale.LC_NUMERIC)}
    try:
        return _write_slices(to_sitk(volume), volume, folder, series_uid)
    finally:  # GDCM's writer switches the process locale to "C" (ASCII) and leaves it so
        for category, value in saved.items():
            locale.setlocale(category, value)


def _write_slices(image, volume: Volume, folder: Path, series_uid: str) -> Path:
    import SimpleITK as sitk

    d = volume.geometry.direction
    orientation = "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    now = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        position = "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (("0008|0021", now[0]), ("0008|0031", now[1]), ("0008|0060", "CT"),
                           ("0020|000e", series_uid), ("0020|0037", orientation), ("0020|0032", position),
                           ("0020|0013", str(k + 1)), ("0008|0018", f"{series_uid}.{k + 1}"),
                           ("0018|0050", f"{volume.geometry.spacing[2]:.6f}")):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(plane)
    return folder


@pytest.fixture
def dicom_writer() -> Callable[[Volume, Path], Path]:
    """`write_dicom_series(volume, folder)`: a tiny DICOM series folder for reading tests."""
    return write_dicom_series

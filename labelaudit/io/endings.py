"""Image file endings: which names io reads and writes, knowing multi-dot endings (stdlib only)."""

from __future__ import annotations

from pathlib import Path

#: File endings read as images, longest first so that ".nii.gz" wins over ".gz".
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff", ".dcm")
#: Endings that can hold float32 voxels with full geometry.
FLOAT_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: Endings a dataset.json `file_ending` may name (a DICOM series is a folder, not an ending).
DATASET_ENDINGS = tuple(e for e in IMAGE_ENDINGS if e != ".dcm")


def split_ending(path: Path | str) -> tuple[str, str]:
    """Split a file name into (stem, ending), knowing multi-dot endings such as `.nii.gz`."""
    name = Path(path).name
    lower = name.lower()
    for ending in IMAGE_ENDINGS:
        if lower.endswith(ending):
            return name[: -len(ending)], name[-len(ending):]
    return Path(name).stem, Path(name).suffix

"""Discover cases in a dataset folder (nnU-Net v2 / MSD layout, paired folders), check and load them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from . import io
from .errors import DatasetError, ImageReadError, InputError
from .types import Case, CaseRef, Dataset, Geometry, Problem, Volume

T = TypeVar("T")
Track = Callable[[Iterable[T], str], Iterable[T]]

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
NNUNET_REQUIRED = ("labels", "file_ending")


def no_track(items: Iterable[T], description: str = "") -> Iterable[T]:
    return items


# ----------------------------------------------------------------------------- discovery

def discover_dataset(root: Path | str) -> Dataset:
    """Find the layout of `root` and the files of every case; problems are collected, not raised.

    Raises DatasetError only when the folder cannot be a dataset at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder", hint="DATASET is a folder with imagesTr/+labelsTr/ or images/+labels/")
    if (root / "dataset.json").exists() or (root / "imagesTr").is_dir():
        dataset = _discover_nnunet(root)
    elif (root / "images").is_dir():
        dataset = _discover_paired(root)
    else:
        raise DatasetError(
            f"{root}: no dataset layout found (expected dataset.json with imagesTr/ and labelsTr/, "
            "or images/ and labels/)",
            hint="see 'Datasets it reads' in the README",
        )
    if not dataset.cases and not any(p.fatal for p in dataset.problems):
        dataset.problems.append(Problem("no cases found", path=root, fatal=True))
    return dataset


def read_dataset_json(path: Path) -> dict:
    """Parse dataset.json; a syntax error or a missing field is a DatasetError naming it."""
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    for name in NNUNET_REQUIRED:
        if name not in meta and not (name == "file_ending" and "training" in meta):  # MSD omits file_ending
            raise DatasetError(f"{path}: required field '{name}' is missing",
                               hint="nnU-Net v2 dataset.json needs channel_names, labels, numTraining, file_ending")
    if "channel_names" not in meta and "modality" not in meta:
        raise DatasetError(f"{path}: required field 'channel_names' is missing",
                           hint="nnU-Net v2 dataset.json needs channel_names, labels, numTraining, file_ending")
    return meta


def parse_labels(raw: dict, path: Path) -> dict[str, int]:
    """nnU-Net v2 maps name -> value; MSD maps "value" -> name. Return name -> int value."""
    labels: dict[str, int] = {}
    for key, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            labels[str(key)] = value
        elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):  # nnU-Net regions
            labels[str(key)] = max(value)
        elif str(key).lstrip("-").isdigit():
            labels[str(value)] = int(key)
        else:
            raise DatasetError(f"{path}: label '{key}' has value {value!r}, expected an integer")
    if 0 not in labels.values():
        raise DatasetError(f"{path}: 'labels' declares no background (value 0)")
    return labels


def _discover_nnunet(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    if not meta_path.exists():
        raise DatasetError(f"{meta_path}: missing", hint="nnU-Net layout needs dataset.json next to imagesTr/")
    meta = read_dataset_json(meta_path)
    labels = parse_labels(meta["labels"], meta_path)
    ending = meta.get("file_ending", ".nii.gz")
    channel_names = meta.get("channel_names") or meta.get("modality")
    dataset = Dataset(root=root, name=meta.get("name") or root.name, layout="nnunet", file_ending=ending,
                      labels=labels, channel_names={str(k): str(v) for k, v in (channel_names or {}).items()})
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            dataset.problems.append(Problem("folder missing", path=folder, fatal=True))
    if any(p.fatal for p in dataset.problems):
        return dataset
    _collect_cases(dataset, images_dir, labels_dir, ending)
    expected_channels = len(dataset.channel_names or {}) or None
    if expected_channels:
        for ref in list(dataset.cases):
            if len(ref.image_paths) != expected_channels:
                _skip(dataset, ref.case_id, Problem(
                    f"expected {expected_channels} channel files (_0000…), found {len(ref.image_paths)}",
                    case_id=ref.case_id, path=ref.image_paths[0] if ref.image_paths else images_dir))
    return dataset


def _discover_paired(root: Path) -> Dataset:
    labels_dir = root / "labels"
    dataset = Dataset(root=root, name=root.name, layout="paired", file_ending="", labels=None, channel_names=None)
    meta_path = root / "dataset.json"
    if meta_path.exists():
        meta = read_dataset_json(meta_path)
        dataset.labels = parse_labels(meta["labels"], meta_path)
    if not labels_dir.is_dir():
        dataset.problems.append(Problem("folder missing", path=labels_dir, fatal=True))
        return dataset
    _collect_cases(dataset, root / "images", labels_dir, None)
    endings = {io.split_ending(r.label_path)[1] for r in dataset.cases if r.label_path}
    dataset.file_ending = sorted(endings)[0] if endings else ".nii.gz"
    return dataset


def _entries(folder: Path, ending: str | None) -> dict[str, list[Path]]:
    """Map case-file stem -> paths, for image files (and DICOM series folders) in `folder`."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if io.is_dicom_dir(path):
                found.setdefault(path.name, []).append(path)
            continue
        stem, suffix = io.split_ending(path)
        if suffix.lower() not in io.IMAGE_ENDINGS or suffix.lower() == ".dcm":
            continue
        if ending is not None and suffix.lower() != ending.lower():
            continue
        found.setdefault(stem, []).append(path)
    return found


def _collect_cases(dataset: Dataset, images_dir: Path, labels_dir: Path, ending: str | None) -> None:
    image_entries = _entries(images_dir, ending)
    label_entries = _entries(labels_dir, ending)
    channels: dict[str, dict[int, Path]] = {}
    for stem, paths in image_entries.items():
        match = _CHANNEL_SUFFIX.match(stem)
        case_id, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if dataset.layout == "paired" and not match and stem in label_entries:
            case_id, channel = stem, 0
        if len(paths) > 1 or channel in channels.get(case_id, {}):
            dup = paths + ([channels[case_id][channel]] if channel in channels.get(case_id, {}) else [])
            _skip(dataset, case_id, Problem(
                f"duplicate case id: {len(dup)} image files for channel {channel} ({', '.join(p.name for p in dup)})",
                case_id=case_id, path=images_dir))
            continue
        channels.setdefault(case_id, {})[channel] = paths[0]
    for stem, paths in label_entries.items():
        if len(paths) > 1:
            _skip(dataset, stem, Problem(
                f"duplicate case id: {len(paths)} label files ({', '.join(p.name for p in paths)})",
                case_id=stem, path=labels_dir))
    for case_id in sorted(set(channels) | set(label_entries)):
        if case_id in dataset.skipped:
            continue
        found = channels.get(case_id, {})
        label = label_entries.get(case_id, [None])[0]
        if not found:
            _skip(dataset, case_id, Problem("label without image", case_id=case_id, path=label))
            continue
        ordered = [found[k] for k in sorted(found)]
        if sorted(found) != list(range(len(found))):
            _skip(dataset, case_id, Problem(
                f"channel files are not numbered 0..{len(found) - 1} (found {sorted(found)})",
                case_id=case_id, path=ordered[0]))
            continue
        if label is None:
            _skip(dataset, case_id, Problem("image without label", case_id=case_id, path=ordered[0]))
            continue
        dataset.cases.append(CaseRef(case_id, tuple(ordered), label))


def _skip(dataset: Dataset, case_id: str, problem: Problem) -> None:
    dataset.problems.append(problem)
    dataset.skipped.setdefault(case_id, []).append(problem)
    dataset.cases = [r for r in dataset.cases if r.case_id != case_id]


# ----------------------------------------------------------------------------- checking and loading

@dataclass
class CaseInfo:
    """What `inspect` reports for one readable case."""

    case_id: str
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    channels: int
    label_counts: dict[int, int]
    intensity_range: tuple[float, float]
    slicing_axis: int
    num_slices: int


def check_case(ref: CaseRef, declared: Iterable[int] | None = None,
               keep: bool = True) -> tuple[Case | None, CaseInfo | None, list[Problem]]:
    """Read a case and check it; returns (case or None, info or None, problems).

    With `keep=False` the voxels are dropped after checking (for `inspect` on large data).
    """
    problems: list[Problem] = []
    channels: list[Volume] = []
    for path in ref.image_paths:
        try:
            volumes = io.read_volumes(path)
        except ImageReadError as exc:
            problems.append(Problem(exc.reason if exc.reason else str(exc), ref.case_id, path))
            continue
        channels.extend(volumes)
    label = None
    if ref.label_path is not None:
        try:
            label = io.read_volume(ref.label_path)
        except ImageReadError as exc:
            problems.append(Problem(exc.reason, ref.case_id, ref.label_path))
    if problems:
        return None, None, problems

    for path, volume in zip(_channel_paths(ref, channels), channels):
        problems += _check_image(ref.case_id, path, volume)
    grid = channels[0].geometry
    for path, volume in zip(_channel_paths(ref, channels)[1:], channels[1:]):
        diff = grid.differences(volume.geometry)
        if diff:
            problems.append(Problem(f"channel grid does not match channel 0 ({'; '.join(diff)})", ref.case_id, path))
    if label is not None:
        problems += _check_label(ref.case_id, ref.label_path, label, grid, declared)
    if problems:
        return None, None, problems

    assert label is not None
    values, counts = np.unique(label.array, return_counts=True)
    low = min(float(np.min(c.array)) for c in channels)
    high = max(float(np.max(c.array)) for c in channels)
    info = CaseInfo(ref.case_id, label.geometry.size, label.geometry.spacing, len(channels),
                    {int(v): int(n) for v, n in zip(values, counts)}, (low, high),
                    label.geometry.slicing_axis(), label.to_slices().shape[0])
    label = Volume(label.array.astype(np.int16 if values.max() < 2**15 else np.int32, copy=False), label.geometry)
    case = Case(ref.case_id, tuple(channels), label) if keep else None
    return case, info, []


def _channel_paths(ref: CaseRef, channels: list[Volume]) -> list[Path]:
    if len(channels) == len(ref.image_paths):
        return list(ref.image_paths)
    return [ref.image_paths[0]] * len(channels)  # components of one vector image


def _check_image(case_id: str, path: Path, volume: Volume) -> list[Problem]:
    problems = []
    if volume.geometry.ndim > 3:
        problems.append(Problem(f"image is {volume.geometry.ndim}D (size {volume.geometry.size}), expected 2D or 3D",
                                case_id, path))
        return problems
    if volume.array.size == 0:
        return [Problem("image has no voxels", case_id, path)]
    if np.issubdtype(volume.array.dtype, np.floating):
        bad = _count_nonfinite(volume.array)
        if bad:
            problems.append(Problem(f"image holds {bad} NaN/Inf voxels, expected finite values", case_id, path))
    return problems


def _count_nonfinite(array: np.ndarray) -> int:
    flat = array.reshape(-1)
    step = 1 << 22  # chunked so that the boolean mask stays small on a large CT
    return int(sum((~np.isfinite(flat[i:i + step])).sum() for i in range(0, flat.size, step)))


def _check_label(case_id: str, path: Path, label: Volume, grid: Geometry,
                 declared: Iterable[int] | None) -> list[Problem]:
    if label.geometry.ndim > 3:
        return [Problem(f"label is {label.geometry.ndim}D (size {label.geometry.size}), expected 2D or 3D",
                        case_id, path)]
    problems = []
    diff = grid.differences(label.geometry)
    if diff:
        problems.append(Problem(f"label grid does not match image ({'; '.join(diff)})", case_id, path))
    array = label.array
    if np.issubdtype(array.dtype, np.floating):
        if _count_nonfinite(array):
            return problems + [Problem("label holds NaN/Inf values, expected integers", case_id, path)]
        fractional = array != np.round(array)
        if fractional.any():
            example = float(array[fractional].flat[0])
            return problems + [Problem(
                f"label holds non-integer values (e.g. {example:g} in {int(fractional.sum())} voxels), "
                "expected integer class values", case_id, path)]
    values = np.unique(array)
    if declared is not None:
        allowed = set(int(v) for v in declared)
        extra = sorted(int(v) for v in values if int(v) not in allowed)
        if extra:
            problems.append(Problem(
                f"label values {extra} are not declared in dataset.json (declared: {sorted(allowed)})", case_id, path))
    elif values.min() < 0:
        problems.append(Problem(f"label holds negative values {sorted(int(v) for v in values if v < 0)}",
                                case_id, path))
    return problems


def iter_cases(dataset: Dataset, strict: bool = False, track: Track = no_track,
               keep: bool = True) -> Iterator[tuple[Case | None, CaseInfo]]:
    """Load and check every case; problem cases are skipped (recorded in `dataset`) or, with `strict`, fatal."""
    raise_fatal(dataset, strict)
    declared = dataset.labels.values() if dataset.labels else None
    for ref in track(list(dataset.cases), "reading cases"):
        case, info, problems = check_case(ref, declared, keep=keep)
        if problems:
            if strict:
                raise InputError(_problem_list(problems), hint="without --strict, problem cases are skipped")
            dataset.problems.extend(problems)
            dataset.skipped[ref.case_id] = problems
            continue
        assert info is not None
        yield case, info


def raise_fatal(dataset: Dataset, strict: bool) -> None:
    """Raise the dataset's discovery problems when they are fatal (or any, under `strict`)."""
    fatal = [p for p in dataset.problems if p.fatal or strict]
    if fatal:
        raise InputError(_problem_list(fatal),
                         hint=None if strict else "fix the dataset layout; see 'Datasets it reads' in the README")


def _problem_list(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


def load_case(ref: CaseRef, dataset: Dataset) -> Case:
    """Read one case, raising InputError when it has problems."""
    case, _, problems = check_case(ref, dataset.labels.values() if dataset.labels else None)
    if problems:
        raise InputError(_problem_list(problems))
    assert case is not None
    return case


def fingerprint(dataset: Dataset) -> str:
    """A cheap content fingerprint: case ids, file names, sizes and mtimes (not voxel hashes)."""
    digest = hashlib.sha256()
    for ref in dataset.cases:
        digest.update(ref.case_id.encode())
        for path in ref.files:
            stat = path.stat() if path.is_file() else None
            digest.update(f"{path.name}:{stat.st_size if stat else 'dir'}".encode())
    return digest.hexdigest()[:16]


@dataclass
class DatasetSummary:
    """What `inspect` prints: the readable cases and every problem found."""

    dataset: Dataset
    cases: list[CaseInfo] = field(default_factory=list)

    @property
    def label_counts(self) -> dict[int, int]:
        total: dict[int, int] = {}
        for info in self.cases:
            for value, count in info.label_counts.items():
                total[value] = total.get(value, 0) + count
        return dict(sorted(total.items()))


def inspect_dataset(dataset: Dataset, strict: bool = False, track: Track = no_track) -> DatasetSummary:
    """Check every case of `dataset` without keeping voxels; returns the summary."""
    summary = DatasetSummary(dataset)
    for _, info in iter_cases(dataset, strict=strict, track=track, keep=False):
        summary.cases.append(info)
    return summary

"""Discover cases in a dataset folder (nnU-Net v2 / MSD layout, paired folders), check and load them."""

from __future__ import annotations

import hashlib
import json
import math
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
        what = "not a folder" if root.exists() else "no such folder"
        raise DatasetError(f"{root}: {what}, expected a dataset folder",
                           hint="DATASET is a folder with imagesTr/ + labelsTr/ or images/ + labels/")
    if (root / "imagesTr").is_dir():
        dataset = _discover_nnunet(root)
    elif (root / "images").is_dir():
        dataset = _discover_paired(root)
    elif (root / "dataset.json").exists():
        dataset = _discover_nnunet(root)  # reports the missing imagesTr/
    else:
        raise DatasetError(
            f"{root}: no dataset layout found (expected dataset.json with imagesTr/ and labelsTr/, "
            "or images/ and labels/)",
            hint="see 'Datasets it reads' in the README",
        )
    if not dataset.cases and not any(p.fatal for p in dataset.problems):
        dataset.problems.append(Problem("no cases found", path=root, fatal=True))
    return dataset


def read_dataset_json(path: Path, layout: str = "nnunet") -> dict:
    """Parse dataset.json; a syntax error or a missing field is a DatasetError naming it.

    nnU-Net v2 needs `labels`, `channel_names` and `file_ending`; MSD's `modality` stands in for
    `channel_names` and its `training` list for `file_ending` (always .nii.gz). A paired layout
    only reads `labels` from it.
    """
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                           hint="fix the syntax, e.g. with `python -m json.tool dataset.json`") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    hint = "nnU-Net v2 dataset.json needs channel_names, labels, numTraining, file_ending"
    if "labels" not in meta:
        raise DatasetError(f"{path}: required field 'labels' is missing", hint=hint)
    if not isinstance(meta["labels"], dict):
        raise DatasetError(f"{path}: field 'labels' must map names to integers, found {type(meta['labels']).__name__}",
                           hint=hint)
    if layout == "nnunet":
        if "channel_names" not in meta and "modality" not in meta:
            raise DatasetError(f"{path}: required field 'channel_names' is missing", hint=hint)
        if "file_ending" not in meta and "training" not in meta:  # MSD has no file_ending: .nii.gz
            raise DatasetError(f"{path}: required field 'file_ending' is missing", hint=hint)
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
        raise DatasetError(f"{path}: 'labels' declares no background (value 0), found values "
                           f"{sorted(set(labels.values()))}")
    return labels


def _discover_nnunet(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    if not meta_path.exists():
        raise DatasetError(f"{meta_path}: missing", hint="nnU-Net layout needs dataset.json next to imagesTr/")
    meta = read_dataset_json(meta_path)
    labels = parse_labels(meta["labels"], meta_path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    channel_names = meta.get("channel_names") or meta.get("modality")
    dataset = Dataset(root=root, name=meta.get("name") or root.name, layout="nnunet", file_ending=ending,
                      labels=labels, channel_names={str(k): str(v) for k, v in (channel_names or {}).items()})
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            dataset.problems.append(Problem(f"folder missing, expected {folder.name}/ next to dataset.json",
                                            path=folder, fatal=True))
    if any(p.fatal for p in dataset.problems):
        return dataset
    _collect_cases(dataset, images_dir, labels_dir, ending)
    expected_channels = len(dataset.channel_names or {}) or None
    if expected_channels:
        for ref in list(dataset.cases):
            if len(ref.image_paths) != expected_channels:
                _skip(dataset, ref.case_id, Problem(
                    f"expected {expected_channels} channel files (_0000…, as channel_names declares), "
                    f"found {len(ref.image_paths)}",
                    case_id=ref.case_id, path=ref.image_paths[0] if ref.image_paths else images_dir))
    return dataset


def _discover_paired(root: Path) -> Dataset:
    labels_dir = root / "labels"
    dataset = Dataset(root=root, name=root.name, layout="paired", file_ending="", labels=None, channel_names=None)
    meta_path = root / "dataset.json"
    if meta_path.exists():
        meta = read_dataset_json(meta_path, layout="paired")
        dataset.labels = parse_labels(meta["labels"], meta_path)
    if not labels_dir.is_dir():
        dataset.problems.append(Problem("folder missing, expected labels/ next to images/", path=labels_dir,
                                        fatal=True))
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
    label_ending = ending or ".*"
    channels: dict[str, dict[int, Path]] = {}
    for stem, paths in image_entries.items():
        match = _CHANNEL_SUFFIX.match(stem)
        case_id, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if match and stem in label_entries and case_id not in label_entries:
            case_id, channel = stem, 0  # a single-channel case whose name ends in _NNNN (e.g. MSD, paired)
        previous = channels.get(case_id, {}).get(channel)
        if len(paths) > 1 or previous is not None:
            dup = paths + ([previous] if previous is not None else [])
            _skip(dataset, case_id, Problem(
                f"duplicate case id: {len(dup)} image files for channel {channel} "
                f"({', '.join(p.name for p in dup)}), expected one", case_id=case_id, path=images_dir))
            continue
        channels.setdefault(case_id, {})[channel] = paths[0]
    for stem, paths in label_entries.items():
        if len(paths) > 1:
            _skip(dataset, stem, Problem(
                f"duplicate case id: {len(paths)} label files ({', '.join(p.name for p in paths)}), expected one",
                case_id=stem, path=labels_dir))
    for case_id in sorted(set(channels) | set(label_entries)):
        if case_id in dataset.skipped:
            continue
        found = channels.get(case_id, {})
        label = label_entries.get(case_id, [None])[0]
        if not found:
            suffix = "_0000" if dataset.layout == "nnunet" else ""
            _skip(dataset, case_id, Problem(
                f"label without image: expected {images_dir / (case_id + suffix + label_ending)}, found none",
                case_id=case_id, path=label))
            continue
        ordered = [found[k] for k in sorted(found)]
        if sorted(found) != list(range(len(found))):
            _skip(dataset, case_id, Problem(
                f"channel files are not numbered 0..{len(found) - 1}: expected _0000…_{len(found) - 1:04d}, "
                f"found channels {sorted(found)}", case_id=case_id, path=ordered[0]))
            continue
        if label is None:
            _skip(dataset, case_id, Problem(
                f"image without label: expected {labels_dir / (case_id + label_ending)}, found none",
                case_id=case_id, path=ordered[0]))
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

    With `keep=False` the voxels are dropped after checking (for `inspect` on large data): each
    file is then read, checked and released in turn, so memory peaks at about two copies of the
    largest file (SimpleITK's buffer and numpy's), never a float copy of an integer image.
    """
    problems: list[Problem] = []
    channels: list[Volume] = []
    grid: Geometry | None = None
    low, high = math.inf, -math.inf
    for path in ref.image_paths:
        try:
            volumes = io.read_volumes(path)
        except ImageReadError as exc:
            problems.append(Problem(f"cannot read image: {exc.reason}", ref.case_id, path))
            continue
        while volumes:  # components of a vector (e.g. RGB) image are channels; popped so each can be freed
            volume = volumes.pop(0)
            found = _check_image(ref.case_id, path, volume)
            if not found and grid is None:
                grid = volume.geometry
            elif not found:
                diff = grid.differences(volume.geometry)
                if diff:
                    found.append(Problem(
                        f"channel grid does not match channel 0 {ref.image_paths[0].name} "
                        f"(channel 0 vs this: {'; '.join(diff)})", ref.case_id, path))
            if not found:
                lo, hi = _value_range(volume.array)
                low, high = min(low, lo), max(high, hi)
            problems += found
            channels.append(volume if keep else _header_only(volume))
            del volume

    label: Volume | None = None
    counts: dict[int, int] = {}
    if ref.label_path is not None:
        try:
            label = io.read_volume(ref.label_path)
        except ImageReadError as exc:
            problems.append(Problem(f"cannot read label: {exc.reason}", ref.case_id, ref.label_path))
        else:
            found, counts = _check_label(ref.case_id, ref.label_path, label, grid, declared)
            problems += found
            if found or not keep:
                label = _header_only(label)
            else:
                label = Volume(_as_integer_label(label.array, max(counts)), label.geometry)
    if problems or not channels:
        return None, None, problems

    geometry = label.geometry if label is not None else channels[0].geometry
    info = CaseInfo(ref.case_id, geometry.size, geometry.spacing, len(channels), counts, (low, high),
                    geometry.slicing_axis(), 1 if geometry.ndim < 3 else geometry.shape[geometry.slicing_axis()])
    case = Case(ref.case_id, tuple(channels), label) if keep else None
    return case, info, []


def _header_only(volume: Volume) -> Volume:
    """The same grid with a zero-strided stand-in array, so that checked voxels can be freed."""
    return Volume(np.broadcast_to(np.zeros((), volume.array.dtype), volume.array.shape), volume.geometry)


def _value_range(array: np.ndarray) -> tuple[float, float]:
    """(min, max) without a float copy: numpy reduces integer arrays in their own dtype."""
    if array.size == 0:
        return math.inf, -math.inf
    return float(np.min(array)), float(np.max(array))


def _as_integer_label(array: np.ndarray, largest: int) -> np.ndarray:
    """Labels as a signed integer dtype that torch and numpy index with (int16 unless values need more)."""
    dtype = np.int16 if largest < 2**15 else np.int32
    if array.dtype == dtype:
        return array
    return array.astype(dtype)


_CHUNK = 1 << 22  # voxels per chunk: temporary masks and casts stay ~4-32 MB on a large CT


def _chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        yield flat[start:start + _CHUNK]


def _count_nonfinite(array: np.ndarray) -> int:
    return int(sum(int((~np.isfinite(chunk)).sum()) for chunk in _chunks(array)))


def _value_counts(array: np.ndarray) -> dict[int, int]:
    """Voxel count of every value of an integer-valued label, chunked (np.unique would sort a full copy)."""
    if array.size == 0:
        return {}
    low, high = int(np.min(array)), int(np.max(array))
    if high - low < 1 << 16:
        total = np.zeros(high - low + 1, dtype=np.int64)
        for chunk in _chunks(array):
            total += np.bincount((chunk.astype(np.int64) - low), minlength=total.size)
        return {low + i: int(n) for i, n in enumerate(total) if n}
    counts: dict[int, int] = {}
    for chunk in _chunks(array):
        values, n = np.unique(chunk, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[int(v)] = counts.get(int(v), 0) + c
    return dict(sorted(counts.items()))


def _check_image(case_id: str, path: Path, volume: Volume) -> list[Problem]:
    geometry = volume.geometry
    if geometry.ndim > 3:
        return [Problem(f"image is {geometry.ndim}D (size {_fmt(geometry.size)}), expected 2D or 3D",
                        case_id, path)]
    if volume.array.size == 0:
        return [Problem(f"image has no voxels (size {_fmt(geometry.size)})", case_id, path)]
    if np.issubdtype(volume.array.dtype, np.floating):
        bad = _count_nonfinite(volume.array)
        if bad:
            return [Problem(f"image holds {bad} NaN/Inf voxels, expected finite values", case_id, path)]
    return []


def _check_label(case_id: str, path: Path, label: Volume, grid: Geometry | None,
                 declared: Iterable[int] | None) -> tuple[list[Problem], dict[int, int]]:
    """Problems of one label file and, when it has none, its voxel count per value."""
    geometry = label.geometry
    if geometry.ndim > 3:
        return [Problem(f"label is {geometry.ndim}D (size {_fmt(geometry.size)}), expected 2D or 3D",
                        case_id, path)], {}
    problems = []
    if grid is not None:
        diff = grid.differences(label.geometry)
        if diff:
            problems.append(Problem(f"label grid does not match the image (image vs label: {'; '.join(diff)})",
                                    case_id, path))
    array = label.array
    if array.size == 0:
        return problems + [Problem("label has no voxels", case_id, path)], {}
    if np.issubdtype(array.dtype, np.floating):
        bad = _count_nonfinite(array)
        if bad:
            return problems + [Problem(f"label holds {bad} NaN/Inf voxels, expected integer class values",
                                       case_id, path)], {}
        fractional, example = 0, 0.0
        for chunk in _chunks(array):
            mask = chunk != np.round(chunk)
            n = int(mask.sum())
            if n and not fractional:
                example = float(chunk[mask][0])
            fractional += n
        if fractional:
            return problems + [Problem(
                f"label holds non-integer values (e.g. {example:g} in {fractional} voxels), "
                "expected integer class values", case_id, path)], {}
    elif not np.issubdtype(array.dtype, np.integer):
        return problems + [Problem(f"label has voxel type {array.dtype}, expected integers", case_id, path)], {}
    counts = _value_counts(array)
    if declared is not None:
        allowed = sorted(set(int(v) for v in declared))
        extra = [v for v in counts if v not in allowed]
        if extra:
            problems.append(Problem(
                f"label values {extra} are not declared in dataset.json (found in "
                f"{sum(counts[v] for v in extra)} voxels; declared: {allowed})", case_id, path))
    elif min(counts) < 0:
        problems.append(Problem(f"label holds negative values {[v for v in counts if v < 0]}, "
                                "expected class values >= 0", case_id, path))
    return problems, counts


def _fmt(values: tuple) -> str:
    return "×".join(str(v) for v in values)


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
    """Read one case (voxels kept, labels as int16/int32), raising InputError when it has problems."""
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

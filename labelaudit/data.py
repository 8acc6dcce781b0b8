"""Discover cases in a dataset folder (nnU-Net v2 / MSD layout, paired folders), check and load them."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import io
from .errors import DatasetError, ImageReadError, InputError
from .formats.dataset_json import parse_labels, read_dataset_json
from .integrity import as_integer_label, check_image, check_label, header_only, value_range, vector_problem
from .types import Case, CaseRef, Dataset, Geometry, Problem, Volume

__all__ = ["no_track", "discover_dataset", "read_dataset_json", "parse_labels", "safe_name", "CaseInfo",
           "check_case", "iter_cases", "raise_fatal", "load_case", "fingerprint", "DatasetSummary",
           "inspect_dataset"]

T = TypeVar("T")
Track = Callable[[Iterable[T], str], Iterable[T]]

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$", re.DOTALL)
#: Unicode categories refused in file names: control (newline, escape), format (bidi overrides, zero-width),
#: line/paragraph separators, and surrogates (bytes that are not UTF-8). Each would reach CI output raw.
_UNPRINTABLE = ("Cc", "Cf", "Zl", "Zp", "Cs")


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


def safe_name(name: str) -> str:
    """`name` as one folder name: anything but A-Z a-z 0-9 . _ - becomes "_", no dot at either end (so never
    "." or ".."); "" when nothing is left. The same characters as fit's default run folder."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".")


def _dataset_name(root: Path, declared: str | None = None) -> str:
    """The dataset's name, safe for `audits/<name>`: dataset.json's `name`, else the folder's, else "dataset"."""
    for candidate in (declared or "", root.name, root.resolve().name):
        if safe := safe_name(candidate):
            return safe
    return "dataset"


def _discover_nnunet(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    if not meta_path.exists():
        raise DatasetError(f"{meta_path}: missing", hint="nnU-Net layout needs dataset.json next to imagesTr/")
    meta = read_dataset_json(meta_path)
    ending = meta.file_ending or ".nii.gz"
    dataset = Dataset(root=root, name=_dataset_name(root, meta.name), layout="nnunet", file_ending=ending,
                      labels=meta.labels, channel_names=meta.channel_names)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            dataset.problems.append(Problem(f"folder missing, expected {folder.name}/ next to dataset.json",
                                            path=folder, fatal=True))
    if any(p.fatal for p in dataset.problems):
        return dataset
    _collect_cases(dataset, images_dir, labels_dir, ending)
    expected = len(dataset.channel_names or {})
    for ref in list(dataset.cases):
        if not expected or len(ref.image_paths) == expected:
            continue
        volumes = _volumes_in_file(ref.image_paths[0]) if len(ref.image_paths) == 1 and expected > 1 else None
        if volumes == expected:  # MSD: one 4D file per case; the file stands once for each channel it holds
            dataset.cases[dataset.cases.index(ref)] = CaseRef(ref.case_id, ref.image_paths * expected, ref.label_path)
            continue
        message = (f"a 4D image with {volumes} volumes, but channel_names declares {expected} channels" if volumes
                   else f"expected {expected} channel files (_0000…, as channel_names declares), "
                        f"found {len(ref.image_paths)}")
        _skip(dataset, ref.case_id, Problem(message, case_id=ref.case_id,
                                            path=ref.image_paths[0] if ref.image_paths else images_dir))
    return dataset


def _volumes_in_file(path: Path) -> int | None:
    """How many 3D volumes a 4D image file holds along its 4th axis (header only); None if it is not 4D."""
    try:
        geometry = io.read_geometry(path)
    except ImageReadError:
        return None  # reading the case reports it
    return geometry.size[3] if geometry.ndim == 4 else None


def _discover_paired(root: Path) -> Dataset:
    labels_dir = root / "labels"
    dataset = Dataset(root=root, name=_dataset_name(root), layout="paired", file_ending="", labels=None,
                      channel_names=None)
    meta_path = root / "dataset.json"
    if meta_path.exists():
        dataset.labels = read_dataset_json(meta_path, layout="paired").labels
    if not labels_dir.is_dir():
        dataset.problems.append(Problem("folder missing, expected labels/ next to images/", path=labels_dir,
                                        fatal=True))
        return dataset
    _collect_cases(dataset, root / "images", labels_dir, None)
    endings = {io.split_ending(r.label_path)[1] for r in dataset.cases if r.label_path}
    dataset.file_ending = sorted(endings)[0] if endings else ".nii.gz"
    return dataset


def _entries(folder: Path, ending: str | None, refused: list[Path]) -> dict[str, list[Path]]:
    """Map case-file stem -> paths, for image files (and DICOM series folders) in `folder`.

    Names with unprintable characters go to `refused` instead.
    """
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if any(unicodedata.category(ch) in _UNPRINTABLE for ch in path.name):
            refused.append(path)
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
    refused: list[Path] = []
    image_entries = _entries(images_dir, ending, refused)
    label_entries = _entries(labels_dir, ending, refused)
    for path in refused:  # named with repr(): a newline or an escape sequence must not reach a terminal or CI log
        stem = io.split_ending(path)[0] if path.is_file() else path.name
        match = _CHANNEL_SUFFIX.match(stem) if path.parent == images_dir else None
        case_id = repr(match["case"] if match else stem)
        _skip(dataset, case_id, Problem(
            f"file name {path.name!r} holds a control or invisible character, expected a printable name: "
            "rename the file", case_id=case_id, path=path.parent))
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
    for path, uses in itertools.groupby(ref.image_paths):  # an MSD 4D file stands once for each channel
        try:
            volumes = io.read_volumes(path)
        except ImageReadError as exc:
            problems.append(Problem(f"cannot read image: {exc.reason}", ref.case_id, path))
            continue
        if len(volumes) > 1:
            problems.append(Problem(vector_problem(len(volumes)), ref.case_id, path))
            continue
        channels_here = len(list(uses))
        if channels_here > 1:
            volumes = _split_4d(volumes[0], channels_here)
            if isinstance(volumes, str):
                problems.append(Problem(volumes, ref.case_id, path))
                continue
        while volumes:  # popped so that each can be freed
            volume = volumes.pop(0)
            found = check_image(ref.case_id, path, volume)
            if not found and grid is None:
                grid = volume.geometry
            elif not found:
                diff = grid.differences(volume.geometry)
                if diff:
                    found.append(Problem(
                        f"channel grid does not match channel 0 {ref.image_paths[0].name} "
                        f"(channel 0 vs this: {'; '.join(diff)})", ref.case_id, path))
            if not found:
                lo, hi = value_range(volume.array)
                low, high = min(low, lo), max(high, hi)
            problems += found
            channels.append(volume if keep else header_only(volume))
            del volume

    label: Volume | None = None
    counts: dict[int, int] = {}
    if ref.label_path is not None:
        try:
            label = io.read_volume(ref.label_path)
        except ImageReadError as exc:
            problems.append(Problem(f"cannot read label: {exc.reason}", ref.case_id, ref.label_path))
        else:
            found, counts = check_label(ref.case_id, ref.label_path, label, grid, declared)
            problems += found
            if found or not keep:
                label = header_only(label)
            else:
                label = Volume(as_integer_label(label.array, max(counts)), label.geometry)
    if problems or not channels:
        return None, None, problems

    geometry = label.geometry if label is not None else channels[0].geometry
    info = CaseInfo(ref.case_id, geometry.size, geometry.spacing, len(channels), counts, (low, high),
                    geometry.slicing_axis(), 1 if geometry.ndim < 3 else geometry.shape[geometry.slicing_axis()])
    case = Case(ref.case_id, tuple(channels), label) if keep else None
    return case, info, []


def _split_4d(volume: Volume, count: int) -> list[Volume] | str:
    """The `count` 3D volumes along the 4th axis of an MSD image, or why it is not one."""
    g = volume.geometry
    if g.ndim != 4 or g.size[3] != count:
        return f"expected a 4D image with {count} volumes (one per channel), found size {'×'.join(map(str, g.size))}"
    grid = Geometry(g.size[:3], g.spacing[:3], g.origin[:3], tuple(g.direction[r * 4 + c] for r in range(3)
                                                                   for c in range(3)))
    return [Volume(volume.array[t], grid) for t in range(count)]


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
    """A cheap fingerprint of the cases' files: case ids, file names and sizes.

    No mtimes (a copy or a fresh checkout of the same data matches) and no voxel hashes (cheap on large data).
    """
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

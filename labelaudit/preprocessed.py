"""The preprocessed folder: every training case normalised once and kept on disk, the way nnU-Net keeps its own.

One entry per dataset folder and preprocessing settings, ROOT/<dataset-name>-<key>/ (ROOT: `fit --preprocessed
DIR`, by default .preprocessed/ beside the run folder):

    preprocessed.json     what was preprocessed, how, and from which files; written last, so it marks a complete entry
    c00000_image.npy      float32 (or float16) (S, C_in, h, w): one case's normalised, resampled image
    c00000_classes.npy    uint8 (uint16 beyond 256 classes) (S, h, w): its class indices
    ...

Training reads a slice at a time through np.load(mmap_mode="r"), mapping a file only for that read, so no
process holds every case and pages read once do not stay in its resident memory. An entry is reused while
its stamp (every case file's name, size and modification time) matches, and rebuilt in place otherwise.
A lock file beside the entry (ROOT/<entry>.lock) lets concurrent fits share it: a fit holds it shared while
it trains and exclusive while it (re)builds. stdlib + numpy only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .io.atomic import atomic_path, write_json
from .preprocess import LabelMap, Preprocessing
from .types import CaseRef

log = logging.getLogger(__name__)

PREPROCESSED_FORMAT = 1
MANIFEST = "preprocessed.json"


def entry_folder(root: Path, name: str, key: str) -> Path:
    """The entry of dataset `name` with settings `key` under `root` (a name that any file system accepts)."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name).strip(".") or "dataset"
    return Path(root) / f"{safe[:60]}-{key[:12]}"


def digest(data) -> str:
    """sha256 of `data` as canonical JSON: an entry's key (what and how) and stamp (which file contents)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def files_stamp(refs: Iterable[CaseRef]) -> str:
    """Every case file's name, size and modification time (a DICOM folder: its files'); a changed file changes it.

    Unlike run.json's dataset fingerprint (names and sizes, so that a copy matches), this sees a label fixed
    in place: an uncompressed label keeps its size when voxels change.
    """
    rows = []
    for ref in refs:
        for path in ref.files:
            paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            for p in paths:
                st = p.stat()
                rows.append([ref.case_id, str(p), st.st_size, st.st_mtime_ns])
    return digest(rows)


# ----------------------------------------------------------------------------- one case

@dataclass(frozen=True)
class PreparedCase:
    """One case of an entry, read a slice (or a window of one) at a time from its .npy files.

    shape: (S, C_in, h, w); foreground: the slices holding any non-background class (the sampler's
    oversampling pool, found while writing so that it never scans the labels).
    """

    case_id: str
    image_path: Path
    classes_path: Path
    shape: tuple[int, int, int, int]
    foreground: tuple[int, ...]

    @property
    def in_channels(self) -> int:
        return self.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of every slice."""
        return self.shape[2], self.shape[3]

    @property
    def slices(self) -> int:
        return self.shape[0]

    def label_slice(self, s: int) -> np.ndarray:
        """Class indices of slice s, (h, w) in the stored integer type."""
        return np.array(_open(self.classes_path)[s])

    def image_window(self, s: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """image[s, :, top:top+height, left:left+width] as float32 (C_in, <=height, <=width): cut at the slice's edge."""
        return np.array(_open(self.image_path)[s, :, top:top + height, left:left + width], dtype=np.float32)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole case in memory: image float32 (S, C_in, h, w), classes int64 (S, h, w)."""
        return (np.array(_open(self.image_path), dtype=np.float32),
                np.array(_open(self.classes_path), dtype=np.int64))

    def to_json(self, folder: Path) -> dict:
        return {"case_id": self.case_id, "image": self.image_path.name, "classes": self.classes_path.name,
                "shape": list(self.shape), "foreground": list(self.foreground)}

    @classmethod
    def from_json(cls, data: dict, folder: Path) -> PreparedCase:
        shape = tuple(int(v) for v in data["shape"])
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"case {data.get('case_id')!r}: shape {shape}")
        return cls(str(data["case_id"]), folder / _plain_name(data["image"]), folder / _plain_name(data["classes"]),
                   shape, tuple(int(s) for s in data["foreground"]))  # type: ignore[arg-type]

    def check(self) -> None:
        """ValueError unless both files exist with the recorded shapes (headers only, plus the file size)."""
        image, classes = _open(self.image_path), _open(self.classes_path)
        if image.shape != self.shape or classes.shape != (self.shape[0], *self.shape[2:]):
            raise ValueError(f"{self.image_path.name}: shape {image.shape}, recorded {self.shape}")


def _open(path: Path) -> np.ndarray:
    """A read-only memory map of a .npy file; unmapped when the caller drops it (its copy stays)."""
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the preprocessed case ({exc})",
                         hint="delete the preprocessed folder (see `fit --preprocessed`) and fit again") from exc


def _plain_name(name: object) -> str:
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        raise ValueError(f"file name {name!r}")
    return name


# ----------------------------------------------------------------------------- one entry

@dataclass(frozen=True)
class Preprocessed:
    """A complete entry: the fitted preprocessing, the label map and every readable case, as fit needs them.

    skipped: case id -> the problems that kept it out (as run.json records them); structure_prior_mm2:
    calibration's A0, from the raw labels; settings: what the key was made from (for people reading the file).
    """

    folder: Path
    key: str
    stamp: str
    preprocessing: Preprocessing
    label_map: LabelMap
    channel_names: tuple[str, ...]
    cases: tuple[PreparedCase, ...]
    image_dtype: str = "float32"
    skipped: dict[str, list[str]] = field(default_factory=dict)
    structure_prior_mm2: float | None = None
    settings: dict = field(default_factory=dict)

    def case(self, case_id: str) -> PreparedCase:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)

    def to_json(self) -> dict:
        return {"format": PREPROCESSED_FORMAT, "key": self.key, "stamp": self.stamp, "settings": self.settings,
                "image_dtype": self.image_dtype, "preprocessing": self.preprocessing.to_json(),
                "label_map": self.label_map.to_json(), "channel_names": list(self.channel_names),
                "structure_prior_mm2": self.structure_prior_mm2, "skipped": self.skipped,
                "cases": [c.to_json(self.folder) for c in self.cases]}

    @classmethod
    def from_json(cls, data: dict, folder: Path) -> Preprocessed:
        """ValueError, KeyError or TypeError (the caller rebuilds the entry) when a field is not as written."""
        if data.get("format") != PREPROCESSED_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        prior = data.get("structure_prior_mm2")
        return cls(folder=folder, key=str(data["key"]), stamp=str(data["stamp"]),
                   preprocessing=Preprocessing.from_json(data["preprocessing"]),
                   label_map=LabelMap.from_json(data["label_map"]),
                   channel_names=tuple(str(c) for c in data["channel_names"]),
                   cases=tuple(PreparedCase.from_json(c, folder) for c in data["cases"]),
                   image_dtype=str(data["image_dtype"]),
                   skipped={str(k): [str(p) for p in v] for k, v in data["skipped"].items()},
                   structure_prior_mm2=float(prior) if prior is not None else None,
                   settings=dict(data.get("settings", {})))


def open_preprocessed(folder: Path, key: str, stamp: str) -> Preprocessed | None:
    """The complete entry in `folder` when its key and stamp match and every file is there; else None (logged)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        entry = Preprocessed.from_json(json.loads(manifest.read_text(encoding="utf-8")), folder)
        if entry.key != key or entry.stamp != stamp:
            log.info("%s: the dataset's files changed since it was preprocessed; preprocessing again", folder)
            return None
        for case in entry.cases:
            case.check()
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError) as exc:
        log.warning("%s: incomplete or damaged (%s); preprocessing again", folder, exc)
        return None
    return entry


class PreprocessedWriter:
    """Writes one entry: `add` every case (each file atomically), then `finish` writes the manifest."""

    def __init__(self, folder: Path, key: str, stamp: str, image_dtype: str = "float32",
                 settings: dict | None = None) -> None:
        self.folder, self.key, self.stamp = Path(folder), key, stamp
        self.image_dtype, self.settings = np.dtype(image_dtype).name, dict(settings or {})
        self.cases: list[PreparedCase] = []
        if self.folder.exists():  # a stale or broken entry: nothing of it may survive into the new one
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)

    def add(self, case_id: str, image: np.ndarray, classes: np.ndarray) -> PreparedCase:
        """Store image (S, C_in, h, w) and classes (S, h, w) of one case; returns it as a PreparedCase."""
        if image.ndim != 4 or classes.shape != (image.shape[0], *image.shape[2:]):
            raise ValueError(f"case {case_id}: image {image.shape} and classes {classes.shape} do not match")
        stem = f"c{len(self.cases):05d}"
        image_path, classes_path = self.folder / f"{stem}_image.npy", self.folder / f"{stem}_classes.npy"
        _save(image_path, image.astype(self.image_dtype, copy=False))
        _save(classes_path, classes)
        foreground = tuple(int(s) for s in np.flatnonzero(classes.reshape(classes.shape[0], -1).any(axis=1)))
        case = PreparedCase(case_id, image_path, classes_path, tuple(image.shape), foreground)  # type: ignore[arg-type]
        self.cases.append(case)
        return case

    def finish(self, preprocessing: Preprocessing, label_map: LabelMap, channel_names: Iterable[str],
               skipped: dict[str, list[str]] | None = None, structure_prior_mm2: float | None = None) -> Preprocessed:
        entry = Preprocessed(self.folder, self.key, self.stamp, preprocessing, label_map, tuple(channel_names),
                             tuple(self.cases), self.image_dtype, dict(skipped or {}), structure_prior_mm2,
                             self.settings)
        write_json(self.folder / MANIFEST, entry.to_json(), indent=1)
        return entry


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


# ----------------------------------------------------------------------------- sharing an entry

class EntryLock:
    """An advisory lock on one entry (POSIX flock on ROOT/<entry>.lock): shared to read, exclusive to build.

    Where flock is missing (Windows), locking does nothing: concurrent fits of one dataset must then not
    rebuild an entry that another is reading.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder).with_name(Path(folder).name + ".lock")
        self.handle = None

    def _take(self, exclusive: bool) -> None:
        try:
            import fcntl
        except ImportError:
            return
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a+b")  # noqa: SIM115 (held until release)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(self.handle.fileno(), mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: waiting for another fit that %s it", self.path.with_suffix(""),
                        "reads" if exclusive else "writes")
            fcntl.flock(self.handle.fileno(), mode)

    def exclusive(self) -> None:
        self._take(True)

    def shared(self) -> None:
        self._take(False)

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing drops the flock
            self.handle = None


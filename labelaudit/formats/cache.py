"""Content-hash cache of per-case scores, so `check --cache DIR` scores only new or changed annotations.

A case's key is the sha256 of its image files, its label file, the model (every ONNX graph and run.json)
and the scoring settings that change a score (pixel formula, perturbations, labelaudit version, the slice and
case score rule). The entry holds the scores, never the pass/fail decision: thresholds are applied afresh on
every run, so changing --threshold never needs a rescore.

    DIR/<key[:2]>/<key>.json     one entry per (case content, model), written atomically

stdlib only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from collections.abc import Iterable
from pathlib import Path

from ..errors import LabelauditError
from ..io.atomic import write_json
from .fields import Fields

CACHE_FORMAT = 2  # 2: entries carry a digest of their content
_CHUNK = 1 << 20


def hash_files(paths: Iterable[Path], digest=None) -> "hashlib._Hash":
    """Feed the names and bytes of `paths` (a DICOM series folder: its files, sorted) into a sha256 digest."""
    digest = digest or hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            # the name counts too: swapping image and label must change the key
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
            digest.update(b"\0")
    return digest


def model_hash(run_dir: Path, onnx_files: Iterable[str]) -> str:
    """sha256 of run.json and the run's ONNX graphs (relative paths as listed in run.json)."""
    run_dir = Path(run_dir)
    return hash_files([run_dir / "run.json", *(run_dir / rel for rel in sorted(onnx_files))]).hexdigest()


def case_key(image_paths: Iterable[Path], label_path: Path, model: str, settings: dict) -> str:
    """The cache key of one case: its image and label contents, the model hash and the scoring settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "model": model, **settings}, sort_keys=True).encode())
    hash_files(list(image_paths), digest)
    digest.update(b"label\0")
    hash_files([label_path], digest)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One case's scores as cached: numbers only, never the pass/fail decision."""

    case_id: str
    noise_score: float
    slices: tuple[float, ...]  # per slice, in slice order
    slice_kinds: tuple[str | None, ...]  # diagnosis.ErrorKind values
    error_kind: str | None
    disagreement: float
    model: str

    def to_json(self) -> dict:
        return {"case_id": self.case_id, "noise_score": self.noise_score, "slices": list(self.slices),
                "slice_kinds": list(self.slice_kinds), "error_kind": self.error_kind,
                "disagreement": self.disagreement, "model": self.model}

    @classmethod
    def from_json(cls, data: dict) -> CacheEntry | None:
        """The entry, or None when any field has the wrong type (a hand-edited or foreign file is a miss)."""
        try:
            f = Fields(data, "cache entry")
            slices = tuple(f.numbers("slices"))
            kinds = f.list("slice_kinds")
            if len(kinds) != len(slices) or not all(k is None or isinstance(k, str) for k in kinds):
                return None
            return cls(f.str("case_id"), f.float("noise_score", low=0.0, high=1.0), slices, tuple(kinds),
                       f.str("error_kind", None), f.float("disagreement", 0.0), f.str("model", ""))
        except LabelauditError:
            return None


def _digest(key: str, entry: dict) -> str:
    return hashlib.sha256((key + json.dumps(entry, sort_keys=True)).encode()).hexdigest()


class ScoreCache:
    """A folder of cached case scores; a missing, unreadable, edited or ill-typed entry is simply a miss.

    Each file carries its key and a digest of the key and its content, so an entry edited by hand or copied
    under another key is ignored rather than trusted.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> CacheEntry | None:
        try:
            stored = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("entry"), dict):
            return None
        if stored.get("digest") != _digest(key, stored["entry"]):
            return None
        return CacheEntry.from_json(stored["entry"])

    def put(self, key: str, entry: CacheEntry) -> None:
        data = entry.to_json()
        write_json(self._path(key), {"format": CACHE_FORMAT, "key": key, "entry": data,
                                     "digest": _digest(key, data)}, indent=None)

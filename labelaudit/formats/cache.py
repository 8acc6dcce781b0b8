"""Content-hash cache of per-case scores, so `check --cache DIR` scores only new or changed annotations.

A case's key is the sha256 of its image files, its label file, the model (every ONNX graph and run.json)
and the scoring settings that change a score (pixel formula, perturbations, labelaudit version). The entry
holds the scores, never the pass/fail decision: thresholds are applied afresh on every run, so changing
--threshold never needs a rescore.

    DIR/<key[:2]>/<key>.json     one entry per (case content, model), written atomically

stdlib only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from ..io.atomic import write_json

CACHE_FORMAT = 1
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


class ScoreCache:
    """A folder of cached case scores; a missing or unreadable entry is simply a miss."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            entry = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, key: str, entry: dict) -> None:
        write_json(self._path(key), {**entry, "key": key}, indent=None)

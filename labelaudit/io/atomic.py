"""Atomic file writes: a temp file beside the target, renamed into place only when complete (stdlib only).

An interrupted run never leaves half a checkpoint, graph, table or JSON file, and the finished file gets the
mode an ordinary `open()` would give it (mkstemp creates 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any exception it is removed.

    `suffix` keeps an ending that the writer needs (e.g. ".onnx", ".nii.gz").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> Path:
    """Write UTF-8 text atomically (newlines as given)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_json(path: Path | str, data, indent: int | None = 2) -> Path:
    """Write `data` as JSON (with a final newline) atomically."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")

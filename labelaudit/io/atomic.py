"""Atomic file writes: a temp file beside the target, renamed into place only when complete (stdlib only).

An interrupted run never leaves half a checkpoint, graph, table or JSON file. The temp name is short
(`.tmp-XXXXXXXX` + suffix), so any name legal for the target is legal while writing, and the finished file
gets the mode an ordinary `open()` would give it (mkstemp creates 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputError

#: Prefix of every temp file and folder: hidden, so dataset discovery skips it.
TEMP_PREFIX = ".tmp-"


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: The mode of an ordinary new file; read once, since os.umask is process-wide and not thread-safe.
FILE_MODE = _umask_mode()


def cannot_write(path: Path | str, exc: OSError) -> OutputError:
    """The OutputError for an OSError while writing `path`."""
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})",
                       hint="check the free space and permissions of the output folder, or write elsewhere")


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any exception it is removed.

    `suffix` keeps an ending that the writer needs (e.g. ".onnx", ".nii.gz"). An OSError (disk full,
    read-only folder, name too long) becomes an OutputError naming `path`.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> Path:
    """Write UTF-8 text atomically (newlines as given)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_json(path: Path | str, data, indent: int | None = 2) -> Path:
    """Write `data` as JSON (with a final newline) atomically."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (POSIX signal 0), to tell a stale partial folder or lock from a live one.

    Elsewhere it answers yes: os.kill(pid, 0) would end the process on Windows, and keeping a stale folder is
    the safe mistake.
    """
    if pid <= 0:
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True

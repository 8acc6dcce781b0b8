"""The one rule for every path a command writes, and the staged folder that replaces an output as a whole.

`guard_output` runs before any work, for every output of every command (score --out/--report, check
--junit/--cache, fit --out, corrupt OUT, evaluate --json, demo --out). It refuses (UsageError, exit 2, naming
the flag and the input) a path that is, lies inside or holds an input (a dataset, the run folder read, an
input file), an existing file or folder that is not a previous output of the same kind, a path below a file,
and a folder that cannot be written in.

`StagedFolder` writes a folder output beside its final place (`.NAME.partial-PID`) and swaps it in at the
end, under a lock file (`.NAME.lock`), so a killed run leaves the previous output intact and two runs never
mix. Stale partial folders and locks of dead processes are taken over. stdlib only.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

from ..errors import UsageError
from ..io.atomic import cannot_write, process_alive


class OutputKind(str, Enum):
    """What a command writes at a path; an existing path must be a previous output of the same kind."""

    AUDIT = "audit folder"
    REPORT = "HTML report"
    JUNIT = "JUnit XML file"
    CACHE = "cache folder"
    RUN = "run folder"
    NOISY = "noisy dataset"
    EVALUATION = "evaluation JSON file"
    DEMO = "demo folder"
    FIXED = "fixed dataset"  # labelaudit fix --out

    @property
    def is_folder(self) -> bool:
        return self in _FOLDERS


_FOLDERS = {OutputKind.AUDIT, OutputKind.CACHE, OutputKind.RUN, OutputKind.NOISY, OutputKind.DEMO,
            OutputKind.FIXED}

#: What `score` writes into an audit folder (and `evaluate` beside it): the entries an audit may hold.
AUDIT_ENTRIES = {"cases.csv", "slices.csv", "summary.json", "maps", "report.html", "evaluation.json",
                 "calibration", "part"}  # calibration/: score --probabilities; part/: score --shard (formats/part.py)
DEMO_ENTRIES = {"clean", "noisy", "run", "audit"}
_REPORT_MARK = re.compile(rb'<meta name="generator" content="labelaudit">')
_JUNIT_MARK = re.compile(rb'<testsuites\b[^>]*\bname="labelaudit check"')
_HEAD = 64 * 1024  # bytes read to recognise a file

Inputs = Iterable[tuple[str, "Path | str | None"]]


# ----------------------------------------------------------------------------- what counts as an input

def dataset_inputs(what: str, root: Path | str | None) -> list[tuple[str, Path]]:
    """A dataset folder as inputs: the folder, its sub-folders and the targets of linked files, resolved.

    A linked sub-folder or file (labelsTr -> /data/labels) is an input where it really lies.
    """
    if root is None:
        return []
    root = Path(root)
    found: list[tuple[str, Path]] = [(what, root)]
    try:
        children = list(root.iterdir()) if root.is_dir() else []
        for child in children:
            if child.is_symlink() or child.is_dir():
                found.append((what, child))
            if child.is_dir() and not child.name.startswith("."):
                found += [(what, f.resolve().parent) for f in child.iterdir() if f.is_symlink()]
    except OSError:
        pass  # an unreadable dataset is reported by discovery, not here
    return found


def audit_inputs(audit_dir: Path | str) -> list[tuple[str, Path]]:
    """The files of an audit folder that `evaluate` reads (the folder itself may receive evaluation.json)."""
    return [("AUDIT_DIR", Path(audit_dir) / name) for name in ("cases.csv", "slices.csv", "summary.json", "maps")]


# ----------------------------------------------------------------------------- the rule

def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop
        return path.absolute()


def _lexists(path: Path, flag: str) -> bool:
    try:
        os.lstat(path)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        if exc.errno == errno.ENAMETOOLONG:
            raise UsageError(f"{flag} {path}: the file name is too long for this file system",
                             hint="choose a shorter name") from None
        raise UsageError(f"{flag} {path}: cannot be examined ({exc.strerror or exc})") from None


def _head(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(_HEAD)
    except OSError:
        return None


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return ["(unreadable)"]


def _not_ours(path: Path, kind: OutputKind) -> str | None:
    """Why the existing `path` is not a previous output of `kind` (None: it is one, or empty)."""
    if kind.is_folder:
        if not path.is_dir():
            return "is a file, expected a folder"
        names = _entries(path)
        if not names:
            return None
        if kind is OutputKind.AUDIT:
            if "summary.json" not in names:
                return "is a folder that is not an audit (no summary.json)"
            other = [n for n in names if n not in AUDIT_ENTRIES and not _is_report(path / n)]
            return f"holds {other[0]!r}, which `labelaudit score` does not write" if other else None
        if kind is OutputKind.CACHE:
            other = [n for n in names if not (re.fullmatch(r"[0-9a-f]{2}", n) and (path / n).is_dir())]
            return f"holds {other[0]!r}, which is not a cache entry folder" if other else None
        if kind is OutputKind.RUN:
            ok = "run.json" in names or any(re.fullmatch(r"fold_\d+", n) for n in names)
            return None if ok else "is a folder that is not a run folder (no run.json)"
        if kind is OutputKind.FIXED:
            return None if "fixes.json" in names else "is a folder that is not a fixed dataset (no fixes.json)"
        if kind is OutputKind.NOISY:
            from .manifest import MANIFEST_NAME

            return None if MANIFEST_NAME in names else f"is a folder that is not a noisy dataset (no {MANIFEST_NAME})"
        other = [n for n in names if n not in DEMO_ENTRIES]
        return f"holds {other[0]!r}, which `labelaudit demo` does not write" if other else None
    if path.is_dir():
        return "is a folder, expected a file"
    if not path.is_file():
        return "exists and is not a regular file"
    head = _head(path)
    if head is None:
        return "exists and cannot be read"
    if not head.strip():
        return None  # an empty file holds nothing to lose
    if kind is OutputKind.REPORT:
        return None if _REPORT_MARK.search(head) else "exists and is not a report written by labelaudit"
    if kind is OutputKind.JUNIT:
        return None if _JUNIT_MARK.search(head) else "exists and is not JUnit XML written by `labelaudit check`"
    ok = head.lstrip().startswith(b"{") and b'"labelaudit_version"' in head and b'"ranking"' in head
    return None if ok else "exists and is not an evaluation written by `labelaudit evaluate`"


def _is_report(path: Path) -> bool:
    head = _head(path) if path.is_file() else None
    return bool(head and _REPORT_MARK.search(head))


def guard_output(path: Path | str | None, flag: str, kind: OutputKind, inputs: Inputs = ()) -> Path | None:
    """Refuse an output path that would change an input or someone else's file (UsageError, exit 2).

    inputs: (how the message names it, path) pairs; a None path is ignored. Returns `path` (None stays None).
    """
    if path is None:
        return None
    path = Path(path)
    target = _resolve(path)
    hint = f"write the {kind.value} elsewhere: outside every dataset and run folder the command reads"
    resolved = sorted(((w, Path(p), _resolve(Path(p))) for w, p in inputs if p is not None),
                      key=lambda item: -len(item[2].parts))  # the most specific input first
    for what, given, source in resolved:
        if target == source:
            noun = "folder" if source.is_dir() else "file"
            raise UsageError(f"{flag} {path}: is the input {noun} {given} ({what}); it would be overwritten",
                             hint=hint)
        if source in target.parents:
            raise UsageError(f"{flag} {path}: lies inside the input folder {given} ({what})", hint=hint)
    for what, given, source in resolved:
        if target in source.parents:
            raise UsageError(f"{flag} {path}: holds the input {given} ({what}); replacing it would delete it",
                             hint=hint)
    if _lexists(path, flag):
        if path.is_symlink() and not path.exists():
            raise UsageError(f"{flag} {path}: is a broken symbolic link", hint="remove it or choose another path")
        why = _not_ours(path, kind)
        if why is not None:
            raise UsageError(f"{flag} {path}: {why}; refusing to replace it",
                             hint=f"choose a new path for the {kind.value}, or remove this one yourself")
    folder = target.parent  # files are renamed into place, folders swapped in: the parent is written too
    while not _lexists(folder, flag) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: lies below {folder}, which is a file, not a folder",
                         hint="choose a path inside a folder")
    for place in (folder, target) if target.is_dir() else (folder,):
        if not _writable(place):
            raise UsageError(f"{flag} {path}: cannot write in {place} (read-only or no permission)",
                             hint="choose a folder you can write to")
    return path


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


# ----------------------------------------------------------------------------- the staged folder


def _base(name: str) -> str:
    """`name`, shortened with a digest where `.NAME.partial-PID` would exceed a file name's 255 bytes."""
    if len(f".{name}.partial-4294967296".encode()) <= 255:
        return name
    return name[:40] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


#: Locks held by this process (a second writer in the same process is refused too).
_HELD: set[Path] = set()
_LOCK_GRACE_S = 10.0  # a lock file without a PID yet: being created by its writer for this long


class StagedFolder:
    """A folder output written at `path` (a hidden sibling) and swapped in for `final` by `commit`.

    Holds `.NAME.lock` from creation to commit/abort; a live holder makes a second writer a UsageError.
    """

    def __init__(self, final: Path | str, flag: str) -> None:
        self.final = _resolve(Path(final))
        self.flag, self.given = flag, Path(final)
        parent, base = self.final.parent, _base(self.final.name)
        self._prefix = f".{base}."
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cannot_write(parent, exc) from exc
        self.lock = parent / f"{self._prefix}lock"
        self._acquire()
        try:
            self._clean_stale()
            self.path = parent / f"{self._prefix}partial-{os.getpid()}"
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir()
        except OSError as exc:
            self.release()
            raise cannot_write(self.final, exc) from exc
        except BaseException:
            self.release()
            raise
        self.done = False

    def _acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise UsageError(f"{self.flag} {self.given}: another labelaudit process ({holder}) is writing it "
                                     f"now (lock {self.lock})",
                                     hint="wait for it to finish, or write elsewhere") from None
                self.lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as exc:
                raise cannot_write(self.lock, exc) from exc
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            _HELD.add(self.lock)
            return
        raise UsageError(f"{self.flag} {self.given}: could not take the lock {self.lock}",
                         hint="another process keeps taking it; write elsewhere")

    def _holder(self) -> str | None:
        """Who holds the existing lock ("PID n"), or None when it is stale."""
        try:
            text = self.lock.read_text(encoding="utf-8", errors="replace").strip()
            age = time.time() - self.lock.stat().st_mtime
        except OSError:
            return None
        if not text.isdigit():
            return "a process starting up" if age < _LOCK_GRACE_S else None
        pid = int(text)
        if pid == os.getpid():
            return f"PID {pid}, this one" if self.lock in _HELD else None
        return f"PID {pid}" if process_alive(pid) else None

    def _clean_stale(self) -> None:
        """Partial and set-aside folders of dead processes: the latter restored if the swap was cut short."""
        for entry in sorted(self.final.parent.iterdir()):
            if not entry.name.startswith(self._prefix):
                continue
            tag, _, pid = entry.name[len(self._prefix):].rpartition("-")
            if tag not in ("partial", "old") or not pid.isdigit():
                continue
            if int(pid) != os.getpid() and process_alive(int(pid)):
                continue
            if tag == "old" and not os.path.lexists(self.final):
                os.rename(entry, self.final)  # killed between the two renames: the previous output comes back
            else:
                shutil.rmtree(entry, ignore_errors=True)

    def commit(self) -> Path:
        """Swap the written folder in for `final` (the previous one renamed aside, then deleted)."""
        old = self.final.parent / f"{self._prefix}old-{os.getpid()}"
        had = os.path.lexists(self.final)
        try:
            if had:
                os.rename(self.final, old)
            os.rename(self.path, self.final)
        except OSError as exc:
            if had and not os.path.lexists(self.final) and old.exists():
                os.rename(old, self.final)
            raise cannot_write(self.final, exc) from exc
        shutil.rmtree(old, ignore_errors=True)
        self.path, self.done = self.final, True
        return self.final

    def release(self) -> None:
        """Give the lock back (only when this process holds it)."""
        if self.lock in _HELD:
            _HELD.discard(self.lock)
            try:
                if self.lock.read_text(encoding="utf-8").strip() == str(os.getpid()):
                    self.lock.unlink()
            except OSError:
                pass

    def abort(self) -> None:
        """Remove what was written (the previous output stays) and give the lock back."""
        if not getattr(self, "done", True):
            shutil.rmtree(self.path, ignore_errors=True)
        self.release()


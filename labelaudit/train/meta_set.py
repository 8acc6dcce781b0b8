"""MCPM's meta set: the cases whose labels the user has verified, given as a file of case ids or a dataset folder.

`--meta-set FILE`: one case id per line; blank lines and everything after a `#` are ignored. The cases come
from the dataset being fit and are left out of the noisy training set.
`--meta-set DIR`: a separate dataset folder (any layout labelaudit reads) whose cases are the meta set. A case
id it shares with the dataset being fit is taken to be a verified copy of that case, and the dataset's own
(unverified) copy is then left out of training too, so that no case is on both sides of the bilevel problem
(algorithms.md §3.5, §9 item 9).

stdlib only (the dataset discovery for DIR is imported by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

@dataclass(frozen=True)
class MetaSet:
    """The resolved meta set.

    source: "file" (ids of the fit dataset) or "dataset" (a separate folder, `path`). case_ids: the meta cases,
    sorted. excluded: the fit dataset's case ids left out of training because of the meta set (for "file",
    the case_ids themselves).
    """

    source: str
    path: Path
    case_ids: tuple[str, ...]
    excluded: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"source": self.source, "path": str(self.path), "cases": list(self.case_ids),
                "excluded_from_training": list(self.excluded)}


def read_meta_ids(path: Path | str) -> list[str]:
    """The case ids listed in a meta-set file, in order, without duplicates; InputError when missing or empty."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--meta-set {path}: file not found",
                         hint="give a text file of verified case ids, one per line, or a dataset folder")
    if not path.is_file():
        raise InputError(f"--meta-set {path}: not a file or a dataset folder")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--meta-set {path}: cannot read it as text ({exc})",
                         hint="give a UTF-8 text file of case ids, one per line") from exc
    ids: list[str] = []
    for line in text.splitlines():
        case_id = line.split("#", 1)[0].strip()
        if case_id and case_id not in ids:
            ids.append(case_id)
    if not ids:
        raise InputError(f"--meta-set {path}: lists no case id (only blank lines or # comments)",
                         hint="list the verified case ids, one per line, e.g. the ids in cases.csv")
    return ids


def meta_set_from_file(path: Path | str, case_ids: list[str]) -> MetaSet:
    """Check the ids of a meta-set file against the dataset's readable `case_ids` and resolve them.

    An id not in the dataset, or a meta set that leaves no case to train on, is an InputError naming them.
    """
    path = Path(path)
    ids = read_meta_ids(path)
    known = set(case_ids)
    unknown = [c for c in ids if c not in known]
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        examples = ", ".join(sorted(known)[:3])
        raise InputError(f"--meta-set {path}: case id(s) not in the dataset's readable cases: {shown}",
                         hint=f"use the dataset's case ids (e.g. {examples}); a case skipped for a problem "
                              "cannot be in the meta set")
    _check_training_left(path, ids, case_ids)
    chosen = tuple(sorted(ids))
    return MetaSet("file", path, chosen, chosen)


def meta_set_from_dataset(path: Path | str, meta_ids: list[str], case_ids: list[str]) -> MetaSet:
    """A separate dataset folder's readable `meta_ids` as the meta set; ids shared with `case_ids` leave training."""
    path = Path(path)
    if not meta_ids:
        raise InputError(f"--meta-set {path}: the dataset folder has no readable case",
                         hint="run `labelaudit inspect` on it to see the problems")
    excluded = sorted(set(meta_ids) & set(case_ids))
    _check_training_left(path, excluded, case_ids)
    return MetaSet("dataset", path, tuple(sorted(meta_ids)), tuple(excluded))


def _check_training_left(path: Path, excluded: list[str], case_ids: list[str]) -> None:
    if set(case_ids) <= set(excluded):
        raise InputError(f"--meta-set {path}: takes every case of the dataset ({len(case_ids)}), leaving none "
                         "to train on",
                         hint="the meta set should be a few verified cases (about 10-15 % of the dataset)")

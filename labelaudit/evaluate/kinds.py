"""Kind accuracy: the error kind the audit names per slice (slices.csv `error_kind`) against the corruption
that corruption.json says made that slice — a confusion matrix, rows the truth, columns the kind named.

Each noise model has the kind it should be named (EXPECTED_KIND); elastic deformations (and MCPM's) change
an outline in several ways at once and have none, so they appear in the matrix but not in the accuracy.
Uncorrupted slices with structure form the row `clean`, whose right answer is `none`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..config import NoiseKind
from ..diagnosis import ErrorKind
from ..errors import InputError
from ..formats.audit import unescape_cell
from ..formats.manifest import Corruption, Manifest

CLEAN = "clean"
EXPECTED_KIND = {
    "dilation": ErrorKind.OVER, "erosion": ErrorKind.UNDER, "shift": ErrorKind.SHIFTED,
    "missing": ErrorKind.MISSING, "spurious": ErrorKind.SPURIOUS, "wrong_class": ErrorKind.WRONG_CLASS,
    "mcpm/dilation": ErrorKind.OVER, "mcpm/translation": ErrorKind.SHIFTED, "mcpm/rotation": ErrorKind.SHIFTED,
    CLEAN: ErrorKind.NONE,
}


def truth_name(corruption: Corruption | None) -> str:
    """The matrix row of a slice: its noise model (MCPM by operation), or `clean`."""
    if corruption is None:
        return CLEAN
    if corruption.kind is NoiseKind.MCPM:
        return f"mcpm/{corruption.params.get('op')}"
    return corruption.kind.value


@dataclass(frozen=True)
class KindConfusion:
    """counts[truth][named]: slices of each truth row named each kind (columns: every ErrorKind value)."""

    counts: dict[str, dict[str, int]]

    @property
    def rows(self) -> list[str]:
        return list(self.counts)

    @property
    def columns(self) -> list[str]:
        return [k.value for k in ErrorKind]

    def row_accuracy(self, row: str) -> float | None:
        """The share of the row's slices named its expected kind; None when the row has none or no slices."""
        expected, total = EXPECTED_KIND.get(row), sum(self.counts[row].values())
        return None if expected is None or not total else self.counts[row][expected.value] / total

    def accuracy(self) -> float | None:
        """Over the corrupted slices whose noise model has an expected kind (the clean row excluded)."""
        rows = [r for r in self.rows if r != CLEAN and r in EXPECTED_KIND]
        total = sum(sum(self.counts[r].values()) for r in rows)
        right = sum(self.counts[r][EXPECTED_KIND[r].value] for r in rows)
        return right / total if total else None

    def to_json(self) -> dict:
        return {"rows": "the corruption that made each slice (clean: an uncorrupted slice with structure)",
                "columns": "the error_kind slices.csv names", "counts": self.counts,
                "expected": {r: EXPECTED_KIND[r].value for r in self.rows if r in EXPECTED_KIND},
                "accuracy": self.accuracy(), "row_accuracy": {r: self.row_accuracy(r) for r in self.rows}}


def read_slice_kinds(path: Path) -> dict[tuple[str, int], str] | None:
    """slices.csv -> {(case_id, slice_index): error_kind}; None when the file has no error_kind column."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "error_kind" not in (reader.fieldnames or []):
                return None
            known = {k.value for k in ErrorKind}
            kinds = {}
            for line, row in enumerate(reader, start=2):
                kind = unescape_cell(row["error_kind"] or "none")
                if kind not in known:
                    raise InputError(f"{path}, line {line}: error_kind {kind!r} is not one of "
                                     f"{', '.join(sorted(known))}")
                kinds[(unescape_cell(row["case_id"]), int(row["slice_index"]))] = kind
            return kinds
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as CSV ({exc})") from None


def kind_confusion(manifest: Manifest, kinds: dict[tuple[str, int], str]) -> KindConfusion | None:
    """The confusion matrix over every slice the manifest records (clean ones only when they hold structure);
    None when the manifest records no corruption kinds (a hand-made truth file)."""
    if manifest.record is None:
        return None
    counts: dict[str, dict[str, int]] = {}
    seen_kind = False
    for case_id, case in sorted(manifest.record.cases.items()):
        for record in case.slices:
            if record.corrupted and record.corruption is not None:
                seen_kind = True
            elif record.corrupted or not record.eligible:
                continue  # corrupted without a recorded kind; or clean and empty
            named = kinds.get((case_id, record.slice_index))
            if named is None:
                continue
            row = counts.setdefault(truth_name(record.corruption if record.corrupted else None),
                                    {k.value: 0 for k in ErrorKind})
            row[named] += 1
    if not seen_kind:
        return None
    order = [k for k in (*EXPECTED_KIND, "elastic", "mcpm/elastic") if k in counts and k != CLEAN]
    order += sorted(k for k in counts if k not in order and k != CLEAN) + ([CLEAN] if CLEAN in counts else [])
    return KindConfusion({k: counts[k] for k in order})

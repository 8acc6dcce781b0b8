"""`score --shard i/N`: which cases one of N machines scores (numpy-free, torch-free).

Round-robin over the sorted case ids: shard i takes ids[i-1], ids[i-1+N], ids[i-1+2N] … So every case is in
exactly one shard, the shards differ in size by at most one case, and cases whose ids sort together (often
scans of one site or one size) spread over the machines instead of landing on one. `labelaudit merge`
(score/merge.py) puts the N partial audits back together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import UsageError
from ..formats.part import PartMarker
from ..types import Dataset


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: expected i/N with N at least 1 and i in 1..N",
                             hint="shards are numbered from 1: --shard 1/4 … --shard 4/4")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"2/4"` -> Shard(2, 4); anything else is a UsageError (exit 2)."""
        index, slash, count = text.strip().partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise UsageError(f"--shard {text!r}: expected i/N, two whole numbers such as 2/4",
                             hint="shards are numbered from 1: --shard 1/4 … --shard 4/4")
        return cls(int(index), int(count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, case_ids: Iterable[str]) -> tuple[str, ...]:
        """This shard's case ids: every N-th of the sorted ids, from the i-th on."""
        return tuple(sorted(case_ids)[self.index - 1::self.count])

    def marker(self, dataset: Dataset) -> PartMarker:
        """What the partial audit records of this shard, the dataset it split and its share of the cases."""
        from ..data import fingerprint

        every = tuple(ref.case_id for ref in dataset.cases)
        return PartMarker(self.index, self.count, fingerprint(dataset), every, self.select(every))

"""Each scored case's outputs (its fixed label, its maps, its report thumbnails), written on one background
thread while the next case is scored.

At most one case is in the writer: `submit` first waits for the case before it, so memory grows by one case's
maps at most, and cases reach the audit folder in the order they were scored. An error of a write is raised in
the scoring thread, as it was raised (same type and message), by the next `submit` or by `drain`; score_dataset
then drops the folder, as after any failure. Leaving the `with` block waits for a write still running, so the
folder is never dropped while a case is being written into it.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..fix.rule import fix_case
from ..formats.audit import AuditFolder
from ..io import read_volume
from ..noise_map import rescaled
from ..types import Case, CaseRef, CaseScore, to_slices
from .formulas import SliceStats


class CaseWriter:
    """Writes scored cases into `folder` one case behind the scoring (`overlap`), or at once (not overlapped).

    untrusted: the classes the `_fixed` maps never mend (fix.rule.untrusted_classes of the run's calibration).

    seconds: "write", the time the writes took (in the writer thread); "write_wait", the time the scoring
    thread spent waiting for them.
    """

    def __init__(self, folder: AuditFolder, overlap: bool = True, untrusted: frozenset[int] = frozenset()) -> None:
        self.folder, self.untrusted = folder, untrusted
        self.seconds = {"write": 0.0, "write_wait": 0.0}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelaudit-write") if overlap else None
        self._pending: Future | None = None

    def __enter__(self) -> CaseWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # on an error elsewhere, that error is the one raised, not the write's

    def submit(self, ref: CaseRef, case: Case, noise: np.ndarray, pred: np.ndarray, stats: SliceStats,
               result: CaseScore) -> None:
        """Write one scored case once the case before it is written; noise float32 (S, H, W), pred label values
        (S, H, W). Raises the error of the case before it, if its write failed."""
        self.drain()
        if self._pool is None:
            self._write(ref, case, noise, pred, stats, result)
        else:
            self._pending = self._pool.submit(self._write, ref, case, noise, pred, stats, result)

    def drain(self) -> None:
        """Wait until every submitted case is written (result.noise_map and the folder's views set); raise the
        error of a failed write."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        t0 = time.perf_counter()
        try:
            pending.result()
        finally:
            self.seconds["write_wait"] += time.perf_counter() - t0

    def _write(self, ref: CaseRef, case: Case, noise: np.ndarray, pred: np.ndarray, stats: SliceStats,
               result: CaseScore) -> None:
        t0 = time.perf_counter()
        # the label with its regions judged wrong replaced: the same rule as `labelaudit fix`
        fixed, judged = fix_case(case.label_slices(), pred, noise, stats.noise_score, result.n_flagged_slices,
                                 untrusted=self.untrusted)
        self.folder.add_case(ref, case, noise, pred, stats, result, fixed, judged)
        self.seconds["write"] += time.perf_counter() - t0

    def rewrite(self, ref: CaseRef, case: Case, stats: SliceStats, result: CaseScore, mapped_with: np.ndarray) -> None:
        """A case written before, again, with result's flags and stats' scores as they are now (after `score
        --probabilities` derived its thresholds and ranking from the whole audit): its maps are read back, the
        noise map rescaled from the slice scores `mapped_with` (S,) it was made with."""
        geometry = case.label.geometry
        noise, pred = (to_slices(read_volume(self.folder.written(rel)).array, geometry)
                       for rel in (result.noise_map, result.pred_map))
        noise = rescaled(noise.astype(np.float32, copy=False), mapped_with, stats.noise_score)
        self._write(ref, case, noise, pred, stats, result)

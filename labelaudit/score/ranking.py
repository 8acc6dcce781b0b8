"""The slice ranking: the structure score S_i and the softmin score Q_i (formulas.py) blended by their ranks among
the training slices, on S_i's scale (pure numpy).

S_i weighs what is wrong against the structure's size; Q_i, cleanlab's softmin, finds a few confidently wrong
pixels whatever the size. Neither ranks best everywhere (docs/decisions.md), and their scales differ, so each
new slice gets the mean u of its two empirical CDF values among the training slices with structure, and u is
mapped through the training slices' own u and S_i:

    ranked_i = quantile of the training S at ECDF_u(u_i)   (inverted CDF)

The training slices then get exactly the training S values in another order. The ranked score is then kept
within the band of S_i between the calibrated thresholds (below the slice threshold, up to the gate, from the
gate on): the thresholds calibrated on S_i (score/calibrate.py) flag exactly the slices and cases they flag by
S_i, and the ranking changes the order within each band: unbanded, a new slice far beyond every training S_i
but with an ordinary softmin would fall below the slice threshold (docs/decisions.md). The ranked score
is the slice's noise score: it flags, orders slices.csv and scales the noise map (noise_map.py). Slices with
neither label nor prediction keep S_i (0). A calibration without the tables (earlier runs, fewer than
MIN_SLICES training slices) ranks by S_i alone; `--threshold` changes the thresholds, not the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ..training_scores import SliceRanking
from ..types import Calibration, SliceScore
from .formulas import SOFTMIN_TEMPERATURE, SliceStats

#: Stored with the tables (run.json `slice_ranking.rule`).
RANKING_RULE = (f"mean of the empirical CDFs of max(F, R) and softmin (T = {SOFTMIN_TEMPERATURE}) among the "
                "training slices with structure, mapped through the training max(F, R), within the band of max(F, R) "
                "between the slice threshold and the gate")
#: At most this many values per table (quantiles of more training slices): run.json stays small.
MAX_TABLE = 2001
#: Fewer training slices with structure than this: no tables (an ECDF of a handful of slices is noise).
MIN_SLICES = 10
#: Decimals kept in the tables, as run.json stores them (the in-memory ranking is the one read back).
DECIMALS = 6


@dataclass(frozen=True)
class SliceOrder:
    """How a calibration ranks slices: its tables and the thresholds that bound S_i's bands (the slice threshold and
    the gate, ascending; empty: no bands)."""

    tables: SliceRanking
    bands: tuple[float, ...] = ()

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tables as float64 arrays (S_i, Q_i, blended), made once: scoring ranks every batch by them."""
        return tuple(np.array(t, dtype=np.float64) for t in (self.tables.structure, self.tables.softmin,
                                                              self.tables.blended))


def has_structure(label_pixels: np.ndarray, pred_pixels: np.ndarray) -> np.ndarray:
    """Per slice, whether it has a non-empty ROI (labelled or predicted structure): bool (n,) from counts (n,)."""
    return (np.asarray(label_pixels) > 0) | (np.asarray(pred_pixels) > 0)


def counts_for_calibration(label_pixels: int, pred_pixels: int) -> bool:
    """Whether a slice's score enters the calibration and the ranking's tables: it has structure.

    Empty slices score 0 by definition and would pull the median to 0.
    """
    return bool(has_structure(label_pixels, pred_pixels))


def ecdf(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-rank empirical CDF of `values` (float (n,)) among the sorted `reference`, in [0, 1]."""
    below = np.searchsorted(reference, values, side="left")
    upto = np.searchsorted(reference, values, side="right")
    return (below + upto) / (2.0 * max(len(reference), 1))


def _table(values: np.ndarray) -> tuple[float, ...]:
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if len(ordered) > MAX_TABLE:
        ordered = np.quantile(ordered, np.linspace(0.0, 1.0, MAX_TABLE), method="inverted_cdf")
    return tuple(float(v) for v in np.round(ordered, DECIMALS))


def ranking_from_scores(structure: np.ndarray, softmin: np.ndarray) -> SliceRanking | None:
    """The tables from the training slices with structure: S_i and Q_i, float (n,) each; None below MIN_SLICES."""
    structure, softmin = np.asarray(structure, dtype=np.float64), np.asarray(softmin, dtype=np.float64)
    if len(structure) < MIN_SLICES:
        return None
    s_table, q_table = _table(structure), _table(softmin)
    blended = _blend(structure, softmin, np.array(s_table), np.array(q_table))
    return SliceRanking(RANKING_RULE, s_table, q_table, _table(blended))


def _blend(structure: np.ndarray, softmin: np.ndarray, s_table: np.ndarray, q_table: np.ndarray) -> np.ndarray:
    return 0.5 * (ecdf(s_table, structure) + ecdf(q_table, softmin))


def ranked_scores(structure: np.ndarray, softmin: np.ndarray, structured: np.ndarray,
                  order: SliceOrder | None) -> np.ndarray:
    """The slice scores that flag and rank: float64 (b,) from S_i, Q_i (float (b,)) and `structured` (bool (b,), from
    has_structure); S_i itself without tables or for slices without structure."""
    structure = np.asarray(structure, dtype=np.float64)
    if order is None or not np.any(structured):
        return structure.copy()
    s_table, q_table, u_table = order.arrays
    u = _blend(structure, np.asarray(softmin, dtype=np.float64), s_table, q_table)
    mapped = np.quantile(s_table, np.clip(ecdf(u_table, u), 0.0, 1.0), method="inverted_cdf")
    return np.where(structured, within_bands(mapped, structure, order.bands), structure)


def within_bands(ranked: np.ndarray, structure: np.ndarray, bands: tuple[float, ...]) -> np.ndarray:
    """`ranked` clipped into the band that S_i (`structure`) falls in: [0, t), [t, g), [g, 1] for bands (t, g)."""
    edges = np.unique([b for b in bands if 0.0 < b <= 1.0])
    if not edges.size:
        return ranked
    band = np.searchsorted(edges, structure, side="right")
    lower = np.concatenate([[0.0], edges])[band]
    upper = np.concatenate([np.nextafter(edges, 0.0), [1.0]])[band]  # each band stops just below its edge
    return np.clip(ranked, lower, upper)


def ranking_of(calibration: Calibration | None) -> SliceOrder | None:
    """The calibration's order: its tables, banded by its slice threshold and gate (None without tables)."""
    if calibration is None or calibration.slice_ranking is None:
        return None
    return order_of(calibration.slice_ranking, calibration.slice, calibration.gate)


def order_of(tables: SliceRanking | None, slice_threshold: float, gate: float | None) -> SliceOrder | None:
    """The order of `tables` banded by a slice threshold and a gate (None: the slice threshold alone)."""
    if tables is None:
        return None
    return SliceOrder(tables, tuple(sorted({slice_threshold, gate if gate is not None else slice_threshold})))


def rank_stats(stats: SliceStats, order: SliceOrder | None) -> SliceStats:
    """stats with noise_score ranked (the structure score kept in stats.structure_score)."""
    structured = has_structure(stats.label_pixels, stats.pred_pixels)
    return replace(stats, noise_score=ranked_scores(stats.structure_score, stats.softmin, structured, order))


def structure_score(s: SliceScore) -> float:
    """A slice's S_i (its noise score where the audit was read back from an earlier audit, without S_i)."""
    return s.noise_score if s.structure_score is None else s.structure_score


def rerank_slices(slices: list[SliceScore], order: SliceOrder | None) -> list[float]:
    """The slices' scores under `order`, in their order; their noise scores where a slice
    has no S_i or Q_i (an audit read back)."""
    if not slices or any(s.structure_score is None or s.softmin is None for s in slices):
        return [s.noise_score for s in slices]
    return ranked_scores(np.array([s.structure_score for s in slices]), np.array([s.softmin for s in slices]),
                         has_structure(np.array([s.label_pixels for s in slices]),
                                       np.array([s.pred_pixels for s in slices])), order).tolist()

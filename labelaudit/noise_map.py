"""The noise map and its inverse (pure numpy): written by scoring, read by the error kinds, the fix rule's
callers and the report, so it sits below all of them.

noise map m_v = (1 - p̄_{v,y_v}) · S_i: how likely the pixel's label is wrong, given how wrong its slice is
(S_i the slice's noise score, as slices.csv holds it: score/ranking.py; docs/decisions.md the measurement
that chose the product).
"""

from __future__ import annotations

import numpy as np


def noise_map(p_given: np.ndarray, slice_scores: np.ndarray) -> np.ndarray:
    """The noise map of a batch: p_given float (b, H, W), slice_scores (b,) -> float32 (b, H, W) in [0, 1]."""
    wrong = 1.0 - np.clip(p_given, 0.0, 1.0)
    return np.clip(wrong * np.asarray(slice_scores, dtype=np.float32)[:, None, None], 0.0, 1.0).astype(np.float32)


def map_disagreement(noise: np.ndarray, slice_score: float) -> np.ndarray:
    """1 - p̄_y back from one slice's noise map (its inverse): noise float (H, W) -> float32 (H, W) in [0, 1];
    zeros on a slice scored 0. Where on the slice the model disagrees, whatever the slice's score."""
    if slice_score <= 0:
        return np.zeros_like(noise, dtype=np.float32)
    return np.clip(noise / float(slice_score), 0.0, 1.0).astype(np.float32)


def rescaled(noise: np.ndarray, old_scores: np.ndarray, new_scores: np.ndarray) -> np.ndarray:
    """A case's noise map (float (S, H, W)) made with slice scores old_scores (S,) as if made with new_scores
    (S,); zeros on a slice whose old score was 0 (its 1 - p̄_y is not in the map)."""
    wrong = np.stack([map_disagreement(noise[i], float(old_scores[i])) for i in range(len(noise))]) if len(noise) \
        else np.zeros_like(noise, dtype=np.float32)
    return noise_map(1.0 - wrong, new_scores)

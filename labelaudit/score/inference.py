"""ONNX Runtime inference for one case at a time: the fold models' mean softmax, uncertainty and meta weight.

Array legend: S slices of one case, b slices of one batch, C classes, C_in input channels, K perturbations,
H x W the case's native in-plane pixels, h x w the network's (after resampling), Hp x Wp padded to the run's
divisor. Never imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import PixelScore
from ..errors import ModelError, UsageError
from ..formats.run import RunInfo, perturbation_noise
from ..preprocess import LabelMap, pad_to_multiple, prepare_case, resample_slices, restore_in_plane
from ..types import Case, Routing
from .formulas import (
    MCPM_PIXEL_SCORE, PIXEL_SCORE, SLICE_EPS, SliceStats, concat_stats, given_class_probability,
    normalised_entropy, pixel_noise_score, roi_radius, slice_stats,
)


@dataclass(frozen=True)
class ProbabilityBatch:
    """Slices start:stop of one case: the given label's class indices int64 (b, H, W), the mean softmax float32
    (b, C, H, W), its uncertainty float32 (b, H, W) and, for MCPM runs scored with R, the meta weight (b, H, W)."""

    start: int
    stop: int
    classes: np.ndarray
    prob: np.ndarray
    uncertainty: np.ndarray
    weight: np.ndarray | None = None


@dataclass(frozen=True)
class CaseProbabilities:
    """One case's model output on its native grid (see `dataset_probabilities`)."""

    case_id: str
    classes: np.ndarray  # int64 (S, H, W) class indices of the given label
    prob: np.ndarray  # float32 (S, C, H, W) mean softmax
    uncertainty: np.ndarray  # float32 (S, H, W) normalised entropy
    routing: Routing


def pixel_score_of(info: RunInfo) -> PixelScore:
    """The formula a run is scored with unless the user overrides it: the one its threshold was calibrated with."""
    if info.threshold is not None and info.threshold.pixel_score:
        return PixelScore(info.threshold.pixel_score)
    return MCPM_PIXEL_SCORE if any(m.meta_weight for m in info.models) else PIXEL_SCORE


#: Upper bound on N·K·Hp·Wp pixels per ORT call, so a 512×512 CT with K=8 stays within a few GB.
MAX_PIXELS_PER_CALL = 1 << 22


class CaseScorer:
    """Runs the fold models on one case at a time and turns their output into noise maps and slice stats."""

    def __init__(self, info: RunInfo, run_dir: Path, device: str = "auto", batch_size: int = 16,
                 perturbations: int | None = None, pixel_score: PixelScore | None = None,
                 structure_prior_mm2: float | None = None) -> None:
        from .providers import MetaWeighter, Segmenter, choose_device

        calibration = info.threshold
        if structure_prior_mm2 is None and calibration is not None:
            structure_prior_mm2 = calibration.structure_prior_mm2
        self.structure_prior_mm2 = float(structure_prior_mm2) if structure_prior_mm2 else None
        self.notes: list[str] = []

        if batch_size < 1:
            raise UsageError(f"--batch-size {batch_size}: expected at least 1")
        self.info = info
        self.label_map: LabelMap = info.label_map
        self.prep = info.preprocessing
        self.perturbations = info.perturbations if perturbations is None else replace(info.perturbations,
                                                                                      k=int(perturbations))
        if self.perturbations.k < 1:
            raise UsageError(f"perturbations K={self.perturbations.k}: expected at least 1")
        self.batch_size = batch_size
        self.choice = choose_device(device)
        c_in = len(self.prep.channels)
        self.segmenters = [Segmenter(run_dir / m.segmenter, self.choice, c_in, self.label_map.num_classes, run_dir)
                           for m in info.models]
        # MCPM runs: every fold model carries its meta_weight.onnx (R from its own segmenter's prediction)
        with_meta = [m for m in info.models if m.meta_weight]
        if with_meta and len(with_meta) != len(info.models):
            raise ModelError(f"{run_dir / 'run.json'}: only some models have a meta_weight graph",
                             hint=f"re-create them with: labelaudit export {run_dir}")
        calibrated = PixelScore(calibration.pixel_score) if calibration and calibration.pixel_score else None
        if pixel_score is None:
            pixel_score = pixel_score_of(info)
        elif calibrated is not None and PixelScore(pixel_score) is not calibrated:
            self.notes.append(f"pixel score {PixelScore(pixel_score).value} differs from {calibrated.value}, which the "
                              "run's threshold was calibrated with: the calibrated threshold may flag more or fewer "
                              "annotations than it should")
        self.pixel_score = PixelScore(pixel_score)
        # Theta's graphs are opened only when the formula uses R (the MCPM default does not)
        self.meta_weighters = [MetaWeighter(run_dir / m.meta_weight, self.choice, c_in, self.label_map.num_classes,
                                            run_dir) for m in with_meta] if self.pixel_score.needs_meta_weight else []
        self.uses_meta_weight = bool(self.meta_weighters)
        if self.pixel_score.needs_meta_weight and not self.meta_weighters:
            raise ModelError(f"{run_dir}: pixel score {self.pixel_score.value} needs an MCPM run (meta_weight.onnx); "
                             f"this run's method is {info.method}", hint="use another pixel score, or an MCPM run")
        self.provider = self.segmenters[0].provider
        self.device = self.choice.label if self.provider == self.choice.provider else "cpu"
        self.reason = self.choice.reason if self.provider == self.choice.provider else (
            f"{self.choice.reason}, but ONNX Runtime could not start {self.choice.provider}")
        import onnxruntime

        self.versions = {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
        self._noise: dict[tuple[int, int], np.ndarray] = {}
        self.seconds = {"inference": 0.0, "scoring": 0.0}

    def noise_bank(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._noise:
            self._noise = {key: perturbation_noise(self.perturbations, len(self.prep.channels), height, width)}
        return self._noise[key]

    def predict(self, image: np.ndarray, chosen: list[int], label: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """image float32 (b, C_in, Hp, Wp) -> prob_mean (b, C, Hp, Wp), uncertainty (b, Hp, Wp), ensembled, and
        for MCPM runs with `label` (int64 class indices (b, Hp, Wp)) the meta weight R (b, Hp, Wp), else None.

        Each fold's R comes from its own Theta on its own segmenter's prob_mean; the ensemble's R is their mean.
        """
        noise = self.noise_bank(*image.shape[-2:])
        start = time.perf_counter()
        meta = self.uses_meta_weight and label is not None
        weight = None
        if len(chosen) == 1:
            prob, unc = self.segmenters[chosen[0]].run(image, noise)
            if meta:
                weight = self.meta_weighters[chosen[0]].run(image, label, prob)
        else:
            prob = None
            for i in chosen:
                p, _ = self.segmenters[i].run(image, noise)
                prob = p if prob is None else prob + p
                if meta:
                    r = self.meta_weighters[i].run(image, label, p)
                    weight = r if weight is None else weight + r
            prob = prob / len(chosen)
            weight = weight / len(chosen) if weight is not None else None
            unc = normalised_entropy(prob)  # the ensemble's own uncertainty, not the mean of the models'
        self.seconds["inference"] += time.perf_counter() - start
        return prob, unc, weight

    def prior_pixels(self, in_plane_spacing: tuple[float, float]) -> float:
        """A₀ in pixels of a slice with this spacing (mm); SLICE_EPS for runs calibrated without it."""
        if not self.structure_prior_mm2:
            return SLICE_EPS
        return max(SLICE_EPS, self.structure_prior_mm2 / max(in_plane_spacing[0] * in_plane_spacing[1], 1e-12))

    def batches(self, case: Case, chosen: list[int]) -> Iterator[ProbabilityBatch]:
        """The chosen models' output for `case`, a few slices at a time, on the case's native in-plane grid.

        Memory stays bounded by MAX_PIXELS_PER_CALL whatever the case's size. Raises InputError when the
        label holds values outside the run's classes.
        """
        labels = case.label_slices()  # (S, H, W) native label values, a view; encoded per batch (int64 is big)
        image, _ = prepare_case(case, self.prep)  # (S, C_in, h, w)
        num_slices, native = labels.shape[0], labels.shape[1:]
        h, w = image.shape[-2:]
        factor = self.prep.resample_factor(case)
        pixels_per_slice = self.perturbations.k * _ceil_to(h, self.prep.divisor) * _ceil_to(w, self.prep.divisor)
        step = max(1, min(self.batch_size, MAX_PIXELS_PER_CALL // pixels_per_slice))
        for start in range(0, num_slices, step):
            stop = min(num_slices, start + step)
            padded, _ = pad_to_multiple(np.ascontiguousarray(image[start:stop]), self.prep.divisor)
            given_net = None
            if self.uses_meta_weight:  # Theta sees the label on the network's grid, as in training
                given_net = resample_slices(self.label_map.encode(labels[start:stop]), factor, order=0)
                given_net, _ = pad_to_multiple(given_net, self.prep.divisor)
            prob, unc, weight = self.predict(padded, chosen, given_net)
            t0 = time.perf_counter()
            prob, unc = prob[..., :h, :w], unc[..., :h, :w]
            weight = weight[..., :h, :w] if weight is not None else None
            if (h, w) != tuple(native):
                b, c = prob.shape[:2]
                prob = restore_in_plane(prob.reshape(b * c, h, w), native, order=1).reshape(b, c, *native)
                unc = restore_in_plane(unc, native, order=1)
                weight = restore_in_plane(weight, native, order=1) if weight is not None else None
            given = self.label_map.encode(labels[start:stop])
            self.seconds["scoring"] += time.perf_counter() - t0
            yield ProbabilityBatch(start, stop, given, prob, unc, weight)

    def score_case(self, case: Case, chosen: list[int]) -> tuple[SliceStats, np.ndarray, np.ndarray]:
        """Score one case: (slice stats over its S slices, noise (S, H, W) float32, pred (S, H, W) class indices)."""
        labels = case.label_slices()
        num_slices, native = labels.shape[0], labels.shape[1:]
        radius = roi_radius(case.geometry.in_plane_spacing())
        eps = self.prior_pixels(case.geometry.in_plane_spacing())
        noise_map = np.empty((num_slices, *native), dtype=np.float32)
        pred_map = np.empty((num_slices, *native), dtype=np.uint8 if self.label_map.num_classes <= 256 else np.int32)
        parts = []
        for batch in self.batches(case, chosen):
            t0 = time.perf_counter()
            pred = batch.prob.argmax(axis=1)
            noise = pixel_noise_score(given_class_probability(batch.prob, batch.classes), batch.uncertainty,
                                      self.pixel_score, batch.weight)
            noise_map[batch.start:batch.stop] = noise
            pred_map[batch.start:batch.stop] = pred
            parts.append(slice_stats(noise, batch.classes, pred, self.label_map.num_classes, radius, eps))
            self.seconds["scoring"] += time.perf_counter() - t0
        return concat_stats(parts), noise_map, pred_map


def _ceil_to(n: int, divisor: int) -> int:
    return -(-n // divisor) * divisor


def dataset_probabilities(run_dir: Path | str, dataset_dir: Path | str, device: str = "cpu",
                          out_of_fold: bool = True) -> Iterator[CaseProbabilities]:
    """The run's probabilities for every readable case of a dataset, routed as `score` routes them.

    For benchmarks and baselines (e.g. cleanlab on the same out-of-fold probabilities); holds one case at a time.
    """
    from ..data import discover_dataset, iter_cases
    from ..formats.run import load_run
    from .routing import is_fit_dataset, route_case

    info = load_run(run_dir)
    dataset = discover_dataset(dataset_dir)
    scorer = CaseScorer(info, Path(run_dir), device=device)
    fit = is_fit_dataset(info, dataset)
    for case, _ in iter_cases(dataset):
        chosen, routing = route_case(case.case_id, info.models, fit, out_of_fold)
        parts = list(scorer.batches(case, chosen))
        yield CaseProbabilities(case.case_id, np.concatenate([b.classes for b in parts]),
                                np.concatenate([b.prob for b in parts]).astype(np.float32, copy=False),
                                np.concatenate([b.uncertainty for b in parts]).astype(np.float32, copy=False), routing)

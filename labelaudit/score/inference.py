"""The run's ONNX Runtime models as a probability source: the fold models' mean softmax over K perturbed passes,
its uncertainty and (MCPM) the meta weight, for one case at a time (score/scorer.py scores them).

Array legend: S slices of one case, b slices of one batch, C classes, C_in input channels, K perturbations,
H x W the case's native in-plane pixels, h x w the network's (after resampling), Hp x Wp padded to the run's
divisor. Never imports torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import PixelScore
from ..errors import ModelError, UsageError
from ..formats.run import RunInfo, perturbation_noise
from ..preprocess import (
    ChannelNorm, LabelMap, Preprocessing, normalise_image, pad_to_multiple, resample_slices, restore_in_plane,
)
from ..types import Case, Routing
from .formulas import MCPM_PIXEL_SCORE, PIXEL_SCORE, normalised_entropy
from .routing import model_name, route_case
from .scorer import ProbabilityBatch, Route


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


#: ONNX Runtime's working memory per pixel of one pass, per channel of the U-Net's full-resolution tensors
#: (features[0] + features[1] + features[-1]): measured 10-13 bytes on 4 widths (bench/score_throughput.py); 14.
BYTES_PER_PIXEL_CHANNEL = 14
#: Budget of one ORT call's working memory (estimated as above). 512 MiB: a 512x512 slice's K=8 passes of the
#: default U-Net go in 2 calls of 4 (~375 MB measured; 1 GiB, one call of 8, measured ~750 MB), so that scoring
#: a 512x512x300 CT stays well under 2 GB whatever --batch-size (docs/decisions.md).
CALL_MEMORY_BYTES = 1 << 29


def pass_bytes_per_pixel(info: RunInfo) -> int:
    """Bytes of ORT working memory per pixel of one pass of the run's network (its NetParams from run.json)."""
    features = info.settings.net.features  # a run.json without its net: that of its time (RunSettings)
    return BYTES_PER_PIXEL_CHANNEL * (features[0] + features[1] + features[-1])


@dataclass(frozen=True)
class CallPlan:
    """How one case's slices go through ORT: `slices` per call, each with `passes` of its K perturbations."""

    slices: int
    passes: int


def plan_calls(height: int, width: int, perturbations: int, batch_size: int, bytes_per_pixel: int,
               budget: int = CALL_MEMORY_BYTES) -> CallPlan:
    """The largest calls within `budget` bytes: up to `batch_size` slices of height x width (padded) pixels,
    all K passes each; when one slice's K passes exceed it, one slice a call and K split into even chunks
    (a single pass larger than the budget still runs: it cannot be split further without tiling)."""
    per_pass = height * width * bytes_per_pixel
    if per_pass * perturbations <= budget:
        return CallPlan(max(1, min(batch_size, budget // (per_pass * perturbations))), perturbations)
    chunks = math.ceil(perturbations / max(1, budget // per_pass))
    return CallPlan(1, math.ceil(perturbations / chunks))


def pass_chunks(perturbations: int, passes: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of the K noise passes, `passes` at a time."""
    return [(k, min(perturbations, k + passes)) for k in range(0, perturbations, passes)]


def slice_normalisation(case: Case, prep: Preprocessing) -> Preprocessing:
    """`prep` with each per-case (z-score) channel fixed to this case's mean and std, as a clip-free `ct` map.

    normalise_image of any run of the case's slices with it gives exactly the float32 values of normalising
    the whole case (same statistics from the same float32 array, same arithmetic), so scoring can normalise
    a batch at a time instead of holding a float32 copy of the volume.
    """
    if len(case.channels) != len(prep.channels):
        raise ModelError(f"image has {len(case.channels)} channels, the model expects {len(prep.channels)}")
    channels = []
    for c, norm in enumerate(prep.channels):
        if norm.kind == "ct":
            channels.append(norm)
            continue
        channel = np.ascontiguousarray(case.channels[c].to_slices(), dtype=np.float32)  # normalise_image's copy
        mean, std = float(channel.mean()), float(channel.std())
        del channel
        channels.append(ChannelNorm("ct", -math.inf, math.inf, mean, max(std, 1e-6)))
    return replace(prep, channels=tuple(channels))


def prepare_slices(case: Case, prep: Preprocessing, start: int, stop: int) -> np.ndarray:
    """Slices start:stop as network input, float32 (b, C_in, h, w); `prep` from slice_normalisation."""
    image = np.stack([c.to_slices()[start:stop] for c in case.channels], axis=1)
    return resample_slices(normalise_image(image, prep), prep.resample_factor(case), order=1)


class OnnxSource:
    """The run's fold models on ONNX Runtime: routes each case (out-of-fold on the fit dataset) and runs them."""

    def __init__(self, info: RunInfo, run_dir: Path, device: str = "auto", batch_size: int = 16,
                 perturbations: int | None = None, pixel_score: PixelScore | None = None,
                 fit_dataset: bool = False, out_of_fold: bool = True, memory_budget: int = CALL_MEMORY_BYTES) -> None:
        from .providers import MetaWeighter, Segmenter, choose_device

        calibration = info.threshold
        self.notes: list[str] = []
        self.fit_dataset, self.out_of_fold = fit_dataset, out_of_fold

        if batch_size < 1:
            raise UsageError(f"--batch-size {batch_size}: expected at least 1")
        self.info = info
        self.label_map: LabelMap = info.label_map
        self.prep = info.preprocessing
        self.noise_params = info.perturbations if perturbations is None else replace(info.perturbations,
                                                                                     k=int(perturbations))
        if self.noise_params.k < 1:
            raise UsageError(f"perturbations K={self.noise_params.k}: expected at least 1")
        self.perturbations = self.noise_params.k
        self.batch_size = batch_size
        if memory_budget < 1:
            raise UsageError(f"memory budget {memory_budget} bytes: expected at least 1")
        self.memory_budget = int(memory_budget)
        self.bytes_per_pixel = pass_bytes_per_pixel(info)
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
            self._noise = {key: perturbation_noise(self.noise_params, len(self.prep.channels), height, width)}
        return self._noise[key]

    def predict(self, image: np.ndarray, chosen: list[int], label: np.ndarray | None = None,
                passes: int | None = None, release: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """image float32 (b, C_in, Hp, Wp) -> prob_mean (b, C, Hp, Wp), uncertainty (b, Hp, Wp), ensembled, and
        for MCPM runs with `label` (int64 class indices (b, Hp, Wp)) the meta weight R (b, Hp, Wp), else None.

        Each fold's R comes from its own Theta on its own segmenter's prob_mean; the ensemble's R is their mean.
        passes: perturbations per ORT call (all K by default); release: this is the case's last call.
        """
        noise = self.noise_bank(*image.shape[-2:])
        chunks = pass_chunks(len(noise), passes or len(noise))
        start = time.perf_counter()
        meta = self.uses_meta_weight and label is not None
        weight = None
        if len(chosen) == 1:
            prob, unc = self._segment(chosen[0], image, noise, chunks, release and not meta)
            if meta:
                weight = self.meta_weighters[chosen[0]].run(image, label, prob, release)
        else:
            prob = None
            for n, i in enumerate(chosen):
                last = release and n == len(chosen) - 1
                p, _ = self._segment(i, image, noise, chunks, last and not meta)
                prob = p if prob is None else prob + p
                if meta:
                    r = self.meta_weighters[i].run(image, label, p, last)
                    weight = r if weight is None else weight + r
            prob = prob / len(chosen)
            weight = weight / len(chosen) if weight is not None else None
            unc = normalised_entropy(prob)  # the ensemble's own uncertainty, not the mean of the models'
        self.seconds["inference"] += time.perf_counter() - start
        return prob, unc, weight

    def _segment(self, i: int, image: np.ndarray, noise: np.ndarray, chunks: list[tuple[int, int]],
                 release: bool) -> tuple[np.ndarray, np.ndarray]:
        """Model i's mean over the K passes, one call per chunk of passes (the graph's own output for one chunk)."""
        if len(chunks) == 1:
            return self.segmenters[i].run(image, noise, release)
        prob = None
        for j, (a, b) in enumerate(chunks):
            part, _ = self.segmenters[i].run(image, noise[a:b], release and j == len(chunks) - 1)
            part *= np.float32((b - a) / len(noise))
            prob = part if prob is None else prob + part
        return prob, normalised_entropy(prob)

    def route(self, case_id: str) -> Route:
        """The fold model(s) that held the case out on the fit dataset, else the ensemble (routing.route_case)."""
        chosen, routing = route_case(case_id, self.info.models, self.fit_dataset, self.out_of_fold)
        return Route(tuple(chosen), model_name(self.info.models, chosen), routing)

    def batches(self, case: Case, route: Route) -> Iterator[ProbabilityBatch]:
        """The routed models' output for `case`, a few slices at a time, on the case's native in-plane grid.

        Each ORT call's working memory stays within the memory budget (plan_calls), whatever the case's size
        and --batch-size; slices are normalised a batch at a time, so nothing here holds a copy of the volume,
        and the shared CPU arena is handed back after the case's last call. Raises InputError when the label
        holds values outside the run's classes.
        """
        chosen = list(route.parts)
        labels = case.label_slices()  # (S, H, W) native label values, a view; encoded per batch (int64 is big)
        prep = slice_normalisation(case, self.prep)
        num_slices, native = labels.shape[0], labels.shape[1:]
        factor = self.prep.resample_factor(case)
        net = [max(1, round(n * f)) for n, f in zip(native, factor)]  # io.image.resample_slices' output size
        plan = plan_calls(_ceil_to(net[0], self.prep.divisor), _ceil_to(net[1], self.prep.divisor),
                          self.perturbations, self.batch_size, self.bytes_per_pixel, self.memory_budget)
        for start in range(0, num_slices, plan.slices):
            stop = min(num_slices, start + plan.slices)
            image = prepare_slices(case, prep, start, stop)  # (b, C_in, h, w)
            h, w = image.shape[-2:]
            padded, _ = pad_to_multiple(image, self.prep.divisor)
            given_net = None
            if self.uses_meta_weight:  # Theta sees the label on the network's grid, as in training
                given_net = resample_slices(self.label_map.encode(labels[start:stop]), factor, order=0)
                given_net, _ = pad_to_multiple(given_net, self.prep.divisor)
            prob, unc, weight = self.predict(padded, chosen, given_net, plan.passes, release=stop == num_slices)
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


def _ceil_to(n: int, divisor: int) -> int:
    return -(-n // divisor) * divisor


def dataset_probabilities(run_dir: Path | str, dataset_dir: Path | str, device: str = "cpu",
                          out_of_fold: bool = True) -> Iterator[CaseProbabilities]:
    """The run's probabilities for every readable case of a dataset, routed as `score` routes them.

    For benchmarks and baselines (e.g. cleanlab on the same out-of-fold probabilities); holds one case at a time.
    """
    from ..data import discover_dataset, iter_cases
    from ..formats.run import load_run
    from .routing import is_fit_dataset

    info = load_run(run_dir)
    dataset = discover_dataset(dataset_dir)
    source = OnnxSource(info, Path(run_dir), device=device, fit_dataset=is_fit_dataset(info, dataset),
                        out_of_fold=out_of_fold)
    for case, _ in iter_cases(dataset):
        route = source.route(case.case_id)
        routing = route.routing
        parts = list(source.batches(case, route))
        yield CaseProbabilities(case.case_id, np.concatenate([b.classes for b in parts]),
                                np.concatenate([b.prob for b in parts]).astype(np.float32, copy=False),
                                np.concatenate([b.uncertainty for b in parts]).astype(np.float32, copy=False), routing)

"""The training loop every method shares: slice sampling, augmentation, optimiser, checkpoints, resume.

Array legend: B batch, C_in input channels, C classes, S slices, h x w slice pixels, ph x pw patch pixels.
Determinism: a numpy Generator (sampling) and a torch.Generator (augmentation, perturbations) are the only
random sources; both are saved in every checkpoint, so a resumed run ends with exactly the weights of an
uninterrupted one (on CPU).
"""

from __future__ import annotations

import json
import math
import pickle
import time
import zipfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import LoopParams, NetParams
from ..errors import ModelError, UsageError
from ..io.atomic import atomic_path
from .distributed import SOLO, Team
from .nets import DIVISOR, build_unet

CHECKPOINT_FORMAT = 1
#: Largest default patch side: bigger slices are randomly cropped (foreground-centred for forced samples).
MAX_AUTO_PATCH = 256

#: Members of a DDP team apply the same averaged gradients, so their weights agree to rounding at most.
DRIFT_TOLERANCE = 1e-6

#: progress(description, completed iterations, total iterations, status text)
ProgressFn = Callable[[str, int, int, str], None]


def no_progress(description: str, completed: int, total: int, status: str) -> None:
    return None


# ----------------------------------------------------------------------------- devices

def resolve_device(spec: str) -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:i`; UsageError when unavailable."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is available to PyTorch",
                             hint="use --device cpu (or auto)")
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UsageError(f"--device {spec}: expected cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(spec)
    raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:i")


# ----------------------------------------------------------------------------- sampling

class SliceSource(Protocol):
    """A prepared case as the sampler reads it: preprocessed.PreparedCase (memory maps) or ArrayCase (arrays)."""

    @property
    def in_channels(self) -> int: ...

    @property
    def size(self) -> tuple[int, int]: ...

    @property
    def slices(self) -> int: ...

    foreground: tuple[int, ...]  # slices with any non-background class

    def label_slice(self, s: int) -> np.ndarray: ...

    def image_window(self, s: int, top: int, left: int, height: int, width: int) -> np.ndarray: ...


class ArrayCase:
    """A prepared case held in memory: image (S, C_in, h, w) float32, classes (S, h, w) int."""

    def __init__(self, image: np.ndarray, classes: np.ndarray) -> None:
        self.image, self.classes = image, classes
        self.in_channels, self.slices, self.size = image.shape[1], image.shape[0], tuple(image.shape[-2:])
        self.foreground = tuple(int(s) for s in np.flatnonzero(classes.reshape(len(classes), -1).any(axis=1)))

    def label_slice(self, s: int) -> np.ndarray:
        return self.classes[s]

    def image_window(self, s: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        return self.image[s, :, top:top + height, left:left + width]


class SliceSampler:
    """Draws fixed-size 2D training patches from prepared cases, oversampling slices with foreground.

    cases: SliceSources (the preprocessed folder's memory-mapped cases) or (image (S, C_in, h, w) float32,
    classes (S, h, w) int) arrays; sizes may differ between cases. Each slice is treated as zero-padded at the
    bottom/right (as scoring pads) to a multiple of 16 and at least the patch size, and a patch of it is cut:
    only that window of the image and the slice's label are read, never a padded copy of a case.
    """

    def __init__(self, cases: Sequence[SliceSource | tuple[np.ndarray, np.ndarray]], patch_size: int | None = None,
                 foreground_fraction: float = 0.33) -> None:
        if not cases:
            raise ValueError("no cases to sample from")
        self.cases: list[SliceSource] = [ArrayCase(*c) if isinstance(c, tuple) else c for c in cases]
        sizes = [_round_up(case.size) for case in self.cases]
        cap = _round_up((patch_size or MAX_AUTO_PATCH,) * 2)
        self.patch = (min(max(s[0] for s in sizes), cap[0]), min(max(s[1] for s in sizes), cap[1]))
        self.padded = [(max(h, self.patch[0]), max(w, self.patch[1])) for h, w in sizes]
        # (case, slice) pairs: every slice, and those with foreground, in case then slice order
        self.slices = np.array([(c, s) for c, case in enumerate(self.cases) for s in range(case.slices)],
                               dtype=np.int64).reshape(-1, 2)
        self.foreground = np.array([(c, s) for c, case in enumerate(self.cases) for s in case.foreground],
                                   dtype=np.int64).reshape(-1, 2)
        self.foreground_fraction = foreground_fraction
        self.in_channels = self.cases[0].in_channels

    def sample(self, batch_size: int, rng: np.random.Generator, rows: Sequence[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """A batch: image (B, C_in, ph, pw) float32, classes (B, ph, pw) int64.

        rows: only these rows of the batch are returned (a DDP team member's share); the draws are those of the
        whole batch, so `rng` advances the same for every member.
        """
        keep = range(batch_size) if rows is None else rows
        forced = 0
        if len(self.foreground) and self.foreground_fraction > 0:
            forced = max(1, int(round(batch_size * self.foreground_fraction)))
            forced = min(forced, batch_size)
        ph, pw = self.patch
        out = {b: i for i, b in enumerate(keep)}
        images = np.zeros((len(out), self.in_channels, ph, pw), dtype=np.float32)
        classes = np.zeros((len(out), ph, pw), dtype=np.int64)
        for b in range(batch_size):
            pool = self.foreground if b < forced else self.slices
            c, s = (int(v) for v in pool[int(rng.integers(len(pool)))])
            case, (h, w) = self.cases[c], self.padded[c]
            label = case.label_slice(s)  # unpadded; the padding holds no foreground, so nonzero() is the same
            if b < forced and (h > ph or w > pw):
                ys, xs = np.nonzero(label)
                pick = int(rng.integers(len(ys)))
                top = int(np.clip(ys[pick] - ph // 2, 0, h - ph))
                left = int(np.clip(xs[pick] - pw // 2, 0, w - pw))
            else:
                top, left = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
            if b not in out:
                continue
            i = out[b]
            window = case.image_window(s, top, left, ph, pw)  # cut at the slice's edge: the rest is padding
            images[i, :, :window.shape[1], :window.shape[2]] = window
            cut = label[top:top + ph, left:left + pw]
            classes[i, :cut.shape[0], :cut.shape[1]] = cut
        return images, classes


def _round_up(size: tuple[int, ...]) -> tuple[int, int]:
    return tuple(int(math.ceil(v / DIVISOR) * DIVISOR) for v in size)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- augmentation

def augment_batch(image: torch.Tensor, classes: torch.Tensor, params: LoopParams,
                  generator: torch.Generator, rows: Sequence[int] | None = None,
                  batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, a small rotation/scaling and an intensity scale/shift, all drawn from `generator`.

    image: (B, C_in, H, W) float32 on CPU; classes: (B, H, W) int64. The same number of random values is
    drawn whatever is applied, so the generator's stream does not depend on the outcome. With `rows`, image
    holds those rows of a batch of `batch_size` (a DDP team member's share): the whole batch's values are
    drawn and the rows' are used, so every member's stream stays the same.
    """
    b = image.shape[0]
    draws = torch.rand(batch_size or b, 7, generator=generator, dtype=torch.float64)
    if rows is not None:
        draws = draws[list(rows)]
    flip_w, flip_h = draws[:, 0] < 0.5, draws[:, 1] < 0.5
    image, classes = image.clone(), classes.clone()
    for i in range(b):
        if flip_w[i]:
            image[i], classes[i] = image[i].flip(-1), classes[i].flip(-1)
        if flip_h[i]:
            image[i], classes[i] = image[i].flip(-2), classes[i].flip(-2)
    apply = draws[:, 2] < params.affine_probability
    if apply.any():
        angle = (draws[:, 3] * 2 - 1) * math.radians(params.rotation_deg)
        zoom = 1 + (draws[:, 4] * 2 - 1) * params.scale_range
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.zeros(b, 2, 3, dtype=torch.float32)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        idx = torch.nonzero(apply).flatten()
        grid = F.affine_grid(theta[idx], [len(idx), 1, *image.shape[-2:]], align_corners=False)
        image[idx] = F.grid_sample(image[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped = F.grid_sample(classes[idx, None].float(), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)
        classes[idx] = warped[:, 0].round().long()
    scale = 1 + (draws[:, 5] * 2 - 1) * params.intensity_scale
    shift = (draws[:, 6] * 2 - 1) * params.intensity_shift
    image = image * scale.float().view(b, 1, 1, 1) + shift.float().view(b, 1, 1, 1)
    return image, classes


# ----------------------------------------------------------------------------- losses shared by methods

def soft_dice_loss(probs: torch.Tensor, classes: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """1 - soft Dice over the foreground classes (nnU-Net's batch Dice; background excluded).

    probs: (B, C, H, W) float; classes: (B, H, W) int64. Returns a scalar, or (B,) with `per_image`.
    """
    num_classes = probs.shape[1]
    onehot = F.one_hot(classes, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (2, 3) if per_image else (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + 1.0) / (denominator + 1.0)  # smooth 1: empty class with empty prediction = 1
    fg = dice[..., 1:] if num_classes > 1 else dice
    return 1 - fg.mean(-1)


# ----------------------------------------------------------------------------- methods

class TrainingMethod(Protocol):
    """What a training method supplies to the loop (train/registry.py builds one per Method)."""

    name: str

    def setup(self, student: nn.Module, num_classes: int, total_iterations: int, device: torch.device,
              team: Team = SOLO) -> None: ...

    def loss(self, student: nn.Module, image: torch.Tensor, classes: torch.Tensor, step: int,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]: ...

    def after_step(self, student: nn.Module, step: int) -> None: ...

    def deploy_net(self, student: nn.Module) -> nn.Module: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save through a temp file + os.replace: an interruption never leaves half a checkpoint."""
    # torch names the archive after the file's stem, and refuses an empty one (a bare ".tmp-XXXX")
    with atomic_path(path, suffix=path.suffix or ".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (weights_only); a truncated or foreign file is a ModelError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: checkpoint missing") from exc
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: checkpoint is truncated or corrupt ({reason})",
                         hint="delete it to restart this fold, or start over with --force") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not a labelaudit checkpoint (format {state.get('format') if isinstance(state, dict) else '?'})",
                         hint="start over with --force")
    return state


def _rng_state(rng: np.random.Generator, generator: torch.Generator) -> dict:
    # numpy's state holds 128-bit ints: stored as JSON text, which weights_only loading accepts
    return {"numpy": json.dumps(rng.bit_generator.state), "torch": generator.get_state()}


def _set_rng_state(state: dict, rng: np.random.Generator, generator: torch.Generator) -> None:
    rng.bit_generator.state = json.loads(state["numpy"])
    generator.set_state(state["torch"])


# ----------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    """A trained model: the network to deploy (CPU, eval mode) and the per-epoch log."""

    net: nn.Module
    log: list[dict] = field(default_factory=list)
    device: str = "cpu"

    @property
    def final_loss(self) -> float:
        return float(self.log[-1]["loss"]) if self.log else float("nan")


def train(method: TrainingMethod, sampler: SliceSampler, num_classes: int, params: LoopParams,
          net_params: NetParams, seed: int, device: torch.device, checkpoint: Path, resume: bool = False,
          progress: ProgressFn = no_progress, description: str = "training", team: Team = SOLO) -> TrainResult:
    """Train `method` on patches from `sampler`; write `checkpoint` after every epoch.

    With `resume` and an existing checkpoint, continue from its epoch with the saved weights, optimiser
    and random states. Returns the deployment network (the EMA teacher for PINT) on CPU in eval mode.
    A `team` of several processes trains one model under DistributedDataParallel: each member takes its rows
    of every batch (params.batch_size is the whole team's batch), and only the leader writes the checkpoint.
    """
    team.check_batch(params.batch_size)
    rows = team.rows(params.batch_size) if team.size > 1 else None
    with torch.random.fork_rng(devices=[]):  # weight init from `seed`, without touching global state
        torch.manual_seed(seed)
        student = build_unet(sampler.in_channels, num_classes, net_params)
    student.to(device)
    method.setup(student, num_classes, params.total_iterations, device, team)
    optimizer = torch.optim.AdamW(student.parameters(), lr=params.learning_rate,
                                  weight_decay=params.weight_decay)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    log: list[dict] = []
    start_epoch = 0
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        try:
            student.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            method.load_state_dict(state["method"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"], rng, generator)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelError(f"{checkpoint}: does not match this run's network or method ({exc})",
                             hint="start over with --force") from exc
        start_epoch, log = int(state["epoch"]), list(state["log"])
    model = team.wrap(student, device)  # after loading: DDP starts from the leader's parameters

    total = params.total_iterations
    done = start_epoch * params.iterations_per_epoch
    progress(description, done, total, "")
    for epoch in range(start_epoch, params.epochs):
        student.train()
        started = time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # a method may report a key on some iterations only (MCPM's meta_loss)
        for it in range(params.iterations_per_epoch):
            step = epoch * params.iterations_per_epoch + it
            lr = params.learning_rate * (1 - step / total) ** params.poly_exponent
            for group in optimizer.param_groups:
                group["lr"] = lr
            image_np, classes_np = sampler.sample(params.batch_size, rng, rows)
            image, classes = torch.from_numpy(image_np), torch.from_numpy(classes_np)
            if params.augment:
                image, classes = augment_batch(image, classes, params, generator, rows, params.batch_size)
            image, classes = image.to(device), classes.to(device)
            autocast = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else nullcontext()
            with autocast:
                loss, stats = method.loss(model, image, classes, step, generator)
            if not _team_finite(loss, team):  # every member stops together, none waits in a gradient exchange
                raise ModelError(f"{description}: training diverged (loss {loss.item()} at iteration {step + 1})",
                                 hint="lower the learning rate, or check the images for extreme values")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            method.after_step(student, step)
            stats = {"loss": float(loss.detach()), **stats}
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
            done += 1
            progress(description, done, total, f"epoch {epoch + 1}/{params.epochs} loss {stats['loss']:.3f}")
        row = {"epoch": epoch + 1, **{k: v / counts[k] for k, v in sums.items()},
               "seconds": round(time.perf_counter() - started, 3), "lr": lr}
        log.append(row)
        if not team.leader:
            continue
        save_checkpoint(checkpoint, {
            "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": student.state_dict(),
            "optimizer": optimizer.state_dict(), "method": method.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": _rng_state(rng, generator), "log": log,
        })
    drift = team.drift(student)
    if drift > DRIFT_TOLERANCE:
        raise ModelError(f"{description}: the {team.size} processes training this fold ended with different "
                         f"weights (largest difference {drift:.3g})", hint="train the fold in one process")
    net = method.deploy_net(student).to("cpu").eval()
    return TrainResult(net=net, log=log, device=str(device))


def _team_finite(loss: torch.Tensor, team: Team) -> bool:
    """Whether the loss is finite on every member of the team."""
    if team.size == 1:
        return bool(torch.isfinite(loss))
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
    return not bool(team.sum(bad) > 0)

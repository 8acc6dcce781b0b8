"""Synthetic label noise and evaluation: NoiseKind, Level, NoiseParams, CorruptConfig, EvaluateConfig (stdlib only)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import UsageError


class NoiseKind(str, Enum):
    """A noise model of `labelaudit corrupt --kinds` (noise/ops.py); the order is the one --help lists."""

    DILATION = "dilation"
    EROSION = "erosion"
    ELASTIC = "elastic"
    SHIFT = "shift"
    MISSING = "missing"
    SPURIOUS = "spurious"
    WRONG_CLASS = "wrong_class"  # a component relabelled to another foreground class (multi-class data only)
    MCPM = "mcpm"

    @property
    def needs_elasticdeform(self) -> bool:
        return self in (NoiseKind.ELASTIC, NoiseKind.MCPM)

#: The default mix: every kind that needs only the base install (elastic and mcpm need elasticdeform).
DEFAULT_KINDS = (NoiseKind.DILATION, NoiseKind.EROSION, NoiseKind.SHIFT, NoiseKind.MISSING, NoiseKind.SPURIOUS)

class Level(str, Enum):
    """What `corrupt` draws: single slices (independent errors) or whole cases (one systematic error each)."""

    SLICE = "slice"
    CASE = "case"

@dataclass(frozen=True)
class NoiseParams:
    """Magnitude ranges of the noise models, in in-plane pixels (inclusive ranges).

    Defaults follow algorithms.md §3.7 for small structures (see docs/decisions.md); ``shift`` moves the
    outline 2-5 px in a random direction; max_tries: fresh parameters of one kind before another is tried.
    """

    dilation_radius: tuple[int, int] = (1, 3)
    erosion_radius: tuple[int, int] = (1, 3)
    shift_px: tuple[int, int] = (2, 5)
    translation_px: tuple[int, int] = (2, 6)
    rotation_deg: tuple[float, float] = (10.0, 30.0)
    elastic_sigma: tuple[float, float] = (2.0, 4.0)
    elastic_points: int = 3
    spurious_radius: tuple[int, int] = (2, 5)
    max_tries: int = 6

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

def _kind_choices() -> str:
    return ", ".join(k.value for k in NoiseKind)

@dataclass(frozen=True)
class CorruptConfig:
    """What `labelaudit corrupt` does: a noisy copy of `clean` in `out` with a manifest.

    rate: the fraction of the population (slices or cases with foreground) to corrupt. Kinds and level may
    be given as strings; they are checked and turned into NoiseKind / Level when the config is built.
    """

    clean: Path
    out: Path
    rate: float = 0.4
    kinds: tuple[NoiseKind, ...] = DEFAULT_KINDS
    level: Level = Level.SLICE
    seed: int = 0
    params: NoiseParams = NoiseParams()
    force: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "clean", Path(self.clean))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "kinds", tuple(NoiseKind(k) for k in self.kinds))
        object.__setattr__(self, "level", Level(self.level))

    def validate(self) -> None:
        """Raise a UsageError (exit 2) for a rate outside [0, 1], no or unknown kinds, or an unknown level."""
        if not 0.0 <= self.rate <= 1.0 or math.isnan(self.rate):
            raise UsageError(f"--rate must be between 0 and 1, got {self.rate}")
        if not self.kinds:
            raise UsageError("--kinds is empty", hint=f"choose from {_kind_choices()}")
        known = {k.value for k in NoiseKind}
        unknown = [str(k) for k in self.kinds if k not in known]
        if unknown:
            raise UsageError(f"unknown corruption kind(s) {', '.join(unknown)}", hint=f"choose from {_kind_choices()}")
        if self.level not in {v.value for v in Level}:
            raise UsageError(f"--level must be 'slice' or 'case', got '{self.level}'")

def parse_kinds(text: str) -> tuple[NoiseKind, ...]:
    """Parse a comma-separated --kinds value (order kept, repeats dropped); unknown names are a UsageError."""
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in text.split(",") if k.strip()))
    return CorruptConfig(Path("."), Path("."), kinds=kinds).kinds

@dataclass(frozen=True)
class EvaluateConfig:
    """What `evaluate` measures.

    pixel_sample: the most pixels used per pixel level (a uniform sample drawn with `seed`, identical for
    identical inputs); roi_band_px: the in-plane dilation of the ROI, in pixels.
    """

    audit_dir: Path
    truth: Path
    clean: Path | None = None
    pixel_sample: int = 2_000_000
    seed: int = 0
    roi_band_px: int = 3

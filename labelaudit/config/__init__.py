"""Every *Config and *Params, and the enums for every choice (stdlib only), one module per stage:
train.py (fit), score.py (score and check), noise.py (corrupt and evaluate), choices.py (parsing user choices).

So a config can be built, and `--help` shown, without PyTorch. Defaults say where they come from; the
measurements that chose them are in docs/decisions.md.
"""

from __future__ import annotations

from .choices import parse_choice
from .train import (
    DEFAULT_EXPORTER, DEFAULT_METHOD, DEFAULT_VARIANT, Exporter, FitConfig, LoopParams, McpmParams, MetaNormalise,
    Method, NetParams, Perturbations, PintParams, Variant, WeightRule, params_from_json, params_to_json,
    DEFAULT_PRESET, PRESET_BUDGETS, Preset, preset_budget,
)
from .score import CheckConfig, PixelScore, ScoreConfig
from .noise import DEFAULT_KINDS, CorruptConfig, EvaluateConfig, Level, NoiseKind, NoiseParams, parse_kinds
from .fix import FixConfig, FixMode, FixParams

__all__ = [
    "parse_choice", "Method", "Variant", "Exporter", "DEFAULT_METHOD", "DEFAULT_VARIANT", "DEFAULT_EXPORTER",
    "params_to_json", "NetParams", "LoopParams", "PintParams", "McpmParams", "MetaNormalise", "WeightRule",
    "params_from_json", "Preset", "DEFAULT_PRESET", "PRESET_BUDGETS", "preset_budget",
    "Perturbations", "FitConfig", "PixelScore", "ScoreConfig", "CheckConfig", "NoiseKind", "DEFAULT_KINDS",
    "Level", "NoiseParams", "CorruptConfig", "parse_kinds", "EvaluateConfig", "FixMode", "FixParams", "FixConfig",
]

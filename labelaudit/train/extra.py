"""The training extra: check that its packages import, before any work starts (stdlib only at import)."""

from __future__ import annotations

import importlib

from ..errors import TRAINING_EXTRA, MissingDependencyError

#: (module, what the error names) for every package `fit` and `export` need beyond the base install.
_PACKAGES = (("torch", "PyTorch (training)"), ("monai", "MONAI (training)"),
             ("safetensors", "safetensors (training)"), ("onnx", "onnx (export)"))


def require_training_extra() -> None:
    """Raise MissingDependencyError (exit 5) when a package of the training extra cannot be imported."""
    for module, what in _PACKAGES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependencyError(what, TRAINING_EXTRA) from None

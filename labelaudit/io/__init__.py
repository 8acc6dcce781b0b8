"""Files in and out: SimpleITK <-> Volume (image.py, the only module that imports SimpleITK), the NIfTI
checks ITK skips (nifti.py, numpy only), file endings (endings.py) and atomic writes (atomic.py), stdlib only.

`from labelaudit import io; io.read_volume(...)` reaches image.py lazily, so importing `io.atomic` alone
does not load SimpleITK.
"""

from __future__ import annotations

import importlib


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module(".image", __name__), name)

"""Copying a dataset folder for a derived dataset (`corrupt`, `fix`): inputs are never modified."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .endings import IMAGE_ENDINGS, split_ending


def copy_dataset_files(root: Path, dest: Path, skip: set[Path], label_dirs: set[Path]) -> None:
    """Copy every file under `root` to the same place under `dest`, except `skip` and files already there.

    Image files outside `label_dirs` are hard-linked when possible (the copy only ever replaces labels, and a
    link saves the disk space of every image); everything else is copied with its metadata.
    """
    for dirpath, _, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        target = dest / here.relative_to(root)
        target.mkdir(parents=True, exist_ok=True)
        in_labels = any(here == d or d in here.parents for d in label_dirs)
        for name in filenames:
            src = here / name
            if src in skip or (target / name).exists():
                continue
            ending = split_ending(name)[1].lower()
            if not in_labels and (ending in IMAGE_ENDINGS or ending == ""):  # DICOM files often have no ending
                try:
                    os.link(src, target / name)
                    continue
                except OSError:
                    pass  # another file system, or links not allowed: copy
            shutil.copy2(src, target / name)

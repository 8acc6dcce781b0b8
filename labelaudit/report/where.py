"""Where to look at one case: its files, the slices to visit, and the commands that open it in ITK-SNAP and
3D Slicer (the report's "Open in 3D Slicer / ITK-SNAP" block)."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from .picture import escape as _e
from .views import CaseView


def _rel(path: str, root: str | None) -> str:
    """`path` relative to `root` when inside it, else as given."""
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve())) if root else path
    except ValueError:
        return path


def _abs(rel: str | None, out_dir: str | None) -> str:
    return str(Path(out_dir) / rel) if out_dir and rel else (rel or "")


def _command(title: str, command: str) -> str:
    """A command to copy: it wraps at spaces, and inside a long path only after a `/` (never mid-name)."""
    # a break may follow a slash that ends a folder name (escaped text holds no `/` of its own)
    text = re.sub(r"(?<=[\w.~-])/(?=\w)", "/<wbr>", _e(command))
    return (f'<div class="cmd-box"><p class="cmd-label">{_e(title)}:</p><button type="button" class="copy" '
            f'title="copy the command">copy</button><pre class="cmd">{text}</pre></div>')


def where_html(case, view: CaseView | None, audit, slice_list: list[int]) -> str:
    """The 'Open in 3D Slicer / ITK-SNAP' block: the files, the axis and the slices to visit, two commands."""
    dataset_root = audit.dataset.path
    out_dir = str(audit.out_dir) if audit.out_dir is not None else None
    files = []
    images = list(view.images) if view else []
    label = view.label if view else ""
    for i, path in enumerate(images):
        files.append((f"image{f' (channel {i})' if len(images) > 1 else ''}", _rel(path, dataset_root), path))
    if label:
        files.append(("label", _rel(label, dataset_root), label))
    fixed = view.fixed_map if view else ""
    noise_abs, pred_abs, fixed_abs = (_abs(r, out_dir) for r in (case.noise_map, case.pred_map, fixed))
    for name, short, full in (("noise map", case.noise_map, noise_abs), ("robust prediction", case.pred_map, pred_abs),
                              ("fixed label", fixed, fixed_abs)):
        if short:
            files.append((name, short, full))
    rows = "".join(f'<dt>{_e(k)}</dt><dd><code title="{_e(full)}">{_e(short)}</code></dd>' for k, short, full in files)
    if view is not None and view.orientation.itk_axis >= 0:
        o = view.orientation
        axis = (f"{o.plane} slices, voxel index {o.axis_name} (0-based, of {o.num_slices}): "
                f"{', '.join(str(i) for i in slice_list) or '—'}")
    else:
        axis = f"slice index: {', '.join(str(i) for i in slice_list) or '—'}"
    commands = ""
    if images and label:
        image, label, noise_abs, fixed_abs = (os.path.abspath(p) if p else "" for p in (images[0], label, noise_abs,
                                                                                       fixed_abs))
        overlays = " ".join(shlex.quote(p) for p in (noise_abs, fixed_abs) if p)
        itksnap = f"itksnap -g {shlex.quote(image)} -s {shlex.quote(label)}" + (f" -o {overlays}" if overlays else "")
        loads = [f"slicer.util.loadVolume({json.dumps(image)})", f"slicer.util.loadLabelVolume({json.dumps(label)})"]
        loads += [f"slicer.util.loadLabelVolume({json.dumps(fixed_abs)})"] if fixed_abs else []
        slicer = "Slicer --python-code " + shlex.quote("; ".join(loads))
        commands = (_command("ITK-SNAP (image, label; noise map and fixed label as overlays)", itksnap)
                    + _command("3D Slicer (image, label and fixed label)", slicer))
    return (f'<details class="where"><summary>Open in 3D Slicer / ITK-SNAP</summary><dl>{rows}</dl>'
            f'<p class="axis">{_e(axis)}</p>{commands}</details>')

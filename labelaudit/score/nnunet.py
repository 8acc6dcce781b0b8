"""nnU-Net v2 folders as probability sources: a trained-model folder's out-of-fold validation probabilities,
and the labels of a model or prediction folder, read from their plain JSON only (stdlib only).

    MODEL/dataset.json  MODEL/plans.json     (nnUNet_results/DatasetXXX/nnUNetTrainer__nnUNetPlans__3d_fullres)
    MODEL/fold_K/validation/CASE.npz         'probabilities' float (C, Z, Y, X): the softmax of fold K's model,
                                             which held CASE out, on CASE's original grid in numpy order (as
                                             SimpleITK reads the label): nnU-Net's export_prediction_from_logits
    MODEL/fold_K/validation/CASE.pkl         never opened: a pickle runs code when loaded; geometry comes from
                                             the dataset's own label files instead

`nnUNetv2_train DATASET CONFIG K --npz` writes them (`--val --npz` for a fold already trained); fold_all trained
on every case, so its validation is not out-of-fold and is not read. `nnUNetv2_predict ... --save_probabilities`
writes CASE.npz (same array) beside CASE<ending> and copies dataset.json and plans.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..formats.fields import Fields

#: Fold folders of a trained-model folder whose validation is out-of-fold.
FOLD = re.compile(r"^fold_(\d+)$")
#: Readers that reorient images to RAS before the network: their probabilities are not on the label file's grid.
REORIENTING_READERS = ("SimpleITKIOWithReorient", "NibabelIOWithReorient")
_HINT = "nnU-Net v2 writes dataset.json and plans.json into every trained-model and prediction folder"


@dataclass(frozen=True)
class NnunetLabels:
    """What labelaudit reads from an nnU-Net dataset.json (and plans.json) beside the probabilities."""

    labels: dict[str, int]  # name -> value, consecutive from 0: value = channel of the probabilities
    file_ending: str
    name: str  # the dataset's name, e.g. Dataset004_Hippocampus


@dataclass(frozen=True)
class NnunetModel:
    """A trained-model folder: its labels and, per fold, the validation probabilities of the cases it held out."""

    path: Path
    meta: NnunetLabels
    folds: dict[str, dict[str, Path]]  # "fold_0" -> {case id: fold_0/validation/CASE.npz}
    notes: tuple[str, ...] = ()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})", hint=_HINT) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})", hint=_HINT) from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(data).__name__}", hint=_HINT)
    return data


def read_nnunet_labels(folder: Path) -> NnunetLabels:
    """FOLDER/dataset.json's labels (and plans.json's reader), refusing what labelaudit cannot score.

    Region-based models (labels that are lists of values, or `regions_class_order`) output sigmoids over
    overlapping regions, not a softmax over classes; an 'ignore' label leaves voxels unannotated. Both are
    ModelErrors (exit 4), as is a reader that reorients images (its probabilities are not on the label's grid).
    """
    path = folder / "dataset.json"
    if not path.is_file():
        raise ModelError(f"{path}: missing", hint=_HINT)
    data = _read_json(path)
    f = Fields(data, path, hint=_HINT)
    raw = f.object("labels")
    regions = sorted(k for k, v in raw.data.items() if isinstance(v, (list, tuple)))
    if regions or f.has("regions_class_order"):
        raise ModelError(f"{path}: a region-based model (labels {', '.join(regions) or '?'} are regions, "
                         "regions_class_order is set): it outputs sigmoids over overlapping regions, not a softmax "
                         "over classes, and region-based models are not supported",
                         hint="audit with an nnU-Net model trained on plain labels (one value per class)")
    if "ignore" in raw.data:
        raise ModelError(f"{path}: declares an 'ignore' label (value {raw.data['ignore']!r}): labels with "
                         "unannotated voxels are not supported", hint="audit a model trained without 'ignore'")
    labels = {name: raw.int(name, minimum=0) for name in raw.data}
    if sorted(labels.values()) != list(range(len(labels))):
        raise ModelError(f"{path}: labels must take the values 0, 1, …, {len(labels) - 1} (one per channel of the "
                         f"probabilities, nnU-Net's rule), found {sorted(labels.values())}", hint=_HINT)
    plans = folder / "plans.json"
    if plans.is_file():
        reader = Fields(_read_json(plans), plans, hint=_HINT).str("image_reader_writer", "")
        if reader in REORIENTING_READERS:
            raise ModelError(f"{plans}: image_reader_writer {reader} reorients every image before the network, "
                             "so its probabilities are not on the label file's grid",
                             hint="audit a model planned with SimpleITKIO or NibabelIO")
    return NnunetLabels(labels, f.str("file_ending", ""), f.str("name", "") or folder.parent.name)


def is_model_folder(path: Path) -> bool:
    """Whether `path` looks like an nnU-Net trained-model folder (it has fold_K/ subfolders)."""
    return path.is_dir() and any(FOLD.match(p.name) and p.is_dir() for p in path.iterdir())


def read_model_folder(path: Path) -> NnunetModel:
    """Index a trained-model folder's fold_K/validation/CASE.npz (the .pkl beside them are never opened)."""
    meta = read_nnunet_labels(path)
    folds: dict[str, dict[str, Path]] = {}
    notes = []
    for fold in sorted((p for p in path.iterdir() if p.is_dir() and FOLD.match(p.name)),
                       key=lambda p: int(FOLD.match(p.name)[1])):
        validation = fold / "validation"
        found = {p.name[:-len(".npz")]: p for p in sorted(validation.glob("*.npz"))} if validation.is_dir() else {}
        if found:
            folds[fold.name] = found
        else:
            notes.append(f"{fold}: no validation/*.npz (write them with `nnUNetv2_train DATASET CONFIG "
                         f"{fold.name[5:]} --val --npz`)")
    if not folds:
        raise ModelError(f"{path}: no fold_K/validation/CASE.npz in any fold: nnU-Net writes the out-of-fold "
                         "probabilities only when trained with --npz",
                         hint="run `nnUNetv2_train DATASET CONFIG FOLD --val --npz` for every trained fold")
    return NnunetModel(path, meta, folds, tuple(notes))

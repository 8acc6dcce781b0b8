"""dataset.json of the nnU-Net v2 / MSD layout: the fields labelaudit reads, each checked (stdlib only).

A field of the wrong type is a DatasetError (exit 3) naming the file, the field and what was expected, never
an AttributeError (exit 70).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..io.endings import DATASET_ENDINGS
from .fields import Fields, load_json

HINT = "nnU-Net v2 dataset.json needs channel_names, labels, numTraining, file_ending"


@dataclass(frozen=True)
class DatasetJson:
    """What labelaudit reads from dataset.json, validated."""

    labels: dict[str, int]  # name -> value
    channel_names: dict[str, str] | None  # channel index "0", "1", … -> modality; None for a paired layout
    file_ending: str | None  # None: not declared (MSD, whose `training` list implies .nii.gz)
    name: str | None  # as written; data.py makes it safe for folder names
    num_training: int | None = None


def read_dataset_json(path: Path, layout: str = "nnunet") -> DatasetJson:
    """Parse and check dataset.json; a syntax error or a missing or mistyped field is a DatasetError naming it.

    nnU-Net v2 needs `labels`, `channel_names` and `file_ending`; MSD's `modality` stands in for
    `channel_names` and its `training` list for `file_ending` (always .nii.gz). A paired layout
    only reads `labels` from it.
    """
    meta = load_json(path, DatasetError, hint="fix the syntax, e.g. with `python -m json.tool dataset.json`")
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    fields = Fields(meta, path, error=DatasetError, hint=HINT)
    if "labels" not in meta:
        raise DatasetError(f"{path}: required field 'labels' is missing", hint=HINT)
    if not isinstance(meta["labels"], dict):
        raise DatasetError(f"{path}: field 'labels' must map names to integers, found {type(meta['labels']).__name__}",
                           hint=HINT)
    labels = parse_labels(meta["labels"], path)
    if layout != "nnunet":
        return DatasetJson(labels, None, None, None)
    key = "channel_names" if fields.has("channel_names") or not fields.has("modality") else "modality"
    if key not in meta:
        raise DatasetError(f"{path}: required field 'channel_names' is missing", hint=HINT)
    if "file_ending" not in meta and "training" not in meta:  # MSD has no file_ending: .nii.gz
        raise DatasetError(f"{path}: required field 'file_ending' is missing", hint=HINT)
    if "training" in meta:
        _require(fields, "training", isinstance(meta["training"], list), "a list")
    ending = None
    if "file_ending" in meta:
        ending = meta["file_ending"]
        _require(fields, "file_ending", isinstance(ending, str) and ending.lower() in DATASET_ENDINGS,
                 "one of " + ", ".join(repr(e) for e in DATASET_ENDINGS))
    num_training = meta.get("numTraining")
    _require(fields, "numTraining", "numTraining" not in meta or (
        isinstance(num_training, int) and not isinstance(num_training, bool) and num_training >= 0),
        "an integer of at least 0")
    name = meta.get("name")
    _require(fields, "name", name is None or isinstance(name, str), "a string")
    return DatasetJson(labels, _channel_names(fields, key), ending, name or None, num_training)


def _require(fields: Fields, key: str, ok: bool, expected: str) -> None:
    if not ok:
        raise fields.fail(key, expected)


def _channel_names(fields: Fields, key: str) -> dict[str, str]:
    """channel_names (or MSD's modality): {"0": "CT", …}, keys channel indices, values strings."""
    raw: Any = fields.data[key]
    _require(fields, key, isinstance(raw, dict), 'an object such as {"0": "CT"}')
    channels = Fields(raw, fields.path, key, DatasetError, HINT)
    names: dict[str, str] = {}
    for index in raw:
        if not (index.isdigit() and index.isascii() and str(int(index)) == index):
            raise DatasetError(f"{fields.path}: field '{key}': key {index!r} is not a channel index, "
                               'expected "0", "1", … (one per channel file _0000, _0001, …)', hint=HINT)
        names[index] = channels.str(index)
    return names


def parse_labels(raw: dict, path: Path) -> dict[str, int]:
    """nnU-Net v2 maps name -> value; MSD maps "value" -> name. Return name -> int value."""
    labels: dict[str, int] = {}
    for key, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            labels[str(key)] = value
        elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                       for v in value):  # nnU-Net regions
            labels[str(key)] = max(value)
        elif str(key).lstrip("-").isdigit() and isinstance(value, str):
            labels[value] = int(key)
        else:
            raise DatasetError(f"{path}: label '{key}' has value {value!r}, expected an integer")
    if 0 not in labels.values():
        raise DatasetError(f"{path}: 'labels' declares no background (value 0), found values "
                           f"{sorted(set(labels.values()))}")
    return labels

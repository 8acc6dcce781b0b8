"""The calibration folder of given probabilities: what `check --probabilities SRC --model DIR` flags with.

`score DATASET --probabilities SRC` (on the training data's out-of-fold probabilities) derives the flagging
thresholds with fit's rule and writes them here, with the label set they belong to; no ONNX graph and no
weights, the model stays the user's. A sibling of the run folder's run.json (formats/run.py), told apart by
its "kind", so that neither is taken for the other.

    DIR/run.json  {"format": 1, "kind": "probabilities", "created", "classes", "threshold", "source",
                   "dataset", "versions"}

stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from ..io.atomic import write_json
from ..preprocess import LabelMap
from ..types import Calibration
from .fields import Fields, load_json
from .run import RUN_FORMAT, DatasetRecord, read_calibration, read_label_map

PROBABILITY_KIND = "probabilities"
#: Where `score --probabilities` writes the folder inside the audit folder.
CALIBRATION_FOLDER = "calibration"
_HINT = ("write one with: labelaudit score TRAINING_DATASET --probabilities SRC (it goes to "
         f"AUDIT_DIR/{CALIBRATION_FOLDER})")


@dataclass(frozen=True)
class SourceRecord:
    """The probabilities a calibration was derived from."""

    description: str
    paths: tuple[str, ...]
    routing: str  # out-of-fold (nnU-Net validation) or new-data (files of unknown provenance)

    def to_json(self) -> dict:
        return {"description": self.description, "paths": list(self.paths), "routing": self.routing}

    @classmethod
    def from_fields(cls, f: Fields) -> SourceRecord:
        return cls(f.str("description", ""), tuple(f.strings("paths", [])), f.str("routing", ""))


@dataclass(frozen=True)
class ProbabilityRun:
    """DIR/run.json of a calibration folder: the label set, the calibrated thresholds and where they came from."""

    label_map: LabelMap
    threshold: Calibration
    source: SourceRecord
    dataset: DatasetRecord
    created: str = ""
    versions: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": RUN_FORMAT, "kind": PROBABILITY_KIND, "created": self.created,
                "classes": self.label_map.to_json(), "threshold": self.threshold.to_json(),
                "source": self.source.to_json(), "dataset": self.dataset.to_json(), "versions": self.versions}

    @classmethod
    def from_json(cls, data, where: Path) -> ProbabilityRun:
        """Parse the file's content; a field of the wrong shape is a ModelError (exit 4) naming it."""
        f = Fields(data, where, hint=_HINT)
        if f.data.get("kind") != PROBABILITY_KIND:
            if f.has("models") or f.has("method"):
                raise ModelError(f"{where}: the run folder of `labelaudit fit`; its thresholds were calibrated for "
                                 "its own ONNX models, not for the probabilities given with --probabilities",
                                 hint="calibrate on the training data's probabilities: " + _HINT.split(": ", 1)[1])
            raise f.fail("kind", repr(PROBABILITY_KIND))
        if f.data.get("format") != RUN_FORMAT:
            raise f.fail("format", str(RUN_FORMAT))
        threshold = read_calibration(f.object("threshold"))
        if threshold is None:
            raise f.fail("threshold", "the calibrated thresholds")
        return cls(label_map=read_label_map(f.object("classes")), threshold=threshold,
                   source=SourceRecord.from_fields(f.object("source")),
                   dataset=DatasetRecord.from_fields(f.object("dataset")), created=f.str("created", ""),
                   versions=f.object("versions", None).data if f.has("versions") else {})


def save_probability_run(folder: Path | str, run: ProbabilityRun) -> Path:
    path = Path(folder) / "run.json"
    write_json(path, run.to_json())
    return path


def read_probability_run(folder: Path | str) -> ProbabilityRun:
    """DIR/run.json of a calibration folder, validated (ModelError, exit 4, naming what is wrong)."""
    folder = Path(folder)
    path = folder / "run.json"
    if not folder.is_dir():
        raise ModelError(f"{folder}: calibration folder not found", hint=_HINT)
    if not path.is_file():
        raise ModelError(f"{path}: missing", hint=_HINT)
    data = load_json(path, hint=_HINT)
    return ProbabilityRun.from_json(data, path)

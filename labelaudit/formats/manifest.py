"""corruption.json, the manifest `labelaudit corrupt` writes into the noisy copy: typed, validated when read.

    OUT/corruption.json   format, source, rate, level, kinds, seed, population, population_size,
                          corrupted_count, achieved_rate, classes, noise_params, skipped,
                          cases: {case_id: {corrupted, changed_pixels, label_file, [corruption], slices}}
                          slices: [{slice_index, corrupted, kind, class, params, changed_pixels, eligible}]

Only `format`, `cases` and, per case, `corrupted`, `label_file` and `slices[{slice_index, corrupted}]` are
required, so a hand-made truth file works with `evaluate`; a field of the wrong type is an InputError (exit 3)
naming the file and the field. `evaluate` reads the `Manifest` view (per-slice truth, paths resolved).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..config import Level, NoiseKind, NoiseParams
from ..errors import InputError
from .fields import Fields, load_json

MANIFEST_NAME = "corruption.json"
MANIFEST_FORMAT = 1
_HINT = "--truth is the corruption.json that `labelaudit corrupt` wrote"


@dataclass(frozen=True)
class Corruption:
    """One sampled corruption: apply it with `noise.ops.apply_corruption`; `params` is JSON-serialisable."""

    kind: NoiseKind
    label_class: int
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", NoiseKind(self.kind))

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "class": self.label_class, "params": self.params}

    @classmethod
    def from_json(cls, data: dict) -> Corruption:
        return cls(NoiseKind(data["kind"]), int(data["class"]), dict(data["params"]))


@dataclass(frozen=True)
class SliceRecord:
    """One slice of a case: whether it was corrupted, by what, and how many pixels changed.

    eligible: the slice holds foreground, so it belongs to the slice population (None: not recorded).
    """

    slice_index: int
    corrupted: bool = False
    corruption: Corruption | None = None
    changed_pixels: int = 0
    eligible: bool | None = None

    def to_json(self) -> dict:
        c = self.corruption
        data = {"slice_index": self.slice_index, "corrupted": self.corrupted,
                "kind": c.kind.value if c else None, "class": c.label_class if c else None,
                "params": c.params if c else None, "changed_pixels": self.changed_pixels}
        if self.eligible is not None:
            data["eligible"] = self.eligible
        return data


@dataclass(frozen=True)
class CaseRecord:
    """One case: its noisy label file (relative to the manifest's folder) and every slice's record.

    changed_pixels: None when the file does not say; corruption: the case's one systematic corruption
    (level case only).
    """

    case_id: str
    corrupted: bool
    changed_pixels: int | None
    label_file: str
    slices: tuple[SliceRecord, ...]
    corruption: Corruption | None = None

    def to_json(self) -> dict:
        data: dict = {"corrupted": self.corrupted, "changed_pixels": self.changed_pixels,
                      "label_file": self.label_file}
        if self.corruption is not None:
            data["corruption"] = self.corruption.to_json()
        data["slices"] = [s.to_json() for s in self.slices]
        return data


@dataclass(frozen=True)
class CorruptionManifest:
    """The whole corruption.json. `path` is where it was read from or written to (not part of its content)."""

    cases: dict[str, CaseRecord]
    source: str | None = None
    rate: float | None = None
    level: Level | None = None
    kinds: tuple[NoiseKind, ...] = ()
    seed: int | None = None
    population: str | None = None
    population_size: int | None = None
    corrupted_count: int | None = None
    achieved_rate: float | None = None
    classes: tuple[int, ...] = ()
    noise_params: NoiseParams | None = None
    skipped: dict[str, tuple[str, ...]] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "source": self.source,
            "rate": self.rate,
            "level": self.level.value if self.level is not None else None,
            "kinds": [k.value for k in self.kinds],
            "seed": self.seed,
            "population": self.population,
            "population_size": self.population_size,
            "corrupted_count": self.corrupted_count,
            "achieved_rate": self.achieved_rate,
            "classes": list(self.classes),
            "noise_params": self.noise_params.to_json() if self.noise_params is not None else None,
            "skipped": {cid: list(problems) for cid, problems in self.skipped.items()},
            "cases": {cid: case.to_json() for cid, case in self.cases.items()},
        }

    def truth(self) -> Manifest:
        """The view `evaluate` needs: per-case and per-slice flags, label paths resolved beside the file."""
        path = self.path if self.path is not None else Path(MANIFEST_NAME)
        root = path.parent
        source = None if not self.source else (Path(self.source) if Path(self.source).is_absolute()
                                               else root / self.source)
        cases = {cid: CaseTruth(cid, case.corrupted, case.changed_pixels, root / case.label_file,
                                {s.slice_index: s.corrupted for s in case.slices})
                 for cid, case in self.cases.items()}
        settings = {"rate": self.rate, "level": self.level.value if self.level is not None else None,
                    "kinds": [k.value for k in self.kinds] if self.kinds else None, "seed": self.seed}
        return Manifest(path, source, settings, cases, self)


# ----------------------------------------------------------------------------- the view evaluate reads

@dataclass(frozen=True)
class CaseTruth:
    """One case of the manifest; `label_path` is the noisy label file, absolute."""

    case_id: str
    corrupted: bool
    changed_pixels: int | None
    label_path: Path
    slices: dict[int, bool]  # slice_index -> corrupted


@dataclass(frozen=True)
class Manifest:
    """What `evaluate` measures against: the truth per case and slice; `record` is the file it came from."""

    path: Path
    source: Path | None
    settings: dict
    cases: dict[str, CaseTruth]
    record: CorruptionManifest | None = None


# ----------------------------------------------------------------------------- reader and writer

def _load(path: Path) -> object:
    if not path.exists():
        raise InputError(f"{path}: manifest not found", hint=_HINT)
    return load_json(path, InputError, hint=_HINT)


def _corruption(f: Fields) -> Corruption | None:
    """kind, class and params of a slice record or of a case's `corruption`; None when kind is absent or null."""
    kind = f.choice("kind", NoiseKind, None)
    if kind is None:
        return None
    params = f.object("params", None)
    return Corruption(kind, f.int("class"), dict(params.data) if params is not None else {})


def _slice(f: Fields) -> SliceRecord:
    return SliceRecord(f.int("slice_index", minimum=0), f.bool("corrupted"), _corruption(f),
                       f.int("changed_pixels", 0, minimum=0), f.bool("eligible", None))


def _case(case_id: str, f: Fields) -> CaseRecord:
    slices = tuple(_slice(s) for s in f.objects("slices"))
    seen: set[int] = set()
    for record in slices:
        if record.slice_index in seen:
            raise InputError(f"{f.path}: case {case_id}: slice {record.slice_index} is listed twice")
        seen.add(record.slice_index)
    corruption = f.object("corruption", None)
    return CaseRecord(case_id, f.bool("corrupted"), f.int("changed_pixels", None, minimum=0), f.str("label_file"),
                      slices, _corruption(corruption) if corruption is not None else None)


def _noise_params(f: Fields) -> NoiseParams:
    values = {}
    for spec in fields(NoiseParams):
        default = spec.default
        if not f.has(spec.name):
            continue
        if isinstance(default, tuple):
            numbers = f.numbers(spec.name, integer=isinstance(default[0], int))
            if len(numbers) != len(default):
                raise f.fail(spec.name, f"a list of {len(default)} numbers")
            values[spec.name] = tuple(numbers)
        else:
            values[spec.name] = f.int(spec.name, minimum=0)
    return NoiseParams(**values)


def read_corruption_manifest(path: Path | str) -> CorruptionManifest:
    """Read and check corruption.json; every problem is an InputError (exit 3) naming the file and the field."""
    path = Path(path)
    data = _load(path)
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise InputError(f"{path}: expected a corruption manifest (a JSON object with 'cases'), found something else",
                         hint=_HINT)
    if data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path}: manifest format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
    top = Fields(data, path, error=InputError, hint=_HINT)
    cases_field = top.object("cases")
    cases = {str(cid): _case(str(cid), cases_field.object(cid)) for cid in cases_field.data}
    if not cases:
        raise InputError(f"{path}: the manifest lists no case")
    skipped_field = top.object("skipped", None)
    skipped = ({cid: tuple(skipped_field.strings(cid)) for cid in skipped_field.data}
               if skipped_field is not None else {})
    params = top.object("noise_params", None)
    return CorruptionManifest(
        cases=cases,
        source=top.str("source", None),
        rate=top.float("rate", None, low=0.0, high=1.0),
        level=top.choice("level", Level, None),
        kinds=_kinds(top),
        seed=top.int("seed", None),
        population=top.str("population", None),
        population_size=top.int("population_size", None, minimum=0),
        corrupted_count=top.int("corrupted_count", None, minimum=0),
        achieved_rate=top.float("achieved_rate", None, low=0.0, high=1.0),
        classes=tuple(top.numbers("classes", [], integer=True)),
        noise_params=_noise_params(params) if params is not None else None,
        skipped=skipped,
        format=MANIFEST_FORMAT,
        path=path,
    )


def _kinds(top: Fields) -> tuple[NoiseKind, ...]:
    known = {k.value for k in NoiseKind}
    kinds = top.strings("kinds", [])
    for i, kind in enumerate(kinds):
        if kind not in known:
            raise InputError(f"{top.path}: field 'kinds[{i}]': expected one of "
                             + ", ".join(repr(k.value) for k in NoiseKind) + f", found {kind!r}", hint=_HINT)
    return tuple(NoiseKind(k) for k in kinds)


def read_manifest(path: Path | str) -> Manifest:
    """Read corruption.json (checked as `read_corruption_manifest` does) as the truth `evaluate` measures against."""
    return read_corruption_manifest(path).truth()


def write_corruption_manifest(manifest: CorruptionManifest, path: Path | str) -> Path:
    """Write `manifest` as corruption.json (indent 1, no final newline: the format since version 1), atomically."""
    from ..io.atomic import write_text

    return write_text(path, json.dumps(manifest.to_json(), indent=1))

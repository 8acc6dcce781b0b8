"""Fuzz `inspect`, `score` and `check` through the CLI: seeded mutations of a dataset, a run folder and a cache.

Each mutation copies a base (a 2-case synthetic dataset, a hand-built ONNX run folder, a filled cache), changes
one thing (bytes flipped, a file truncated, dataset.json or run.json fields of other types and values, odd file
names, damaged ONNX graphs, damaged cache entries) and runs the three commands in-process (typer's CliRunner).
A failure is an exit code outside 0-5, a traceback or "internal error", or a changed input file (sha256 of
every file of the dataset and the run folder, before and after).

    python bench/fuzz.py [--n 1000] [--seed 0] [--work DIR] [--results bench/RESULTS.md]

tests/test_fuzz.py runs a few dozen mutations of the same generator; the run folder is built with the
`make_run` helper of tests/conftest.py (onnx.helper, no torch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = {"slice": 0.3, "case": 0.3, "rule": "median+k*mad", "k": 3.0, "floor": 0.05}
#: Values a mutated JSON field takes: every JSON type, edge numbers, paths, NaN.
VALUES = [None, True, False, 0, -1, 1, 2, 2 ** 40, 1e308, -1e-300, 0.5, "", "x", "0", "../..", "/etc", "NaN",
          [], [1, "a"], [None], {}, {"k": "v"}, {"0": 1}, {"background": 0, "x": "1"}, float("nan"), float("inf")]
#: Case names a file may carry: spaces, formulas, unicode, long, hidden, control characters.
NAMES = ["case 000", "=cmd|' /C calc'!A0", "-rf", "@SUM(1)", "+1", "ünï©ødé", "a" * 200, "b" * 240, ".hidden",
         "case\n000", "case\x1b[31m", "case\u202e000", "..", "CASE_000", "case_000.nii", "case_001", "#x", "x;y"]
OK_EXITS = {0, 1, 2, 3, 4, 5}


@dataclass(frozen=True)
class Base:
    """The unmutated inputs every mutation starts from."""

    dataset: Path
    run: Path
    cache: Path


@dataclass
class Failure:
    index: int
    mutation: str
    command: str
    problem: str


@dataclass
class Summary:
    n: int
    seed: int
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    exits: Counter = field(default_factory=Counter)  # (command, exit code) -> count
    kinds: Counter = field(default_factory=Counter)  # mutation kind -> count

    def lines(self) -> list[str]:
        out = [f"{self.n} mutations (seed {self.seed}) in {self.seconds:.0f} s: {len(self.failures)} failure(s)"]
        for command in ("inspect", "score", "check"):
            codes = {code: n for (c, code), n in sorted(self.exits.items()) if c == command}
            out.append(f"  {command}: exit codes " + ", ".join(f"{k}: {v}" for k, v in codes.items()))
        out.append("  mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items())))
        out += [f"  FAIL #{f.index} {f.mutation} | {f.command}: {f.problem}" for f in self.failures]
        return out


# ----------------------------------------------------------------------------- the base

def _cli(args: list[object]):
    from typer.testing import CliRunner

    from labelaudit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def make_base(folder: Path, make_run: Callable[..., Path]) -> Base:
    """A 2-case dataset, a run folder fit (on paper) on it, and a cache that `check` filled."""
    from labelaudit.data import discover_dataset
    from labelaudit.preprocess import LabelMap
    from labelaudit.synth import SynthConfig, write_synth_dataset

    dataset = write_synth_dataset(folder / "Dataset042_Fuzz", SynthConfig(cases=2, size=(20, 16, 3), seed=4))
    run = make_run(folder / "run", dataset, threshold=THRESHOLD)
    data = json.loads((run / "run.json").read_text())
    data["classes"]["names"] = list(LabelMap.from_declared(discover_dataset(dataset).labels).names)
    (run / "run.json").write_text(json.dumps(data))
    cache = folder / "cache"
    result = _cli(["check", dataset, "--model", run, "--device", "cpu", "--cache", cache, "--format", "json"])
    if result.exit_code not in (0, 1):
        raise RuntimeError(f"the base does not check cleanly (exit {result.exit_code}): {result.output}")
    return Base(dataset, run, cache)


# ----------------------------------------------------------------------------- mutations

def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def flip_bytes(base: Base, rng) -> str:
    path = _pick(rng, _files(base.dataset) + _files(base.run))
    data = bytearray(path.read_bytes())
    if not data:
        return f"flip bytes of empty {path.name}"
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    return f"flip bytes of {path.relative_to(path.parents[1])}"


def truncate(base: Base, rng) -> str:
    path = _pick(rng, _files(base.dataset) + _files(base.run))
    data = path.read_bytes()
    keep = int(rng.integers(0, max(len(data), 1)))
    path.write_bytes(data[:keep])
    return f"truncate {path.name} to {keep} of {len(data)} bytes"


def _set_field(data, rng, depth: int = 0):
    """Set (or delete) one field somewhere in a JSON tree; returns its dotted name."""
    if isinstance(data, dict) and data:
        key = _pick(rng, sorted(data, key=str))
        child = data[key]
        if depth < 4 and isinstance(child, (dict, list)) and child and rng.random() < 0.6:
            return f"{key}." + _set_field(child, rng, depth + 1)
        if rng.random() < 0.15:
            del data[key]
            return f"{key} (deleted)"
        data[key] = _pick(rng, VALUES)
        return f"{key}={data[key]!r}"[:80]
    if isinstance(data, list) and data:
        i = int(rng.integers(len(data)))
        if depth < 4 and isinstance(data[i], (dict, list)) and data[i] and rng.random() < 0.6:
            return f"[{i}]." + _set_field(data[i], rng, depth + 1)
        data[i] = _pick(rng, VALUES)
        return f"[{i}]={data[i]!r}"[:80]
    return "(empty)"


def _mutate_json(path: Path, rng) -> str:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"{path.name} unreadable already"
    if rng.random() < 0.15:
        text = _pick(rng, ["[]", "null", "3", '"x"', "{", "", '{"format": 1}', "\xff\xfe", "[" * 5000])
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        return f"{path.name} replaced by {text[:20]!r}"
    where = _set_field(data, rng)
    path.write_text(json.dumps(data))  # NaN and Infinity as Python writes them
    return f"{path.name}: {where}"


def dataset_json(base: Base, rng) -> str:
    path = base.dataset / "dataset.json"
    if rng.random() < 0.5:  # a top-level field of the wrong type or value
        data = json.loads(path.read_text())
        key = _pick(rng, ["labels", "channel_names", "name", "file_ending", "numTraining", "modality", "training",
                          "tensorImageSize", "extra"])
        data[key] = _pick(rng, VALUES)
        path.write_text(json.dumps(data))
        return f"dataset.json: {key}={data[key]!r}"[:90]
    return _mutate_json(path, rng)


def odd_name(base: Base, rng) -> str:
    name = _pick(rng, NAMES)
    case = _pick(rng, ["case_000", "case_001"])
    moved = 0
    for folder, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        if rng.random() < 0.85:  # sometimes only one of the pair is renamed
            try:
                (base.dataset / folder / f"{case}{suffix}").rename(base.dataset / folder / f"{name}{suffix}")
                moved += 1
            except OSError:
                pass
    return f"rename {case} to {name!r} ({moved} file(s))"


def remove_or_add(base: Base, rng) -> str:
    choice = int(rng.integers(4))
    if choice == 0:
        path = _pick(rng, _files(base.dataset))
        path.unlink()
        return f"remove {path.name}"
    folder = base.dataset / _pick(rng, ["imagesTr", "labelsTr"])
    name = _pick(rng, ["case_002.nii.gz", "case_002_0000.nii.gz", "notes.txt", ".DS_Store", "case_000.nii.gz.bak"])
    if choice == 1:
        (folder / name).write_bytes(rng.bytes(int(rng.integers(0, 400))))
        return f"add garbage file {folder.name}/{name}"
    if choice == 2:
        target = folder / name
        if target.exists():
            target.unlink()
        target.mkdir()
        return f"add folder {folder.name}/{name}"
    shutil.rmtree(folder)
    return f"remove folder {folder.name}"


def voxel_values(base: Base, rng) -> str:
    from labelaudit import io
    from labelaudit.types import Geometry, Volume

    case = _pick(rng, ["case_000", "case_001"])
    label_path = base.dataset / "labelsTr" / f"{case}.nii.gz"
    image_path = base.dataset / "imagesTr" / f"{case}_0000.nii.gz"
    choice = int(rng.integers(5))
    if choice == 0:
        label = io.read_volume(label_path)
        label.array[...] = np.where(label.array > 0, int(_pick(rng, [2, 7, 255])), 0).astype(label.array.dtype)
        io.write_volume(label, label_path)
        return f"{case}: label values outside the classes"
    if choice == 1:
        image = io.read_volume(image_path)
        factor = _pick(rng, [1e36, -1e36, 1e30])
        io.write_volume(Volume(image.array.astype(np.float32) * np.float32(factor), image.geometry), image_path)
        return f"{case}: image x {factor:g}"
    if choice == 2:
        image = io.read_volume(image_path)
        array = image.array.astype(np.float32)
        array.flat[:: int(rng.integers(1, 7))] = _pick(rng, [np.nan, np.inf, -np.inf])
        io.write_volume(Volume(array, image.geometry), image_path)
        return f"{case}: non-finite voxels in the image"
    label = io.read_volume(label_path)
    g = label.geometry
    if choice == 3:
        moved = Geometry(g.size, tuple(s * 1.5 for s in g.spacing), g.origin, g.direction)
        io.write_volume(Volume(label.array, moved), label_path)
        return f"{case}: label spacing x 1.5"
    small = Geometry((g.size[0] - 2, *g.size[1:]), g.spacing, g.origin, g.direction)
    io.write_volume(Volume(np.ascontiguousarray(label.array[..., :-2]), small), label_path)
    return f"{case}: label smaller than the image"


def run_json(base: Base, rng) -> str:
    return _mutate_json(base.run / "run.json", rng)


def onnx_graph(base: Base, rng) -> str:
    path = base.run / "fold_0" / "segmenter.onnx"
    data = path.read_bytes()
    choice = int(rng.integers(5))
    if choice == 0:
        path.unlink()
        return "remove segmenter.onnx"
    if choice == 1:
        path.write_bytes(data[: int(rng.integers(len(data)))])
        return "truncate segmenter.onnx"
    if choice == 2:
        path.write_bytes(rng.bytes(int(rng.integers(0, 2000))))
        return "garbage segmenter.onnx"
    if choice == 3:
        path.write_bytes(b"")
        return "empty segmenter.onnx"
    return flip_bytes(Base(base.run, base.run, base.cache), rng)  # only files of the run folder


def cache_entry(base: Base, rng) -> str:
    entries = _files(base.cache)
    if not entries or rng.random() < 0.1:
        (base.cache / _pick(rng, ["zz", "notes.txt"])).write_text("stray")
        return "stray file in the cache folder"
    path = _pick(rng, entries)
    choice = int(rng.integers(3))
    if choice == 0:
        data = bytearray(path.read_bytes())
        data[int(rng.integers(len(data)))] ^= 0x5A
        path.write_bytes(bytes(data))
        return "flip a byte of a cache entry"
    if choice == 1:
        path.write_bytes(path.read_bytes()[: int(rng.integers(1, 60))])
        return "truncate a cache entry"
    stored = json.loads(path.read_text())
    where = _set_field(stored["entry"], rng)
    # re-signed as formats/cache.py signs entries, so that the typed reader must hold on its own
    signed = hashlib.sha256((stored["key"] + json.dumps(stored["entry"], sort_keys=True)).encode()).hexdigest()
    stored["digest"] = signed if rng.random() < 0.7 else "0" * 64
    path.write_text(json.dumps(stored))
    return f"cache entry: {where}"


MUTATIONS: dict[str, Callable[[Base, np.random.Generator], str]] = {
    "flip": flip_bytes, "truncate": truncate, "dataset.json": dataset_json, "name": odd_name,
    "files": remove_or_add, "voxels": voxel_values, "run.json": run_json, "onnx": onnx_graph, "cache": cache_entry,
}


# ----------------------------------------------------------------------------- one mutation, three commands

def _hashes(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots if root.is_dir()
            for p in _files(root)}


def _no_constant(name: str):
    raise ValueError(f"it holds {name}")


def run_mutation(base: Base, index: int, seed: int, work: Path, summary: Summary) -> None:
    """Copy the base into `work`, apply mutation `index` of `seed`, run the commands; failures go to `summary`."""
    rng = np.random.default_rng([seed, index])
    copy = Base(work / base.dataset.name, work / "run", work / "cache")
    for src, dst in zip((base.dataset, base.run, base.cache), (copy.dataset, copy.run, copy.cache)):
        shutil.copytree(src, dst)
    kind = _pick(rng, sorted(MUTATIONS))
    summary.kinds[kind] += 1
    try:
        what = f"{kind}: {MUTATIONS[kind](copy, rng)}"
    except Exception as exc:  # noqa: BLE001 - a mutation that cannot apply is no finding
        what = f"{kind}: (not applied: {type(exc).__name__}: {exc})"
    before = _hashes(copy.dataset, copy.run)
    commands = {
        "inspect": ["inspect", copy.dataset],
        "score": ["score", copy.dataset, "--model", copy.run, "--out", work / "audit", "--device", "cpu"],
        "check": ["check", copy.dataset, "--model", copy.run, "--device", "cpu", "--cache", copy.cache,
                  "--format", "json"],
    }
    for name, args in commands.items():
        result = _cli(args)
        summary.exits[(name, result.exit_code)] += 1
        text = result.output + (result.stderr if result.stderr_bytes is not None else "")
        problems = []
        if result.exit_code not in OK_EXITS:
            problems.append(f"exit {result.exit_code}")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problems.append(f"uncaught {type(result.exception).__name__}: {result.exception}")
        if "Traceback" in text or "internal error" in text:
            problems.append("traceback or internal error: " + " / ".join(text.strip().splitlines()[-2:])[:300])
        if name == "check" and result.exit_code in (0, 1):
            try:
                json.loads(result.stdout, parse_constant=_no_constant)
            except ValueError as exc:
                problems.append(f"the JSON verdict is not strict JSON ({exc})")
        after = _hashes(copy.dataset, copy.run)
        if after != before:
            changed = sorted(set(before) ^ set(after) | {k for k in before if after.get(k) != before[k]})
            problems.append("changed input(s): " + ", ".join(Path(c).name for c in changed[:3]))
        summary.failures += [Failure(index, what, name, p) for p in problems]


def fuzz(n: int, seed: int, work: Path, make_run: Callable[..., Path], progress: Callable[[int], None] | None = None
         ) -> Summary:
    """Run `n` mutations (seeded) in `work`; returns the summary (failures, exit codes, mutation kinds)."""
    started = time.perf_counter()
    summary = Summary(n, seed)
    base = make_base(work / "base", make_run)
    for i in range(n):
        folder = work / f"m{i:05d}"
        folder.mkdir()
        try:
            run_mutation(base, i, seed, folder, summary)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if progress is not None:
            progress(i)
    summary.seconds = time.perf_counter() - started
    return summary


def _conftest_make_run() -> Callable[..., Path]:
    """tests/conftest.py's run-folder builder, loaded from its path (it needs onnx and pytest, not torch)."""
    spec = importlib.util.spec_from_file_location("labelaudit_tests_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module._make_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="mutations to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--results", type=Path, default=None, help="append a section to this RESULTS.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="labelaudit-fuzz-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)

    def progress(i: int) -> None:
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{args.n}", file=sys.stderr, flush=True)

    summary = fuzz(args.n, args.seed, work, _conftest_make_run(), progress)
    shutil.rmtree(work, ignore_errors=True)
    print("\n".join(summary.lines()))
    if args.results is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from pint_audit import machine

        lines = ["", f"## CLI fuzz (bench/fuzz.py, N = {args.n})", "",
                 f"- date: {dt.date.today().isoformat()}; machine: {machine()}; seed {args.seed}; "
                 f"wall time {summary.seconds / 60:.1f} min; failures: {len(summary.failures)}",
                 "- what: each mutation changes one thing of a 2-case dataset, a run folder or a cache, then runs "
                 "inspect, score and check in-process; a failure is an exit outside 0-5, a traceback or a "
                 "changed input file", "", "```", *summary.lines(), "```"]
        with args.results.open("a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())

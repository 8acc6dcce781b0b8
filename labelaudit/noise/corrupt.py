"""`labelaudit corrupt`: write a noisy copy of a clean dataset and its corruption.json manifest.

Random streams: SeedSequence(seed).spawn(n_cases + 1): the first draws the selection, one per
case (in discovery order, sorted by case id) the corruptions; within a case, one stream per
slice at slice level. So results do not depend on processing order, and for one seed the
corrupted set at a lower rate is contained in that at a higher rate (the draw is a random
permutation's prefix).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io
from ..io.atomic import process_alive
from ..io.tree import copy_dataset_files
from ..config import CorruptConfig, Level
from ..data import Track, discover_dataset, iter_cases, no_track
from ..errors import InputError, UsageError
from ..formats.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    CaseRecord,
    Corruption,
    CorruptionManifest,
    SliceRecord,
    write_corruption_manifest,
)
from ..types import CaseRef, Dataset, from_slices, to_slices
from .ops import classes_on, corrupt_slice, require_elasticdeform, sample_systematic

_PARTIAL = ".partial-"  # OUT is written to the sibling folder .OUT.partial-PID, then renamed


@dataclass(frozen=True)
class _CaseScan:
    """Pass 1's view of one readable case: its files and which slices hold foreground (S,) bool."""

    ref: CaseRef
    has_foreground: np.ndarray
    num_slices: int


@dataclass(frozen=True)
class _Selection:
    """What to corrupt: per case id, the slices picked (level case: every slice with foreground)."""

    picked: dict[str, list[int]]
    population: str
    population_size: int


def corrupt_dataset(config: CorruptConfig, track: Track = no_track) -> CorruptionManifest:
    """Write a noisy copy of `config.clean` to `config.out` with `corruption.json`; return the manifest.

    `--level slice`: the population is every slice (along the through-plane axis) that holds
    any foreground (label != 0), pooled over all readable cases; exactly round(rate * N) of
    them are drawn without replacement and each gets one corruption that changes at least one
    pixel. `--level case`: the population is every readable case with foreground;
    round(rate * n) cases each get one systematic corruption over all their slices with
    foreground. Rounding is half up.
    """
    config.validate()
    clean, out = config.clean, config.out
    if any(k.needs_elasticdeform for k in config.kinds):
        require_elasticdeform()  # fail before any work, not halfway through
    dataset = discover_dataset(clean)
    _check_out(clean, out, config.force)
    _refuse_label_series(dataset)
    streams = np.random.SeedSequence(config.seed).spawn(len(dataset.cases) + 1)
    index_of = {ref.case_id: i for i, ref in enumerate(dataset.cases)}
    scans, seen_classes = _scan_cases(dataset, config.strict, track)
    if not scans:
        raise InputError(f"{clean}: no readable case to corrupt", hint="run 'labelaudit inspect' to see the problems")
    declared = sorted(v for v in (dataset.labels or {}).values() if v != 0) or sorted(seen_classes)
    selection = _select(scans, config.level, config.rate, np.random.default_rng(streams[0]))

    label_paths = {scan.ref.label_path for scan in scans.values()}
    label_dirs = {clean / name for name in ("labelsTr", "labels", "labelsTs")} | {p.parent for p in label_paths}
    with _partial_folder(out) as partial:
        copy_dataset_files(clean, partial, skip=label_paths, label_dirs=label_dirs)
        cases = {cid: _corrupt_case(scans[cid], selection.picked.get(cid, []), config, declared,
                                    streams[1 + index_of[cid]], clean, partial)
                 for cid in track(list(scans), "corrupting labels")}
        manifest = _manifest(config, dataset, selection, declared, cases, out / MANIFEST_NAME)
        write_corruption_manifest(manifest, partial / MANIFEST_NAME)
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()  # _check_out allowed it
        os.replace(partial, out)
    return manifest


def summarize(manifest: CorruptionManifest) -> dict[str, dict]:
    """Counts for the CLI table: per kind (mcpm per operation), the corrupted slices, cases and changed pixels."""
    by_kind: dict[str, dict] = {}
    for cid, case in manifest.cases.items():
        for record in case.slices:
            if not record.corrupted or record.corruption is None:
                continue
            kind = record.corruption.kind.value
            if kind == "mcpm":
                kind = f"mcpm/{record.corruption.params.get('op')}"
            row = by_kind.setdefault(kind, {"slices": 0, "cases": set(), "changed_pixels": 0})
            row["slices"] += 1
            row["cases"].add(cid)
            row["changed_pixels"] += record.changed_pixels
    return {kind: {**row, "cases": len(row["cases"])} for kind, row in sorted(by_kind.items())}


# ----------------------------------------------------------------------------- checks

def _check_out(clean: Path, out: Path, force: bool) -> None:
    clean_r, out_r = clean.resolve(), out.resolve()
    if out_r == clean_r or clean_r in out_r.parents:
        raise UsageError(f"OUT {out} is inside CLEAN {clean}", hint="write the noisy copy outside the clean dataset")
    if out_r in clean_r.parents:
        raise UsageError(f"CLEAN {clean} is inside OUT {out}", hint="choose an OUT folder that does not hold CLEAN")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"OUT {out} exists and is not a folder")
        if any(out.iterdir()):
            if not force:
                raise UsageError(f"OUT {out} exists and is not empty", hint="use --force to replace it, or another OUT")
            if not (out / MANIFEST_NAME).exists():
                raise UsageError(f"OUT {out} is not empty and is not the output of 'labelaudit corrupt' "
                                 f"(no {MANIFEST_NAME}); refusing to delete it even with --force",
                                 hint="empty it yourself or choose another OUT")


def _refuse_label_series(dataset: Dataset) -> None:
    """A label stored as a DICOM series (a folder) cannot be rewritten: an InputError before any work."""
    folders = [ref.label_path for ref in dataset.cases if ref.label_path is not None and ref.label_path.is_dir()]
    if folders:
        raise InputError(f"{folders[0]}: a label stored as a DICOM series cannot be rewritten "
                         f"({len(folders)} such label(s))",
                         hint="convert the labels to NIfTI (.nii.gz) or NRRD first")


# ----------------------------------------------------------------------------- pass 1: scan and select

def _scan_cases(dataset: Dataset, strict: bool, track: Track) -> tuple[dict[str, _CaseScan], set[int]]:
    """Check every case (as every command does); returns the readable cases in discovery order and the
    foreground classes seen."""
    refs = {ref.case_id: ref for ref in dataset.cases}
    order = {ref.case_id: i for i, ref in enumerate(dataset.cases)}
    scans: dict[str, _CaseScan] = {}
    seen: set[int] = set()
    for case, _ in iter_cases(dataset, strict=strict, track=track):
        assert case is not None and case.label is not None
        stack = case.label_slices()
        seen.update(classes_on(stack))
        has_fg = (stack != 0).reshape(stack.shape[0], -1).any(axis=1)
        scans[case.case_id] = _CaseScan(refs[case.case_id], has_fg, int(stack.shape[0]))
        del case, stack
    return {cid: scans[cid] for cid in sorted(scans, key=order.__getitem__)}, seen


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))  # round() rounds half to even: 0.5 * 5 would give 2


def _select(scans: dict[str, _CaseScan], level: Level, rate: float, rng: np.random.Generator) -> _Selection:
    """Draw round(rate * N) of the population (slices or cases with foreground) as a permutation's prefix."""
    case_ids = list(scans)
    if level is Level.SLICE:
        population = [(cid, int(s)) for cid in case_ids for s in np.flatnonzero(scans[cid].has_foreground)]
        chosen = {population[i] for i in rng.permutation(len(population))[:_round_half_up(rate * len(population))]}
        picked = {cid: [s for s in range(scans[cid].num_slices) if (cid, s) in chosen] for cid in case_ids}
        text = ("slices with any foreground (label != 0) along the through-plane axis, pooled over "
                f"all {len(case_ids)} readable cases: {len(population)} slices")
        return _Selection(picked, text, len(population))
    cases = [cid for cid in case_ids if scans[cid].has_foreground.any()]
    chosen_cases = {cases[i] for i in rng.permutation(len(cases))[:_round_half_up(rate * len(cases))]}
    picked = {cid: [int(s) for s in np.flatnonzero(scans[cid].has_foreground)] if cid in chosen_cases else []
              for cid in case_ids}
    return _Selection(picked, f"cases with any foreground (label != 0): {len(cases)} of {len(case_ids)} readable "
                              "cases", len(cases))


# ----------------------------------------------------------------------------- pass 2: write

def _corrupt_case(scan: _CaseScan, picked: list[int], config: CorruptConfig, declared: list[int],
                  stream: np.random.SeedSequence, clean: Path, partial: Path) -> CaseRecord:
    """Corrupt one case's picked slices (or the whole case) into `partial`; an unchanged label is copied
    byte for byte."""
    ref = scan.ref
    rel = ref.label_path.relative_to(clean)
    changes: dict[int, tuple[Corruption, int]] = {}  # slice index -> (corruption, changed pixels)
    case_corruption = None
    if picked:
        volume = io.read_volume(ref.label_path)  # original dtype, to write it back unchanged
        stack = to_slices(volume.array, volume.geometry).copy()
        if config.level is Level.SLICE:
            changes = _corrupt_slices(stack, picked, stream.spawn(scan.num_slices), config, declared)
        else:
            stack, case_corruption, changes = _corrupt_systematic(stack, np.random.default_rng(stream), config,
                                                                  declared)
        if changes:
            written = io.write_like(from_slices(stack, volume.geometry), volume.geometry, partial / rel)
            os.chmod(written, ref.label_path.stat().st_mode & 0o777)  # keep the original label's permissions
    if not changes:
        (partial / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ref.label_path, partial / rel)  # byte for byte
    slices = tuple(SliceRecord(s, s in changes, changes[s][0] if s in changes else None,
                               changes[s][1] if s in changes else 0, bool(scan.has_foreground[s]))
                   for s in range(scan.num_slices))
    total = sum(n for _, n in changes.values())
    return CaseRecord(ref.case_id, bool(total), total, rel.as_posix(), slices, case_corruption)


def _corrupt_slices(stack: np.ndarray, picked: list[int], streams: list[np.random.SeedSequence],
                    config: CorruptConfig, declared: list[int]) -> dict[int, tuple[Corruption, int]]:
    """Level slice: one corruption per picked slice of `stack` (S, H, W), changed in place, each with the
    slice's own stream; returns slice index -> (corruption, changed pixels)."""
    changes = {}
    for s in picked:
        noisy, corruption = corrupt_slice(stack[s], config.kinds, declared, np.random.default_rng(streams[s]),
                                          config.params)
        if corruption is not None:
            changes[s] = (corruption, int((noisy != stack[s]).sum()))
            stack[s] = noisy
    return changes


def _corrupt_systematic(stack: np.ndarray, rng: np.random.Generator, config: CorruptConfig, declared: list[int]
                        ) -> tuple[np.ndarray, Corruption | None, dict[int, tuple[Corruption, int]]]:
    """Level case: one corruption over every slice with foreground; returns (stack, corruption, changes)."""
    noisy, corruption, changed = sample_systematic(stack, config.kinds, declared, rng, config.params)
    if corruption is None:
        return stack, None, {}
    return noisy, corruption, {int(s): (corruption, int(changed[s])) for s in np.flatnonzero(changed)}


def _manifest(config: CorruptConfig, dataset: Dataset, selection: _Selection, declared: list[int],
              cases: dict[str, CaseRecord], path: Path) -> CorruptionManifest:
    if config.level is Level.SLICE:
        corrupted = sum(s.corrupted for c in cases.values() for s in c.slices)
    else:
        corrupted = sum(c.corrupted for c in cases.values())
    size = selection.population_size
    return CorruptionManifest(
        cases=cases, source=str(config.clean.resolve()), rate=config.rate, level=config.level,
        kinds=config.kinds, seed=config.seed, population=selection.population, population_size=size,
        corrupted_count=int(corrupted), achieved_rate=corrupted / size if size else 0.0, classes=tuple(declared),
        noise_params=config.params,
        skipped={cid: tuple(str(p) for p in problems) for cid, problems in sorted(dataset.skipped.items())},
        format=MANIFEST_FORMAT, path=path)


# ----------------------------------------------------------------------------- the partial folder

@contextmanager
def _partial_folder(out: Path) -> Iterator[Path]:
    """Yield the sibling folder .OUT.partial-PID to write into; removed on any error.

    Partial folders that killed runs left behind (their process is gone) are removed first.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    partial = out.parent / f".{out.name}{_PARTIAL}{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the .OUT.partial-PID folders beside `out` whose process no longer runs; returns them."""
    prefix = f".{out.name}{_PARTIAL}"
    removed = []
    if not out.parent.is_dir():
        return removed
    for candidate in out.parent.iterdir():
        pid = candidate.name[len(prefix):]
        if not candidate.name.startswith(prefix) or not pid.isdigit() or not candidate.is_dir():
            continue
        if int(pid) != os.getpid() and process_alive(int(pid)):
            continue  # another corrupt run is writing it now
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed



"""Fit's data: the dataset read once, one case at a time, into the preprocessed folder (or that folder reused).

Pass 1 (`reading cases`) reads every case in turn for what preprocessing needs from all of them: the label
values found, the CT foreground samples (preprocess.PreprocessingFit) and the labelled areas for calibration's
prior. Pass 2 (`preprocessing`) reads each case again, normalises and resamples it and writes it to the entry
(labelaudit/preprocessed.py). At most one raw case is in memory at a time; nnU-Net reads its data twice alike
(fingerprint, then preprocessing). torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from ..config import FitConfig
from ..data import iter_cases, load_case, no_track, raise_fatal
from ..errors import InputError
from ..preprocess import LabelMap, PreprocessingFit, prepare_case
from ..preprocessed import (
    PREPROCESSED_FORMAT, EntryLock, Preprocessed, PreprocessedWriter, digest, entry_folder, files_stamp,
    open_preprocessed)
from ..types import Dataset, Volume

log = logging.getLogger(__name__)

Track = Callable[[Iterable, str], Iterable]


def preprocessed_root(config: FitConfig, run_dir: Path) -> Path:
    """Where entries live: --preprocessed, else .preprocessed/ beside the run folder (runs/.preprocessed by default)."""
    return Path(config.preprocessed) if config.preprocessed else Path(run_dir).parent / ".preprocessed"


def channel_names_of(dataset: Dataset, channels: int) -> list[str]:
    """dataset.json's channel names in channel order, or "unknown" for each channel when they do not fit."""
    if dataset.channel_names and len(dataset.channel_names) == channels:
        return [dataset.channel_names[k] for k in sorted(dataset.channel_names, key=int)]
    return ["unknown"] * channels


@contextmanager
def shared_entry(folder: Path, key: str, stamp: str, build: Callable[[], Preprocessed], builder: bool = True,
                 wait: Callable[[], None] = lambda: None,
                 accept: Callable[[Preprocessed], bool] = lambda entry: True) -> Iterator[Preprocessed]:
    """The entry in `folder`, reused (when complete, current and `accept`ed) or built, held under a shared lock
    while the caller trains from it.

    builder: this process may build it (under the exclusive lock); the others (torchrun ranks > 0) call
    `wait` (a barrier that the builder also reaches once the entry is complete), then open it.
    """
    lock = EntryLock(folder)
    try:
        if builder:
            lock.exclusive()
            entry = open_preprocessed(folder, key, stamp)
            if entry is None or not accept(entry):
                entry = build()
            else:
                log.info("%s: reusing the preprocessed cases", folder)
            lock.shared()
            wait()
        else:
            wait()
            lock.shared()
            entry = open_preprocessed(folder, key, stamp)
            if entry is None:
                raise InputError(f"{folder}: the preprocessed cases that rank 0 wrote cannot be read here",
                                 hint="give every rank the same --preprocessed folder, on a shared file system")
        yield entry
    finally:
        lock.release()


# ----------------------------------------------------------------------------- the dataset being fit

def dataset_entry(config: FitConfig, dataset: Dataset, root: Path, track: Track = no_track, builder: bool = True,
                  wait: Callable[[], None] = lambda: None):
    """A context manager giving the dataset's Preprocessed entry (see shared_entry)."""
    raise_fatal(dataset, config.strict)
    settings = {"format": PREPROCESSED_FORMAT, "labelaudit": __version__, "dataset": str(dataset.root.resolve()),
                "seed": config.seed, "target_spacing": config.target_spacing, "image_dtype": config.image_dtype.value,
                "labels": dataset.labels, "channel_names": dataset.channel_names}
    key = digest(settings)
    stamp = files_stamp(dataset.cases)
    folder = entry_folder(root, dataset.name, key)

    def build() -> Preprocessed:
        return _build_dataset(config, dataset, PreprocessedWriter(folder, key, stamp, config.image_dtype.value,
                                                                   settings), track)

    # under --strict a skipped case must stop the fit, as reading would: only a clean entry is reused then
    return shared_entry(folder, key, stamp, build, builder, wait, accept=lambda e: not (config.strict and e.skipped))


def _build_dataset(config: FitConfig, dataset: Dataset, writer: PreprocessedWriter, track: Track) -> Preprocessed:
    from ..score.calibrate import structure_prior_of

    found: set[int] = set()
    readable: list[str] = []
    state: dict = {}

    def labels() -> Iterator[Volume]:  # pass 1, one case at a time; the prior consumes the labels as they come
        for case, info in iter_cases(dataset, strict=config.strict, track=track):
            if "fit" not in state:
                state["channels"] = channel_names_of(dataset, info.channels)
                spacing = (config.target_spacing, config.target_spacing) if config.target_spacing else None
                state["fit"] = PreprocessingFit(state["channels"], spacing, seed=config.seed)
            state["fit"].add(case)
            found.update(info.label_counts)
            readable.append(case.case_id)
            label = case.label
            del case
            yield label

    prior = structure_prior_of(labels())  # A0 for calibration, from the raw labels
    if not readable:
        raise InputError(f"{config.dataset}: no readable case to train on",
                         hint="run `labelaudit inspect` on the dataset to see the problems")
    label_map = LabelMap.from_declared(dataset.labels, sorted(found))
    prep = state["fit"].result()
    refs = {ref.case_id: ref for ref in dataset.cases}
    for case_id in track(readable, "preprocessing"):  # pass 2
        case = load_case(refs[case_id], dataset)
        image, classes = prepare_case(case, prep, label_map, label_map.class_dtype)
        del case
        writer.add(case_id, image, classes)
        del image, classes
    skipped = {cid: [str(p) for p in problems] for cid, problems in dataset.skipped.items()}
    return writer.finish(prep, label_map, state["channels"], skipped, prior)


# ----------------------------------------------------------------------------- MCPM's meta set as a folder

def meta_entry(config: FitConfig, path: Path, main: Preprocessed, root: Path, track: Track = no_track,
               builder: bool = True, wait: Callable[[], None] = lambda: None):
    """A context manager giving the Preprocessed entry of a meta-set dataset folder, prepared as `main` was."""
    from ..data import discover_dataset

    dataset = discover_dataset(path)
    raise_fatal(dataset, config.strict)
    settings = {"format": PREPROCESSED_FORMAT, "labelaudit": __version__, "dataset": str(dataset.root.resolve()),
                "meta_set_of": main.key, "preprocessing": main.preprocessing.to_json(),
                "label_map": main.label_map.to_json(), "image_dtype": main.image_dtype}
    key = digest(settings)
    stamp = files_stamp(dataset.cases)
    folder = entry_folder(root, "meta_" + dataset.name, key)

    def build() -> Preprocessed:
        writer = PreprocessedWriter(folder, key, stamp, main.image_dtype, settings)
        return _build_meta(config, path, dataset, main, writer, track)

    return shared_entry(folder, key, stamp, build, builder, wait)


def _build_meta(config: FitConfig, path: Path, dataset: Dataset, main: Preprocessed, writer: PreprocessedWriter,
                track: Track) -> Preprocessed:
    label_map, channels = main.label_map, len(main.channel_names)
    for case, info in iter_cases(dataset, strict=config.strict, track=track):
        unknown = sorted(set(info.label_counts) - set(label_map.values))
        if unknown:
            raise InputError(f"--meta-set {path}: case {case.case_id} has label values {unknown}, which the dataset "
                             f"being fit does not have (its classes are {list(label_map.values)})",
                             hint="the meta set must be labelled with the same classes as the dataset")
        if info.channels != channels:
            raise InputError(f"--meta-set {path}: case {case.case_id} has {info.channels} image channel(s), the "
                             f"dataset being fit has {channels}")
        image, classes = prepare_case(case, main.preprocessing, label_map, label_map.class_dtype)
        case_id = case.case_id
        del case
        writer.add(case_id, image, classes)
        del image, classes
    skipped = {cid: [str(p) for p in problems] for cid, problems in dataset.skipped.items()}
    return writer.finish(main.preprocessing, label_map, main.channel_names, skipped)

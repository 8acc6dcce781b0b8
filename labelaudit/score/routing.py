"""Which models score a case, and whether a run folder fits a dataset at all (exit 4 when not)."""

from __future__ import annotations

from pathlib import Path

from ..data import fingerprint
from ..errors import ModelError
from ..formats.run import FoldModel, RunInfo
from ..types import Dataset, Routing


def _norm(name: str) -> str:
    return str(name).strip().lower()


def check_run_matches(info: RunInfo, dataset: Dataset, run_dir: Path) -> None:
    """Refuse a run fit on other channels, modality or label set than `dataset` declares (ModelError, exit 4).

    The one test for `score` and `check`: the number of channels, then (from dataset.json, when the dataset
    has one) the declared label values, the channel names (the modality, e.g. CT vs MR) and the label names.
    A paired-layout folder declares neither; its label values are checked per case while scoring.
    """
    run_name = info.dataset.name
    expected = len(info.preprocessing.channels)
    if dataset.cases and dataset.num_channels != expected:
        raise ModelError(f"{run_dir}: the run takes {expected} image channel(s) (fit on {run_name}), but "
                         f"{dataset.root} has {dataset.num_channels}",
                         hint="score with a run fit on data with the same channels (--model RUN_DIR)")
    if dataset.labels:
        extra = sorted(set(dataset.labels.values()) - set(info.label_map.values))
        if extra:
            raise ModelError(
                f"{run_dir}: the run's classes {list(info.label_map.values)} (fit on {run_name}) do not include "
                f"label values {extra} declared in {dataset.root / 'dataset.json'}",
                hint="this run folder was fit on another label set; pass --model with a run fit on this dataset")
    if dataset.channel_names and info.channel_names:
        theirs = [dataset.channel_names[k] for k in sorted(dataset.channel_names, key=lambda k: (len(k), k))]
        for i, (ours, incoming) in enumerate(zip(info.channel_names, theirs)):
            if "unknown" in (_norm(ours), _norm(incoming)) or _norm(ours) == _norm(incoming):
                continue
            raise ModelError(
                f"{run_dir}: channel {i} of the model is {ours!r} (fit on {run_name}), but "
                f"{dataset.root / 'dataset.json'} declares {incoming!r}",
                hint="use a model fit on this modality; if it is the same one under another name, make "
                     "channel_names in dataset.json match")
    auto_named = all(n == "background" or n.startswith("label_") for n in info.label_map.names)
    if dataset.labels and not auto_named:
        ours = {v: _norm(n) for v, n in zip(info.label_map.values, info.label_map.names)}
        theirs = {int(v): _norm(n) for n, v in dataset.labels.items()}
        if ours != theirs:
            fmt = lambda m: ", ".join(f"{v}={n}" for v, n in sorted(m.items()))  # noqa: E731
            raise ModelError(
                f"{run_dir}: the model's label set ({fmt(ours)}; fit on {run_name}) differs from the one "
                f"{dataset.root / 'dataset.json'} declares ({fmt(theirs)})",
                hint="use a model fit on this label set (--model RUN_DIR)")


def is_fit_dataset(info: RunInfo, dataset: Dataset) -> bool:
    """Whether `dataset` is the one the run was fit on: same resolved path, or same fingerprint."""
    recorded = info.dataset.path
    if recorded and Path(recorded).resolve() == dataset.root.resolve():
        return True
    return bool(info.dataset.fingerprint) and info.dataset.fingerprint == fingerprint(dataset)


def route_case(case_id: str, models: list[FoldModel], fit_dataset: bool,
               out_of_fold: bool = True) -> tuple[list[int], Routing]:
    """Which models score a case: (indices into `models`, routing).

    On the fit dataset a case is scored by the model(s) that held it out ("out-of-fold"); a case no model held
    out ("in-sample") and any case of other data ("new-data") by the ensemble of all models.
    """
    if fit_dataset and out_of_fold:
        holding = [i for i, m in enumerate(models) if case_id in m.held_out]
        if holding:
            return holding, Routing.OUT_OF_FOLD
    return list(range(len(models))), Routing.IN_SAMPLE if fit_dataset else Routing.NEW_DATA


def model_name(models: list[FoldModel], chosen: list[int]) -> str:
    names = [f"fold_{models[i].fold}" if models[i].fold >= 0 else "all" for i in chosen]
    return names[0] if len(names) == 1 else f"ensemble({'+'.join(names)})"

"""`fit`, `export` and `demo`: training a run folder, re-exporting its graphs, and the whole pipeline on the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

# stdlib-only dataclasses and enums: the documented defaults, shown by --help
from ..config import (DEFAULT_PRESET, PRESET_BUDGETS, Exporter, FitConfig, LoopParams, McpmParams, Method, NetParams,
                      PintParams, Preset, Variant, preset_budget)
from ..config.train import ImageDtype
from .app import DatasetArg, app, handle_errors


_FIT, _LOOP, _PINT, _MCPM = FitConfig(dataset=Path()), LoopParams(), PintParams(), McpmParams()

_NET = NetParams()


def _budget(epochs: int | None, features: tuple[int, ...]) -> str:
    return f"{epochs} epochs, U-Net {','.join(str(f) for f in features)}"

def _training_progress():
    """Rich progress bars for training, one per fold, fed by fit's progress callback.

    A bar is stopped as soon as its fold is done, so that the `track` bars of later steps (export,
    calibration) never run while it is live (Rich allows one live display at a time).
    """
    from ..console import progress

    state: dict = {"bar": None, "description": None}

    def stop() -> None:
        if state["bar"] is not None:
            state["bar"].stop()
        state["bar"] = state["description"] = None

    def update(description: str, completed: int, total: int, status: str) -> None:
        if description != state["description"]:
            stop()
            state["bar"], state["description"] = progress(transient=False), description
            state["bar"].start()
            state["task"] = state["bar"].add_task(description, total=total, status=status)
        state["bar"].update(state["task"], completed=completed, total=total, status=status)
        if completed >= total:
            stop()

    return stop, update

@app.command()
@handle_errors
def fit(
    dataset: DatasetArg,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Run folder to write (default: runs/<dataset-name>-<method>).", show_default=False)] = None,
    method: Annotated[Method, typer.Option("--method", help="plain (a U-Net on the labels as given, cross-fitted), pint "
                                                         "or mcpm (needs --meta-set); see the README.")] = _FIT.method,
    variant: Annotated[Variant, typer.Option("--variant", help="PINT variant: int (image level only; the default, "
                                                             "see bench/RESULTS.md), pint (pixel + image, the "
                                                             "paper's), pnt (pixel only).")] = _PINT.variant,
    meta_set: Annotated[Optional[Path], typer.Option(
        "--meta-set", help="MCPM: a text file of verified case ids (one per line, # comments), left out of "
                           "training, or a dataset folder of verified cases.", show_default=False)] = None,
    folds: Annotated[int, typer.Option("--folds", min=1, help="Train one model per fold of cases, each scoring "
                                                              "the cases it did not see; 1: one model on all.")
                     ] = _FIT.folds,
    preset: Annotated[Preset, typer.Option("--preset", help="Training budget: standard (real data; "
                                           f"{_budget(*PRESET_BUDGETS[Preset.STANDARD])}; best on a GPU) or fast "
                                           f"(the demo's CPU budget: {_budget(*PRESET_BUDGETS[Preset.FAST])}); --epochs and --features override "
                                           "it.")] = DEFAULT_PRESET,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs to train (default: the "
                                                  "preset's).", show_default=False)] = None,
    iterations: Annotated[int, typer.Option("--iterations-per-epoch", min=1, help="Training steps per epoch.")
                          ] = _LOOP.iterations_per_epoch,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per training step.")
                          ] = _LOOP.batch_size,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0, help="AdamW learning rate "
                                                 "(poly decay).")] = _LOOP.learning_rate,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (mixed precision on CUDA).")
                      ] = _FIT.device,
    seed: Annotated[int, typer.Option("--seed", help="Seed of folds, initialisation, sampling and augmentation.")
                    ] = _FIT.seed,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoints.")
                      ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing run folder.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Make every case problem fatal (exit 3).")] = False,
    target_spacing: Annotated[Optional[float], typer.Option(
        "--target-spacing", help="Resample slices in-plane to this pixel size (mm); default: native pixels.",
        show_default=False)] = None,
    teacher_passes: Annotated[int, typer.Option("--teacher-passes", min=1, help="PINT: perturbed teacher passes "
                                                                               "per step (K).")] = _PINT.teacher_passes,
    ema_decay: Annotated[float, typer.Option("--ema-decay", min=0.0, max=1.0, help="PINT: teacher EMA decay "
                                                                                  "(gamma).")] = _PINT.ema_decay,
    warmup: Annotated[float, typer.Option("--warmup", min=0.0, max=1.0, help="PINT: fraction of steps trained "
                                                                            "on the labels alone.")] = _PINT.warmup_fraction,
    pseudo_weight: Annotated[float, typer.Option("--pseudo-weight", min=0.0, help="PINT: weight (lambda) of the "
                                                                                 "MSE to the teacher.")] = _PINT.pseudo_weight,
    image_quantile: Annotated[float, typer.Option("--image-quantile", min=0.0, max=1.0, help="PINT: images whose "
                                                  "uncertainty exceeds this quantile of recent ones learn from "
                                                  "the teacher only.")] = _PINT.image_quantile,
    memory_batches: Annotated[int, typer.Option("--memory-batches", min=1, help="PINT: recent batches whose "
                                                "slice uncertainties set that quantile.")] = _PINT.memory_batches,
    virtual_lr: Annotated[float, typer.Option("--virtual-lr", min=0.0, help="MCPM: step (alpha) of the virtual "
                                              "SGD update of the bilevel step.")] = _MCPM.virtual_lr,
    meta_lr: Annotated[float, typer.Option("--meta-lr", min=0.0, help="MCPM: Adam learning rate (beta) of the "
                                           "meta mask network.")] = _MCPM.meta_lr,
    meta_batch_size: Annotated[int, typer.Option("--meta-batch-size", min=0, help="MCPM: slices per meta batch "
                                                 "(m); 0: the training batch size.")] = _MCPM.meta_batch_size,
    meta_every: Annotated[int, typer.Option("--meta-every", min=1, help="MCPM: one meta step every k training "
                                            "steps (k > 1 is cheaper).")] = _MCPM.meta_every,
    meta_warmup: Annotated[float, typer.Option("--meta-warmup", min=0.0, max=1.0, help="MCPM: fraction of steps "
                                               "trained unweighted before the first meta step.")
                           ] = _MCPM.warmup_fraction,
    exporter: Annotated[Exporter, typer.Option("--exporter", help="ONNX exporter: torchscript (fast) or dynamo "
                                                                  "(torch.export); both verified against PyTorch.")
                        ] = _FIT.exporter,
    patch_size: Annotated[Optional[int], typer.Option(
        "--patch-size", min=16, help="Side of the random in-plane training patches (px); default: the largest "
                                     "slice, at most 256. Scoring always runs on whole slices.",
        show_default=False)] = None,
    features: Annotated[Optional[str], typer.Option(
        "--features", help="U-Net channels of its 5 encoder levels and last decoder level, e.g. "
                           "32,32,64,128,256,32 (see the README); default: the preset's.", show_default=False)] = None,
    preprocessed: Annotated[Optional[Path], typer.Option(
        "--preprocessed", help="Folder of preprocessed cases, reused across fits of the same data (default: "
                               ".preprocessed/ beside the run folder; delete it to free the space).",
        show_default=False)] = None,
    image_dtype: Annotated[ImageDtype, typer.Option(
        "--image-dtype", help="How preprocessed images are stored: float32 (what training sees) or float16 "
                              "(half the disk, slightly different training).")] = _FIT.image_dtype,
) -> None:
    """Train a noise-robust segmentation model on a dataset and export its ONNX graphs."""
    from dataclasses import replace

    from ..config import FitConfig
    from ..console import err, track
    from ..console import out as stdout
    from ..train.distributed import is_primary
    from ..train.fit import fit_dataset

    from ..formats.outputs import OutputKind, dataset_inputs, guard_output
    guard_output(out, "--out", OutputKind.RUN, [*dataset_inputs("DATASET", dataset), ("--meta-set", meta_set)])
    loop, net = preset_budget(preset, _LOOP, _NET)
    config = FitConfig(
        dataset=dataset, out=out, method=method, folds=folds, seed=seed, device=device,
        resume=resume, force=force, strict=strict, target_spacing=target_spacing, meta_set=meta_set,
        exporter=exporter, preprocessed=preprocessed, image_dtype=image_dtype,
        loop=replace(loop, epochs=epochs or loop.epochs, iterations_per_epoch=iterations, batch_size=batch_size,
                     learning_rate=learning_rate, patch_size=patch_size),
        net=replace(net, features=NetParams.parse_features(features)) if features else net,
        pint=replace(_PINT, variant=variant, teacher_passes=teacher_passes, ema_decay=ema_decay,
                     warmup_fraction=warmup, pseudo_weight=pseudo_weight, image_quantile=image_quantile,
                     memory_batches=memory_batches),
        mcpm=replace(_MCPM, virtual_lr=virtual_lr, meta_lr=meta_lr, meta_batch_size=meta_batch_size,
                     meta_every=meta_every, warmup_fraction=meta_warmup),
    )
    stop, update = _training_progress()
    try:
        run_dir = fit_dataset(config, track=track, progress=update)
    finally:
        stop()
    if not is_primary():  # under torchrun, rank 0 reports
        return
    from rich.markup import escape

    from ..formats.run import load_run
    from ..score.decide import case_threshold_text, saturated_calibration_note

    info = load_run(run_dir)
    for case_id, problems in info.dataset.skipped.items():
        err.print(f"[yellow]skipped[/] case {case_id}: {'; '.join(problems)}", soft_wrap=True)
    stdout.print(f"run folder: {run_dir}", soft_wrap=True)
    stdout.print(f"method: {info.method}" + (f" ({info.settings.variant})" if info.method == Method.PINT else "")
                 + f", device: {info.device or '?'}, folds: {len(info.models)}", soft_wrap=True)
    trained = info.settings  # the run's own budget (a resumed run keeps the one it started with)
    stdout.print(f"budget: {_budget(trained.epochs, trained.net.features)}"
                 + (f" (the {trained.preset.value} preset)" if trained.preset else " (no preset's)"), soft_wrap=True)
    meta = info.meta_set
    if meta:
        stdout.print(f"meta set: {len(meta['cases'])} verified case(s) from {meta['path']}, left out of training",
                     soft_wrap=True)
    for model in info.models:
        rows = info.log.get(f"fold_{max(model.fold, 0)}", [])
        loss = f"{rows[-1]['loss']:.4f}" if rows else "?"
        seen = f"held out {len(model.held_out)} case(s)" if model.held_out else "trained on every case"
        stdout.print(f"  fold {max(model.fold, 0)}: final loss {loss}, {seen}, ONNX parity "
                     f"{model.export.get('max_abs_diff', float('nan')):.1e}", soft_wrap=True)
    if info.threshold is not None:
        gate = f", worst slice of a case {info.threshold.gate:.3f}" if info.threshold.gate is not None else ""
        stdout.print(f"flagging threshold (calibrated on the training data): slice {info.threshold.slice:.3f}{gate}, "
                     f"{case_threshold_text(info.threshold.case)}", soft_wrap=True)
        saturated = saturated_calibration_note(info.threshold)
        if saturated:
            err.print(f"[yellow]warning:[/] {escape(saturated)}", soft_wrap=True)

@app.command()
@handle_errors
def export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="Run folder written by `labelaudit fit`.",
                                            show_default=False)],
    exporter: Annotated[Optional[Exporter], typer.Option(
        "--exporter", help="dynamo or torchscript (default: the run's own).", show_default=False)] = None,
) -> None:
    """Re-write and verify a run's ONNX graphs from its weights."""
    from ..console import out as stdout
    from ..console import track
    from ..train.export import export_run

    info = export_run(run_dir, track=track, exporter=exporter)
    for model in info.models:
        stdout.print(f"{Path(run_dir) / model.segmenter}: opset {model.export['opset']}, "
                     f"{model.export['exporter']} exporter, max |ONNX - PyTorch| {model.export['max_abs_diff']:.1e}",
                     soft_wrap=True)

@app.command()
@handle_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs (clean/, noisy/, run/, "
                                                        "audit/); an earlier demo's outputs there are replaced.")
                       ] = Path("demo"),
    rate: Annotated[float, typer.Option("--rate", min=0.0, max=1.0, help="Fraction of the slices with "
                                                                         "foreground to corrupt.")] = 0.3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the corruption and the training.")] = 0,
    method: Annotated[Method, typer.Option("--method", help="The training method, as fit's --method (mcpm needs a "
                                                         "meta set, which the demo does not make).")] = _FIT.method,
    folds: Annotated[int, typer.Option("--folds", min=1, help="Cross-fitting folds.")] = 3,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs per fold (default: the fast "
                                                  "preset's).", show_default=False)] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations-per-epoch", min=1, show_default=False,
                                                      help="Training steps per epoch (default: fit's).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Run the whole pipeline on the embedded demo data (brain MRI from the MNI152 template): corrupt, fit, score."""
    from rich.table import Table

    from ..console import err, track
    from ..console import out as stdout
    from ..demo import DemoConfig, DemoHooks, demo_dataset_path, run_demo
    from ..formats.outputs import OutputKind, guard_output
    from .render import problem_lines, render_audit, render_inspect

    def announce(index: int, total: int, name: str) -> None:
        err.print(f"[bold]\\[{index}/{total}][/] {name}")

    guard_output(out_dir, "--out", OutputKind.DEMO, [("the embedded demo dataset", demo_dataset_path())])
    config = DemoConfig(out=out_dir, rate=rate, seed=seed, method=method, folds=folds, epochs=epochs,
                        iterations_per_epoch=iterations, device=device)
    stop, update = _training_progress()
    try:
        result = run_demo(config, DemoHooks(track=track, progress=update), announce=announce)
    finally:
        stop()
    if result.summary is not None:
        stdout.print(render_inspect(result.summary), soft_wrap=True)
        for line in problem_lines(result.summary.dataset):
            err.print(line, markup=False, soft_wrap=True)
    if result.manifest is not None:
        table = Table(title=f"corrupted labels (seed {seed})", title_justify="left")
        for column in ("kind", "slices", "cases", "changed pixels"):
            table.add_column(column, justify="left" if column == "kind" else "right")
        for kind, row in result.corrupted_by_kind.items():
            table.add_row(kind, str(row["slices"]), str(row["cases"]), str(row["changed_pixels"]))
        stdout.print(table)
        stdout.print(f"{result.num_cases} cases, {result.num_slices} slices; corrupted "
                     f"{result.manifest.corrupted_count} of {result.manifest.population_size} slices with "
                     f"foreground ({result.manifest.achieved_rate:.1%})")
    if result.audit is not None:
        stdout.print(render_audit(result.audit), soft_wrap=True)
    if result.evaluation is not None:
        truth = {r.level: r.scores for r in result.evaluation.ranking}
        def fmt(value: float) -> str:
            return "n/a" if value != value else f"{value:.2f}"  # NaN: undefined (e.g. every case corrupted)

        found = ", ".join(f"{level} AP {fmt(truth[level].ap)} / AUROC {fmt(truth[level].auroc)}"
                          for level in ("slice", "case", "pixel") if level in truth)
        stdout.print(f"how well the audit found the corrupted labels (vs. the known truth): {found}")
    for step in result.steps:
        where = f" -> {step.path}" if step.path is not None else ""
        stdout.print(f"  {step.name}: {step.seconds:.1f} s{where}", soft_wrap=True)
    stdout.print(f"clean dataset: {result.clean}", soft_wrap=True)  # paths never wrap: scripts read them
    if result.noisy is not None:
        stdout.print(f"noisy dataset: {result.noisy}\nmanifest: {result.manifest_path}", soft_wrap=True)
    if result.run_dir is not None:
        stdout.print(f"run folder: {result.run_dir}", soft_wrap=True)

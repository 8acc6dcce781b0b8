"""The labelaudit command line: one thin function per command; heavy imports stay inside them."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LabelauditError
# stdlib-only dataclasses and enums: the documented defaults, shown by --help
from ..config import Exporter, FitConfig, LoopParams, McpmParams, Method, PintParams, Variant

_FIT, _LOOP, _PINT, _MCPM = FitConfig(dataset=Path()), LoopParams(), PintParams(), McpmParams()

app = typer.Typer(
    name="labelaudit",
    help="Find the wrong annotations in a medical image segmentation dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _print_version(value: bool) -> None:
    # an eager option callback runs while parsing, before Click asks for a command
    if value:
        from .. import __version__

        print(f"labelaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for internal errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """Find the wrong annotations in a medical image segmentation dataset."""
    _state["debug"] = debug


def handle_errors(func: Callable) -> Callable:
    """Turn LabelauditError into its exit code and anything else into exit 70 (a bug, said as such)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except LabelauditError as exc:
            from ..console import err

            from rich.markup import escape

            # the message and hint are plain text: "pip install 'labelaudit[train]'" must print as written
            err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False, soft_wrap=True)
            if exc.hint:
                err.print(f"[dim]hint:[/] {escape(exc.hint)}", soft_wrap=True)
            if _state["debug"]:
                traceback.print_exc()
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except Exception:  # noqa: BLE001 - the last line of defence
            from ..console import err

            err.print("[bold red]internal error:[/] this is a bug in labelaudit, please report it "
                      "with the output of the same command run with --debug")
            if _state["debug"]:
                traceback.print_exc()
            else:
                exc_type, exc_value, _ = sys.exc_info()
                err.print(f"[dim]{exc_type.__name__}: {exc_value}[/]", markup=True)
            raise typer.Exit(70) from None

    return wrapper


DatasetArg = Annotated[Path, typer.Argument(help="Dataset folder (nnU-Net/MSD layout or images/ + labels/).",
                                            show_default=False)]


@app.command()
@handle_errors
def inspect(
    dataset: DatasetArg,
    strict: Annotated[bool, typer.Option("--strict", help="Make every problem fatal (exit 3).")] = False,
) -> None:
    """Summarise a dataset and report every problem found in it."""
    from ..console import err, out, track
    from ..data import discover_dataset, inspect_dataset
    from .render import problem_lines, render_inspect

    found = discover_dataset(dataset)
    summary = inspect_dataset(found, strict=strict, track=track)
    out.print(render_inspect(summary), soft_wrap=True)
    for line in problem_lines(summary.dataset):
        err.print(line, markup=False, soft_wrap=True)
    if not summary.cases:
        from ..errors import InputError

        raise InputError(f"{dataset}: no readable case", hint="fix the problems listed above")


def _pixel_score(name: str | None):
    """The --pixel-score option as a scoring.PixelScore (None: the run's default); bad names are usage errors."""
    if name is None:
        return None
    from ..errors import UsageError
    from ..config import PixelScore

    try:
        return PixelScore(name)
    except ValueError:
        raise UsageError(f"--pixel-score {name!r}: expected one of {', '.join(p.value for p in PixelScore)}") from None


# commands added by later modules go below this line


@app.command()
@handle_errors
def evaluate(
    audit_dir: Annotated[Path, typer.Argument(help="Audit folder written by `labelaudit score`.", show_default=False)],
    truth: Annotated[Path, typer.Option("--truth", help="corruption.json written by `labelaudit corrupt`.",
                                        show_default=False)],
    clean: Annotated[Optional[Path], typer.Option(
        "--clean", help="The clean dataset (default: the manifest's source); needed for pixel and "
                        "segmentation metrics.", show_default=False)] = None,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", help="Where to write the metrics as JSON (default: AUDIT_DIR/evaluation.json).",
        show_default=False)] = None,
    pixel_sample: Annotated[int, typer.Option("--pixel-sample", min=1,
                                              help="Most pixels used per pixel level (uniform sample).")] = 2_000_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pixel sample.")] = 0,
) -> None:
    """Measure an audit against a corruption manifest (AP, AUROC, P@k; Dice, IoU, HD95, ASSD)."""
    from rich.markup import escape

    from ..config import EvaluateConfig
    from ..console import err, out, track
    from ..evaluate.evaluate import evaluate_audit, write_evaluation_json
    from .render import render_evaluation

    from ..formats.outputs import OutputKind, audit_inputs, guard_output
    guard_output(json_path or Path(audit_dir) / "evaluation.json", "--json", OutputKind.EVALUATION,
                 [("--truth", truth), ("--clean", clean), *audit_inputs(audit_dir)])
    config = EvaluateConfig(audit_dir=audit_dir, truth=truth, clean=clean, pixel_sample=pixel_sample, seed=seed)
    result = evaluate_audit(config, track=track)
    out.print(render_evaluation(result))
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    written = write_evaluation_json(result, json_path or Path(audit_dir) / "evaluation.json")
    err.print(f"metrics written to {written}")


@app.command()
@handle_errors
def corrupt(
    clean: Annotated[Path, typer.Argument(metavar="CLEAN", help="The clean dataset folder (never modified).",
                                          show_default=False)],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Where the noisy copy and corruption.json go.",
                                            show_default=False)],
    rate: Annotated[float, typer.Option("--rate", help="Fraction of the slices with foreground (--level slice) "
                                                        "or of the cases with foreground (--level case) to corrupt.")] = 0.4,
    kinds: Annotated[str, typer.Option("--kinds", help="Comma-separated noise models: dilation, erosion, elastic, "
                                                        "shift, missing, spurious, mcpm (elastic and mcpm need "
                                                        "elasticdeform).")] = "dilation,erosion,shift,missing,spurious",
    level: Annotated[str, typer.Option("--level", help="slice: independent errors on single slices; case: one "
                                                        "systematic error over a whole volume.")] = "slice",
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed gives identical files.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT when it is a previous corrupt output.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Make every dataset problem fatal (exit 3).")] = False,
) -> None:
    """Make a noisy copy of a clean dataset, with a manifest of exactly what was changed."""
    from ..config import CorruptConfig, parse_kinds
    from ..console import out, track
    from ..formats.manifest import MANIFEST_NAME
    from ..noise.corrupt import corrupt_dataset
    from .render import render_corruption

    from ..formats.outputs import OutputKind, dataset_inputs, guard_output
    guard_output(out_dir, "OUT", OutputKind.NOISY, dataset_inputs("CLEAN", clean))
    config = CorruptConfig(clean=clean, out=out_dir, rate=rate, kinds=parse_kinds(kinds), level=level, seed=seed,
                           force=force, strict=strict)
    manifest = corrupt_dataset(config, track=track)
    out.print(render_corruption(manifest, f"corrupted at {config.level.value} level (seed {seed})"), soft_wrap=True)
    out.print(f"noisy dataset: {out_dir}\nmanifest: {Path(out_dir) / MANIFEST_NAME}", soft_wrap=True, markup=False)


@app.command()
@handle_errors
def score(
    dataset: Annotated[Optional[Path], typer.Argument(
        help="Dataset folder to score (default: the dataset the model was fit on).", show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option(
        "--model", help="Run folder written by `fit` (default: the latest run).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Audit folder to write (default: audits/<dataset-name>).", show_default=False)] = None,
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="HTML report file (default: AUDIT_DIR/report.html).", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per ONNX Runtime call.")] = 16,
    pixel_score: Annotated[Optional[str], typer.Option(
        "--pixel-score", show_default=False,
        help="Per-pixel formula: confident_disagreement (default), disagreement, and for MCPM runs "
             "meta_disagreement or meta_weight (see bench/RESULTS.md).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Make every case problem fatal (exit 3).")] = False,
) -> None:
    """Score every annotation of a dataset with a run's ONNX graphs (ONNX Runtime, no PyTorch)."""
    from ..config import ScoreConfig
    from ..console import out as stdout
    from ..console import track
    from ..formats.run import latest_run
    from ..score.pipeline import score_dataset
    from .render import render_audit

    run_dir = model if model is not None else latest_run()
    config = ScoreConfig(run_dir=run_dir, dataset=dataset, out_dir=out, report=report, device=device,
                         batch_size=batch_size, strict=strict, pixel_score=_pixel_score(pixel_score))
    audit = score_dataset(config, track=track)
    stdout.print(render_audit(audit), soft_wrap=True)


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
    method: Annotated[Method, typer.Option("--method", help="pint, plain (the baseline) or mcpm.")] = _FIT.method,
    variant: Annotated[Variant, typer.Option("--variant", help="PINT variant: int (image level only; the default, "
                                                             "see bench/RESULTS.md), pint (pixel + image, the "
                                                             "paper's), pnt (pixel only).")] = _PINT.variant,
    meta_set: Annotated[Optional[Path], typer.Option(
        "--meta-set", help="MCPM: a text file of verified case ids (one per line, # comments), left out of "
                           "training, or a dataset folder of verified cases.", show_default=False)] = None,
    folds: Annotated[int, typer.Option("--folds", min=1, help="Train one model per fold of cases, each scoring "
                                                              "the cases it did not see; 1: one model on all.")
                     ] = _FIT.folds,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs to train.")] = _LOOP.epochs,
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
) -> None:
    """Train a noise-robust segmentation model on a dataset and export its ONNX graphs."""
    from dataclasses import replace

    from ..config import FitConfig
    from ..console import err, track
    from ..console import out as stdout
    from ..train.fit import fit_dataset

    from ..formats.outputs import OutputKind, dataset_inputs, guard_output
    guard_output(out, "--out", OutputKind.RUN, [*dataset_inputs("DATASET", dataset), ("--meta-set", meta_set)])
    config = FitConfig(
        dataset=dataset, out=out, method=method, folds=folds, seed=seed, device=device,
        resume=resume, force=force, strict=strict, target_spacing=target_spacing, meta_set=meta_set,
        exporter=exporter,
        loop=replace(_LOOP, epochs=epochs, iterations_per_epoch=iterations, batch_size=batch_size,
                     learning_rate=learning_rate),
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
    from ..formats.run import load_run

    info = load_run(run_dir)
    for case_id, problems in info.dataset.skipped.items():
        err.print(f"[yellow]skipped[/] case {case_id}: {'; '.join(problems)}", soft_wrap=True)
    stdout.print(f"run folder: {run_dir}", soft_wrap=True)
    stdout.print(f"method: {info.method}" + (f" ({info.config.get('variant')})" if info.method == Method.PINT else "")
                 + f", device: {info.device or '?'}, folds: {len(info.models)}", soft_wrap=True)
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
        stdout.print(f"flagging threshold (calibrated on the training data): slice {info.threshold.slice:.3f}, "
                     f"case {info.threshold.case:.3f}", soft_wrap=True)


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
    method: Annotated[str, typer.Option("--method", help="pint or plain.")] = "pint",
    folds: Annotated[int, typer.Option("--folds", min=1, help="Cross-fitting folds.")] = 3,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs per fold (default: fit's).",
                                                  show_default=False)] = None,
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


from enum import Enum  # noqa: E402 - stdlib, cheap; kept beside the command that uses it


class CheckFormat(str, Enum):
    """What `check` prints on stdout."""

    TEXT = "text"
    JSON = "json"
    GITHUB = "github"


@app.command()
@handle_errors
def check(
    incoming: Annotated[Path, typer.Argument(metavar="INCOMING", help="Dataset folder of the annotations to gate "
                                                                      "(same layouts as DATASET).",
                                             show_default=False)],
    model: Annotated[Optional[Path], typer.Option(
        "--model", help="Run folder (run.json + ONNX graphs), e.g. models/demo-pint (default: the latest run).",
        show_default=False)] = None,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", help="Flag slices and cases whose noise score reaches T (default: the run's calibrated "
                            "threshold).", show_default=False)] = None,
    max_flagged: Annotated[int, typer.Option("--max-flagged", min=0, help="Pass with up to N flagged "
                                                                          "annotations.")] = 0,
    junit: Annotated[Optional[Path], typer.Option(
        "--junit", help="Also write JUnit XML here (one test case per annotation).", show_default=False)] = None,
    fmt: Annotated[CheckFormat, typer.Option("--format", case_sensitive=False,
                                             help="stdout: text (a summary table), json, or github "
                                                  "(workflow annotations).")] = CheckFormat.TEXT,
    cache: Annotated[Optional[Path], typer.Option(
        "--cache", help="Cache folder: only new or changed annotations are scored again.", show_default=False)
                     ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per ONNX Runtime call.")] = 16,
) -> None:
    """Gate incoming annotations: exit 0 when none is flagged, 1 when some are (CI; no PyTorch needed)."""
    import json as _json

    from ..console import err, track
    from ..console import out as stdout
    from ..config import CheckConfig
    from ..formats.outputs import OutputKind, dataset_inputs, guard_output
    from ..formats.run import latest_run
    from ..gate.check import run_check
    from ..io.atomic import write_text
    from ..gate.ci import check_json, github_annotations, junit_xml
    from .render import summary_table

    config = CheckConfig(incoming=incoming, run_dir=model if model is not None else latest_run(),
                         threshold=threshold, max_flagged=max_flagged, cache_dir=cache, device=device,
                         batch_size=batch_size)
    inputs = [*dataset_inputs("INCOMING", incoming), ("--model", config.run_dir)]
    guard_output(junit, "--junit", OutputKind.JUNIT, [*inputs, ("--cache", cache)])
    guard_output(cache, "--cache", OutputKind.CACHE, inputs)
    result = run_check(config, track=track)
    for note in result.notes:
        err.print(f"note: {note}", markup=False, soft_wrap=True)
    if junit is not None:
        write_text(junit, junit_xml(result))  # a full disk or a vanished folder: OutputError, exit 3
        err.print(f"JUnit XML written to {junit}", soft_wrap=True, markup=False)
    if fmt is CheckFormat.JSON:
        sys.stdout.write(_json.dumps(check_json(result), indent=2) + "\n")
    elif fmt is CheckFormat.GITHUB:
        sys.stdout.write(github_annotations(result))
    else:
        stdout.print(summary_table(result))
    sys.stdout.flush()
    raise typer.Exit(result.exit_code)

"""`inspect`, `corrupt` and `evaluate`: the dataset, its synthetic noise, and an audit measured against it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import DatasetArg, app, handle_errors


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
                                                        "shift, missing, spurious, mcpm, wrong_class (elastic and "
                                                        "mcpm need elasticdeform; wrong_class needs two or more "
                                                        "foreground classes).")] = "dilation,erosion,shift,missing,spurious",
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

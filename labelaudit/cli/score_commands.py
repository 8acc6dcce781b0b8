"""`score` and `check`: audit annotations with a run's ONNX graphs or given probabilities (no PyTorch)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, handle_errors


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
    probabilities: Annotated[Optional[list[Path]], typer.Option(
        "--probabilities", show_default=False, metavar="SRC",
        help="Score with your own model's probabilities instead of a run's ONNX graphs: an nnU-Net v2 "
             "trained-model folder (its out-of-fold fold_*/validation/CASE.npz), or a folder of CASE.npz "
             "('probabilities', (C, Z, Y, X)) or of multi-component images; repeat it for one folder per fold "
             "model (their mean). --model is then a calibration folder; without it the thresholds are derived "
             "from this audit and saved to AUDIT_DIR/calibration.")] = None,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", metavar="i/N", show_default=False,
        help="Score only shard i of N (i from 1): round-robin over the sorted case ids, every N-th case from the "
             "i-th on, into a partial audit at --out; `labelaudit merge` assembles the N parts.")] = None,
) -> None:
    """Score every annotation of a dataset with a run's ONNX graphs, or your model's probabilities (no PyTorch)."""
    from ..config import ScoreConfig
    from ..console import err, track
    from ..console import out as stdout
    from ..formats.run import latest_run
    from ..score.pipeline import score_dataset
    from .render import render_audit

    part = _shard(shard, out, report, bool(probabilities) and model is None)
    run_dir = model if model is not None or probabilities else latest_run()
    config = ScoreConfig(run_dir=run_dir, dataset=dataset, out_dir=out, report=report, device=device,
                         batch_size=batch_size, strict=strict, pixel_score=_pixel_score(pixel_score),
                         probabilities=tuple(probabilities or ()))
    if part is not None:
        audit = score_dataset(config, track=track, shard=part)
    elif probabilities:
        from ..score.calibrate import score_probabilities

        audit = score_probabilities(config, track=track)
    else:
        audit = score_dataset(config, track=track)
    stdout.print(render_audit(audit), soft_wrap=True)
    if "calibration" in audit.files:
        err.print(f"calibration for `check --probabilities`: --model {audit.files['calibration']}", markup=False,
                  soft_wrap=True)
    if part is not None:
        err.print(f"part {part} written to {out}; once all {part.count} parts are written: labelaudit merge "
                  "PART_DIR... --out AUDIT_DIR", markup=False, soft_wrap=True)


def _shard(text: str | None, out: Path | None, report: Path | None, calibrating: bool):
    """--shard as a score.shard.Shard (None without it); what it cannot go with is a UsageError (exit 2)."""
    if text is None:
        return None
    from ..errors import UsageError
    from ..score.shard import Shard

    shard = Shard.parse(text)
    if out is None:
        raise UsageError(f"--shard {shard} needs --out PART_DIR: every part is a folder of its own",
                         hint=f"e.g. --out parts/{shard.index}, then: labelaudit merge parts/* --out AUDIT_DIR")
    if report is not None:
        raise UsageError(f"--report with --shard {shard}: a part has no report", hint="pass --report to "
                                                                                       "`labelaudit merge`")
    if calibrating:
        raise UsageError(f"--shard {shard} with --probabilities needs --model CALIBRATION_DIR: thresholds derived "
                         "from one part would not be those of the whole dataset",
                         hint="score the whole dataset once without --shard, then shard with --model "
                              "AUDIT_DIR/calibration")
    return shard

class CheckFormat(str, Enum):
    """What `check` prints on stdout."""

    TEXT = "text"
    JSON = "json"
    GITHUB = "github"

@app.command()
@handle_errors
def calibrate(
    model: Annotated[Optional[Path], typer.Argument(
        metavar="RUN_DIR", help="Run folder to recalibrate (default: the latest run).", show_default=False)] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="The dataset the run was fit on, where it is now (default: the path run.json records).",
        show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per ONNX Runtime call.")] = 16,
) -> None:
    """Derive a run's flagging thresholds again from its training data, scored out-of-fold (after an upgrade
    changed the noise score; no PyTorch needed). Rewrites run.json's threshold."""
    from ..console import err, track
    from ..formats.run import latest_run, load_run, save_run
    from ..score.calibrate import calibrate_run
    from ..score.decide import case_threshold_text, saturated_calibration_note

    run_dir = model if model is not None else latest_run()
    info = load_run(run_dir)
    before = info.threshold
    info.threshold = calibrate_run(run_dir, device=device, track=track, batch_size=batch_size, dataset=dataset)
    save_run(run_dir, info)
    was = f" (was slice {before.slice:.3f}, {case_threshold_text(before.case)})" if before is not None else ""
    gate = f", worst slice {info.threshold.gate:.3f}" if info.threshold.gate is not None else ""
    err.print(f"{run_dir}: thresholds slice {info.threshold.slice:.3f}{gate}, "
              f"{case_threshold_text(info.threshold.case)}{was}, "
              f"calibrated on {info.threshold.n_slices} slices of {info.threshold.n_cases} cases"
              + ("; slices ranked by the structure score and softmin together" if info.threshold.slice_ranking
                 else "; slices ranked by the structure score alone (too few training slices for the ranking)"),
              markup=False, soft_wrap=True)
    saturated = saturated_calibration_note(info.threshold)
    if saturated:
        err.print(f"warning: {saturated}", markup=False, soft_wrap=True)


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
        "--threshold", help="Flag slices whose noise score reaches T, and the cases with such a slice (default: "
                            "the run's calibrated thresholds).", show_default=False)] = None,
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
    probabilities: Annotated[Optional[list[Path]], typer.Option(
        "--probabilities", show_default=False, metavar="SRC",
        help="Gate with your own model's probabilities for the incoming cases (a folder of CASE.npz, e.g. "
             "nnUNetv2_predict --save_probabilities, or of multi-component images; repeat it for one folder per "
             "fold model) instead of a run's ONNX graphs; --model is then the calibration folder that "
             "`score --probabilities` wrote (AUDIT_DIR/calibration).")] = None,
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

    config = CheckConfig(incoming=incoming, run_dir=model if model is not None or probabilities else latest_run(),
                         threshold=threshold, max_flagged=max_flagged, cache_dir=cache, device=device,
                         batch_size=batch_size, probabilities=tuple(probabilities or ()))
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

"""`labelaudit merge`: one audit folder from the partial audits of `score --shard i/N` (no PyTorch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, handle_errors


@app.command()
@handle_errors
def merge(
    parts: Annotated[list[Path], typer.Argument(metavar="PART_DIR", show_default=False,
                                                help="The N folders that `score --shard i/N --out PART_DIR` wrote, "
                                                     "in any order.")],
    out: Annotated[Path, typer.Option("--out", help="Audit folder to write (not one of the parts, nor inside one).",
                                      show_default=False)],
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="HTML report file (default: AUDIT_DIR/report.html).", show_default=False)] = None,
) -> None:
    """Merge the parts of a sharded `score` into the audit one unsharded `score` writes."""
    from ..console import out as stdout
    from ..console import track
    from ..score.merge import merge_parts
    from .render import render_audit

    audit = merge_parts(parts, out, report, track=track)
    stdout.print(render_audit(audit), soft_wrap=True)

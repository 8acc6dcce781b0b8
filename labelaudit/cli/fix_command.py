"""`labelaudit fix`: the corrected dataset, or one whose wrong regions carry nnU-Net's ignore label."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import FixMode, FixParams
from .app import app, handle_errors

_PARAMS = FixParams()


@app.command()
@handle_errors
def fix(
    audit_dir: Annotated[Path, typer.Argument(metavar="AUDIT_DIR", help="Audit folder written by `labelaudit score`.",
                                              show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for the fixed copy of the dataset the audit scored "
                                                    "(never inside it or the audit).", show_default=False)],
    mode: Annotated[FixMode, typer.Option("--mode", help="replace: the robust prediction in each region judged "
                                                         "wrong; ignore: nnU-Net's ignore label there.")
                    ] = FixMode.REPLACE,
    region_score: Annotated[float, typer.Option("--region-score", min=0.0, max=1.0, help="A region of a flagged "
                                                "slice is judged wrong when its mean noise score reaches this.")
                            ] = _PARAMS.region_score,
) -> None:
    """Write a copy of the audited dataset with each region judged wrong fixed, and fixes.json listing them."""
    from ..config import FixConfig
    from ..console import out as stdout
    from ..console import track
    from ..fix.dataset import fix_dataset
    from .render import render_fix

    manifest = fix_dataset(FixConfig(audit_dir=audit_dir, out=out, mode=mode, params=FixParams(region_score)),
                           track=track)
    stdout.print(render_fix(manifest), soft_wrap=True)

"""The labelaudit command line: one thin function per command; heavy imports stay inside them."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ..errors import LabelauditError


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

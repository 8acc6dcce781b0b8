"""The command line: the Typer app and its error handling (app.py), one module per group of commands, and the
Rich renderings of their results (render.py). Importing this package registers every command."""

from . import data_commands, fix_command, merge_command, score_commands, train_commands  # noqa: F401 - register them
from .app import app

__all__ = ["app"]

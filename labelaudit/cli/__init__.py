"""The command line: thin Typer commands (app.py) and the Rich renderings of their results (render.py)."""

from .app import app

__all__ = ["app"]

"""An error's hint prints as written: Rich markup would swallow `[train]` in pip install 'labelaudit[train]'."""

from __future__ import annotations

from labelaudit.cli.app import handle_errors
from labelaudit.errors import TRAINING_EXTRA, MissingDependencyError


def test_the_training_extra_hint_keeps_its_brackets(capsys):
    @handle_errors
    def fit():
        raise MissingDependencyError("PyTorch (torch)", TRAINING_EXTRA)

    try:
        fit()
    except BaseException as exc:  # typer.Exit
        code = getattr(exc, "exit_code", None)
    stderr = " ".join(capsys.readouterr().err.split())
    assert code == 5
    assert "error: PyTorch (torch) is not installed" in stderr
    assert "hint: install it with: pip install 'labelaudit[train]'" in stderr

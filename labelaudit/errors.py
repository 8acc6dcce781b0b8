"""One exception hierarchy; each class carries the exit code the CLI returns (stdlib only)."""

from __future__ import annotations

from pathlib import Path


class LabelauditError(Exception):
    """Base of every error a user can act on. `exit_code` follows interface.md."""

    exit_code = 70

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class UsageError(LabelauditError):
    """Bad usage: conflicting or invalid options (exit 2)."""

    exit_code = 2


class InputError(LabelauditError):
    """Bad input: unreadable or inconsistent dataset, geometry mismatch, bad label values (exit 3)."""

    exit_code = 3


class ImageReadError(InputError):
    """A file could not be read as an image."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: cannot read image ({reason})")
        self.path = Path(path)
        self.reason = reason


class DatasetError(InputError):
    """The dataset folder as a whole is unusable (layout, dataset.json, no cases)."""


class OutputError(LabelauditError):
    """An output file could not be written completely: disk full, read-only folder, name too long (exit 3)."""

    exit_code = 3


class ModelError(LabelauditError):
    """A missing or invalid run folder, ONNX graph or run.json that does not match the data (exit 4)."""

    exit_code = 4


class MissingDependencyError(LabelauditError):
    """An optional install is missing (exit 5); the message names the command that fixes it."""

    exit_code = 5

    def __init__(self, what: str, install: str, problem: str = "is not installed") -> None:
        super().__init__(f"{what} {problem}", hint=f"install it with: {install}")
        self.install = install


TRAINING_EXTRA = "pip install 'labelaudit[train]'"

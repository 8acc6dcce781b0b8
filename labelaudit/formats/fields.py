"""Typed reads of JSON fields: a value of the wrong type is an error naming the file and the field (stdlib only).

Every on-disk format reads through `Fields`, so a hand-edited run.json that is a list, a threshold that is a
string or a divisor of 0 is a ModelError (exit 4) saying where, never a KeyError or TypeError (exit 70).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import LabelauditError, ModelError

_MISSING = object()


def load_json(path: Path | str, error: type[LabelauditError] = ModelError, hint: str | None = None) -> Any:
    """A JSON file's content; unreadable, undecodable or invalid JSON is `error` naming the file (never exit 70)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: not found", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", hint=hint) from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a text file ({exc.reason})", hint=hint) from exc
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})", hint=hint) from exc
    except RecursionError:  # "[[[[…" nested deeper than the parser's stack
        raise error(f"{path}: not valid JSON (nested too deeply)", hint=hint) from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


class Fields:
    """One JSON object of a file, read field by field with types checked.

    path: the file (for messages); where: the dotted position of this object in the file ("" at the top);
    error: the error class to raise (ModelError for run folders, InputError for data files).
    """

    def __init__(self, data: Any, path: Path | str, where: str = "", error: type[LabelauditError] = ModelError,
                 hint: str | None = None) -> None:
        self.path, self.where, self.error, self.hint = Path(path), where, error, hint
        if not isinstance(data, dict):
            raise self._fail(where or "the file", "an object", data)
        self.data = data

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _fail(self, field: str, expected: str, found: Any) -> LabelauditError:
        shown = repr(found) if not isinstance(found, (dict, list)) else _kind(found)
        return self.error(f"{self.path}: field '{field}': expected {expected}, found {shown}", hint=self.hint)

    def fail(self, key: str, expected: str) -> LabelauditError:
        """The error for a present field whose value is not what the format allows."""
        return self._fail(self._name(key), expected, self.data.get(key))

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _get(self, key: str, default: Any) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise self.error(f"{self.path}: lacks the field '{self._name(key)}'", hint=self.hint)
            return default
        return value

    def str(self, key: str, default: Any = _MISSING) -> str | None:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise self._fail(self._name(key), "a string", value)
        return value

    def choice(self, key: str, choices, default: Any = _MISSING):
        """A string field that must be one of an Enum's values; returns the member."""
        value = self.str(key, default)
        if value is default and default is not _MISSING:
            return value
        try:
            return choices(value)
        except ValueError:
            raise self._fail(self._name(key), "one of " + ", ".join(repr(c.value) for c in choices), value) from None

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, bool):
            raise self._fail(self._name(key), "true or false", value)
        return value

    def int(self, key: str, default: Any = _MISSING, minimum: int | None = None) -> int:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(self._name(key), "an integer", value)
        if minimum is not None and value < minimum:
            raise self._fail(self._name(key), f"an integer of at least {minimum}", value)
        return value

    def float(self, key: str, default: Any = _MISSING, low: float | None = None, high: float | None = None,
              positive: bool = False) -> float:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._fail(self._name(key), "a finite number", value)
        value = float(value)
        if positive and value <= 0:
            raise self._fail(self._name(key), "a number above 0", value)
        if (low is not None and value < low) or (high is not None and value > high):
            raise self._fail(self._name(key), f"a number in [{low}, {high}]", value)
        return value

    def list(self, key: str, default: Any = _MISSING) -> list:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list):
            raise self._fail(self._name(key), "a list", value)
        return value

    def strings(self, key: str, default: Any = _MISSING) -> list[str]:
        values = self.list(key, default)
        if values is default and default is not _MISSING:
            return values
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise self._fail(f"{self._name(key)}[{i}]", "a string", value)
        return list(values)

    def numbers(self, key: str, default: Any = _MISSING, integer: bool = False) -> list:
        values = self.list(key, default)
        if values is default and default is not _MISSING:
            return values
        for i, value in enumerate(values):
            ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
            if isinstance(value, bool) or not ok:
                raise self._fail(f"{self._name(key)}[{i}]", "an integer" if integer else "a finite number", value)
        return [int(v) if integer else float(v) for v in values]

    def object(self, key: str, default: Any = _MISSING) -> Fields | None:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        return Fields(value, self.path, self._name(key), self.error, self.hint)

    def objects(self, key: str, default: Any = _MISSING) -> list[Fields]:
        values = self.list(key, default)
        if values is default and default is not _MISSING:
            return values
        return [Fields(v, self.path, f"{self._name(key)}[{i}]", self.error, self.hint) for i, v in enumerate(values)]

    def raw(self, key: str, default: Any = None) -> Any:
        """A field kept as JSON (free-form metadata such as logs and versions)."""
        return self.data.get(key, default)

"""Turning user input into enum members, with a usage error that lists the choices (stdlib only)."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from ..errors import UsageError


_E = TypeVar("_E", bound=Enum)


def parse_choice(kind: type[_E], value: object, option: str) -> _E:
    """`value` as a member of the str Enum `kind`; anything else is a UsageError naming `option` and the choices."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise UsageError(f"{option} {value!r}: expected one of {choices}") from None

"""Checks of the arguments that callers (remote ones included) give the service's methods.

A remote caller can send any value a HEROS call carries: ``None``, a number, a 10 MB string,
``"no"`` for a boolean. Each check here refuses what is not exactly of its kind, with a
:class:`~herocollector.errors.ConfigError` that names the argument, before anything is
journalled or touched.
"""

from __future__ import annotations

import os
from typing import Any

from herocollector.errors import ConfigError

MAX_PATH_BYTES = 4096
"""The longest run path accepted (Linux's ``PATH_MAX``)."""


def run_path_argument(value: Any, name: str = "path", *, absolute: bool = True) -> str:
    """A run directory as a caller names it: a non-empty absolute path of at most 4,096 bytes.

    Args:
        value: What the caller gave.
        name: The argument's name, for the message.
        absolute: Refuse a relative path here (a caller that refuses relative paths itself,
            with its own answer, passes False).

    Returns:
        The path, unchanged.

    Raises:
        ConfigError: Not a string, empty, relative, longer than :data:`MAX_PATH_BYTES`, or with a NUL.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be an absolute path (a string), got {type(value).__name__}")
    if not value:
        raise ConfigError(f"{name} must be an absolute path, got an empty string")
    if "\0" in value:
        raise ConfigError(f"{name} must not contain a NUL character")
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        raise ConfigError(f"{name} is {size} bytes long; at most {MAX_PATH_BYTES} are accepted")
    if absolute and not os.path.isabs(value):
        raise ConfigError(f"{name} must be an absolute path, got {value!r}")
    return value


def optional_run_path_argument(value: Any, name: str = "path", *, absolute: bool = True) -> str | None:
    """Like :func:`run_path_argument`, but None (every run) is accepted too."""
    return None if value is None else run_path_argument(value, name, absolute=absolute)


def flag_argument(value: Any, name: str) -> bool:
    """A boolean that is a boolean: ``"no"`` or ``0`` is refused, not taken as true or false.

    Raises:
        ConfigError: Not a ``bool``.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}"[:200])
    return value


def milliseconds_argument(value: Any, name: str, *, allow_none: bool = True) -> int | None:
    """A whole, non-negative number of milliseconds (or None where that means "no limit").

    Raises:
        ConfigError: Not a non-negative whole number (booleans included).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a whole number of milliseconds, got {value!r}"[:200])
    return value

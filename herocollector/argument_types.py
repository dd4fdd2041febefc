"""The building blocks of :mod:`herocollector.arguments`: the :class:`Argument` record and the value parsers.

Each parser validates one JSON value and raises :class:`~herocollector.errors.ConfigError` naming the
argument, so a bad BOSS config stops the actor at start with a message that says what to fix.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herocollector.errors import CollectorError, ConfigError
from herocollector.run.catalogue import RuleLike, select_streams


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/herocollector`` (``~/.local/state/herocollector`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "herocollector"


def number(name: str, *, minimum: float = 0.0, allow_none: bool = False, integer: bool = False) -> Callable[[Any], Any]:
    """A parser of a number at least ``minimum`` (optionally whole, optionally ``null``)."""

    def parse(value: Any) -> Any:
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number, got {value!r}")
        if integer and value != int(value):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum:g}, got {value!r}")
        return int(value) if integer else float(value)

    return parse


def journal(value: str | None) -> str | None:
    """The journal: a SQLite file path (made absolute), a ``postgresql://`` URL, or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"journal must be a SQLite file path or a postgresql:// URL, got {value!r}")
    if "://" in value and not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"journal: only postgresql:// URLs are supported, got {value.split('://')[0]}://")
    return value if "://" in value else os.path.abspath(value)


def text(value: Any) -> str:
    """Any value, as text."""
    return str(value)


def optional_text(value: Any) -> str | None:
    """Text, or None."""
    return None if value is None else str(value)


def template(value: Any) -> str:
    """A non-empty Jinja2 template (compiled later, against the output root)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("save_template must be a non-empty Jinja2 template")
    return value


def rule(value: Any) -> RuleLike:
    """A label-selector rule spec that evaluates (a malformed rule fails the start, not every job)."""
    try:
        select_streams([], value)  # a malformed rule fails the start, not every job
    except CollectorError as exc:
        raise ConfigError(f"rule: {exc.reason}") from None
    return value


def path_key(value: Any) -> str:
    """The event payload key that holds the run's path."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"path_key must be a non-empty string, got {value!r}")
    return value


def state_dir(value: Any) -> Path:
    """The state folder, absolute (default: :func:`default_state_dir`)."""
    return Path(os.path.abspath(value)) if value else default_state_dir()


def allowed_roots(value: Any) -> tuple[Path, ...]:
    """The allowed roots, symlinks resolved."""
    if isinstance(value, str):
        raise ConfigError("allowed_roots must be a list of folders, not a string")
    return tuple(Path(os.path.realpath(r)) for r in (value or []))


def mapping(name: str) -> Callable[[Any], dict[str, Any]]:
    """A parser of a JSON object (``null``: empty)."""

    def parse(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")
        return dict(value)

    return parse


def flag(name: str) -> Callable[[Any], bool]:
    """A parser of ``true`` or ``false``."""

    def parse(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value

    return parse


class _Required:
    """The default of an argument that must be given."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Argument:
    """One argument of the service (and of the actor), defined once.

    Attributes:
        name: The keyword, as in the BOSS JSON ``arguments``.
        annotation: Its type as a caller gives it (JSON values), for the signature.
        default: Its default, or :data:`REQUIRED`.
        parse: Validates and converts a given value; raises :class:`ConfigError` naming it.
        doc: Its description in ``docs/configuration.md`` (Markdown, one table cell).
        example: Example values (Markdown, one table cell).
        default_doc: How the docs show the default, when the JSON value alone would not say enough.
    """

    name: str
    annotation: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    example: str
    default_doc: str | None = None

    @property
    def required(self) -> bool:
        """Whether the argument has no default."""
        return self.default is REQUIRED

    def markdown_row(self) -> str:
        """This argument's row of the reference table."""
        if self.required:
            default = "required"
        else:
            default = self.default_doc or f"`{json.dumps(self.default)}`"
        return f"| `{self.name}` | {default} | {self.doc} | {self.example} |"


def names(name: str) -> Callable[[Any], tuple[str, ...]]:
    """A parser of a list of distinct, non-empty names (``null``: none)."""

    def parse(value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{name} must be a list of names, got {value!r}")
        if not all(isinstance(item, str) and item for item in value):
            raise ConfigError(f"{name} must be a list of non-empty names, got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"{name} names a column twice: {list(value)!r}")
        return tuple(value)

    return parse

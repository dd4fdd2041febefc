"""Output path templates: sandboxed Jinja2, confined to ``output_root``, one label per segment.

A template is rendered in a sandboxed Jinja2 environment with ``StrictUndefined`` (a missing
variable is an error, never an empty path segment). Every value a ``{{ … }}`` expression prints
must be a safe single path segment: no ``/`` or NUL, not empty, not ``.`` or ``..``. So a
label such as ``measure: "../run-0002/stock"`` cannot aim at another run's files, and an empty
label cannot make a hidden file such as ``.arrow``. Two kinds of values are exempt:

* trusted values the operator configured: ``output_root``, ``logger_path`` and everything in
  ``default_metadata``;
* values passed through the ``subpath`` filter (``{{ group | subpath }}``), which the template
  author uses to let a value span several segments on purpose; each of its segments must
  still be non-empty and neither ``.`` nor ``..``.

Finally the rendered path must lie inside ``output_root`` once ``..`` and symlinks are resolved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .errors import ConfigError, LabelPathError, OutputError


class Trusted(str):
    """A string the operator configured; it may hold ``/``."""


class SubPath(str):
    """A string the template explicitly allows to span path segments (the ``subpath`` filter)."""


def _unsafe_segment(text: str) -> str | None:
    """Why ``text`` is not one safe path segment, or None if it is."""
    if text == "":
        return "it is empty"
    if text in (".", ".."):
        return f"it is {text!r}"
    if "/" in text or "\\" in text:
        return "it holds a path separator"
    if "\x00" in text:
        return "it holds a NUL byte"
    return None


def _subpath(value: Any) -> SubPath:
    """The ``subpath`` filter: allow ``/`` in a value, but no empty, ``.`` or ``..`` segment."""
    text = str(value)
    for segment in text.split("/"):
        if segment in ("", ".", "..") or "\x00" in segment:
            raise LabelPathError(f"subpath value {text!r} has an empty, '.', '..' or NUL segment")
    return SubPath(text)


def _finalize(value: Any) -> Any:
    if isinstance(value, (Trusted, SubPath)):
        return value
    text = "" if value is None else str(value)
    problem = _unsafe_segment(text)
    if problem:
        raise LabelPathError(
            f"value {text!r} cannot be a path segment: {problem} (use '| subpath' in the template "
            "to let a value span folders on purpose)"
        )
    return value


def is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` lies inside ``root`` once both are fully resolved (symlinks included)."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(root)))
    except (OSError, ValueError):
        return False


class PathTemplate:
    """A Jinja2 output path template, confined to ``output_root``.

    Args:
        template: Jinja2 source, e.g. ``"{{ output_root }}/{{ experiment }}/{{ measure }}.arrow"``.
        output_root: Every rendered path must resolve inside this folder; a relative
            rendered path is taken relative to it.

    Raises:
        ConfigError: The template does not compile.
    """

    def __init__(self, template: str, output_root: str | Path) -> None:
        self.source = template
        self.output_root = Path(os.path.abspath(output_root))
        env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_finalize)
        env.filters["subpath"] = _subpath
        try:
            self._template = env.from_string(template)
        except TemplateError as exc:
            raise ConfigError(f"invalid save_template {template!r}: {exc}") from None

    def render(self, context: Mapping[str, Any], trusted: Mapping[str, Any] | None = None) -> Path:
        """Render the path for one stream.

        Args:
            context: Template variables whose values must each stay in one path segment.
            trusted: Variables the operator configured (may hold ``/``); ``output_root``
                is always among them. ``context`` wins on a clash.

        Returns:
            The absolute output path, inside ``output_root``.

        Raises:
            LabelPathError: A value would leave its own path segment.
            OutputError: Undefined variable or other template error, an empty result, or a
                path that escapes ``output_root``.
        """
        variables: dict[str, Any] = {"output_root": Trusted(self.output_root)}
        for key, value in (trusted or {}).items():
            variables[key] = Trusted(value) if isinstance(value, str) else value
        variables.update(context)
        try:
            rendered = self._template.render(variables).strip()
        except LabelPathError:
            raise
        except TemplateError as exc:
            raise OutputError(f"save_template {self.source!r} failed: {exc}") from None
        if not rendered or "\x00" in rendered:
            raise OutputError(f"save_template {self.source!r} rendered an empty or invalid path {rendered!r}")
        path = Path(os.path.normpath(self.output_root / rendered))
        inside = path.is_relative_to(self.output_root) and is_within(path, self.output_root)
        if path == self.output_root or not inside:
            raise OutputError(f"rendered path {rendered!r} lies outside output_root {str(self.output_root)!r}")
        name_bytes = len(os.fsencode(path.name))
        if name_bytes > 255:
            raise OutputError(f"rendered file name is {name_bytes} bytes long (at most 255): {path.name!r}")
        return path

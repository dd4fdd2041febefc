"""Output path templates: sandboxed Jinja2, confined to ``output_root``, one label per segment.

A template is rendered in a sandboxed Jinja2 environment with ``StrictUndefined`` (a missing
variable is an error, never an empty path segment). Every value a ``{{ … }}`` expression prints
must be a safe single path segment: no ``/`` or NUL, not empty, not ``.`` or ``..``, and not
starting with ``.`` or ``_``. So a label such as ``measure: "../run-0002/stock"`` cannot aim at
another run's files, and a label cannot make a file that readers skip: ``.arrow`` from an empty
label, or ``_data.arrow`` and ``.hidden.arrow``, which pyarrow datasets, polars and Spark leave
out of a directory scan. Two kinds of values are exempt:

* trusted values the operator configured: ``output_root``, ``logger_path`` and everything in
  ``default_metadata``;
* values passed through the ``subpath`` filter (``{{ group | subpath }}``), which the template
  author uses to let a value span several segments on purpose; each of its segments must
  still be non-empty and neither ``.`` nor ``..``.

Finally the rendered path must lie inside ``output_root`` once ``..`` and symlinks are resolved.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from herocollector.errors import ConfigError, LabelPathError, OutputError
from herocollector.run.rundir import within_roots


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
    if not _encodable(text):
        return "it is not valid Unicode (a lone surrogate)"
    if text.startswith((".", "_")):
        # pyarrow datasets, polars and Spark skip such files and folders: the rows would be invisible.
        return f"it starts with {text[0]!r}, which dataset readers skip (use '| subpath' to allow it)"
    return None


def _encodable(text: str) -> bool:
    """Whether ``text`` can be a file name: UTF-8, without the lone surrogates that JSON escapes can make."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def object_root(output_root: str | Path) -> str | None:
    """The object store root ``s3://bucket/prefix`` (no trailing ``/``), or None for a folder."""
    text = str(output_root)
    if text.startswith("s3://"):
        bucket = text[5:].split("/", 1)[0]
        if not bucket:
            raise ConfigError(f"output_root {text!r} names no bucket")
        return text.rstrip("/")
    return None


def local_root(output_root: str | Path) -> str:
    """The folder of a local ``output_root`` (a path, or a ``file://`` URI).

    For an object store root this is its URI, which is never used as a folder.
    """
    text = str(output_root)
    if text.startswith("file://"):
        return text[len("file://") :] or "/"
    if "://" in text and not text.startswith("s3://"):
        raise ConfigError(f"output_root: only local folders, file:// and s3:// are supported, got {text!r}")
    return text


def is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` lies inside ``root`` once both are fully resolved (symlinks included).

    The same check as ``allowed_roots`` (:func:`herocollector.run.rundir.within_roots`).
    """
    try:
        return within_roots(path, [root])
    except (OSError, ValueError):  # a NUL byte, a path the OS cannot resolve
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
        self.object_root = object_root(output_root)
        self.output_root: Path = Path(os.path.abspath(local_root(output_root)))
        env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_finalize)
        env.filters["subpath"] = _subpath
        try:
            self._template = env.from_string(template)
        except TemplateError as exc:
            raise ConfigError(f"invalid save_template {template!r}: {exc}") from None

    def render_location(self, context: Mapping[str, Any], trusted: Mapping[str, Any] | None = None) -> Path | str:
        """Render the output location for one stream: a local path, or an object URI.

        For an object store root (``s3://bucket/prefix``) the rendered path must stay under the
        prefix; the result is ``s3://bucket/prefix/<key>``. Otherwise see :meth:`render`.
        """
        if self.object_root is None:
            return self.render(context, trusted)
        rendered = self._render(context, trusted, self.object_root)
        root = self.object_root
        relative = rendered[len(root) + 1 :] if rendered.startswith(root + "/") else rendered
        key = posixpath.normpath(relative)
        if "://" in relative or relative.startswith("/") or key in (".", "..") or key.startswith("../"):
            raise OutputError(f"rendered path {rendered!r} lies outside output_root {root!r}")
        name_bytes = len(key.rsplit("/", 1)[-1].encode())
        if name_bytes > 255:
            raise OutputError(f"rendered file name is {name_bytes} bytes long (at most 255): {key!r}")
        return f"{root}/{key}"

    def _render(self, context: Mapping[str, Any], trusted: Mapping[str, Any] | None, root: str) -> str:
        variables: dict[str, Any] = {"output_root": Trusted(root)}
        for key, value in (trusted or {}).items():
            variables[key] = Trusted(value) if isinstance(value, str) else value
        variables.update(context)
        try:
            rendered = self._template.render(variables).strip()
        except LabelPathError:
            raise
        except TemplateError as exc:
            raise OutputError(f"save_template {self.source!r} failed: {exc}") from None
        if not rendered or "\x00" in rendered or not _encodable(rendered):
            raise OutputError(f"save_template {self.source!r} rendered an empty or invalid path {rendered!r}")
        return rendered

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
        rendered = self._render(context, trusted, str(self.output_root))
        path = Path(os.path.normpath(self.output_root / rendered))
        inside = path.is_relative_to(self.output_root) and is_within(path, self.output_root)
        if path == self.output_root or not inside:
            raise OutputError(f"rendered path {rendered!r} lies outside output_root {str(self.output_root)!r}")
        name_bytes = len(os.fsencode(path.name))
        if name_bytes > 255:
            raise OutputError(f"rendered file name is {name_bytes} bytes long (at most 255): {path.name!r}")
        return path

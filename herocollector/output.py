"""Output paths and files: sandboxed Jinja2 path templates, and atomically committed Arrow IPC.

A path template is rendered in a sandboxed Jinja2 environment with ``StrictUndefined`` (a
missing variable is an error, never an empty path segment), and the result must lie inside
``output_root`` even after ``..`` and symlinks are resolved. An output is written to a hidden
temporary file in its final directory, fsynced, and only then renamed into place, so no
reader ever sees a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .errors import CollectorError

FORMATS = ("file", "stream")
COMPRESSIONS = (None, "zstd", "lz4")
PROVENANCE_PREFIX = "herocollector."


class OutputError(CollectorError):
    """A template that cannot be rendered, a path outside ``output_root``, or a refused write."""


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
        OutputError: The template does not compile.
    """

    def __init__(self, template: str, output_root: str | Path) -> None:
        self.source = template
        self.output_root = Path(os.path.abspath(output_root))
        env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        try:
            self._template = env.from_string(template)
        except TemplateError as exc:
            raise OutputError(f"invalid save_template {template!r}: {exc}") from None

    def render(self, context: Mapping[str, Any]) -> Path:
        """Render the path for one stream.

        Args:
            context: Template variables.

        Returns:
            The absolute output path, inside ``output_root``.

        Raises:
            OutputError: Undefined variable or other template error, an empty result, or a
                path that escapes ``output_root``.
        """
        try:
            rendered = self._template.render(context).strip()
        except TemplateError as exc:
            raise OutputError(f"save_template {self.source!r} failed: {exc}") from None
        if not rendered or "\x00" in rendered:
            raise OutputError(f"save_template {self.source!r} rendered an empty or invalid path {rendered!r}")
        path = Path(os.path.normpath(self.output_root / rendered))
        if path == self.output_root or not path.is_relative_to(self.output_root) or not is_within(path, self.output_root):
            raise OutputError(f"rendered path {rendered!r} lies outside output_root {str(self.output_root)!r}")
        return path


def provenance_metadata(
    logger_path: str, source_name: str, collected_at: str, job_id: int, streams: list[dict[str, Any]]
) -> dict[str, str]:
    """Arrow schema metadata recording where an output came from.

    Args:
        logger_path: The logger directory collected.
        source_name: The HERO that announced the run.
        collected_at: ISO 8601 time of collection.
        job_id: The journal job.
        streams: Labels of the streams held in the file.

    Returns:
        String key/value pairs, keys prefixed ``herocollector.``.
    """
    return {
        f"{PROVENANCE_PREFIX}logger_path": logger_path,
        f"{PROVENANCE_PREFIX}source": source_name,
        f"{PROVENANCE_PREFIX}collected_at": collected_at,
        f"{PROVENANCE_PREFIX}job": str(job_id),
        f"{PROVENANCE_PREFIX}streams": json.dumps(streams, default=str, sort_keys=True),
    }


def read_provenance(path: str | Path) -> dict[str, str]:
    """The ``herocollector.*`` schema metadata of an Arrow IPC output (file or stream format).

    Returns:
        The provenance, or an empty dict if the file is not an Arrow IPC file of ours.
    """
    try:
        try:
            schema = pa.ipc.open_file(str(path)).schema
        except pa.ArrowInvalid:
            with pa.OSFile(str(path)) as fh:
                schema = pa.ipc.open_stream(fh).schema
    except (pa.ArrowInvalid, OSError):
        return {}
    meta = schema.metadata or {}
    return {
        k.decode()[len(PROVENANCE_PREFIX) :]: v.decode()
        for k, v in meta.items()
        if k.decode(errors="replace").startswith(PROVENANCE_PREFIX)
    }


class ArrowOutput:
    """One Arrow IPC output, written to a temporary name and committed atomically.

    Args:
        final: The output path.
        schema: The schema (with provenance metadata).
        tag: Distinguishes the temporary name (e.g. the job id).
        format: ``"file"`` (Arrow IPC file) or ``"stream"`` (Arrow IPC stream).
        compression: None, ``"zstd"`` or ``"lz4"`` (IPC buffer compression).
    """

    def __init__(
        self, final: Path, schema: pa.Schema, tag: str, format: str = "file", compression: str | None = None
    ) -> None:
        if format not in FORMATS:
            raise OutputError(f"format must be one of {FORMATS}, got {format!r}")
        if compression not in COMPRESSIONS:
            raise OutputError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        self.final = final
        self.rows = 0
        final.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = final.parent / f".{final.name}.{tag}.tmp"
        self._fh = open(self.temporary, "wb")
        options = pa.ipc.IpcWriteOptions(compression=compression)
        opener = pa.ipc.new_file if format == "file" else pa.ipc.new_stream
        self._writer = opener(self._fh, schema, options=options)

    def write(self, batch: pa.RecordBatch) -> None:
        """Append a batch."""
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def commit(self, replace: bool) -> None:
        """Finish the file, fsync it, and move it to its final name.

        Args:
            replace: Replace an existing file (one this job wrote before a crash); otherwise
                an existing file makes the commit fail and is left untouched.

        Raises:
            OutputError: ``replace`` is False and the final name exists.
        """
        self._writer.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        try:
            if replace:
                os.replace(self.temporary, self.final)
            else:
                os.link(self.temporary, self.final)  # fails, atomically, if the name is taken
                os.unlink(self.temporary)
        except FileExistsError:
            self.abort()
            raise OutputError("refusing to overwrite a file this job did not write", self.final) from None
        _fsync_dir(self.final.parent)

    def abort(self) -> None:
        """Drop the temporary file."""
        try:
            self._writer.close()
        except (pa.ArrowInvalid, OSError, ValueError):
            pass
        if not self._fh.closed:
            self._fh.close()
        self.temporary.unlink(missing_ok=True)


def route_batch(batch: pa.RecordBatch, ids: np.ndarray, group_of: np.ndarray, outputs: list[ArrowOutput]) -> None:
    """Send each row of a batch to the output of its stream (vectorised).

    Args:
        batch: Rows with a ``stream_id`` column.
        ids: The stream ids that have an output, sorted.
        group_of: For each of ``ids``, the index of its output in ``outputs``.
        outputs: The open outputs.
    """
    if np.all(group_of == group_of[0]):
        outputs[int(group_of[0])].write(batch)
        return
    sids = batch.column("stream_id").to_numpy(zero_copy_only=False)
    row_group = group_of[np.searchsorted(ids, sids)]
    for index in np.unique(row_group).tolist():
        outputs[index].write(batch.filter(pa.array(row_group == index)))


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

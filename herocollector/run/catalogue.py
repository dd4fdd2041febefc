"""The stream catalogue: the ``streams/*.json`` of logger directories, validated, and selection.

Each stream JSON is a flat object of labels plus ``stream_id``, ``epoch_scale`` and
``value_scale``. A loaded stream is a :class:`Stream`; label selectors and label columns see
its :attr:`Stream.fields`: the labels, the id and scales, and ``_logger_path`` (as the
reference collector offers them).

The files are read through :class:`~herocollector.run.rundir.RunDirectory` (regular files
only, at most 1 MiB each). Parsing names the file and the field of every problem: an integer
literal beyond 64 bits is refused before Python converts it, and a NaN or infinite number is
refused too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from herocollector.errors import CollectorError, MetadataError
from herocollector.run.rundir import MAX_STREAM_FILE_BYTES, RunDirectory, read_small_file

if TYPE_CHECKING:
    from tools.label_selector import Rule

RuleLike = Union["Rule", Mapping[str, Any], None]
"""A disco-tools ``Rule``, its raw JSON spec as a dict, or None for every stream."""

LOGGER_PATH_KEY = "_logger_path"
SCALE_KEYS = ("stream_id", "epoch_scale", "value_scale")
_MAX_STREAM_ID = 2**32 - 1


@dataclass(frozen=True)
class Stream:
    """One stream of a logger directory.

    Attributes:
        stream_id: The id its records carry.
        epoch_scale: Seconds per epoch tick.
        value_scale: Value per quantisation step.
        labels: The stream's own labels (everything in its JSON but the id and scales).
        logger_path: The logger directory it belongs to.
    """

    stream_id: int
    epoch_scale: float
    value_scale: float
    labels: Mapping[str, Any] = field(default_factory=dict)
    logger_path: str = ""

    @property
    def metadata(self) -> dict[str, Any]:
        """The stream JSON as written: labels, ``stream_id``, ``epoch_scale``, ``value_scale``."""
        scales = {"stream_id": self.stream_id, "epoch_scale": self.epoch_scale, "value_scale": self.value_scale}
        return {**self.labels, **scales}

    @property
    def fields(self) -> dict[str, Any]:
        """What rules select on and label columns read: :attr:`metadata` plus ``_logger_path``."""
        return {**self.metadata, LOGGER_PATH_KEY: self.logger_path}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_MAX_INT_DIGITS = 20
"""Longest integer literal parsed (an int64 has at most 19 digits); a longer one is refused, naming its field."""
_INT64 = (-(2**63), 2**63 - 1)


class _HugeInt:
    """An integer literal too long to be any label's value; reported with the field that holds it."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))


def _parse_int(text: str) -> int | _HugeInt:
    # Python refuses to parse integers of more than 4300 digits with an error that names
    # nothing, and takes quadratic time below that: refuse long literals here, by field.
    if len(text) > _MAX_INT_DIGITS + 1:
        return _HugeInt(text)
    return int(text)


def _bad_text(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (JSON escapes can make lone surrogates), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a string with a lone surrogate {text[exc.start]!r} at index {exc.start} is not valid Unicode"
    return None


def _bad_number(value: Any) -> str | None:
    """Why ``value`` (anywhere inside it) cannot be a label value, or None."""
    if isinstance(value, str):
        return _bad_text(value)
    if isinstance(value, _HugeInt):
        return f"an integer of {value.digits} digits is out of range (at most a 64-bit integer)"
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        return f"the integer {value} is out of range (at most a 64-bit integer)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    return None


def _check_values(meta: Mapping[str, Any], file: Path) -> None:
    """Refuse out-of-range integers, non-finite numbers and invalid Unicode, naming the field (and where inside it)."""
    todo: list[tuple[str, Any]] = [("", meta)]
    while todo:
        where, value = todo.pop()
        problem = _bad_number(value)
        if problem:
            raise MetadataError(f"field {where}: {problem}", file)
        if isinstance(value, dict):
            for key in value:
                problem = _bad_text(key)
                if problem:
                    raise MetadataError(f"field name {key!r}{' in ' + where if where else ''}: {problem}", file)
            todo.extend((f"{where}[{k!r}]" if where else repr(k), v) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((f"{where}[{i}]", v) for i, v in enumerate(value))


def parse_stream(data: bytes, file: Path, logger_path: str) -> Stream:
    """Parse and validate one stream JSON.

    Args:
        data: The file's contents.
        file: The ``streams/*.json`` file (named in errors).
        logger_path: The logger directory.

    Returns:
        The stream.

    Raises:
        MetadataError: Invalid UTF-8 or JSON, a missing or invalid field, an integer beyond
            64 bits, or a number that is NaN or infinite; the message names the file and field.
    """
    try:
        meta = json.loads(data.decode("utf-8"), parse_int=_parse_int)
    except UnicodeDecodeError as exc:
        raise MetadataError(f"cannot read stream metadata: {exc}", file) from None
    except json.JSONDecodeError as exc:
        raise MetadataError(f"invalid JSON: {exc}", file) from None
    except RecursionError:
        raise MetadataError("invalid JSON: nested too deeply", file) from None
    if not isinstance(meta, dict):
        raise MetadataError("stream metadata must be a JSON object", file)
    _check_values(meta, file)
    sid = meta.get("stream_id")
    if sid is None:
        raise MetadataError("missing field 'stream_id'", file)
    if not isinstance(sid, int) or isinstance(sid, bool) or not 0 <= sid <= _MAX_STREAM_ID:
        raise MetadataError(f"field 'stream_id' must be an integer in [0, 2**32), got {sid!r}", file)
    for name in ("epoch_scale", "value_scale"):
        if name not in meta:
            raise MetadataError(f"missing field '{name}'", file)
        value = meta[name]
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise MetadataError(f"field '{name}' must be a positive finite number, got {value!r}", file)
    labels = {k: v for k, v in meta.items() if k not in SCALE_KEYS}
    return Stream(sid, float(meta["epoch_scale"]), float(meta["value_scale"]), labels, logger_path)


def load_stream(file: Path, logger_path: str) -> Stream:
    """Load and validate one stream JSON (a regular file of at most 1 MiB; a symlink is refused).

    Args:
        file: The ``streams/*.json`` file.
        logger_path: The logger directory.

    Returns:
        The stream.

    Raises:
        MetadataError: See :func:`parse_stream`; also an unreadable file, one that is not a
            regular file, or one over the size limit.
    """
    _, data = read_small_file(None, str(file), Path(file), MAX_STREAM_FILE_BYTES)
    return parse_stream(data, Path(file), logger_path)


def streams_of(run: RunDirectory, logger_path: str | None = None) -> list[Stream]:
    """Load every stream of an opened run directory, in file-name order.

    Args:
        run: The run directory.
        logger_path: What the streams record as their logger path (default: the resolved path).

    Returns:
        The validated streams.

    Raises:
        MetadataError: No ``streams/`` folder, an entry that is not a regular file, an
            invalid stream, or a stream id used twice.
    """
    base = str(run.path) if logger_path is None else logger_path
    streams: list[Stream] = []
    seen: dict[int, Path] = {}
    for file, data in run.stream_files():
        stream = parse_stream(data, file, base)
        if stream.stream_id in seen:
            raise MetadataError(
                f"stream id {stream.stream_id} is declared twice (also in {seen[stream.stream_id].name})", file
            )
        seen[stream.stream_id] = file
        streams.append(stream)
    return streams


def load_streams(path: str | Path) -> list[Stream]:
    """Load every stream of one logger directory, in file-name order (see :func:`streams_of`).

    Args:
        path: The logger directory.

    Returns:
        The validated streams.

    Raises:
        MetadataError: No ``streams/`` folder, an invalid stream, or a stream id used twice.
        CollectorError: The directory does not exist or cannot be opened.
    """
    with RunDirectory(path, absolute=False) as run:
        return streams_of(run, str(path))


def select_streams(streams: Iterable[Stream], rule: RuleLike) -> list[Stream]:
    """The streams a rule selects, in their original order.

    Args:
        streams: The streams; the rule sees each one's :attr:`Stream.fields`.
        rule: A ``Rule``, a raw rule spec dict, or None for all.

    Returns:
        The selected streams.

    Raises:
        CollectorError: The rule is malformed or cannot be evaluated on these labels.
    """
    streams = list(streams)
    if rule is None:
        return streams
    # disco-tools (and yaml behind it) is imported only when a rule is given: a cold collect
    # of every stream does not pay for it.
    from tools import label_selector
    from tools.label_selector import Rule

    if not isinstance(rule, (Rule, Mapping)):
        raise CollectorError(f"rule must be a disco-tools Rule or a rule spec dict, got {type(rule).__name__}")
    try:
        matches = label_selector.compile(rule if isinstance(rule, Rule) else dict(rule))
        return [stream for stream in streams if matches(stream.fields)]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CollectorError(f"invalid rule {getattr(rule, 'spec', rule)!r}: {exc!r}") from None

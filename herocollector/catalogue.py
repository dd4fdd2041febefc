"""The stream catalogue: the ``streams/*.json`` of logger directories, validated, and selection.

Each stream JSON is a flat object of labels plus ``stream_id``, ``epoch_scale`` and
``value_scale``. Loaded streams are plain dicts (what disco-tools label selectors take), with
``_logger_path`` added.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from tools import label_selector
from tools.label_selector import Rule

from .errors import CollectorError, MetadataError
from .logdir import STREAMS_DIR

RuleLike = Union[Rule, Mapping[str, Any], None]
"""A disco-tools ``Rule``, its raw JSON spec as a dict, or None for every stream."""

LOGGER_PATH_KEY = "_logger_path"
_MAX_STREAM_ID = 2**32 - 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_stream(file: Path, logger_path: str) -> dict[str, Any]:
    """Load and validate one stream JSON.

    Args:
        file: The ``streams/*.json`` file.
        logger_path: The logger directory, stored as ``_logger_path``.

    Returns:
        The stream's labels with ``stream_id`` (int), ``epoch_scale``, ``value_scale``
        (floats) and ``_logger_path``.

    Raises:
        MetadataError: Unreadable or invalid JSON, or a missing or invalid field.
    """
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(f"cannot read stream metadata: {exc}", file) from None
    except json.JSONDecodeError as exc:
        raise MetadataError(f"invalid JSON: {exc}", file) from None
    if not isinstance(meta, dict):
        raise MetadataError("stream metadata must be a JSON object", file)
    sid = meta.get("stream_id")
    if sid is None:
        raise MetadataError("missing field 'stream_id'", file)
    if not isinstance(sid, int) or isinstance(sid, bool) or not 0 <= sid <= _MAX_STREAM_ID:
        raise MetadataError(f"field 'stream_id' must be an integer in [0, 2**32), got {sid!r}", file)
    for field in ("epoch_scale", "value_scale"):
        if field not in meta:
            raise MetadataError(f"missing field '{field}'", file)
        value = meta[field]
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise MetadataError(f"field '{field}' must be a positive finite number, got {value!r}", file)
        meta[field] = float(value)
    meta[LOGGER_PATH_KEY] = logger_path
    return meta


def load_streams(path: str | Path) -> list[dict[str, Any]]:
    """Load every stream of one logger directory, in file-name order.

    Args:
        path: The logger directory.

    Returns:
        The validated stream dicts.

    Raises:
        MetadataError: No ``streams/`` folder, an invalid stream, or a stream id used twice.
    """
    base = Path(path)
    folder = base / STREAMS_DIR
    if not folder.is_dir():
        raise MetadataError(f"not a logger directory: no {STREAMS_DIR}/ folder", base)
    streams: list[dict[str, Any]] = []
    seen: dict[int, Path] = {}
    for file in sorted(folder.glob("*.json")):
        meta = load_stream(file, str(base))
        sid = meta["stream_id"]
        if sid in seen:
            raise MetadataError(f"stream id {sid} is declared twice (also in {seen[sid].name})", file)
        seen[sid] = file
        streams.append(meta)
    return streams


def select_streams(streams: Iterable[dict[str, Any]], rule: RuleLike) -> list[dict[str, Any]]:
    """The streams a rule selects, in their original order.

    Args:
        streams: Stream dicts.
        rule: A ``Rule``, a raw rule spec dict, or None for all.

    Returns:
        The selected streams.

    Raises:
        CollectorError: The rule is malformed or cannot be evaluated on these labels.
    """
    streams = list(streams)
    if rule is None:
        return streams
    if not isinstance(rule, (Rule, Mapping)):
        raise CollectorError(f"rule must be a disco-tools Rule or a rule spec dict, got {type(rule).__name__}")
    try:
        return list(label_selector.select(streams, rule if isinstance(rule, Rule) else dict(rule)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CollectorError(f"invalid rule {getattr(rule, 'spec', rule)!r}: {exc!r}") from None

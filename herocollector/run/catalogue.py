"""The stream catalogue: the ``streams/*.json`` of logger directories, validated, and selection.

Each stream JSON is a flat object of labels plus ``stream_id``, ``epoch_scale`` and
``value_scale``. A loaded stream is a :class:`Stream`; label selectors and label columns see
its :attr:`Stream.fields`: the labels, the id and scales, and ``_logger_path`` (as the
reference collector offers them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from herocollector.errors import CollectorError, MetadataError
from herocollector.run.logdir import STREAMS_DIR

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


def load_stream(file: Path, logger_path: str) -> Stream:
    """Load and validate one stream JSON.

    Args:
        file: The ``streams/*.json`` file.
        logger_path: The logger directory.

    Returns:
        The stream.

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
    for name in ("epoch_scale", "value_scale"):
        if name not in meta:
            raise MetadataError(f"missing field '{name}'", file)
        value = meta[name]
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise MetadataError(f"field '{name}' must be a positive finite number, got {value!r}", file)
    labels = {k: v for k, v in meta.items() if k not in SCALE_KEYS}
    return Stream(sid, float(meta["epoch_scale"]), float(meta["value_scale"]), labels, logger_path)


def load_streams(path: str | Path) -> list[Stream]:
    """Load every stream of one logger directory, in file-name order.

    Args:
        path: The logger directory.

    Returns:
        The validated streams.

    Raises:
        MetadataError: No ``streams/`` folder, an invalid stream, or a stream id used twice.
    """
    base = Path(path)
    folder = base / STREAMS_DIR
    if not folder.is_dir():
        raise MetadataError(f"not a logger directory: no {STREAMS_DIR}/ folder", base)
    streams: list[Stream] = []
    seen: dict[int, Path] = {}
    for file in sorted(folder.glob("*.json")):
        stream = load_stream(file, str(base))
        if stream.stream_id in seen:
            raise MetadataError(
                f"stream id {stream.stream_id} is declared twice (also in {seen[stream.stream_id].name})", file
            )
        seen[stream.stream_id] = file
        streams.append(stream)
    return streams


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

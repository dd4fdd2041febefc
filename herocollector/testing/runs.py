"""Test support for runs: real data-logger runs and what was recorded in them, writers, frames.

Logger directories are written with the REAL ``data_logger.DataLogger`` (the ``test`` extra),
and the helpers return what was recorded, quantised exactly as the logger quantises
(``tick = llround(epoch / epoch_scale)``, ``q = llround(value / value_scale)``, C-style
round half away from zero), so tests can compare the Collector's output with the truth.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zstandard

from herocollector.run.logdir import llround

LABEL_KEYS = ("organisation", "model", "experiment", "run", "replication", "entity", "measure")
"""The labels every generated stream carries (unless a test drops one)."""

_MODELS = ("supply_chain", "epidemic")
_MEASURES = ("stock", "demand", "backlog", "infected")

# (epoch_scale, value_scale) pairs cycled over the streams. Powers of two make exact
# half-quantum inputs possible, which exercises llround's "half away from zero".
_SCALES = ((0.25, 0.5), (1e-3, 1e-6), (1.0, 0.125), (0.1, 0.01))


# ----------------------------------------------------------------------------------------
# What was recorded
# ----------------------------------------------------------------------------------------


@dataclass
class RecordedRun:
    """A logger directory written by ``data_logger.DataLogger`` and what was recorded into it.

    The per-record arrays are the *expected decoded* values: epochs and values after the
    logger's quantisation, rebuilt as ``float(tick) * epoch_scale`` and
    ``float(q) * value_scale`` (as the C++ decoder does).

    Attributes:
        path: The logger directory.
        streams: The stream metadata, as written to ``streams/`` (labels plus
            ``stream_id``, ``epoch_scale``, ``value_scale``), in stream-id order.
        stream_ids: Stream id of each record, in recording (= file) order.
        epochs: Expected epoch of each record.
        indices: Index array of each record.
        values: Expected value array of each record.
    """

    path: Path
    streams: list[dict[str, Any]]
    stream_ids: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stream_ids)

    @property
    def segments(self) -> list[Path]:
        """The run's segment files, in name order."""
        return sorted(self.path.glob("*.seg.zst"))

    def stream(self, stream_id: int) -> dict[str, Any]:
        """The metadata of one stream.

        Args:
            stream_id: The stream id.

        Returns:
            The stream's metadata dict.
        """
        return next(s for s in self.streams if s["stream_id"] == stream_id)

    def rows(self, selected: Iterable[int] | None = None) -> list[int]:
        """Record numbers of the selected streams, in file order.

        Args:
            selected: Stream ids to keep; None keeps all.

        Returns:
            Positions into the per-record lists.
        """
        keep = None if selected is None else set(selected)
        return [i for i, sid in enumerate(self.stream_ids) if keep is None or sid in keep]

    def expected_table(
        self,
        selected: Iterable[int] | None = None,
        columns: Sequence[str] = (),
        rows: Sequence[int] | None = None,
    ) -> pa.Table:
        """The table a correct collector produces for this run.

        Args:
            selected: Stream ids to keep; None keeps all.
            columns: Label columns (already deduplicated) to append; a missing label is null.
            rows: Explicit record numbers (overrides ``selected``).

        Returns:
            The expected table with the four base columns and the label columns.
        """
        picked = list(rows) if rows is not None else self.rows(selected)
        data: dict[str, pa.Array] = {
            "stream_id": pa.array([self.stream_ids[i] for i in picked], type=pa.uint32()),
            "epoch": pa.array([self.epochs[i] for i in picked], type=pa.float64()),
            "indices": _lists([self.indices[i] for i in picked], np.int64),
            "values": _lists([self.values[i] for i in picked], np.float64),
        }
        for name in columns:
            data[name] = pa.array([self.stream(self.stream_ids[i]).get(name) for i in picked])
        return pa.table(data)


def _lists(arrays: list[np.ndarray], dtype: type[np.generic]) -> pa.Array:
    """One list per array, as Arrow lists of ``dtype`` (built from the arrays, not from Python lists)."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def default_labels(n_streams: int, seed: int) -> list[dict[str, Any]]:
    """Labels for ``n_streams`` streams.

    The labels are organisation, model, experiment, run, replication, entity and measure.

    Args:
        n_streams: How many streams.
        seed: Seeds the label choices.

    Returns:
        One label dict per stream. Models alternate so that a ``model`` rule always
        selects a proper, non-empty subset when ``n_streams >= 2``.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_streams):
        out.append(
            {
                "organisation": "disco",
                "model": _MODELS[i % len(_MODELS)],
                "experiment": f"exp-{seed % 7}",
                "run": int(rng.integers(0, 100)),
                "replication": i // 2,
                "entity": f"node-{int(rng.integers(0, 1000))}",
                "measure": _MEASURES[i % len(_MEASURES)],
            }
        )
    return out


def build_run(
    path: Path,
    seed: int,
    *,
    n_streams: int = 4,
    n_records: int = 300,
    max_nnz: int = 8,
    rotate_bytes: int = 256 << 20,
    labels: Sequence[Mapping[str, Any]] | None = None,
    epoch_start: float = 1000.0,
) -> RecordedRun:
    """Write a logger directory with the real ``data_logger.DataLogger``.

    Streams are registered with cycling scales; records pick a random stream each, carry a
    random sparse vector (``n`` from 0 to ``max_nnz``, 0 frequent; indices sometimes beyond
    2**32; values of both signs, some exactly on a half quantum), and per stream an epoch
    that mostly increases, sometimes repeats and sometimes steps back.

    Args:
        path: The directory to create (must not exist yet or be empty).
        seed: Seeds everything.
        n_streams: Streams to register.
        n_records: Records to write in all.
        max_nnz: Largest number of non-zeros in a record.
        rotate_bytes: The logger's segment rotation size; small values force many segments.
        labels: One label dict per stream; default :func:`default_labels`.
        epoch_start: Epoch of each stream's first record (roughly); non-zero so a decoder
            that forgets ticks across segments gets it visibly wrong.

    Returns:
        The run and what was recorded (after quantisation).
    """
    maker = RecordMaker(path, seed, labels=labels, n_streams=n_streams, max_nnz=max_nnz, rotate_bytes=rotate_bytes,
                        epoch_start=epoch_start)  # fmt: skip
    try:
        for _ in range(n_records):
            maker.record()
    finally:
        maker.close()
    return maker.run


class RecordMaker:
    """Writes records with the real ``data_logger.DataLogger`` and keeps what was recorded (see :func:`build_run`).

    Args:
        path: The logger directory to create.
        seed: Seeds everything.
        labels: One label dict per stream; default :func:`default_labels`.
        n_streams: Streams to register when ``labels`` is not given.
        max_nnz: Largest number of non-zeros in a record.
        rotate_bytes: The logger's segment rotation size.
        epoch_start: Epoch of each stream's first record (roughly).
    """

    def __init__(
        self,
        path: Path,
        seed: int,
        *,
        labels: Sequence[Mapping[str, Any]] | None = None,
        n_streams: int = 4,
        max_nnz: int = 8,
        rotate_bytes: int = 256 << 20,
        epoch_start: float = 1000.0,
    ) -> None:
        import data_logger

        self._rng = np.random.default_rng(seed)
        self._max_nnz = max_nnz
        chosen = list(labels) if labels is not None else default_labels(n_streams, seed)
        self.logger = data_logger.DataLogger(path, rotate_bytes=rotate_bytes)
        self._streams: list[dict[str, Any]] = []
        self._clocks: dict[int, float] = {}
        for i, lab in enumerate(chosen):
            epoch_scale, value_scale = _SCALES[i % len(_SCALES)]
            sid = self.logger.register_stream(dict(lab), epoch_scale=epoch_scale, value_scale=value_scale)
            self._streams.append({**lab, "stream_id": sid, "epoch_scale": epoch_scale, "value_scale": value_scale})
            self._clocks[sid] = epoch_start + float(self._rng.uniform(0, 10))
        self.run = RecordedRun(Path(path), self._streams)

    def record(self) -> None:
        """Write one record of a random stream (the logger's writer thread puts it into a segment)."""
        rng = self._rng
        meta = self._streams[int(rng.integers(0, len(self._streams)))]
        sid = meta["stream_id"]
        epoch_scale, value_scale = meta["epoch_scale"], meta["value_scale"]
        step = rng.choice([0.0, -float(rng.uniform(0, 3)), float(rng.exponential(5))], p=[0.1, 0.1, 0.8])
        self._clocks[sid] += step
        epoch = self._clocks[sid]
        n = 0 if rng.random() < 0.25 else int(rng.integers(1, self._max_nnz + 1))
        space = 1 << 40 if rng.random() < 0.1 else max(1000, 4 * self._max_nnz)
        idx = np.sort(rng.choice(space, size=n, replace=False)).astype(np.int64)
        vals = rng.normal(0, 50, size=n)
        half = rng.random(n) < 0.2
        vals[half] = (np.round(vals[half] / value_scale) + 0.5) * value_scale
        self.logger.record(sid, epoch, idx, vals)
        tick = llround(np.array([epoch / epoch_scale]))[0]
        q = llround(vals / value_scale)
        self.run.stream_ids.append(sid)
        self.run.epochs.append(float(tick) * epoch_scale)
        self.run.indices.append(idx)
        self.run.values.append(q.astype(np.float64) * value_scale)

    def close(self) -> None:
        """Flush and close the logger; it writes ``_DONE``."""
        self.logger.close()


# ----------------------------------------------------------------------------------------
# Writers and tables
# ----------------------------------------------------------------------------------------


class MemoryWriter:
    """A minimal Collector writer that keeps the batches it receives.

    Args:
        schema: The schema batches must conform to, or None to take them as they come.
    """

    def __init__(self, schema: pa.Schema | None = None) -> None:
        self.schema = schema
        self.batches: list[pa.RecordBatch] = []

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Keep one batch.

        Args:
            batch: The record batch.
        """
        self.batches.append(batch)

    def table(self, schema: pa.Schema | None = None) -> pa.Table:
        """All batches as one table (see :func:`batches_to_table`)."""
        return batches_to_table(self.batches, schema or self.schema)


def batches_to_table(batches: Sequence[pa.RecordBatch], schema: pa.Schema | None = None) -> pa.Table:
    """Join record batches into one table with contiguous columns.

    Args:
        batches: The batches, all of one schema.
        schema: Needed when ``batches`` is empty; default: the four base columns.

    Returns:
        The combined table (``combine_chunks`` applied).
    """
    if not batches:
        from herocollector import Collector

        return (schema or Collector.schema_for()).empty_table()
    return pa.Table.from_batches(list(batches)).combine_chunks()


def collect_table(
    paths: Sequence[str | Path], collector_cls: Callable[..., Any] | None = None, **kwargs: Any
) -> pa.Table:
    """Collect ``paths`` into memory and return the table.

    Args:
        paths: Logger directories.
        collector_cls: The collector class; default ``herocollector.Collector``.
        **kwargs: Passed to ``collect`` (``rule``, ``columns``, ...).

    Returns:
        The collected table.

    Raises:
        AssertionError: ``collect`` returned False.
    """
    if collector_cls is None:
        from herocollector.collector import Collector

        collector_cls = Collector
    writer = MemoryWriter()
    assert collector_cls(list(paths)).collect(writer, **kwargs) is True
    return writer.table()


def reference_table(paths: Sequence[str | Path], **kwargs: Any) -> pa.Table:
    """Collect ``paths`` with the reference ``data_logger.Collector``.

    Args:
        paths: Logger directories.
        **kwargs: Passed to ``collect``.

    Returns:
        The reference's table.
    """
    import data_logger

    return collect_table(paths, data_logger.Collector, **kwargs)


# ----------------------------------------------------------------------------------------
# Segment bytes
# ----------------------------------------------------------------------------------------


def zstd_frame_starts(data: bytes) -> list[int]:
    """Byte offsets of the zstd frames of a segment (a test-only, per-frame walk).

    Args:
        data: A whole, valid segment.

    Returns:
        The offset of each frame, in order.
    """
    starts: list[int] = []
    pos = 0
    while pos < len(data):
        starts.append(pos)
        obj = zstandard.ZstdDecompressor().decompressobj()
        obj.decompress(data[pos:])
        pos = len(data) - len(obj.unused_data)
    return starts


def write_stream_json(path: Path, meta: Mapping[str, Any]) -> None:
    """Overwrite a ``streams/*.json`` file with ``meta``.

    Args:
        path: The stream JSON file.
        meta: The object to write.
    """
    path.write_text(json.dumps(dict(meta)), encoding="utf-8")


def journal_rows(state_dir: Path) -> list[sqlite3.Row]:
    """The jobs of an actor's journal, read-only (the actor may be writing meanwhile).

    Args:
        state_dir: The actor's ``state_dir``.

    Returns:
        The job rows in id order; none if the journal does not exist yet.
    """
    db = sqlite3.connect(f"file:{state_dir / 'journal.sqlite3'}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()

"""The logger directory on disk: its files, the ``_DONE`` marker, and a writer.

A logger directory (a *run*) holds ``NNNNN.seg.zst`` segments, a ``streams/`` folder with one
JSON file per stream, and ``_DONE`` once the logger has finished.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from herocollector.decode.codec import Records, TickState, encode_segment

DONE_MARKER = "_DONE"
STREAMS_DIR = "streams"
SEGMENT_SUFFIX = ".seg.zst"


class Stop(Protocol):
    """What ends a wait early: a :class:`threading.Event`, or anything that waits like one."""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True once the wait is to end."""
        ...


def segment_files(path: str | Path) -> list[Path]:
    """The segment files of a run, in name order (the order they must be decoded in).

    For display and tests: collection reads a run through
    :class:`herocollector.run.rundir.RunDirectory`, which refuses what this skips or follows
    (a FIFO, a directory, a symlink).

    Args:
        path: The logger directory.

    Returns:
        The ``*.seg.zst`` files directly inside ``path``, sorted by name.
    """
    return sorted(p for p in Path(path).glob(f"*{SEGMENT_SUFFIX}") if p.is_file())


def is_done(path: str | Path) -> bool:
    """Whether the logger has finished writing ``path``: an entry named ``_DONE`` is there.

    Any entry counts, a symlink (even a dangling one), a FIFO or a directory too, so that
    reading the run (:class:`herocollector.run.rundir.RunDirectory`) reports such a ``_DONE``
    as an error instead of a wait that can only time out.
    """
    return os.path.lexists(Path(path) / DONE_MARKER)


def wait_for_done(
    paths: Iterable[str | Path],
    backoff: int = 100,
    timeout: int | None = 60_000,
    stop: Stop | None = None,
) -> bool:
    """Poll until every path holds ``_DONE``.

    Args:
        paths: Logger directories.
        backoff: Milliseconds between polls.
        timeout: Milliseconds to wait in all; None waits forever.
        stop: Ends the wait early (returning False) once set.

    Returns:
        True when every path is done, False on timeout (or when ``stop`` was set).
    """
    pending = [Path(p) for p in paths]
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0) / 1000.0
    while True:
        pending = [p for p in pending if not is_done(p)]
        if not pending:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        pause = max(backoff, 1) / 1000.0
        if deadline is not None:
            pause = min(pause, max(deadline - time.monotonic(), 0.0))
        if stop is None:
            time.sleep(pause)
        elif stop.wait(pause):
            return False


def llround(values: np.ndarray) -> np.ndarray:
    """Round half away from zero, exactly as C's ``llround`` (NumPy rounds half to even)."""
    whole = np.trunc(values)
    rounded: np.ndarray = (whole + np.sign(values) * (np.abs(values - whole) >= 0.5)).astype(np.int64)
    return rounded


class RunWriter:
    """Writes a logger directory in the data logger's format, with the project's own codec.

    It quantises exactly as ``data_logger.DataLogger`` does (``llround(epoch / epoch_scale)``,
    ``llround(value / value_scale)``), keeps each stream's last tick across rotation, and
    writes ``_DONE`` on :meth:`close`. Records are buffered and written as zstd frames of
    ``records_per_frame`` records.

    Args:
        path: The logger directory to create.
        rotate_bytes: Start a new segment once the current one holds this many bytes.
        records_per_frame: Records per zstd frame (the data logger writes 1).
        zstd_level: Compression level.
    """

    def __init__(
        self,
        path: str | Path,
        rotate_bytes: int = 256 << 20,
        records_per_frame: int = 64,
        zstd_level: int = 1,
    ) -> None:
        self.path = Path(path)
        (self.path / STREAMS_DIR).mkdir(parents=True, exist_ok=True)
        self._rotate_bytes = rotate_bytes
        self._records_per_frame = records_per_frame
        self._flush_records = records_per_frame * 64  # records written to the segment at a time
        self._level = zstd_level
        self._scales: dict[int, tuple[float, float]] = {}
        self._pending: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        self._ticks = TickState()
        self._segment_index = 0
        self._segment_size = 0
        self._closed = False

    def register_stream(self, labels: Mapping[str, Any], *, epoch_scale: float, value_scale: float) -> int:
        """Register a stream and write its ``streams/`` JSON.

        Args:
            labels: The stream's labels (JSON primitives).
            epoch_scale: Seconds (or epoch units) per tick.
            value_scale: Value units per quantum.

        Returns:
            The new stream id (from 1, as the data logger numbers them).
        """
        for name, scale in (("epoch_scale", epoch_scale), ("value_scale", value_scale)):
            if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
                raise ValueError(f"{name} must be a positive finite number, got {scale!r}")
        sid = len(self._scales) + 1
        self._scales[sid] = (float(epoch_scale), float(value_scale))
        meta = {**labels, "stream_id": sid, "epoch_scale": float(epoch_scale), "value_scale": float(value_scale)}
        target = self.path / STREAMS_DIR / f"{sid:08d}.json"
        target.write_text(json.dumps(meta, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        return sid

    def record(self, stream_id: int, epoch: float, indices: Iterable[int], values: Iterable[float]) -> None:
        """Record one sparse vector of a stream.

        Args:
            stream_id: From :meth:`register_stream`.
            epoch: The record's time.
            indices: Indices of the non-zero elements, strictly increasing.
            values: Their values.
        """
        if stream_id not in self._scales:
            raise KeyError(f"unknown stream id {stream_id}")
        epoch_scale, value_scale = self._scales[stream_id]
        idx = np.asarray(indices, dtype=np.int64)
        vals = np.asarray(values, dtype=np.float64)
        if idx.shape != vals.shape or idx.ndim != 1:
            raise ValueError("indices and values must be 1-D and of the same length")
        tick = int(llround(np.array([epoch / epoch_scale]))[0])
        self._pending.append((stream_id, tick, idx, llround(vals / value_scale)))
        if len(self._pending) >= self._flush_records:
            self.flush()

    def record_many(
        self, stream_ids: np.ndarray, epochs: np.ndarray, offsets: np.ndarray, indices: np.ndarray, values: np.ndarray
    ) -> None:
        """Record many sparse vectors at once, in order: what as many :meth:`record` calls would write.

        Args:
            stream_ids: Each record's stream id (from :meth:`register_stream`).
            epochs: Each record's time.
            offsets: Record ``k``'s elements are ``indices[offsets[k]:offsets[k + 1]]``
                (``len(epochs) + 1`` entries, from 0).
            indices: The indices of every record, each record's strictly increasing.
            values: Their values.
        """
        sids = np.asarray(stream_ids, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        idx, vals = np.asarray(indices, dtype=np.int64), np.asarray(values, dtype=np.float64)
        if not (sids.shape == np.shape(epochs) and offsets.shape == (sids.size + 1,) and idx.shape == vals.shape):
            raise ValueError("one stream id and epoch per record, one more offset, and one value per index")
        if offsets[0] != 0 or offsets[-1] != idx.size or (np.diff(offsets) < 0).any():
            raise ValueError("offsets must rise from 0 to the number of indices")
        unknown = sorted(set(np.unique(sids).tolist()) - set(self._scales))
        if unknown:
            raise KeyError(f"unknown stream id {unknown[0]}")
        if not sids.size:
            return
        epoch_scale = np.zeros(max(self._scales) + 1)
        value_scale = np.ones(max(self._scales) + 1)
        for sid, (escale, vscale) in self._scales.items():
            epoch_scale[sid], value_scale[sid] = escale, vscale
        ticks = llround(np.asarray(epochs, dtype=np.float64) / epoch_scale[sids])
        quant = llround(vals / np.repeat(value_scale[sids], np.diff(offsets)))
        self.flush()  # what record() buffered comes first
        for start in range(0, sids.size, self._flush_records):
            stop = min(start + self._flush_records, sids.size)
            first, last = offsets[start], offsets[stop]
            self._write(
                Records(
                    sids[start:stop].astype(np.uint32),
                    ticks[start:stop],
                    offsets[start : stop + 1] - first,
                    idx[first:last],
                    quant[first:last],
                )
            )

    def flush(self) -> None:
        """Write buffered records to the current segment."""
        if not self._pending:
            return
        sids, ticks, idx, quant = zip(*self._pending, strict=False)
        self._pending = []
        lengths = np.array([i.size for i in idx], dtype=np.int64)
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        self._write(
            Records(
                np.asarray(sids, dtype=np.uint32),
                np.asarray(ticks, dtype=np.int64),
                offsets,
                np.concatenate(idx),
                np.concatenate(quant),
            )
        )

    def _write(self, records: Records) -> None:
        data = encode_segment(records, self._ticks, records_per_frame=self._records_per_frame, level=self._level)
        segment = self.path / f"{self._segment_index:05d}{SEGMENT_SUFFIX}"
        with open(segment, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._segment_size += len(data)
        if self._segment_size >= self._rotate_bytes:
            self._segment_index += 1
            self._segment_size = 0

    def close(self) -> None:
        """Flush, then write ``_DONE``. Idempotent."""
        if self._closed:
            return
        self.flush()
        (self.path / DONE_MARKER).touch()
        self._closed = True

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A demo logger HERO: simulates runs, writes them as logger directories and fires ``finished``.

Run it under BOSS (``boss_configs/demo_logger.json``) next to the collector actor, then call
``RemoteHERO("demo-logger").simulate(3)``; or let it simulate ``autostart_runs`` runs on start.
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from heros import event
from heros.event import reliable

from herocollector.run.logdir import RunWriter

log = logging.getLogger(__name__)

DEFAULT_LABELS = {"organisation": "acme", "model": "supply_chain", "experiment": "demo"}
MEASURES = ("stock", "orders", "backlog")


def write_simulated_run(
    path: str | Path,
    *,
    records: int = 2000,
    entities: int = 4,
    seed: int = 0,
    labels: dict[str, Any] | None = None,
    backend: str = "herocollector",
    rotate_bytes: int = 256 << 20,
) -> dict[str, Any]:
    """Write one simulated run: ``entities`` x 3 measures as sparse streams.

    Args:
        path: The logger directory to create.
        records: Records to write, spread over the streams.
        entities: Simulated entities; each has a stream per measure.
        seed: Random seed (the same seed writes the same run).
        labels: Labels shared by all streams (organisation, model, experiment, run ...).
        backend: ``"herocollector"`` (the project's own writer) or ``"data_logger"`` (the
            real ``data_logger.DataLogger``, a test extra).
        rotate_bytes: Segment rotation size.

    Returns:
        A summary: path, streams, records.
    """
    rng = np.random.default_rng(seed)
    labels = {**DEFAULT_LABELS, **(labels or {})}
    if backend == "data_logger":
        from data_logger import DataLogger

        writer: Any = DataLogger(str(path), rotate_bytes=rotate_bytes)
    elif backend == "herocollector":
        writer = RunWriter(path, rotate_bytes=rotate_bytes)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    try:
        sids = [
            writer.register_stream(
                {**labels, "entity": f"entity-{e}", "measure": m}, epoch_scale=1e-3, value_scale=1e-3
            )
            for e in range(entities)
            for m in MEASURES
        ]
        epoch = 0.0
        for first in range(0, records, _BLOCK):
            count = min(_BLOCK, records - first)
            stream_ids = np.asarray(sids)[(first + np.arange(count)) % len(sids)]
            epochs, offsets, indices, values = _simulated_block(rng, count, epoch)
            epoch = float(epochs[-1])
            if isinstance(writer, RunWriter):
                writer.record_many(stream_ids, epochs, offsets, indices, values)
                continue
            for k in range(count):
                a, b = offsets[k], offsets[k + 1]
                writer.record(int(stream_ids[k]), float(epochs[k]), indices[a:b], values[a:b])
    finally:
        writer.close()
    return {"path": str(path), "streams": len(sids), "records": records}


_BLOCK = 4096
"""Records simulated at a time."""
_MAX_NNZ = 7
_WIDTH = 100  # indices are drawn from 0..99


def _simulated_block(
    rng: np.random.Generator, count: int, epoch: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``count`` records: 0 to 7 distinct sorted indices below 100 each, values N(0, 50) to 3 decimals.

    Epochs follow ``epoch`` by exponential steps (a mean of 0.25). Returns the epochs, the
    offsets of each record's elements, the indices and the values.
    """
    nnz = rng.integers(0, _MAX_NNZ + 1, size=count)
    # The indices of a record's nnz smallest random keys are nnz distinct indices, uniformly.
    smallest = np.argsort(rng.random((count, _WIDTH)), axis=1)[:, :_MAX_NNZ]
    used = np.arange(_MAX_NNZ) < nnz[:, None]
    chosen = np.where(used, smallest, _WIDTH)
    chosen.sort(axis=1)  # the unused places hold _WIDTH, above every index: they stay last
    indices = chosen[used].astype(np.int64)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(nnz, out=offsets[1:])
    values = np.round(rng.normal(0.0, 50.0, size=indices.size), 3)
    epochs = epoch + np.cumsum(rng.exponential(0.25, size=count))
    return epochs, offsets, indices, values


class DemoLogger:
    """A logger HERO that writes simulated runs and announces each with ``finished``.

    Args:
        root: Folder the runs are written into (one sub-folder per run).
        records: Records per run.
        entities: Entities per run (three streams each).
        backend: ``"herocollector"`` or ``"data_logger"`` (see :func:`write_simulated_run`).
        experiment: The ``experiment`` label of the runs.
        autostart_runs: Runs to simulate in the background right after start.

    Example:
        BOSS json configuration::

            {
              "_id": "demo-logger",
              "classname": "herocollector.actor.demo.DemoLogger",
              "arguments": {"root": "/data/runs", "records": 2000, "experiment": "demo"}
            }
    """

    def __init__(
        self,
        root: str,
        records: int = 2000,
        entities: int = 4,
        backend: str = "herocollector",
        experiment: str = "demo",
        autostart_runs: int = 0,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.records = int(records)
        self.entities = int(entities)
        self.backend = backend
        self.experiment = experiment
        self._counter = 0
        self._lock = threading.Lock()
        if autostart_runs:
            threading.Thread(target=self.simulate, args=(autostart_runs,), daemon=True).start()

    @event
    @reliable
    def finished(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Announces a finished run: ``{"path": <logger directory>, ...}``."""
        return payload

    def simulate(self, runs: int = 1, records: int | None = None) -> list[dict[str, Any]]:
        """Write ``runs`` runs, firing ``finished`` after each one's ``_DONE``.

        Args:
            runs: How many runs.
            records: Records per run (default: the configured number).

        Returns:
            The summaries of the runs written.
        """
        written = []
        for _ in range(int(runs)):
            with self._lock:
                self._counter += 1
                number = self._counter
            name = f"run-{number:04d}-{uuid.uuid4().hex[:6]}"
            summary = write_simulated_run(
                self.root / name,
                records=self.records if records is None else int(records),
                entities=self.entities,
                seed=number,
                labels={"experiment": self.experiment, "run": number},
                backend=self.backend,
            )
            log.info(f"demo logger: finished {summary['path']}")
            self.finished({"path": summary["path"], "run": number})
            written.append(summary)
        return written

    def announce(self, payload: Any) -> Any:
        """Fire ``finished`` with an arbitrary payload (to exercise the actor's event handling)."""
        return self.finished(payload)

    def announce_all(self, paths: list[str]) -> int:
        """Fire ``finished`` for each of ``paths`` back to back (a burst).

        Returns:
            How many events were fired.
        """
        for path in paths:
            self.finished({"path": str(path)})
        return len(paths)

"""The output pipeline, shared by the actor and ``herocollector collect``: plan, route, write, commit.

1. **Plan** each run once: its streams are loaded and selected once (:meth:`OutputPipeline.plan_run`).
2. **Route**: every selected stream gets an output path (rendered from a template, or one
   file for all); streams with equal paths share an :class:`OutputTarget`
   (:meth:`OutputPipeline.plan`).
3. **Write**: runs are decoded in order, optionally several ahead on threads (decoding
   releases the GIL; :class:`~herocollector.decode.prefetch.Prefetch`, one bounded queue per
   run), and each batch is split by stream to its target. A target is opened
   when its first run starts and finished (closed, fsynced) when its last run ends, so only
   the targets of the runs in flight hold a file descriptor, however many runs there are.
4. **Commit** publishes every finished file under its final name; on any error every
   temporary file is removed instead (:meth:`OutputPipeline.write`).

What the write needs from its caller comes in one :class:`WriteContext`: the store, the
provenance, which existing outputs may be replaced, a :class:`Progress` and one :class:`Guard`
(stop between batches; the lease check right before each publish).

Runs are read through :class:`~herocollector.run.rundir.RunDirectory` (see there). Each run's
:class:`~herocollector.run.rundir.RunInventory` is taken when it is planned; decoding opens
exactly those segments, and after decoding and before anything is published every run is
checked against its inventory, so a run removed, moved, replaced or resized meanwhile fails
the write with :class:`~herocollector.errors.RunChanged` and nothing is published.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from herocollector.decode.codec import DEFAULT_CHUNK_BYTES
from herocollector.decode.prefetch import Prefetch
from herocollector.output.batches import output_schema, run_batches, scan_run
from herocollector.output.files import Compression, OutputFile, OutputFormat, route_batch
from herocollector.output.stores import LocalStore, OutputStore, Provenance
from herocollector.run.catalogue import RuleLike, Stream, select_streams
from herocollector.run.rundir import RunInventory, check_unchanged

RUN_QUEUE_BATCHES = 4
"""Record batches a run decoded ahead may hold while it waits for its turn to be written."""


@dataclass(frozen=True)
class PlannedRun:
    """One logger directory, its streams loaded and selected once.

    Attributes:
        path: The logger directory.
        streams: Every stream it declares.
        selected: The streams the rule selects, by stream id.
        segment_bytes: Size of its segment files.
        inventory: The run as it was read when planned: its resolved path, identity and
            files (what a cleanup may remove).
    """

    path: Path
    streams: tuple[Stream, ...]
    selected: tuple[Stream, ...]
    segment_bytes: int
    inventory: RunInventory


@dataclass
class OutputTarget:
    """One output file and the streams that go into it.

    Attributes:
        path: The final location: a local path, or an object URI (``s3://bucket/key``).
        members: ``(run index, stream)`` of every stream written to it.
    """

    path: Path | str
    members: list[tuple[int, Stream]] = field(default_factory=list)

    @property
    def runs(self) -> list[int]:
        """Indices of the runs that contribute, in order."""
        return sorted({index for index, _ in self.members})


@dataclass
class CollectionPlan:
    """Runs, their output targets and the one schema of all outputs."""

    runs: list[PlannedRun]
    targets: list[OutputTarget]
    schema: pa.Schema

    @property
    def segment_bytes(self) -> int:
        """Bytes of segment data to decode."""
        return sum(run.segment_bytes for run in self.runs)


@dataclass(frozen=True)
class WrittenOutput:
    """An output file that was committed.

    Attributes:
        path: Where it is.
        rows: Rows it holds.
        bytes: Its size.
        sha256: The checksum of its bytes.
        target: What was planned for it.
    """

    path: Path | str
    rows: int
    bytes: int
    sha256: str
    target: OutputTarget


@dataclass(frozen=True)
class StagedOutput:
    """A target decoded into a finished local file that is not published (see :meth:`OutputPipeline.stage`).

    Attributes:
        target: What was planned for it.
        file: The finished file (``file.temporary`` is its path; ``file.rows`` its rows).
    """

    target: OutputTarget
    file: OutputFile

    @property
    def path(self) -> Path:
        """The staged file."""
        return self.file.temporary

    def discard(self) -> None:
        """Remove the file; never raises."""
        self.file.abort()


Router = Callable[[int, PlannedRun, Stream], Path | str]
"""Gives the output path of a stream of the run at an index."""


class Progress(Protocol):
    """Told how far a write has come (called on the writing thread and on decoding threads)."""

    def bytes_read(self, n: int) -> None:
        """``n`` more segment bytes were read."""

    def rows_written(self, n: int) -> None:
        """``n`` more rows were written."""


class Guard(Protocol):
    """Stops a write: each method raises to stop it, and nothing is published then."""

    def check(self) -> None:
        """Called between batches (a stop request, a lease found lost)."""

    def before_publish(self) -> None:
        """Called right before each file is published (the lease check of a fenced job)."""


@dataclass(frozen=True)
class WriteContext:
    """Everything :meth:`OutputPipeline.write` needs from its caller.

    Attributes:
        store: Where the files are published (default: local folders, the targets' paths).
        stamp: The provenance the store records with each published object.
        provenance: Schema metadata per target path; a target not listed gets none.
        may_replace: Target paths whose existing file may be replaced (it is the job's own,
            or the caller clobbers); a target not listed is never replaced.
        progress: Told the bytes read and rows written, if given.
        guard: Asked between batches and before each publish, if given.
    """

    store: OutputStore = field(default_factory=lambda: LocalStore(Path("/")))
    stamp: Provenance = field(default_factory=lambda: Provenance(""))
    provenance: Mapping[Path | str, Mapping[str, str]] = field(default_factory=dict)
    may_replace: Mapping[Path | str, bool] = field(default_factory=dict)
    progress: Progress | None = None
    guard: Guard | None = None


class OutputPipeline:
    """Plans runs and writes their outputs; see the module documentation.

    Args:
        rule: Stream selection.
        columns: Label columns.
        label_types: Pinned Arrow types of label columns.
        format: Output file format.
        compression: Output buffer compression.
        chunk_bytes: Decompressed bytes decoded per step.
        prefetch_runs: Runs decoded ahead on threads while the current one is written (0:
            decode in the caller's thread).
        decode_threads: Threads that decode one run (parts of it at the same time; the rows
            are the same, in the same order).
    """

    def __init__(
        self,
        *,
        rule: RuleLike = None,
        columns: Sequence[str] = (),
        label_types: Mapping[str, pa.DataType] | None = None,
        format: OutputFormat = OutputFormat.FILE,
        compression: Compression | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        prefetch_runs: int = 0,
        decode_threads: int = 1,
    ) -> None:
        self.rule = rule
        self.columns = tuple(columns)
        self.label_types = dict(label_types or {})
        self.format = format
        self.compression = compression
        self.chunk_bytes = chunk_bytes
        self.prefetch_runs = max(int(prefetch_runs), 0)
        self.decode_threads = max(int(decode_threads), 1)

    def plan_run(self, path: Path, allowed_roots: Sequence[str | Path] = ()) -> PlannedRun:
        """Open one logger directory once: load and select its streams, take its inventory.

        Args:
            path: The logger directory.
            allowed_roots: It must resolve inside one of these (empty: anywhere).

        Raises:
            CollectorError: Missing or invalid ``streams/``, an entry that is not a regular
                file, or a rule that cannot be evaluated.
            RunRefused: Outside ``allowed_roots`` or a NUL byte in ``path``.
        """
        streams, inventory = scan_run(path, allowed_roots)
        selected = sorted(select_streams(streams, self.rule), key=lambda s: s.stream_id)
        return PlannedRun(path, tuple(streams), tuple(selected), inventory.segment_bytes, inventory)

    def plan(self, runs: Sequence[PlannedRun], route: Router) -> CollectionPlan:
        """Route every selected stream to its target.

        Args:
            runs: The planned runs, in output order.
            route: Output path of a stream.

        Returns:
            The plan; targets in the order their first stream appears.
        """
        targets: dict[Path | str, OutputTarget] = {}
        for index, run in enumerate(runs):
            for stream in run.selected:
                path = route(index, run, stream)
                targets.setdefault(path, OutputTarget(path)).members.append((index, stream))
        schema = output_schema([s for run in runs for s in run.selected], self.columns, self.label_types)
        return CollectionPlan(list(runs), list(targets.values()), schema)

    def write(self, plan: CollectionPlan, context: WriteContext) -> list[WrittenOutput]:
        """Decode the runs and write every target; publish all, or none.

        Args:
            plan: What to write.
            context: The store, provenance, replaceable outputs, progress and guard.

        Returns:
            The committed outputs, in plan order.

        Raises:
            CollectorError: Bad input or a refused output, or what the guard raised; nothing
                was published.
            RunChanged: A run changed while it was read; nothing was published.
            OSError: Writing failed (e.g. a full disk); nothing was published.
        """
        store, guard = context.store, context.guard
        files = self._write_files(plan, context, lambda target: store.staging_path(target.path))
        digests: dict[int, str] = {}
        try:
            for t in sorted(files):
                if guard is not None:
                    guard.before_publish()
                path = plan.targets[t].path
                digests[t] = store.publish(files[t], path, context.stamp, context.may_replace.get(path, False))
            store.sync_folders(plan.targets[t].path for t in sorted(files))  # one fsync per folder, not per file
        except BaseException:
            for file in files.values():
                file.abort()
            raise
        return [
            WrittenOutput(plan.targets[t].path, files[t].rows, files[t].bytes, digests[t], plan.targets[t])
            for t in sorted(files)
        ]

    def stage(
        self,
        plan: CollectionPlan,
        context: WriteContext,
        folder: Path,
        source: Iterator[pa.RecordBatch] | None = None,
    ) -> list[StagedOutput]:
        """Decode the runs into one finished, unpublished file per target, in ``folder``.

        What tables are committed from: the caller reads each file, and must :meth:`StagedOutput.discard`
        every one of them afterwards, whatever happens. Every run was checked unchanged after decoding.

        Args:
            plan: What to write.
            context: Provenance, progress and guard (the store is not used).
            folder: A local folder for the staged files.
            source: The batches of the plan's one run, read by the caller (a run followed while it
                is written: the records since its cursor); then the run is not checked unchanged,
                since it grows. By default every run is decoded whole.

        Raises:
            CollectorError: Bad input, or what the guard raised; nothing is left staged.
            RunChanged: A run changed while it was read; nothing is left staged.
            OSError: Writing failed (e.g. a full disk); nothing is left staged.
        """
        folder.mkdir(parents=True, exist_ok=True)
        decoding = None if source is None else iter([(0, source)])
        files = self._write_files(plan, context, lambda target: folder / f"target-{id(target):x}", decoding)
        return [StagedOutput(plan.targets[t], files[t]) for t in sorted(files)]

    def _write_files(
        self,
        plan: CollectionPlan,
        context: WriteContext,
        staging: Callable[[OutputTarget], Path],
        source: Iterator[tuple[int, Iterator[pa.RecordBatch]]] | None = None,
    ) -> dict[int, OutputFile]:
        """Decode the runs and write every target to a finished file at its staging path; or remove them all."""
        opens: dict[int, list[int]] = {}
        closes: dict[int, list[int]] = {}
        last = len(plan.runs) - 1
        for t, target in enumerate(plan.targets):
            runs = target.runs or [0]
            opens.setdefault(runs[0], []).append(t)
            closes.setdefault(runs[-1] if target.runs else last, []).append(t)
        files: dict[int, OutputFile] = {}
        guard, progress = context.guard, context.progress
        decoding = source or self._runs_in_order(plan, progress.bytes_read if progress is not None else None)
        current: list[Iterator[pa.RecordBatch]] = []
        try:
            for index, batches in decoding:
                current[:] = [batches]
                for t in opens.get(index, []):
                    target = plan.targets[t]
                    schema = plan.schema.with_metadata(dict(context.provenance.get(target.path, {})))
                    files[t] = OutputFile(staging(target), schema, self.format, self.compression)
                ids, group_of, slots = _routing(plan, index)
                outputs = [files[t] for t in slots]
                for batch in batches:
                    if guard is not None:
                        guard.check()
                    route_batch(batch, ids, group_of, outputs)
                    if progress is not None:
                        progress.rows_written(batch.num_rows)
                for t in closes.get(index, []):
                    files[t].finish()
            for run in plan.runs if source is None else ():  # what is published was read from runs still as read
                check_unchanged(run.inventory)
        except BaseException:
            # Stop the decoding now, not when the generators are collected: the readers
            # and the run directories they hold open end here.
            for generator in (*current, decoding):
                _close(generator)
            for file in files.values():
                file.abort()
            raise
        return files

    def _runs_in_order(
        self, plan: CollectionPlan, on_bytes: Callable[[int], None] | None
    ) -> Iterator[tuple[int, Iterator[pa.RecordBatch]]]:
        """Each run's batches, in run order; up to ``prefetch_runs`` later runs decode meanwhile."""
        if not plan.runs:
            yield 0, iter(())
            return

        def decode(run: PlannedRun) -> Iterator[pa.RecordBatch]:
            return run_batches(
                run.path,
                run.streams,
                run.selected,
                plan.schema,
                chunk_bytes=self.chunk_bytes,
                on_bytes=on_bytes,
                inventory=run.inventory,
                verify=False,  # every run is checked in write(), right before publishing
                threads=self.decode_threads,
            )

        if self.prefetch_runs == 0 or len(plan.runs) == 1:
            for index, run in enumerate(plan.runs):
                yield index, decode(run)
            return
        # Each run decodes on its own thread into a queue of its own, started in run order and at
        # most ``prefetch_runs`` ahead of the run being written; row order stays that of the runs.
        ahead = [
            Prefetch(functools.partial(decode, run), RUN_QUEUE_BATCHES, name="herocollector-decode")
            for run in plan.runs
        ]
        try:
            for index in range(len(ahead)):
                for later in ahead[index : index + self.prefetch_runs + 1]:
                    later.start()
                yield index, ahead[index]
        finally:
            for run_ahead in ahead:  # all asked to stop first, so none decodes on while another is awaited
                run_ahead.stop()
            for run_ahead in ahead:
                run_ahead.close()


def _routing(plan: CollectionPlan, index: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """How to split the batches of the run at ``index``.

    Returns:
        Its routed stream ids (sorted), the output slot of each, and the target of each slot.
    """
    pairs = sorted(
        (stream.stream_id, t) for t, target in enumerate(plan.targets) for run, stream in target.members if run == index
    )
    slots = sorted({t for _, t in pairs})
    slot_of = {t: i for i, t in enumerate(slots)}
    ids = np.array([sid for sid, _ in pairs], dtype=np.uint32)
    group_of = np.array([slot_of[t] for _, t in pairs], dtype=np.int64)
    return ids, group_of, slots


def _close(iterator: object) -> None:
    """Close a generator (or anything with ``close``); other iterators need nothing."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()

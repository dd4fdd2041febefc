"""Runs collected while they are written (``follow: true``): one chunk per step, exactly once, from a cursor.

A followed run is a journal job like any other. Every ``follow_interval`` a worker takes it (under
a lease), and :meth:`RunFollower.step` decodes the records completed since the run's cursor
(:func:`herocollector.output.batches.follow_batches`: whole frames only; a torn last frame in the
newest segment is read next time) and commits them to the run's tables as one chunk; then the job
goes back to pending until the next step, holding no worker in between.

**The cursor** (:class:`FollowState`, in the journal: :meth:`~herocollector.journal.base.Journal.store_follow_cursor`,
fenced by the job's token) holds where the committed records end (segment, byte offset, each
stream's last tick, the chunk number), the rows so far per table, and the epochs up to which the
tables are complete. A chunk is committed in three steps:

1. its end is stored as ``pending`` (the chunk's exact bounds are now durable);
2. each table gets one commit whose application transaction version is the chunk's number
   (:func:`~herocollector.output.delta.commit_run` with ``chunked``: a transaction at or past it
   means the chunk is in that table already);
3. the cursor moves to the chunk's end, ``pending`` cleared.

After a crash anywhere, the next holder (this actor restarted, or another of the fleet) finds
``pending``: the tables whose transaction reached the chunk have it; the others get exactly the
same records, read again between the two cursors. No chunk is lost, none is committed twice, and
decoding never starts the run again. At ``_DONE`` the last chunk is committed, the job is done
with every table's rows, and with ``compact_on_done`` the tables' chunk files are compacted.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from herocollector.config import ServiceConfig
from herocollector.decode.follow import START, Cursor
from herocollector.errors import CollectorError, MetadataError
from herocollector.events import RunProgress
from herocollector.journal.base import Job, JobStore
from herocollector.output.batches import FollowRead, follow_batches
from herocollector.output.delta import committed_version, journal_key
from herocollector.output.pipeline import OutputPipeline, PlannedRun, StagedOutput, WriteContext
from herocollector.run import logdir
from herocollector.run.catalogue import Stream
from herocollector.run.rundir import RunInventory
from herocollector.service.lease import JobGuard, LeaseKeeper
from herocollector.service.status import FollowedRun
from herocollector.service.table_commit import commit_staged

log = logging.getLogger(__name__)

OPEN_TABLES_RUNS = 64
"""Followed runs whose tables are kept open between chunks, at most (see :class:`RunFollower`)."""


@dataclass(frozen=True)
class FollowState:
    """A followed run's record in the journal (its follow cursor, as JSON).

    Attributes:
        committed: Where the committed records end: the next chunk starts here.
        pending: The end of a chunk being committed (its bounds durable before any commit).
        rows: Rows committed so far, per journal key (:func:`~herocollector.output.delta.journal_key`).
        pending_rows: Rows of the pending chunk, per journal key.
        epochs: Per stream id (text), the epoch up to which the tables hold every record.
        newest: When the newest committed records were written (the newest segment's mtime).
        grown: When the run was last seen to grow (for the ``_DONE`` timeout of a followed run).
    """

    committed: Cursor = START
    pending: Cursor | None = None
    rows: Mapping[str, int] = field(default_factory=dict)
    pending_rows: Mapping[str, int] = field(default_factory=dict)
    epochs: Mapping[str, float] = field(default_factory=dict)
    newest: float | None = None
    grown: float | None = None

    def to_json(self) -> str:
        """The state as JSON."""
        return json.dumps(
            {
                "committed": json.loads(self.committed.to_json()),
                "pending": None if self.pending is None else json.loads(self.pending.to_json()),
                "rows": dict(self.rows),
                "pending_rows": dict(self.pending_rows),
                "epochs": dict(self.epochs),
                "newest": self.newest,
                "grown": self.grown,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> FollowState:
        """The state stored as ``text`` (None: a run not followed yet).

        Raises:
            CollectorError: Not a follow state (the message says what is wrong).
        """
        if text is None:
            return cls()
        try:
            data = json.loads(text)
            pending = data.get("pending")
            return cls(
                committed=Cursor.from_json(json.dumps(data["committed"])),
                pending=None if pending is None else Cursor.from_json(json.dumps(pending)),
                rows={str(k): int(v) for k, v in data.get("rows", {}).items()},
                pending_rows={str(k): int(v) for k, v in data.get("pending_rows", {}).items()},
                epochs={str(k): float(v) for k, v in data.get("epochs", {}).items()},
                newest=data.get("newest"),
                grown=data.get("grown"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CollectorError(f"malformed follow state in the journal: {exc}") from None

    @property
    def total(self) -> int:
        """Rows committed so far."""
        return sum(self.rows.values())


@dataclass(frozen=True)
class FollowStep:
    """What one step of a followed run did.

    Attributes:
        complete: The run ended (``_DONE``) and its last chunk is committed: the job is done.
        outputs: Rows committed so far, per journal key (all of them, when complete).
        progress: The chunk committed by this step (None: nothing new was complete).
        inventory: The run as this step read it (what a cleanup may remove, once complete).
        grown: When the run was last seen to grow.
    """

    complete: bool
    outputs: dict[str, int]
    progress: RunProgress | None
    inventory: RunInventory | None
    grown: float | None


Route = Callable[[Job, PlannedRun, Stream], "Path | str"]


class RunFollower:
    """Commits followed runs chunk by chunk; see the module documentation.

    Args:
        config: The service configuration.
        journal: The job journal (the follow cursors).
        pipeline: Plans the run and stages each chunk (IPC streams).
        route: The table of a stream of a job's run.
        stopping: Set when the service closes.
        compact: Compacts a run's files in a table (table, run) when the run ends (``compact_on_done``), if given.
    """

    def __init__(
        self,
        config: ServiceConfig,
        journal: JobStore,
        pipeline: OutputPipeline,
        route: Route,
        stopping: threading.Event,
        compact: Callable[[str, str], object] | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.pipeline = pipeline
        self.route = route
        self.stopping = stopping
        self.compact = compact
        # Each followed run's tables stay open between its chunks: bringing one up to date reads the
        # log entries since, where opening it reads the whole log since its checkpoint, every chunk.
        # A step takes its run's tables out and puts them back after it succeeded, so no two
        # workers share one, and a failed step leaves nothing of uncertain state behind.
        self._opened: dict[int, dict[str, Any]] = {}
        self._opened_lock = threading.Lock()

    def step(self, job: Job, path: Path, lease: LeaseKeeper) -> FollowStep:
        """Commit the records completed since the run's cursor as one chunk (and finish a pending one first).

        Raises:
            LeaseLost: The lease was taken over; the cursor is not moved.
            CollectorError: Damage in a closed segment or at ``_DONE`` (file and offset named), or a
                refused commit.
        """
        state = FollowState.from_json(self.journal.follow_cursor(job.id))
        done = logdir.is_done(path)  # before reading: a read that sees _DONE has seen every record before it
        try:
            run = self.pipeline.plan_run(path, self.config.allowed_roots)
        except MetadataError as exc:
            if done:
                raise
            # The logger writes a stream's file (not atomically) when it registers the stream: a
            # file half written now is whole at the next step.
            log.info(f"job {job.id}: {path}: {exc}; read again in {self.config.follow_interval} s")
            return FollowStep(False, dict(state.rows), None, None, state.grown or time.time())
        plan = self.pipeline.plan([run], lambda index, planned, stream: self.route(job, planned, stream))
        tables = [str(target.path) for target in plan.targets]
        with self._opened_lock:
            opened = self._opened.pop(job.id, {})
        if state.pending is not None:
            state = self._finish_pending(job, run, plan, state, lease, opened)
        read = self._read(run, plan, state.committed, done)
        staged = self.pipeline.stage(plan, self._context(lease), self._folder(job), read.batches)
        try:
            chunk_rows = {journal_key(str(s.target.path), str(path)): s.file.rows for s in staged}
            now = time.time()
            grown = now if read.cursor != state.committed else (state.grown or now)
            newest = _newest(run.inventory) if read.rows else state.newest
            epochs = {**state.epochs, **{str(k): float(v) for k, v in read.epochs.items()}}
            progress = None
            if read.rows:
                pending = replace(state, pending=read.cursor, pending_rows=chunk_rows)
                self.journal.store_follow_cursor(job.id, job.token, pending.to_json())
                self._commit(job, str(path), staged, read.cursor, lease, opened)
                rows = dict(state.rows)
                for key, n in chunk_rows.items():
                    rows[key] = rows.get(key, 0) + n
                state = FollowState(read.cursor, None, rows, {}, epochs, newest, grown)
                progress = RunProgress(str(path), read.cursor.chunk, read.rows, state.total, epochs, job.id)
                log.info(f"job {job.id}: chunk {read.cursor.chunk} of {path}: {read.rows} rows ({state.total} so far)")
            else:
                # Nothing of the selected streams (or nothing at all) is new: the cursor may still have moved.
                state = FollowState(read.cursor, None, state.rows, {}, epochs, newest, grown)
            self.journal.store_follow_cursor(job.id, job.token, state.to_json())
        finally:
            for output in staged:
                output.discard()
            shutil.rmtree(self._folder(job), ignore_errors=True)
        if not read.complete:
            with self._opened_lock:
                while len(self._opened) >= OPEN_TABLES_RUNS:  # runs taken over by another actor leave theirs
                    self._opened.pop(next(iter(self._opened)))
                self._opened[job.id] = opened
        outputs = {key: state.rows.get(key, 0) for key in {journal_key(t, str(path)) for t in tables} | set(state.rows)}
        if read.complete and self.config.compact_on_done and self.compact is not None:
            for table in tables:
                try:
                    self.compact(table, str(path))
                except Exception as exc:  # noqa: BLE001 - the run is committed; compaction can come later
                    log.warning(f"job {job.id}: compacting {table} after {path} ended failed: {exc}")
        return FollowStep(read.complete, outputs, progress, run.inventory, grown)

    def _finish_pending(
        self, job: Job, run: PlannedRun, plan: Any, state: FollowState, lease: LeaseKeeper, opened: dict[str, Any]
    ) -> FollowState:
        """A chunk whose bounds were stored but whose commits may not all have landed: complete it."""
        assert state.pending is not None
        path = str(run.path)
        missing = [
            t
            for t in (str(target.path) for target in plan.targets)
            if (committed_version(t, path, self.config.storage_options) or 0) < state.pending.chunk
        ]
        if missing:
            log.warning(f"job {job.id}: chunk {state.pending.chunk} of {path} is not in {missing} yet; committing it")
            read = self._read(run, plan, state.committed, logdir.is_done(run.path), until=state.pending)
            staged = self.pipeline.stage(plan, self._context(lease), self._folder(job), read.batches)
            try:
                chunk = [s for s in staged if str(s.target.path) in missing]
                self._commit(job, path, chunk, state.pending, lease, opened)
            finally:
                for output in staged:
                    output.discard()
        rows = dict(state.rows)
        for key, n in state.pending_rows.items():
            rows[key] = rows.get(key, 0) + n
        finished = FollowState(state.pending, None, rows, {}, state.epochs, state.newest, state.grown)
        self.journal.store_follow_cursor(job.id, job.token, finished.to_json())
        return finished

    def _read(self, run: PlannedRun, plan: Any, cursor: Cursor, done: bool, until: Cursor | None = None) -> FollowRead:
        """The records since ``cursor`` (up to ``until``, if given)."""
        extra: dict[str, Any] = {} if until is None else {"until": until}
        return follow_batches(
            run.path,
            run.streams,
            run.selected,
            plan.schema,
            cursor,
            done=done,
            chunk_bytes=self.config.chunk_bytes,
            inventory=run.inventory,
            **extra,
        )

    def _commit(
        self, job: Job, run: str, staged: list[StagedOutput], end: Cursor, lease: LeaseKeeper, opened: dict[str, Any]
    ) -> None:
        """One commit per table of one chunk, under the chunk's transaction version."""
        for output in staged:
            if output.file.rows == 0:
                continue  # no record of this table's streams in the chunk: no empty commit
            commit_staged(self.config, job, output, end.chunk, lease, chunk=end.chunk, opened=opened)

    def _context(self, lease: LeaseKeeper) -> WriteContext:
        return WriteContext(guard=JobGuard(lease, self.stopping))

    def _folder(self, job: Job) -> Path:
        return self.config.staging_dir / f"follow-{job.id}"


def _newest(inventory: RunInventory) -> float | None:
    """When the run's newest segment was last written, as Unix time."""
    stamps = [record.mtime_ns for record in inventory.segments if record.mtime_ns]
    return max(stamps) / 1e9 if stamps else None


def followed_runs(journal: JobStore, now: float | None = None) -> list[FollowedRun]:
    """The runs being followed (not done yet), with their chunk, rows and lag, for ``status()``."""
    now = time.time() if now is None else now
    found: list[FollowedRun] = []
    for job_id, text in sorted(journal.follow_cursors().items()):
        job = journal.get(job_id)
        if job is None or job.state.value in ("done", "cleaned", "failed"):
            continue
        try:
            state = FollowState.from_json(text)
        except CollectorError:
            continue
        lag = None if state.newest is None else max(now - state.newest, 0.0)
        found.append(FollowedRun(job.path, job_id, state.committed.chunk, state.total, lag))
    return found

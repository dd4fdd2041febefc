"""``CollectorArchiver``: the BOSS-launched HEROS actor that collects every finished run (SPEC §4)."""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from heros.helper import log
from herostools.actor.archiver import HERODataArchiver

from . import logdir, trash
from .catalogue import LOGGER_PATH_KEY, RuleLike, load_streams, select_streams
from .claims import COLLECTED, HELD, RunClaim
from .codec import DEFAULT_CHUNK_BYTES
from .collector import Collector, _dedupe_columns, output_schema
from .errors import CollectorError
from .journal import DONE, FAILED, Job, Journal, OutputTakenError
from .output import ArrowOutput, OutputError, PathTemplate, provenance_metadata, read_provenance, route_batch


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/herocollector`` (``~/.local/state/herocollector`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "herocollector"


def parse_event(data: Any, path_key: str) -> tuple[str, dict[str, Any]]:
    """Find the logger path and the metadata in a "finished" event.

    Args:
        data: A dict with the path under ``path_key``; a ``(payload, metadata)`` pair whose
            metadata (or dict payload) has it, or whose payload is the path; or a bare path.
        path_key: The key holding the logger directory.

    Returns:
        ``(path, metadata)``.

    Raises:
        ValueError: No path can be found.
    """
    if isinstance(data, str):
        path, metadata = data, {}
    elif isinstance(data, Mapping):
        path, metadata = data.get(path_key), dict(data)
    elif isinstance(data, (list, tuple)) and len(data) == 2:
        payload, meta = data
        metadata = dict(meta) if isinstance(meta, Mapping) else {}
        path = metadata.get(path_key)
        if path is None and isinstance(payload, Mapping):
            metadata = {**payload, **metadata}
            path = payload.get(path_key)
        elif path is None and isinstance(payload, str):
            path = payload
    else:
        raise ValueError(f"event is neither a dict, a (payload, metadata) pair nor a path: {type(data).__name__}")
    if not isinstance(path, str) or not path:
        raise ValueError(f"event has no logger path under {path_key!r}")
    return os.path.normpath(path), metadata  # one job per run, however the path is spelled


class _Deferred(Exception):
    """The run is being collected by another actor of the fleet; look again later."""


class _Refused(CollectorError):
    """A run the configuration forbids; retrying cannot help, so the job fails at once."""


class CollectorArchiver(HERODataArchiver):
    """Collects every run a logger HERO announces into Arrow IPC files at templated paths.

    It subscribes to the logger HEROs' ``finished`` event, journals each announced logger
    directory before queueing it, collects it in the worker thread with retries and growing
    delays, and writes one Arrow IPC file per rendered path, committed atomically. Its public
    methods (``collect``, ``status``, ``failed``, ``retry``, ``cleanup``) are remote methods
    once BOSS runs it.

    Args:
        object_selector: Zenoh object selector of the logger HEROs (``"*"`` for all).
        save_template: Jinja2 output path template; variables are ``default_metadata``, the
            event metadata, the stream labels (later wins), ``source_name``, ``logger_path``
            and ``logger_name``.
        event_name: The event announcing a finished run.
        rule: disco-tools rule spec dict selecting the streams (None: all).
        columns: Stream labels added as columns.
        default_metadata: Template variables; ``output_root`` here serves as the default
            for the argument of that name.
        max_retries: Retries of a failed job before it is kept as failed.
        path_key: Key of the logger directory in the event payload or metadata.
        format: ``"file"`` (Arrow IPC file) or ``"stream"`` (Arrow IPC stream).
        compression: IPC buffer compression: None, ``"zstd"`` or ``"lz4"``.
        backoff: Milliseconds between ``_DONE`` polls.
        timeout: Milliseconds to wait for ``_DONE`` (None: forever).
        state_dir: Folder of the job journal (``journal.sqlite3``).
        allowed_roots: Logger directories must lie inside one of these; ``cleanup`` is
            refused for everything when this is not set.
        output_root: Rendered paths must lie inside this folder.
        retry_delay: Seconds before the first retry; doubles for each further one.
        retry_delay_max: Upper bound of the retry delay, in seconds.
        chunk_bytes: Decompressed bytes decoded per step (bounds memory).
        claim_runs: Claim each run with a file in its logger directory before collecting
            it, so that a fleet of actors hearing the same events collects each run once
            (see :mod:`herocollector.claims`).
        claim_timeout: Seconds without heartbeat after which another actor's claim is
            taken over (that actor is presumed dead).
        claim_heartbeat: Seconds between heartbeats of a held claim.
        cleanup_grace: Seconds that cleaned segments stay in the trash (renamed in place,
            restorable with ``restore``) before they are deleted for good; 0 deletes at once.
        cleanup_after_collect: Clean (into the trash) every run right after collecting it.

    Example:
        BOSS json configuration::

            {
              "_id": "collector",
              "classname": "herocollector.CollectorArchiver",
              "arguments": {
                "object_selector": "*",
                "event_name": "finished",
                "save_template": "{{ output_root }}/{{ experiment }}/{{ measure }}.arrow",
                "default_metadata": {"output_root": "/data/collected"},
                "rule": {"match": {"key": "model", "op": "eq", "value": "supply_chain"}},
                "columns": ["organisation", "experiment"],
                "allowed_roots": ["/data/runs"],
                "state_dir": "/var/lib/herocollector"
              }
            }

        Started with ``python -m boss.starter -u file:///etc/boss/collector.json``, it can be
        driven remotely::

            from heros import RemoteHERO
            collector = RemoteHERO("collector")
            collector.status()
            collector.cleanup()          # every collected, not yet cleaned run
    """

    def __init__(
        self,
        object_selector: str,
        save_template: str,
        event_name: str = "finished",
        rule: dict[str, Any] | None = None,
        columns: Sequence[str] | None = None,
        default_metadata: dict[str, Any] | None = None,
        max_retries: int = 5,
        path_key: str = "path",
        format: str = "file",
        compression: str | None = None,
        backoff: int = 100,
        timeout: int | None = 60_000,
        state_dir: str | None = None,
        allowed_roots: Sequence[str] | None = None,
        output_root: str | None = None,
        retry_delay: float = 1.0,
        retry_delay_max: float = 300.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        claim_runs: bool = False,
        claim_timeout: float = 60.0,
        claim_heartbeat: float = 5.0,
        cleanup_grace: float = 3600.0,
        cleanup_after_collect: bool = False,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        default_metadata = dict(default_metadata or {})
        root = output_root if output_root is not None else default_metadata.get("output_root")
        if not root:
            raise ValueError("CollectorArchiver needs output_root (argument or default_metadata['output_root'])")
        self.output_root = Path(os.path.abspath(root))
        default_metadata.setdefault("output_root", str(self.output_root))
        self.template = PathTemplate(save_template, self.output_root)
        select_streams([], rule)  # a malformed rule fails the start, not every job
        self.rule: RuleLike = rule
        self.columns = _dedupe_columns(columns)
        self.path_key = path_key
        if format not in ("file", "stream") or compression not in (None, "zstd", "lz4"):
            raise ValueError(f"unsupported format {format!r} or compression {compression!r}")
        self.format = format
        self.compression = compression
        self.backoff = int(backoff)
        self.timeout = timeout
        self.allowed_roots = [Path(os.path.realpath(r)) for r in (allowed_roots or [])]
        self.retry_delay = float(retry_delay)
        self.retry_delay_max = float(retry_delay_max)
        self.chunk_bytes = int(chunk_bytes)
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.journal = Journal(self.state_dir / "journal.sqlite3")
        self.claim_runs = bool(claim_runs)
        self.claim_timeout = float(claim_timeout)
        self.claim_heartbeat = float(claim_heartbeat)
        self.cleanup_grace = max(float(cleanup_grace), 0.0)
        self.cleanup_after_collect = bool(cleanup_after_collect)
        # Stable across restarts, so a restarted actor recognises its own claims.
        self.owner = f"{socket.gethostname()}:{os.path.realpath(self.state_dir)}"
        self._timers: set[threading.Timer] = set()
        self._timers_lock = threading.Lock()
        self._current: str | None = None
        HERODataArchiver.__init__(
            self, object_selector, event_name, default_metadata, max_retries, *args, **kwargs
        )
        resumed = self.journal.resume()
        for job in resumed:
            self._schedule(job)
        self._purger = threading.Thread(target=self._purge_loop, name="herocollector-purge", daemon=True)
        self._purger.start()
        log.info(
            f"herocollector: listening for '{event_name}' from '{object_selector}', journal {self.journal.file}, "
            f"{len(resumed)} unfinished job(s) resumed"
        )

    # -- events and the queue ----------------------------------------------------------------

    def feed(self, source_name: str, data: Any, retry_count: int = 0) -> None:
        """Journal an announced run, then queue it (the event callback).

        Args:
            source_name: The HERO that fired the event.
            data: The event payload (see :func:`parse_event`).
            retry_count: Unused; retries are scheduled from the journal.
        """
        try:
            path, metadata = parse_event(data, self.path_key)
        except ValueError as exc:
            job = self.journal.record_malformed(source_name, data, f"malformed event: {exc}")
            log.error(f"herocollector: job {job.id} failed: malformed event from {source_name}: {exc}")
            return
        job, queue_now = self.journal.submit(path, source_name, metadata)
        if queue_now:
            log.info(f"herocollector: job {job.id} journalled for {path} (from {source_name})")
            self._enqueue(job)
        else:
            log.info(f"herocollector: {path} is already {job.state} (job {job.id}); event ignored")

    def _enqueue(self, job: Job) -> None:
        self._payload_queue.put((job.source, job.id, {}, 0))

    def _schedule(self, job: Job) -> None:
        """Queue a job now, or when its retry is due."""
        delay = 0.0 if job.next_attempt is None else job.next_attempt - time.time()
        if delay <= 0:
            self._enqueue(job)
            return
        timer = threading.Timer(delay, self._timer_fired, args=(job,))
        timer.daemon = True
        with self._timers_lock:
            self._timers.add(timer)
        timer.start()

    def _timer_fired(self, job: Job) -> None:
        with self._timers_lock:
            self._timers = {t for t in self._timers if t.is_alive() and t is not threading.current_thread()}
        self._enqueue(job)

    def _store(self, source_name: str, payload: Any, metadata: dict) -> None:
        """Run one queued job (worker thread). Never raises: failures go to the journal."""
        job = self.journal.start(int(payload))
        if job is None:
            return  # already handled (a duplicate queue entry, or done meanwhile)
        self._current = job.path
        started = time.monotonic()
        try:
            outputs, collected_by = self._collect_job(job)
        except _Deferred as deferred:
            later = self.journal.defer(job.id, time.time() + self.claim_heartbeat, str(deferred))
            log.info(f"herocollector: job {job.id} for {job.path} deferred: {deferred}")
            self._schedule(later)
        except Exception as exc:  # noqa: BLE001 - the actor must survive any bad input
            message = f"{type(exc).__name__}: {exc}"
            self.journal.release_outputs(job.id)  # a failed job must not block other runs' paths
            retry_at = None
            if job.attempts <= self.max_retries and not isinstance(exc, _Refused):
                delay = min(self.retry_delay * 2 ** (job.attempts - 1), self.retry_delay_max)
                retry_at = time.time() + delay
            failed = self.journal.fail(job.id, message, retry_at)
            if retry_at is None:
                log.error(f"herocollector: job {job.id} for {job.path} failed after {job.attempts} attempt(s): {message}")
            else:
                log.warning(
                    f"herocollector: job {job.id} for {job.path} failed (attempt {job.attempts}), "
                    f"retrying in {retry_at - time.time():.1f} s: {message}"
                )
                self._schedule(failed)
        else:
            done = self.journal.finish(job.id, outputs)
            if collected_by is None:
                log.info(
                    f"herocollector: job {job.id} collected {job.path}: {done.rows} rows into {len(outputs)} "
                    f"file(s) in {time.monotonic() - started:.3f} s"
                )
            else:
                log.info(f"herocollector: job {job.id}: {job.path} was collected by {collected_by}")
            if self.cleanup_after_collect:
                try:
                    self.cleanup(job.path)
                except Exception as exc:  # noqa: BLE001 - the run is collected; cleanup can be retried
                    log.error(f"herocollector: cleanup after collecting {job.path} failed: {exc}")
        finally:
            self._current = None

    # -- collection -------------------------------------------------------------------------

    def _check_logger_path(self, path: str) -> Path:
        """The logger directory, resolved, if it is allowed and exists."""
        if not os.path.isabs(path):
            raise _Refused("logger path must be absolute", path)
        real = Path(os.path.realpath(path))
        if self.allowed_roots and not any(real.is_relative_to(root) for root in self.allowed_roots):
            raise _Refused("logger path lies outside allowed_roots", path)
        if not real.is_dir():
            raise CollectorError("logger directory does not exist", path)
        return real

    def _collect_job(self, job: Job) -> tuple[dict[str, int], str | None]:
        """Collect one run into its output files.

        Returns:
            Rows per output, and None, or the owner of the claim if another actor of the
            fleet collected the run.
        """
        path = self._check_logger_path(job.path)
        if not logdir.wait_for_done([path], self.backoff, self.timeout):
            raise CollectorError("timed out waiting for _DONE", path)
        if not self.claim_runs:
            return self._write_outputs(job, path), None
        claim = RunClaim(path, self.owner, self.claim_timeout, self.claim_heartbeat)
        result = claim.acquire()
        if result.outcome == COLLECTED:
            outputs = {str(k): int(v) for k, v in result.info.get("outputs", {}).items()}
            return outputs, None if result.info.get("owner") == self.owner else str(result.info.get("owner"))
        if result.outcome == HELD:
            raise _Deferred(f"claimed by {result.info.get('owner')} (pid {result.info.get('pid')})")
        outputs: dict[str, int] | None = None
        try:
            outputs = self._write_outputs(job, path)
        finally:
            claim.release(outputs)
        return outputs, None

    def _write_outputs(self, job: Job, path: Path) -> dict[str, int]:
        """Decode the run once and write its output files; returns rows per output."""
        streams = sorted(select_streams(load_streams(path), self.rule), key=lambda s: s["stream_id"])
        groups = self._group_streams(job, path, streams)
        if not groups:
            return {}
        schema = output_schema(streams, self.columns)
        collected_at = datetime.now(timezone.utc).isoformat()
        ids = np.array([s["stream_id"] for s in streams], dtype=np.uint32)
        group_of = np.empty(ids.size, dtype=np.int64)
        outputs: list[ArrowOutput] = []
        replace: list[bool] = []
        try:
            for index, (target, members) in enumerate(groups.items()):
                replace.append(self._claim(job, target))
                labels = [{k: v for k, v in s.items() if k != LOGGER_PATH_KEY} for s in members]
                meta = provenance_metadata(job.path, job.source, collected_at, job.id, labels)
                outputs.append(
                    ArrowOutput(target, schema.with_metadata(meta), f"job{job.id}", self.format, self.compression)
                )
                group_of[np.searchsorted(ids, [s["stream_id"] for s in members])] = index
            collector = Collector([path], chunk_bytes=self.chunk_bytes)
            for batch in collector.batches(rule=self.rule, schema=schema, backoff=self.backoff, timeout=self.timeout):
                if batch is None:
                    raise CollectorError("timed out waiting for _DONE", path)
                route_batch(batch, ids, group_of, outputs)
            for output, owned in zip(outputs, replace):
                output.commit(replace=owned)
        except BaseException:
            for output in outputs:
                output.abort()
            raise
        return {str(o.final): o.rows for o in outputs}

    def _group_streams(self, job: Job, path: Path, streams: list[dict[str, Any]]) -> dict[Path, list[dict[str, Any]]]:
        """Render each stream's output path; streams with equal paths share a file."""
        base = {**self.metadata, **job.metadata}
        extra = {"source_name": job.source, "logger_path": job.path, "logger_name": Path(job.path).name}
        groups: dict[Path, list[dict[str, Any]]] = {}
        for stream in streams:
            context = {**base, **{k: v for k, v in stream.items() if k != LOGGER_PATH_KEY}, **extra}
            groups.setdefault(self.template.render(context), []).append(stream)
        return groups

    def _claim(self, job: Job, target: Path) -> bool:
        """Reserve an output path for the job; True if an existing file there is the job's own."""
        try:
            self.journal.claim_output(job.id, str(target))
        except OutputTakenError as exc:
            raise OutputError(
                f"output collision: {target} already holds the run {exc.owner.path} (job {exc.owner.id}); "
                f"refusing to overwrite it with the run {job.path} (job {job.id})"
            ) from None
        if not target.exists() and not target.is_symlink():
            return False
        previous = read_provenance(target).get("logger_path")
        if previous != job.path:
            raise OutputError(
                f"output collision: {target} already holds "
                f"{'the run ' + previous if previous else 'a file not written by herocollector'}; "
                f"refusing to overwrite it with the run {job.path} (job {job.id})"
            )
        return True

    # -- remote methods ---------------------------------------------------------------------

    def collect(self, path: str) -> dict:
        """Journal and queue a logger directory, as if a ``finished`` event had announced it.

        Args:
            path: Absolute path of the logger directory.

        Returns:
            The job (``state`` pending if queued; done/cleaned if collected before).
        """
        path = os.path.normpath(str(path))
        job, queue_now = self.journal.submit(path, "remote", {self.path_key: path})
        if queue_now:
            self._enqueue(job)
        return job.to_dict()

    def status(self) -> dict:
        """Counts of jobs per state, the queue, the job running now and the recent jobs."""
        recent = self.journal.recent(20)
        return {
            "counts": self.journal.counts(),
            "queued": self._payload_queue.qsize(),
            "running": self._current,
            "journal": str(self.journal.file),
            "output_root": str(self.output_root),
            "pending_deletion": [
                {"path": job.path, "delete_after": job.trash_until} for job in self.journal.in_trash()
            ],
            "recent": [job.to_dict() for job in recent],
        }

    def failed(self) -> list:
        """The jobs kept as failed, with their errors and attempt counts."""
        return [job.to_dict() for job in self.journal.jobs(FAILED)]

    def retry(self, path: str | None = None) -> int:
        """Queue failed jobs again (all, or the one of ``path``) with a fresh retry budget.

        Returns:
            How many jobs were queued.
        """
        jobs = self.journal.retry(None if path is None else os.path.normpath(str(path)))
        for job in jobs:
            self._enqueue(job)
        return len(jobs)

    def cleanup(
        self,
        path: str | None = None,
        keep_meta: bool = True,
        wait_for_done: bool = True,
        backoff: int = 100,
        timeout: int | None = 60_000,
        force: bool = False,
    ) -> bool:
        """Delete the segments (and with ``keep_meta=False`` ``streams/``) of collected runs.

        Only a logger directory inside ``allowed_roots`` (symlinks resolved) is touched, and
        only its ``*.seg.zst`` files and ``streams/``.

        Args:
            path: One logger directory; None for every collected, not yet cleaned run.
            keep_meta: Keep ``streams/``.
            wait_for_done: Wait for ``_DONE`` first.
            backoff: Milliseconds between ``_DONE`` polls.
            timeout: Milliseconds to wait for ``_DONE``.
            force: Also clean a run that was not collected.

        Returns:
            True if every requested run was cleaned; False if any was refused or timed out
            (the reasons are logged).
        """
        if path is None:
            targets = [(job.path, job) for job in self.journal.jobs(DONE)]
        else:
            path = os.path.normpath(str(path))
            targets = [(path, self.journal.by_path(path))]
        ok = True
        for target, job in targets:
            refusal = self._cleanup_refusal(target, job, force, keep_meta)
            if refusal:
                log.warning(f"herocollector: cleanup of {target} refused: {refusal}")
                ok = False
                continue
            real = Path(os.path.realpath(target))
            if wait_for_done and not logdir.wait_for_done([real], backoff, timeout):
                log.warning(f"herocollector: cleanup of {target} timed out waiting for _DONE")
                ok = False
                continue
            trash.soft_delete(real, keep_meta=keep_meta)
            purge_at = time.time() + self.cleanup_grace
            if job is not None:
                self.journal.mark_cleaned(job.id, purge_at)
            else:
                log.warning(f"herocollector: {target} has no job; its trash is not purged automatically")
            if self.cleanup_grace == 0:
                self._purge(real, job)
            log.info(
                f"herocollector: cleaned {target} (keep_meta={keep_meta}); "
                f"trash deleted for good after {self.cleanup_grace:g} s"
            )
        return ok

    def restore(self, path: str) -> bool:
        """Put a cleaned run's segments back from the trash (before the grace period ends).

        Args:
            path: The logger directory.

        Returns:
            True if anything was restored.
        """
        path = os.path.normpath(str(path))
        job = self.journal.by_path(path)
        if self._cleanup_refusal(path, job, force=True, restoring=True) is not None:
            return False
        restored = trash.restore(Path(os.path.realpath(path)))
        if job is not None and restored:  # nothing put back (purged already): the run stays cleaned
            self.journal.restored(job.id)
        log.info(f"herocollector: restored {len(restored)} item(s) of {path}")
        return bool(restored)

    def _purge(self, run: Path, job: Job | None) -> None:
        trash.purge(run, self.cleanup_grace)
        if job is not None and not trash.trashed(run):
            self.journal.purged(job.id)

    def _purge_loop(self) -> None:
        """Delete trash whose grace period is over (runs until teardown)."""
        period = min(max(self.cleanup_grace / 4, 0.05), 60.0)
        while not self._stop_event.wait(period):
            for job in self.journal.in_trash():
                if job.trash_until is None or job.trash_until > time.time():
                    break
                try:
                    self._purge(Path(os.path.realpath(job.path)), job)
                except OSError as exc:
                    log.warning(f"herocollector: purging the trash of {job.path} failed: {exc}")

    def _cleanup_refusal(
        self, target: str, job: Job | None, force: bool, keep_meta: bool = True, restoring: bool = False
    ) -> str | None:
        """Why a cleanup (or with ``restoring`` a restore) must not touch ``target``, or None if it may."""
        if not self.allowed_roots:
            return "no allowed_roots configured"
        if not os.path.isabs(target):
            return "path is not absolute"
        real = Path(os.path.realpath(target))
        if not any(real.is_relative_to(root) for root in self.allowed_roots):
            return "outside allowed_roots"
        streams_trashed = restoring and any(
            p.name.startswith(f"{logdir.STREAMS_DIR}.trash-") for p, _ in trash.trashed(real)
        )
        if not real.is_dir() or not ((real / logdir.STREAMS_DIR).is_dir() or streams_trashed):
            return "not a logger directory"
        if not keep_meta and (real / logdir.STREAMS_DIR).is_symlink():
            return "streams/ is a symlink; it is not removed with keep_meta=False"
        if (job is None or job.state != DONE) and not force:
            return f"run not collected (state {job.state if job else 'unknown'}); pass force=True to clean anyway"
        return None

    def _teardown(self) -> None:
        """Stop timers and the worker (called by BOSS), then close the journal."""
        with self._timers_lock:
            for timer in self._timers:
                timer.cancel()
        self._stop_event.set()
        self._payload_queue.put(("", 0, {}, 0))  # wake the worker at once; job 0 does not exist
        super()._teardown()
        self._purger.join()
        self.journal.close()

"""``CollectorArchiver``: the HEROS adapter of the collection service, started by BOSS.

Everything it does is done by :class:`~herocollector.service.core.CollectionService`; this class
only connects it to HEROS: arguments in, events in, remote methods, events and metrics out.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from heros import event
from heros.event import reliable
from heros.inspect import local_only
from herostools.actor.archiver import HERODataArchiver

from herocollector.config import ServiceConfig
from herocollector.decode.codec import DEFAULT_CHUNK_BYTES
from herocollector.events import RunCollected, RunFailed
from herocollector.service.core import CollectionService

log = logging.getLogger(__name__)

REMOTE_WAIT_LIMIT_MS = 8_000
"""The longest a remote method waits for ``_DONE``: under the 10 s HEROS query timeout, so a
remote caller always gets the true answer instead of a timeout while the work goes on."""


class CollectorArchiver(HERODataArchiver):
    """Collects every run a logger HERO announces into Arrow or Parquet files at templated paths.

    A thin HEROS adapter over :class:`~herocollector.service.core.CollectionService`: each
    ``finished`` event is journalled, collected by one of ``workers`` threads once the run's
    ``_DONE`` exists, and written to the files its stream labels render; runs announced while
    no actor listened are found by the catch-up scan. Remote methods: ``collect``,
    ``status``, ``failed``, ``retry``, ``cleanup`` and ``restore``. Events: ``run_collected``
    and ``run_failed``. Metrics: the datasource observables (see ``_observable_data``).

    Args:
        object_selector: Zenoh object selector of the logger HEROs (``"*"`` for all).
        save_template: Jinja2 output path template; variables are ``default_metadata``, the
            event metadata, the stream labels (later wins), ``source_name``, ``logger_path``
            and ``logger_name``. Each printed value must stay one path segment.
        event_name: The event announcing a finished run.
        rule: disco-tools rule spec dict selecting the streams (None: all).
        columns: Stream labels added as columns: a list of names, or a mapping of names to
            Arrow type names that pins their types (``{"experiment": "string"}``).
        default_metadata: Template variables; ``output_root`` here serves as the default
            for the argument of that name.
        max_retries: Retries of a failed job before it is kept as failed.
        path_key: Key of the logger directory in the event payload or metadata.
        format: ``"file"`` (Arrow IPC file), ``"stream"`` (Arrow IPC stream) or ``"parquet"``.
        compression: Buffer compression: None, ``"zstd"`` or ``"lz4"`` (Parquet: zstd if None).
        backoff: Milliseconds between checks of a waiting run's ``_DONE``.
        timeout: Milliseconds from the announcement to wait for ``_DONE`` (None: forever).
        state_dir: Folder of the job journal and its lock (one actor per folder).
        allowed_roots: Logger directories must lie inside one of these; also what the
            catch-up scan walks. ``cleanup`` is refused for everything when this is not set.
        output_root: Rendered paths must lie inside this folder (a path or ``file://`` URI), or
            under this object store prefix (``s3://bucket/prefix``).
        retry_delay: Seconds before the first retry; doubles for each further one.
        retry_delay_max: Upper bound of the retry delay, in seconds.
        chunk_bytes: Decompressed bytes decoded per step (bounds memory).
        claim_runs: Claim each run with a file in its logger directory before collecting
            it, so that a fleet of actors sharing a filesystem collects each run once.
        claim_timeout: Seconds without heartbeat after which another actor's claim is
            taken over (that actor is presumed dead).
        claim_heartbeat: Seconds between heartbeats of a held claim.
        cleanup_grace: Seconds that cleaned segments stay in the trash (restorable) before
            they are deleted for good; 0 deletes at once.
        cleanup_after_collect: Clean (into the trash) every run right after collecting it.
        workers: Runs collected at the same time.
        scan_interval: Seconds between catch-up scans of ``allowed_roots`` (None: no scan).
        scan_depth: Folder levels below each of ``allowed_roots`` the scan looks at.
        lease_timeout: Seconds a worker's lease on a job lasts on a shared journal unless
            renewed; an actor silent for longer is fenced out and another takes the job.
        journal: The job journal: a SQLite file (default ``<state_dir>/journal.sqlite3``) or
            a ``postgresql://`` URL of a journal that a fleet of actors shares.
        storage_options: For an ``s3://bucket/prefix`` ``output_root``: ``endpoint_url``,
            ``region``, ``access_key_id``, ``secret_access_key``, ``session_token``,
            ``addressing_style`` (credentials default to the usual ``AWS_*`` environment).

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
                "state_dir": "/var/lib/herocollector",
                "workers": 2
              },
              "datasource": {"async": false, "interval": 10}
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
        columns: Sequence[str] | Mapping[str, str | None] | None = None,
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
        workers: int = 2,
        scan_interval: float | None = 300.0,
        scan_depth: int = 3,
        lease_timeout: float = 30.0,
        journal: str | None = None,
        storage_options: dict[str, Any] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        # Exactly the service's arguments: everything else goes to HERODataArchiver.
        given = locals()
        config = ServiceConfig.from_arguments(**{name: given[name] for name in ServiceConfig.argument_names()})
        self.service = CollectionService(config, on_collected=self._relay_collected, on_failed=self._relay_failed)
        try:
            HERODataArchiver.__init__(
                self, object_selector, event_name, dict(config.default_metadata), max_retries, *args, **kwargs
            )
        except BaseException:
            self.service.close()
            raise
        self._parent_watch = threading.Event()
        self._watch_parent()
        log.info(f"listening for '{event_name}' from '{object_selector}'")

    # -- HEROS in ------------------------------------------------------------------------------

    @local_only
    def feed(self, source_name: str, data: Any, retry_count: int = 0) -> None:
        """Hand an announced run to the service (the event callback; not remote).

        Args:
            source_name: The HERO that fired the event.
            data: The event payload (see :func:`herocollector.events.parse_event`).
            retry_count: Unused; retries are scheduled from the journal.
        """
        self.service.submit(source_name, data)

    def _process_queue(self) -> None:
        """The base class's queue worker: the service's scheduler does this work instead."""

    def _store(self, source_name: str, payload: Any, metadata: dict) -> None:
        """Unused: announcements go straight to the service's journal."""

    # -- HEROS out ------------------------------------------------------------------------------

    @reliable
    @event
    def run_collected(self, report: dict) -> dict:
        """Fired when a run was collected: path, outputs (with rows), rows, seconds, job."""
        return report

    @reliable
    @event
    def run_failed(self, report: dict) -> dict:
        """Fired when an attempt failed: path, error, attempts, final (no more retries), job."""
        return report

    def _relay_collected(self, report: RunCollected) -> None:
        fire = self.run_collected
        if fire is not None:  # None until BOSS has made this object a HERO
            fire(report.to_dict())

    def _relay_failed(self, report: RunFailed) -> None:
        fire = self.run_failed
        if fire is not None:
            fire(report.to_dict())

    def _observable_data(self) -> dict[str, tuple[float, str]]:
        """The service's counters, for BOSS's ``datasource`` option and herostools' Prometheus actor."""
        counts = self.service.journal.counts()
        metrics = self.service.metrics()
        data: dict[str, tuple[float, str]] = {f"jobs_{state}": (float(n), "") for state, n in counts.items()}
        data["waiting_runs"] = (float(counts["waiting"]), "")
        data["queue_depth"] = (float(counts["pending"]), "")
        data["running_runs"] = (float(len(self.service.scheduler.running())), "")
        data["runs_collected"] = (float(metrics.runs_collected), "")
        data["runs_failed"] = (float(metrics.runs_failed), "")
        data["rows_collected"] = (float(metrics.rows_collected), "")
        data["bytes_collected"] = (float(metrics.bytes_collected), "B")
        data["last_latency"] = (metrics.last_latency, "s")
        return data

    # -- remote methods ------------------------------------------------------------------------

    def collect(self, path: str) -> dict:
        """Journal a logger directory, as if a ``finished`` event had announced it.

        Args:
            path: Absolute path of the logger directory.

        Returns:
            The job (``state`` pending if new; its state if known before).
        """
        return self.service.collect(path)

    def status(self) -> dict:
        """Jobs per state, runs being collected, waiting runs, trash, last scan and recent jobs."""
        return self.service.status()

    def failed(self) -> list:
        """The jobs kept as failed, with their errors and attempt counts."""
        return self.service.failed()

    def retry(self, path: str | None = None) -> int:
        """Queue failed jobs again (all, or the one of ``path``) with a fresh retry budget.

        Returns:
            How many jobs were queued.
        """
        return self.service.retry(path)

    def cleanup(
        self,
        path: str | None = None,
        keep_meta: bool = True,
        wait_for_done: bool = True,
        backoff: int = 100,
        timeout: int | None = 5_000,
        force: bool = False,
    ) -> bool:
        """Move the segments (and with ``keep_meta=False`` ``streams/``) of collected runs into the trash.

        Only a logger directory inside ``allowed_roots`` (symlinks resolved) is touched, and
        only its ``*.seg.zst`` files and ``streams/``; the trash is deleted for good after
        ``cleanup_grace`` seconds and can be restored until then.

        Args:
            path: One logger directory; None for every collected, not yet cleaned run.
            keep_meta: Keep ``streams/``.
            wait_for_done: Wait for ``_DONE`` first.
            backoff: Milliseconds between ``_DONE`` polls.
            timeout: Milliseconds to wait for ``_DONE``; at most 8000 (None too), so a
                remote caller always gets the answer before its query times out.
            force: Also clean a run that was not collected.

        Returns:
            True if every requested run was cleaned; False if any was refused or did not
            finish in time, and was left untouched.
        """
        limit = REMOTE_WAIT_LIMIT_MS if timeout is None else min(int(timeout), REMOTE_WAIT_LIMIT_MS)
        return self.service.cleanup(path, keep_meta, wait_for_done, backoff, limit, force)

    def restore(self, path: str) -> bool:
        """Put a cleaned run's segments back from the trash (before the grace period ends).

        Returns:
            True if anything was restored.
        """
        return self.service.restore(path)

    # -- inherited helpers: local only ---------------------------------------------------------

    @local_only
    def register_callback(self, func: Any) -> str | bool:
        """Register an event callback (local only)."""
        return super().register_callback(func)

    @local_only
    def remove_callback(self, func: Any) -> bool:
        """Remove an event callback (local only)."""
        return super().remove_callback(func)

    @local_only
    def remove_callback_uid(self, uid: str) -> bool:
        """Remove an event callback by its id (local only)."""
        return super().remove_callback_uid(uid)

    @local_only
    def is_queue_drained(self) -> bool:
        """True when no job is pending, waiting or running (local only)."""
        counts = self.service.journal.counts()
        return counts["pending"] + counts["waiting"] + counts["running"] == 0 and not self.service.scheduler.running()

    # -- lifecycle -----------------------------------------------------------------------------

    def _watch_parent(self) -> None:
        """In a BOSS worker process: stop when the BOSS parent dies, instead of living on orphaned."""
        parent = multiprocessing.parent_process()
        if parent is None:
            return

        def watch() -> None:
            while not self._parent_watch.wait(1.0):
                if not parent.is_alive():
                    log.error(f"the BOSS process (pid {parent.pid}) is gone; stopping this worker")
                    self.service.close()
                    # BOSS's worker stops on SIGTERM; should that hang, end the process anyway.
                    threading.Timer(10.0, os._exit, args=(1,)).start()
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        threading.Thread(target=watch, name="herocollector-parent-watch", daemon=True).start()

    def _teardown(self) -> None:
        """Close the service (called by BOSS at shutdown; prompt whatever is waiting)."""
        self._parent_watch.set()
        self.service.close()
        super()._teardown()

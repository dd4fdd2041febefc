"""``CollectorArchiver``: the HEROS adapter of the collection service, started by BOSS.

Everything it does is done by :class:`~herocollector.service.core.CollectionService`; this class
only connects it to HEROS: arguments in, events in, remote methods, events and metrics out.
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import os
import signal
import threading
from typing import Any

from heros import EventObserver, event
from heros.event import reliable
from heros.exceptions import RemoteHEROError
from heros.inspect import local_only
from herostools.actor.archiver import HERODataArchiver

from herocollector.arguments import SIGNATURE
from herocollector.config import ServiceConfig
from herocollector.errors import RunRefused
from herocollector.events import RunCollected, RunFailed
from herocollector.journal.sqlite import JobState
from herocollector.service.checks import (
    flag_argument,
    milliseconds_argument,
    optional_run_path_argument,
    run_path_argument,
)
from herocollector.service.core import CollectionService

log = logging.getLogger(__name__)

REMOTE_WAIT_LIMIT_MS = 8_000
"""The longest a remote method waits for ``_DONE``: under the 10 s HEROS query timeout, so a
remote caller always gets the true answer instead of a timeout while the work goes on."""
REMOTE_SWEEP_WAIT = 2.0
"""Seconds a remote cleanup of every run waits for its background work before it answers with a count."""


class CollectorArchiver(HERODataArchiver):
    """Collects every run a logger HERO announces into Arrow or Parquet files at templated paths.

    A thin HEROS adapter over :class:`~herocollector.service.core.CollectionService`: each
    ``finished`` event is journalled, collected by one of ``workers`` threads once the run's
    ``_DONE`` exists, and written to the files its stream labels render; runs announced while
    no actor listened are found by the catch-up scan. Remote methods: ``collect``,
    ``status``, ``failed``, ``retry``, ``cleanup`` and ``restore``. Events: ``run_collected``
    and ``run_failed``. Metrics: the datasource observables (see ``_observable_data``).

    Its keyword arguments are exactly those of :class:`~herocollector.config.ServiceConfig`,
    defined once in :data:`herocollector.arguments.ARGUMENTS` and described in
    ``docs/configuration.md``; the signature below is generated from them. Further keyword
    arguments (``realm``, ``session_manager``, …) go to HEROS's ``EventObserver``.

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = _SIGNATURE.bind(self, *args, **kwargs)
        hero_args: tuple[Any, ...] = bound.arguments.pop("args", ())
        hero_kwargs: dict[str, Any] = bound.arguments.pop("kwargs", {})
        bound.arguments.pop("self")
        config = ServiceConfig.from_arguments(**bound.arguments)
        self.service = CollectionService(config, on_collected=self._relay_collected, on_failed=self._relay_failed)
        try:
            # HERODataArchiver.__init__ would start a payload queue and a worker thread of its
            # own: the service's journal and scheduler do that work, so only the observer is set up.
            self.metadata = dict(config.default_metadata)
            self.max_retries = config.max_retries
            EventObserver.__init__(
                self, *hero_args, object_selector=config.object_selector, event_name=config.event_name, **hero_kwargs
            )
            self.register_callback(self.feed)
        except BaseException:
            self.service.close()
            raise
        self._parent_watch = threading.Event()
        self._watch_parent()
        log.info(f"listening for '{config.event_name}' from '{config.object_selector}'")

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

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Unused: announcements go straight to the service's journal."""

    # -- HEROS out ------------------------------------------------------------------------------

    @reliable
    @event
    def run_collected(self, report: dict[str, Any]) -> dict[str, Any]:
        """Fired when a run was collected: path, outputs (with rows), rows, seconds, job."""
        return report

    @reliable
    @event
    def run_failed(self, report: dict[str, Any]) -> dict[str, Any]:
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
        counts = self.service.counts()
        metrics = self.service.metrics()
        data: dict[str, tuple[float, str]] = {
            f"jobs_{state.value}": (float(n), "") for state, n in counts.by_state.items()
        }
        data["waiting_runs"] = (float(counts[JobState.WAITING]), "")
        data["queue_depth"] = (float(counts[JobState.PENDING]), "")
        data["running_runs"] = (float(len(self.service.running())), "")
        data["runs_collected"] = (float(metrics.runs_collected), "")
        data["runs_failed"] = (float(metrics.runs_failed), "")
        data["rows_collected"] = (float(metrics.rows_collected), "")
        data["bytes_collected"] = (float(metrics.bytes_collected), "B")
        data["last_latency"] = (metrics.last_latency, "s")
        return data

    # -- remote methods ------------------------------------------------------------------------

    def collect(self, path: str) -> dict[str, Any]:
        """Journal a logger directory, as if a ``finished`` event had announced it.

        Args:
            path: Absolute path of the logger directory.

        Returns:
            The job (``state`` pending if new; its state if known before).
        """
        return self.service.collect(path).to_dict()

    def status(self) -> dict[str, Any]:
        """Jobs per state, runs being collected, waiting runs, trash, last scan and recent jobs."""
        return self.service.status().to_dict()

    def failed(self) -> list[dict[str, Any]]:
        """The jobs kept as failed, with their errors and attempt counts."""
        return [job.to_dict() for job in self.service.failed()]

    def retry(self, path: str | None = None) -> int:
        """Queue failed jobs again (all, or the one of ``path``) with a fresh retry budget.

        Returns:
            How many jobs were queued.
        """
        return self.service.retry(optional_run_path_argument(path))

    def cleanup(
        self,
        path: str | None = None,
        keep_meta: bool = True,
        wait_for_done: bool = True,
        backoff: int = 100,
        timeout: int | None = 5_000,
        force: bool = False,
    ) -> bool | int:
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
            finish in time, and was left untouched. For every run (``path`` None), the work is
            done in the background: when it is not finished within 2 s, the number of
            collected runs it looks at (an ``int``); its progress is in ``status()["extra"]["cleanup"]``.
        """
        self._allow_destructive("cleanup")
        path = optional_run_path_argument(path, absolute=False)  # a relative one is refused with False
        keep_meta = flag_argument(keep_meta, "keep_meta")
        wait_for_done = flag_argument(wait_for_done, "wait_for_done")
        force = flag_argument(force, "force")
        backoff = milliseconds_argument(backoff, "backoff", allow_none=False) or 1
        wait = milliseconds_argument(timeout, "timeout")
        limit = REMOTE_WAIT_LIMIT_MS if wait is None else min(wait, REMOTE_WAIT_LIMIT_MS)
        if path is not None:
            return self.service.cleanup(path, keep_meta, wait_for_done, backoff, limit, force)
        # Every run: on the service's thread, so the answer comes before the query times out.
        started = self.service.start_cleanup(keep_meta, wait_for_done, backoff, limit, force)
        answer = self.service.wait_cleanup(REMOTE_SWEEP_WAIT)
        return started.total if answer is None else answer

    def verify(self, path: str) -> dict[str, Any]:
        """Verify a collected run's outputs against its manifest and the journal (what cleanup checks first).

        Args:
            path: The logger directory.

        Returns:
            ``run``, ``manifest``, ``ok``, ``problems`` and per output ``path``, ``ok``, what the
            manifest lists (``rows``, ``bytes``, ``sha256``), what was found and ``problems``.
        """
        return self.service.verify(run_path_argument(path)).to_dict()

    def restore(self, path: str) -> bool:
        """Put a cleaned run's segments back from the trash (before the grace period ends).

        Returns:
            True if anything was restored.
        """
        self._allow_destructive("restore")
        return self.service.restore(run_path_argument(path))

    def _allow_destructive(self, method: str) -> None:
        if not self.service.config.remote_cleanup:
            raise RunRefused(f"remote {method} is switched off on this actor (remote_cleanup: false)")

    def _serialize(self, obj: Any) -> Any:
        """HEROS replies; an error goes to the caller as its type and message, without a traceback.

        HEROS would send the traceback, with this installation's file paths, to any caller in
        the realm; the message is what the caller needs.
        """
        if isinstance(obj, BaseException):
            message = str(obj).replace(str(self.service.config.state_dir), "<state_dir>")
            obj = RemoteHEROError(message, remote_type=type(obj).__name__, remote_module=type(obj).__module__)
        return super()._serialize(obj)

    # -- inherited helpers: local only ---------------------------------------------------------

    @local_only
    def register_callback(self, func: Any) -> str | bool:
        """Register an event callback (local only)."""
        registered: str | bool = super().register_callback(func)
        return registered

    @local_only
    def remove_callback(self, func: Any) -> bool:
        """Remove an event callback (local only)."""
        removed: bool = super().remove_callback(func)
        return removed

    @local_only
    def remove_callback_uid(self, uid: str) -> bool:
        """Remove an event callback by its id (local only)."""
        removed: bool = super().remove_callback_uid(uid)
        return removed

    @local_only
    def is_queue_drained(self) -> bool:
        """True when no job is pending, waiting or running (local only)."""
        return self.service.counts().busy == 0 and not self.service.running()

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


_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *SIGNATURE.parameters.values(),
        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
)
# BOSS, ``inspect.signature`` and the docs see the service's arguments as real parameters.
CollectorArchiver.__init__.__signature__ = _SIGNATURE  # type: ignore[attr-defined]

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from heros import EventObserver, LocalDatasourceHERO, LocalHERO, PolledLocalDatasourceHERO, event
from heros.event import reliable
from heros.exceptions import RemoteHEROError
from heros.inspect import local_only
from herostools.actor.archiver import HERODataArchiver

from herocollector.actor.tasks import RemoteTask, RemoteTasks
from herocollector.arguments import SIGNATURE
from herocollector.config import ServiceConfig
from herocollector.errors import Busy, ConfigError, RunRefused
from herocollector.events import RunCollected, RunFailed, RunProgress
from herocollector.journal.sqlite import JobState
from herocollector.run import logdir
from herocollector.service.checks import (
    flag_argument,
    milliseconds_argument,
    optional_run_path_argument,
    run_path_argument,
)
from herocollector.service.core import CollectionService

log = logging.getLogger(__name__)

REMOTE_ANSWER_WITHIN = 3.0
"""Seconds a remote cleanup of one run waits for its work before it answers "accepted" with a task id.

HEROS serves every query of a Zenoh link on one thread, and a caller gives up after 10 s: calls
run on :data:`CALL_THREADS` threads of their own, and no call holds its caller longer than this."""
REMOTE_SWEEP_WAIT = 2.0
"""Seconds a remote cleanup of every run waits for its background work before it answers with a count."""
CALL_THREADS = 16
"""Remote calls served at the same time."""
CALL_QUEUE_LIMIT = 3.0
"""Seconds a remote call may wait for a free thread; then it is answered with ``Busy`` and never run,
so the answer still comes before the caller's 10 s timeout and nothing runs behind its back."""
TEARDOWN_WAIT = 10.0
"""Seconds the shutdown waits for accepted tasks that are past their wait for ``_DONE`` (verifying, renaming)."""


class CollectorArchiver(HERODataArchiver):
    """Collects every run a logger HERO announces into Arrow or Parquet files at templated paths.

    A thin HEROS adapter over :class:`~herocollector.service.core.CollectionService`: each
    ``finished`` event is journalled, collected by one of ``workers`` threads once the run's
    ``_DONE`` exists, and written to the files its stream labels render; runs announced while
    no actor listened are found by the catch-up scan. Remote methods: ``collect``,
    ``status``, ``failed``, ``retry``, ``cleanup``, ``verify`` and ``restore``. Events:
    ``run_collected`` and ``run_failed``. Metrics: the datasource observables (see
    ``_observable_data``), and with ``metrics_port`` a Prometheus endpoint the service serves.

    Remote calls are served concurrently (HEROS itself answers the queries of a Zenoh link one
    after the other, on one thread), and every call answers within a few seconds, before the
    caller's 10 s query timeout, with the truth: ``cleanup(path)`` answers True or False when its
    work ends within 3 s, and otherwise ``{"accepted": True, "id": ..., "path": ...}``; the work
    goes on and ``status()["tasks"]`` reports its outcome under that id. A call that found no
    free thread within 3 s is answered with a ``Busy`` error and is not run at all.

    With BOSS's ``datasource`` section the event subscription is made once BOSS has given the
    HERO its realm (``_setup``): for datasources BOSS passes the realm to the HERO only then.

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
        _check_key_expressions(config)
        self.service = CollectionService(
            config, on_collected=self._relay_collected, on_failed=self._relay_failed, on_progress=self._relay_progress
        )
        self.tasks = RemoteTasks()
        self._calls = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="herocollector-call")
        self._calls_lock = threading.Lock()
        self._calls_in_flight = 0
        try:
            # HERODataArchiver.__init__ would start a payload queue and a worker thread of its
            # own: the service's journal and scheduler do that work, so only the observer is set up.
            self.metadata = dict(config.default_metadata)
            self.max_retries = config.max_retries
            if isinstance(self, LocalHERO) and "realm" not in hero_kwargs:
                # BOSS's datasource factories give the realm to the HERO mixin only, after this
                # __init__: a subscription now would listen in the default realm, so _setup makes it.
                self._object_selector, self._event_name = config.object_selector, config.event_name
                self._event_callbacks: dict[str, Any] = {}
            else:
                EventObserver.__init__(
                    self,
                    *hero_args,
                    object_selector=config.object_selector,
                    event_name=config.event_name,
                    **hero_kwargs,
                )
                log.info(f"listening for '{config.event_name}' from '{config.object_selector}' in '{self._realm}'")
            self.register_callback(self._on_event)
        except BaseException:
            self._calls.shutdown(wait=False)
            self.service.close()
            raise
        self._parent_watch = threading.Event()
        self._stopping = threading.Event()
        self._watch_parent()

    def _setup(self) -> None:
        """BOSS's hook once the HERO mixin is initialised: subscribe to the event in the HERO's own realm."""
        subscription = getattr(self, "_subscription", None)
        if subscription is None:
            selector = f"{self._ns_objects}/{self._realm}/{self._object_selector}/{self._event_name}"
            self._subscription = self._subscribe_selector(selector, self._handle_event)
            log.info(f"listening for '{self._event_name}' from '{self._object_selector}' in '{self._realm}'")
        elif subscription not in self._subscriptions:
            # The mixin's __init__ reset the list: keep the subscription in it, so it is undeclared at the end.
            self._subscriptions.append(subscription)

    # -- HEROS in ------------------------------------------------------------------------------

    def _on_event(self, source_name: str, data: Any) -> None:
        """The Zenoh event callback: hands the event to the service's intake and returns at once."""
        self.service.announce(source_name, data)

    @local_only
    def feed(self, source_name: str, data: Any, retry_count: int = 0) -> None:
        """Journal an announced run now, synchronously (local only; events go through the intake).

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

    @reliable
    @event
    def run_progress(self, report: dict[str, Any]) -> dict[str, Any]:
        """Fired after each chunk of a followed run (``follow``): path, chunk, rows, total, epochs, job."""
        return report

    def _relay_progress(self, report: RunProgress) -> None:
        fire = self.run_progress
        if fire is not None:
            fire(report.to_dict())

    def _relay_collected(self, report: RunCollected) -> None:
        fire = self.run_collected
        if fire is not None:  # None until BOSS has made this object a HERO
            fire(report.to_dict())
        self._publish_observables()

    def _relay_failed(self, report: RunFailed) -> None:
        fire = self.run_failed
        if fire is not None:
            fire(report.to_dict())
        self._publish_observables()

    def _publish_observables(self) -> None:
        """With ``"datasource": {"async": true}`` nothing polls: publish the observables after every outcome."""
        if isinstance(self, LocalDatasourceHERO) and not isinstance(self, PolledLocalDatasourceHERO):
            try:
                self.observable_data(self._observable_data())
            except Exception as exc:  # noqa: BLE001 - metrics never fail a collection
                log.warning(f"observable_data not published: {exc}")

    def _observable_data(self) -> dict[str, tuple[float, str]]:
        """The service's counters, for BOSS's ``datasource`` option (polled, or published after each outcome)."""
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
        """Jobs per state, runs being collected, waiting runs, trash, last scan, recent jobs and remote tasks.

        ``tasks`` lists the work of remote calls that answered "accepted" (see :class:`RemoteTask`),
        oldest first, the last 200 finished ones kept; ``metrics`` is the Prometheus endpoint, if any.
        """
        status = self.service.status().to_dict()
        status["tasks"] = self.tasks.to_list()
        status["metrics"] = self.service.metrics_url()
        return status

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
    ) -> bool | int | dict[str, Any]:
        """Move the segments (and with ``keep_meta=False`` ``streams/``) of collected runs into the trash.

        Only a logger directory inside ``allowed_roots`` (symlinks resolved) is touched, and
        only its ``*.seg.zst`` files and ``streams/``; the trash is deleted for good after
        ``cleanup_grace`` seconds and can be restored until then.

        Args:
            path: One logger directory; None for every collected, not yet cleaned run.
            keep_meta: Keep ``streams/``.
            wait_for_done: Wait for ``_DONE`` first.
            backoff: Milliseconds between ``_DONE`` polls.
            timeout: Milliseconds to wait for ``_DONE`` (None: until it appears or the actor stops).
            force: Also clean a run that was not collected.

        Returns:
            For one run: True if it was cleaned; False if it was refused, failed verification or
            its ``_DONE`` did not come in time, and was left untouched. When that is not known
            within 3 s (a wait for ``_DONE``, a long verification), ``{"accepted": True, "id":
            ..., "path": ...}``: the cleanup goes on, and ``status()["tasks"]`` gives its
            ``state`` and ``result`` (True or False, as above) under that ``id``. For every run
            (``path`` None), the work is done in the background: when it is not finished within
            2 s, the number of collected runs it looks at (an ``int``); its progress is in
            ``status()["cleanup"]``.

        Raises:
            Busy: Too many accepted cleanups are still running; this one was not started.
        """
        self._allow_destructive("cleanup")
        path = optional_run_path_argument(path, absolute=False)  # a relative one is refused with False
        keep_meta = flag_argument(keep_meta, "keep_meta")
        wait_for_done = flag_argument(wait_for_done, "wait_for_done")
        force = flag_argument(force, "force")
        backoff = milliseconds_argument(backoff, "backoff", allow_none=False) or 1
        wait = milliseconds_argument(timeout, "timeout")
        if path is not None:
            one: str = path

            def work() -> bool:
                # The wait for _DONE is the actor's, so that _teardown can end it before the service closes;
                # a run that is refused anyway is refused at once, as the service would.
                if wait_for_done and not logdir.is_done(os.path.realpath(one)):
                    refusal = self.service.cleanup_refusal(one, keep_meta, force)
                    if refusal is not None:
                        log.warning(f"cleanup of {one} refused: {refusal}")
                        return False
                    if not logdir.wait_for_done([os.path.realpath(one)], backoff, wait, stop=self._stopping):
                        log.warning(f"cleanup of {one} not done: no _DONE within {wait} ms (or the actor stopped)")
                        return False
                if self._stopping.is_set():
                    raise Busy("the actor is stopping; the cleanup was not done")
                return self.service.cleanup(one, keep_meta, wait_for_done, backoff, 0, force)

            task = self.tasks.run("cleanup", one, work, REMOTE_ANSWER_WITHIN)
            if task.state == "done":
                return bool(task.result)
            accepted: dict[str, Any] = self._answer(task)
            return accepted
        # Every run: on the service's thread, so the answer comes before the query times out.
        started = self.service.start_cleanup(keep_meta, wait_for_done, backoff, wait, force)
        answer = self.service.wait_cleanup(REMOTE_SWEEP_WAIT)
        return started.total if answer is None else answer

    def verify(self, path: str) -> dict[str, Any]:
        """Verify a collected run's outputs against its manifest and the journal (what cleanup checks first).

        Args:
            path: The logger directory.

        Returns:
            ``run``, ``manifest``, ``ok``, ``problems`` and per output ``path``, ``ok``, what the
            manifest lists (``rows``, ``bytes``, ``sha256``), what was found and ``problems``.
            When the outputs take longer than 3 s to hash, ``{"accepted": True, "id": ...,
            "path": ...}``; ``status()["tasks"]`` then gives that result under the ``id``.
        """
        run = run_path_argument(path)
        task = self.tasks.run("verify", run, lambda: self.service.verify(run).to_dict(), REMOTE_ANSWER_WITHIN)
        checked: dict[str, Any] = self._answer(task)
        return checked

    def restore(self, path: str) -> bool:
        """Put a cleaned run's segments back from the trash (before the grace period ends).

        Returns:
            True if anything was restored.
        """
        self._allow_destructive("restore")
        return self.service.restore(run_path_argument(path))

    def _answer(self, task: RemoteTask) -> Any:
        """A task's result if it is done, its error raised if it failed, else "accepted" with its id."""
        if task.state == "done":
            return task.result
        error = self.tasks.error(task.id)
        if error is not None:
            raise error
        return {"accepted": True, "id": task.id, "path": task.path}

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
                    self._stopping.set()
                    self.service.close()
                    # BOSS's worker stops on SIGTERM; should that hang, end the process anyway.
                    threading.Timer(10.0, os._exit, args=(1,)).start()
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        threading.Thread(target=watch, name="herocollector-parent-watch", daemon=True).start()

    def _declare_queryable(self, selector: str, callback: Callable[[Any], None]) -> Any:
        """Serve remote calls on threads of their own: HEROS answers a link's queries on one thread, in turn."""
        if selector.rsplit("/", 1)[-1].startswith("_"):
            return super()._declare_queryable(selector, callback)  # discovery and capabilities: quick, inline

        def dispatch(query: Any) -> None:
            # Whoever takes the claim first answers: a thread that runs the call, or the timer that
            # answers Busy when every thread is taken for CALL_QUEUE_LIMIT; the other does nothing.
            # Zenoh ends a query (and the caller's wait) only once no reference to it is left, so
            # the one who answers takes it out of ``held``.
            claim = threading.Lock()
            held = [query]
            del query
            timer: threading.Timer | None = None

            def serve() -> None:
                try:
                    if claim.acquire(blocking=False):
                        if timer is not None:
                            timer.cancel()
                        callback(held.pop())
                finally:
                    with self._calls_lock:
                        self._calls_in_flight -= 1

            def expire() -> None:
                if claim.acquire(blocking=False):
                    busy = Busy(f"no free thread for {CALL_QUEUE_LIMIT:g} s: the call was not run")
                    held.pop().reply_err(self._serialize(busy), encoding=self._default_encoding)

            with self._calls_lock:
                queued = self._calls_in_flight >= CALL_THREADS
                self._calls_in_flight += 1
            if queued:
                timer = threading.Timer(CALL_QUEUE_LIMIT, expire)
                timer.daemon = True
                timer.start()
            try:
                self._calls.submit(serve)
            except RuntimeError:  # shut down: the actor is stopping
                with self._calls_lock:
                    self._calls_in_flight -= 1
                if claim.acquire(blocking=False):
                    stopping = Busy("the actor is stopping")
                    held.pop().reply_err(self._serialize(stopping), encoding=self._default_encoding)

        return super()._declare_queryable(selector, dispatch)

    def _teardown(self) -> None:
        """Close the service (called by BOSS at shutdown; prompt whatever is waiting)."""
        self._parent_watch.set()
        self._stopping.set()  # accepted cleanups waiting for _DONE end now, untouched
        self._calls.shutdown(wait=False)
        if not self.tasks.wait(TEARDOWN_WAIT):
            log.warning(f"remote tasks still running after {TEARDOWN_WAIT:g} s; closing the service anyway")
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


def _check_key_expressions(config: ServiceConfig) -> None:
    """Refuse, naming the argument, what Zenoh would refuse later with only a ``ZError`` in the BOSS log.

    Raises:
        ConfigError: ``object_selector`` or ``event_name`` do not make a Zenoh key expression.
    """
    import zenoh

    for name in ("object_selector", "event_name"):
        selector = config.object_selector if name == "object_selector" else "*"
        event_name = config.event_name if name == "event_name" else "finished"
        try:
            zenoh.KeyExpr(f"@object/realm/{selector}/{event_name}")
        except zenoh.ZError as exc:
            value = getattr(config, name)
            hint = " (inside a chunk, write '$*': 'lab-logger-$*')" if "*" in value else ""
            reason = str(exc).split(" at /", 1)[0]
            raise ConfigError(f"{name} {value!r} is not a Zenoh key expression{hint}: {reason}") from None

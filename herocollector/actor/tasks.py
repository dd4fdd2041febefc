"""The work of remote calls that outlives their answer: each on a thread of its own, reported by id.

A remote call must answer before the caller's 10 s query timeout. :meth:`RemoteTasks.run` starts
the work and waits a little for it: done, the call answers with its result; still running, the
call answers "accepted" with the task's id, and ``status()["tasks"]`` reports the outcome later.
HEROS-free: the actor uses it for ``cleanup(path)`` and ``verify(path)``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from herocollector.errors import Busy

TASKS_RUNNING = 64
"""Accepted remote tasks that may be running at once; a further one is refused (``Busy``)."""
TASKS_KEPT = 200
"""Finished remote tasks that ``status()["tasks"]`` keeps reporting (the oldest are dropped)."""


@dataclass
class RemoteTask:
    """The work of one remote call (``cleanup``, ``verify``), reported by ``status()["tasks"]`` under its id.

    Attributes:
        id: Its id, as the accepted answer gave it.
        method: The remote method (``cleanup``).
        path: The run it is about.
        state: ``running``, ``done`` (``result`` holds the answer the call would have given) or
            ``error`` (``error`` says why; nothing more is done).
        result: The answer, once done.
        error: The error (type and message), if it failed.
        started: When it started (Unix time).
        finished: When it ended, None while running.
    """

    id: str
    method: str
    path: str | None
    state: str = "running"
    result: Any = None
    error: str | None = None
    started: float = 0.0
    finished: float | None = None


class RemoteTasks:
    """The work of remote calls, each on a thread of its own, so the call can answer in time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: OrderedDict[str, RemoteTask] = OrderedDict()
        self._ids = itertools.count(1)
        self._done: dict[str, threading.Event] = {}
        self._errors: dict[str, Exception] = {}

    def run(self, method: str, path: str | None, work: Callable[[], Any], answer_within: float) -> RemoteTask:
        """Start ``work`` and wait up to ``answer_within`` s for it; a copy of the task as it then is.

        Raises:
            Busy: :data:`TASKS_RUNNING` tasks are running already; nothing was started.
        """
        with self._lock:
            if sum(t.state == "running" for t in self._tasks.values()) >= TASKS_RUNNING:
                raise Busy(f"{TASKS_RUNNING} remote tasks are running already; {method} was not started")
            task = RemoteTask(f"{method}-{next(self._ids)}", method, path, started=time.time())
            self._tasks[task.id] = task
            done = self._done[task.id] = threading.Event()
            self._forget_old()

        def target() -> None:
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - reported to the caller or in status()
                self._errors[task.id] = exc
                self._finish(task, "error", None, f"{type(exc).__name__}: {exc}")
            else:
                self._finish(task, "done", result, None)
            finally:
                done.set()

        threading.Thread(target=target, name=f"herocollector-{task.id}", daemon=True).start()
        done.wait(answer_within)
        with self._lock:
            return RemoteTask(**asdict(task))

    def _finish(self, task: RemoteTask, state: str, result: Any, error: str | None) -> None:
        with self._lock:
            task.state, task.result, task.error, task.finished = state, result, error, time.time()
            self._done.pop(task.id, None)

    def _forget_old(self) -> None:
        finished = [k for k, t in self._tasks.items() if t.state != "running"]
        for key in finished[: max(len(finished) - TASKS_KEPT, 0)]:
            del self._tasks[key]
            self._errors.pop(key, None)

    def error(self, task_id: str) -> Exception | None:
        """The exception a task ended with, if it did."""
        with self._lock:
            return self._errors.get(task_id)

    def wait(self, timeout: float) -> bool:
        """Wait until no task is running (for shutdown and tests); whether none is."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                events = list(self._done.values())
            if not events:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not events[0].wait(remaining):
                return False

    def to_list(self) -> list[dict[str, Any]]:
        """Every task kept, oldest first, as dicts."""
        with self._lock:
            return [asdict(t) for t in self._tasks.values()]

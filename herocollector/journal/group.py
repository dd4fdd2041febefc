"""Group commit: the journal changes of several threads made durable by one commit.

A durable commit (an fsync of SQLite's WAL, PostgreSQL's WAL flush) costs milliseconds, far more
than the statements before it. :class:`GroupCommit` lets the workers, the intake and the lease
heartbeat share it: each caller hands in a *step* (a function of the connection that makes its
changes) and waits; one of the waiting callers, the leader, runs every step queued so far in one
transaction, each step in a savepoint of its own, and commits once. Steps that arrive while a
commit is being made are queued and form the next batch, so nothing waits for a timer: a lone
caller's step is committed at once, as it was before, and callers that come together share a
commit.

What each caller sees is what it saw with a transaction of its own:

* it returns only once the commit that holds its change is durable (and raises if that commit
  failed: then nothing of its step was kept);
* an exception its step raises (``LeaseLost``, ``OutputTakenError``, a failed statement) rolls
  back its savepoint only, and is raised to that caller alone; the other steps are committed;
* steps are applied in the order they were queued, and each sees the changes of the steps before
  it in its batch (two workers' ``take_due`` never take the same job).

The backend supplies the batch runner (:data:`RunBatch`): open the transaction, run the steps,
commit. A step marked ``single`` is one statement that is its own transaction; alone in its batch
it is run so, without the ``BEGIN`` and ``COMMIT`` round trips.

May import: the standard library only.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

C = TypeVar("C")
"""A backend's connection."""
T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """What one step gave: its result, or the exception it raised (its savepoint rolled back)."""

    result: Any = None
    error: BaseException | None = None


RunBatch = Callable[[Sequence[Callable[[Any], Any]], bool], list[Outcome]]
"""Runs steps in one transaction and commits; ``(steps, single)``, one outcome per step, in order.

``single`` is true for a batch of one step that is a single statement (no transaction needed).
It raises when the transaction or its commit failed: then no step was kept.
"""


class _Waiting:
    """A queued step and, once its batch is committed, its outcome."""

    __slots__ = ("done", "outcome", "single", "step")

    def __init__(self, step: Callable[[Any], Any], single: bool) -> None:
        self.step = step
        self.single = single
        self.done = False
        self.outcome = Outcome()


class GroupCommit(Generic[C]):
    """Runs the steps of many threads in shared transactions; see the module documentation.

    Args:
        run_batch: The backend's batch runner.
        max_batch: At most this many steps share one transaction (a bound on how long the
            journal's write lock is held at a time).
    """

    def __init__(self, run_batch: RunBatch, max_batch: int = 64) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Waiting] = []
        self._leading = False
        self._leader: int | None = None  # the thread running the batch
        self._pending = 0
        self.commits = 0
        """Batches committed (or attempted) so far: what the tests and benchmarks count."""
        self.steps = 0
        """Steps run so far."""

    def run(self, step: Callable[[C], T], single: bool = False) -> T:
        """Run ``step`` in the next shared transaction; return its result once that is durable.

        Args:
            step: The changes, as a function of the connection.
            single: ``step`` is one statement, its own transaction when it runs alone.

        Raises:
            BaseException: What the step raised, or what failed the batch's transaction or commit.
        """
        mine = _Waiting(step, single)
        with self._cond:
            if self._leading and self._leader == threading.get_ident():
                raise RuntimeError("a group-commit step must not run another step: it would wait for itself")
            self._queue.append(mine)
            self._pending += 1
            while not mine.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading, self._leader = True, threading.get_ident()
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                self._cond.release()
                try:
                    self._commit(batch)
                finally:
                    self._cond.acquire()
                    self._leading, self._leader = False, None
                    self._cond.notify_all()
            self._pending -= 1
        error = mine.outcome.error
        if error is not None:
            raise error
        result: T = mine.outcome.result
        return result

    @property
    def pending(self) -> int:
        """Steps handed in whose callers have not returned yet (queued, or in the batch being committed)."""
        with self._cond:
            return self._pending

    def _commit(self, batch: list[_Waiting]) -> None:
        """Run one batch and hand each step its outcome (every one of them, whatever happens)."""
        outcomes: list[Outcome]
        try:
            single = len(batch) == 1 and batch[0].single
            outcomes = self._run_batch([waiting.step for waiting in batch], single)
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} steps gave {len(outcomes)} outcomes")
        except BaseException as exc:  # noqa: BLE001 - nothing was kept: every step of the batch fails with it
            outcomes = [Outcome(error=exc if i == 0 else _copied(exc)) for i in range(len(batch))]
        self.commits += 1
        self.steps += len(batch)
        for waiting, outcome in zip(batch, outcomes, strict=True):
            waiting.outcome = outcome
            waiting.done = True


def _copied(exc: BaseException) -> BaseException:
    """An exception of its own for each caller (each raise changes its traceback)."""
    try:
        return copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is shared
        return exc

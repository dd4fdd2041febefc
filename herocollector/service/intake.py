"""The event intake: announcements are taken at once, journalled in batches, and spooled when the journal is down.

A Zenoh callback must return at once: while it runs, Zenoh holds further events for this
subscriber, and a burst of large events that each waited for a durable commit was partly
lost. So the callback only puts the event on an in-memory queue (:meth:`Intake.offer`). One
intake thread takes whatever has arrived, up to :data:`BATCH` events, and journals it with
one transaction (:meth:`~herocollector.journal.base.Journal.submit_many`): one durable commit
for many events.

When the journal cannot be reached, the batch goes to a durable spool instead: a file of JSON
lines in ``<state_dir>/spool``, fsynced before the events count as taken. The spool is
replayed into the journal as soon as it answers again, and at start-up (events a previous
process spooled). Replaying an event twice is harmless: a repeated announcement of a run
changes nothing the journal has not decided for it already.

No event ends the intake thread: an event the journal refuses for a reason of its own (not an
outage) becomes a failed job that names its path and the error, and the rest of its batch is
journalled; metadata keys JSON cannot hold are stored as strings (:func:`storable`).

An event can still be lost in one place only: in memory, between its arrival and its commit
(milliseconds), when the process is killed. The catch-up scan finds such runs once they have
``_DONE``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from herocollector.errors import JournalError
from herocollector.events import parse_event
from herocollector.journal.base import Announcement, Job, JobStore
from herocollector.output.files import fsync_dir
from herocollector.run.rundir import job_key
from herocollector.service.health import JournalHealth

log = logging.getLogger(__name__)

BATCH = 500
"""At most this many events share one journal transaction."""

SPOOL_DIR = "spool"
SPOOL_LIMIT = 256 << 20
"""Bytes the spool may hold; past that, events are refused with an error (the catch-up scan still finds their runs)."""


@dataclass(frozen=True)
class Malformed:
    """An event without a usable path: journalled as a failed job (no retry can fix it).

    Attributes:
        source: The announcing HERO.
        event: The event as it came (the journal keeps its ``repr``, shortened).
        error: Why it is malformed.
    """

    source: str
    event: Any
    error: str


def announcement_of(
    source: str,
    data: Any,
    path_key: str,
    timeout_ms: int | None,
    received: float,
    allowed_roots: Sequence[Path] = (),
) -> Announcement | Malformed:
    """What an event announces: a run, with its ``_DONE`` deadline, or why it announces nothing.

    The run is journalled under :func:`herocollector.run.rundir.job_key`: its resolved path, so
    that one run announced under two spellings is one job.

    Args:
        source: The announcing HERO.
        data: The event payload (see :func:`herocollector.events.parse_event`).
        path_key: Where the path is in the payload.
        timeout_ms: The ``timeout`` argument: how long to wait for ``_DONE``.
        received: When the event arrived (the deadline counts from there).
        allowed_roots: The ``allowed_roots`` argument.
    """
    try:
        path, metadata = parse_event(data, path_key)
    except ValueError as exc:
        return Malformed(source, data, f"malformed event: {exc}")
    deadline = None if timeout_ms is None else received + timeout_ms / 1000
    return Announcement(job_key(path, allowed_roots), source, storable(metadata), deadline)


def storable(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` as the journal and the spool can write it: JSON, with keys that JSON allows.

    A value JSON has no type for is stored as its ``str`` (as the journal does anyway). A key
    that is not a string, a number, a bool or None (a CBOR map may have a list as a key,
    decoded as a tuple) made ``json.dumps`` raise on the intake thread and ended it, and with
    it every later event; such a key is stored as its ``str`` too.
    """
    try:
        json.dumps(metadata, default=str)
    except (TypeError, ValueError):
        log.warning("event metadata with keys JSON cannot hold: those keys are stored as strings")
        return {str(key): _with_json_keys(value) for key, value in metadata.items()}
    return metadata


def _with_json_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key if isinstance(key, (str, int, float, bool)) or key is None else str(key): _with_json_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_with_json_keys(item) for item in value]
    return value


class Spool:
    """Announcements kept durably on disk while the journal is unreachable.

    Args:
        folder: ``<state_dir>/spool``, created when first needed.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sequence = 0

    def files(self) -> list[Path]:
        """The spooled batches, oldest first."""
        try:
            return sorted(p for p in self.folder.iterdir() if p.suffix == ".jsonl" and p.is_file())
        except FileNotFoundError:
            return []

    def size(self) -> int:
        """Bytes spooled."""
        return sum(p.stat().st_size for p in self.files())

    def write(self, announcements: Sequence[Announcement]) -> Path:
        """Keep a batch durably: written, fsynced and renamed into place before this returns.

        Raises:
            OSError: The spool cannot be written (full, read-only), or is over :data:`SPOOL_LIMIT`.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.size() > SPOOL_LIMIT:
            raise OSError(f"the event spool {self.folder} holds more than {SPOOL_LIMIT >> 20} MiB")
        self._sequence += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._sequence:06d}"
        temporary = self.folder / f".{name}.tmp"
        final = self.folder / f"{name}.jsonl"
        data = "".join(json.dumps(asdict(a), default=str) + "\n" for a in announcements).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(temporary, final)
        fsync_dir(self.folder)
        return final

    @staticmethod
    def read(file: Path) -> list[Announcement]:
        """The announcements of one spooled batch (lines that do not parse are skipped, with an error)."""
        found = []
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            try:
                found.append(Announcement(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                log.error(f"{file}, line {number}: not a spooled announcement ({exc}); skipped")
        return found


class Intake:
    """Takes events from the Zenoh callback and journals them in batches, on its own thread.

    Args:
        journal: Where announcements go.
        spool: Where they go while the journal is unreachable.
        health: Told about every journal failure and success.
        path_key: The ``path_key`` argument.
        timeout_ms: The ``timeout`` argument.
        allowed_roots: The ``allowed_roots`` argument.
        on_journalled: Called with each batch's jobs and whether each is due now.
        on_malformed: Called with each malformed event's failed job.
    """

    def __init__(
        self,
        journal: JobStore,
        spool: Spool,
        health: JournalHealth,
        path_key: str,
        timeout_ms: int | None,
        allowed_roots: Sequence[Path],
        on_journalled: Callable[[list[tuple[Job, bool]]], None],
        on_malformed: Callable[[Job], None],
    ) -> None:
        self._journal = journal
        self._spool = spool
        self._health = health
        self._path_key = path_key
        self._timeout_ms = timeout_ms
        self._allowed_roots = allowed_roots
        self._on_journalled = on_journalled
        self._on_malformed = on_malformed
        self._queue: queue.SimpleQueue[tuple[str, Any, float]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._replay = threading.Event()
        self._replay.set()  # what an earlier process spooled
        self._idle = threading.Condition()
        self._in_flight = 0
        self._thread = threading.Thread(target=self._run, name="herocollector-intake", daemon=True)
        health.on_recovery(self._replay_now)

    def start(self) -> None:
        """Start the intake thread."""
        self._thread.start()

    def offer(self, source: str, data: Any) -> None:
        """Take an event; returns at once, whatever the journal is doing (the Zenoh callback)."""
        with self._idle:
            self._in_flight += 1
        self._queue.put((source, data, time.time()))

    def wait_empty(self, timeout: float) -> bool:
        """Wait until every offered event is journalled or spooled, and a due replay is done; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight or (self._replay.is_set() and self._health.outage is None):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _replay_now(self) -> None:
        """The journal answers again: replay the spool now, not after the idle wait of :meth:`_take`."""
        self._replay.set()
        self._queue.put(("", None, 0.0))  # wakes the thread

    @property
    def spooled(self) -> int:
        """Batches waiting in the spool."""
        return len(self._spool.files())

    def close(self, timeout: float = 3.0) -> None:
        """Journal or spool what has arrived, then stop the thread."""
        self._stop.set()
        self._queue.put(("", None, 0.0))  # wakes the thread
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                if self._replay.is_set():
                    self._replay_spool()
                batch = self._take()
                if batch:
                    self._journal_batch(batch)
                elif self._stop.is_set():
                    return
            except Exception:
                log.exception("the event intake failed; it goes on with the next events")
                self._stop.wait(0.1)  # a failure that repeats does not spin

    def _take(self) -> list[tuple[str, Any, float]]:
        try:
            first = self._queue.get(timeout=1.0)
        except queue.Empty:
            if self._health.outage is not None and self._spool.files():
                self._replay.set()  # try the journal again, at most once a second
            return []
        batch = [first]
        while len(batch) < BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [item for item in batch if item[2] > 0.0]  # drop the wake-up marker

    def _done(self, count: int) -> None:
        with self._idle:
            self._in_flight -= count
            self._idle.notify_all()

    def _journal_batch(self, batch: list[tuple[str, Any, float]]) -> None:
        try:
            found = [
                announcement_of(s, d, self._path_key, self._timeout_ms, t, self._allowed_roots) for s, d, t in batch
            ]
            announcements = [a for a in found if isinstance(a, Announcement)]
            for malformed in (m for m in found if isinstance(m, Malformed)):
                self._record_malformed(malformed)
            if announcements:
                self._submit(announcements)
        finally:
            self._done(len(batch))

    def _submit(self, announcements: list[Announcement]) -> None:
        left = self._journal_each(announcements)
        if not left:
            return
        try:
            self._spool.write(left)
        except (OSError, TypeError, ValueError) as spool_error:
            paths = ", ".join(a.path for a in left[:3])
            log.error(f"{len(left)} event(s) lost ({paths}…): the spool failed: {spool_error}")

    def _journal_each(self, announcements: list[Announcement]) -> list[Announcement]:
        """Journal ``announcements`` in one transaction; the ones the journal refuses become failed jobs.

        A batch that fails while the journal answers is the fault of one of its events (a
        path PostgreSQL cannot store, with a NUL, fails as a ``JournalError`` like an outage
        does; a path SQLite cannot encode raises ``UnicodeEncodeError``). Spooled, such a batch
        came back at every replay, failed again and held up the spool behind it, for ever; left
        to raise, it ended the intake thread. So the batch is tried again event by event, and
        an event that fails alone while the journal answers is journalled as a failed job
        that names its path and the error; if even that write fails, the journal is down for
        writes (a full disk), and the event stays for the spool.

        Returns:
            The announcements not journalled because the journal is unreachable (to be spooled,
            or kept in the spool); empty when every one was journalled or recorded as failed.
        """
        refused: Exception
        try:
            results = self._journal.submit_many(announcements)
        except JournalError as exc:
            if not self._reachable():
                self._health.failed(f"journalling {len(announcements)} event(s)", exc)
                return announcements
            refused = exc
        except Exception as exc:  # noqa: BLE001 - not the journal's outage: an event's own fault
            refused = exc
        else:
            self._health.succeeded()
            self._on_journalled(results)
            return []
        if len(announcements) > 1:
            for index, announcement in enumerate(announcements):
                if self._journal_each([announcement]):
                    return announcements[index:]  # the journal went away meanwhile: keep the rest
            return []
        bad = announcements[0]
        error = f"event for {bad.path!r} cannot be journalled: {type(refused).__name__}: {refused}"
        try:
            # Also the proof that the journal takes writes: its record holds the event's repr,
            # not the value the journal refused.
            job = self._journal.record_malformed(bad.source, {"path": bad.path}, error)
        except JournalError as exc:
            self._health.failed("journalling an event", exc)  # it reads but does not write: an outage
            return announcements
        self._on_malformed(job)  # the service logs it and reports it as run_failed
        return []

    def _reachable(self) -> bool:
        """Whether the journal answers a query now (tells a batch's own fault from an outage)."""
        try:
            self._journal.counts()
        except Exception:  # noqa: BLE001 - whatever it raises, it did not answer
            return False
        return True

    def _record_malformed(self, malformed: Malformed) -> None:
        try:
            job = self._journal.record_malformed(malformed.source, malformed.event, malformed.error)
        except JournalError as exc:
            self._health.failed("journalling a malformed event", exc)
            log.error(f"malformed event from {malformed.source} not journalled: {malformed.error}")
            return
        self._on_malformed(job)

    def _replay_spool(self) -> None:
        try:
            for file in self._spool.files():
                try:
                    announcements = Spool.read(file)
                except (OSError, UnicodeDecodeError) as exc:
                    log.error(f"spooled events in {file} cannot be read ({exc}); left where they are")
                    continue
                if announcements and self._journal_each(announcements):
                    return  # unreachable again: the file stays for the next replay (a repeat is harmless)
                file.unlink(missing_ok=True)
                log.info(f"replayed {len(announcements)} spooled event(s) from {file.name}")
        finally:
            with self._idle:
                self._replay.clear()
                self._idle.notify_all()
        self._health.succeeded()

"""Test support for the actor: in-process actors on real Zenoh sessions.

Multicast scouting is off (so a test's actors and HEROs talk only to each other), every actor
has its own realm, and waiting is on conditions with deadlines.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import pyarrow as pa
from heros import LocalHERO, event
from heros.event import reliable
from heros.zenoh import ZenohSessionManager

from herocollector.actor.archiver import CollectorArchiver
from herocollector.actor.demo import MEASURES, write_simulated_run
from herocollector.collector import Collector
from herocollector.journal.sqlite import Job, JobState

from .runs import MemoryWriter

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"
COLUMNS = ["entity", "measure"]
RECORDS = 300
ENTITIES = 2
TIMEOUT = 20.0


class Announcer(LocalHERO):
    """A stand-in logger HERO that announces finished runs."""

    @event
    def finished(self, payload: Any) -> Any:
        """Announce a run."""
        return payload


class BurstLogger:
    """A logger HERO for BOSS that fires a burst of ``finished`` events on a thread of its own.

    The events are reliable, as the demo logger's. Each announces ``<root>/<name>-<n>`` with a
    ``note`` of ``size`` bytes; :meth:`burst` returns at once, :meth:`fired` counts what went out.

    Args:
        root: The folder the announced runs are in.
        name: Starts every announced run's name (unique per logger).
    """

    def __init__(self, root: str, name: str) -> None:
        self.root = Path(root)
        self.name = name
        self._fired = 0
        self._thread: threading.Thread | None = None

    @event
    @reliable
    def finished(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Announces a finished run: ``{"path": <logger directory>, "note": ...}``."""
        return payload

    def paths(self, count: int) -> list[str]:
        """The runs a burst of ``count`` announces."""
        return [str(self.root / f"{self.name}-{n:05d}") for n in range(int(count))]

    def burst(self, count: int, size: int = 3000) -> None:
        """Start firing ``count`` events, back to back, with ``size``-byte notes; returns at once."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("a burst is still being fired")
        note = "x" * int(size)
        paths = self.paths(count)

        def fire() -> None:
            for path in paths:
                self.finished({"path": path, "note": note})
                self._fired += 1

        self._thread = threading.Thread(target=fire, name="burst", daemon=True)
        self._thread.start()

    def fired(self) -> int:
        """Events fired so far."""
        return self._fired

    def announce(self, path: str) -> None:
        """Fire one ``finished`` event for ``path`` (to check the route before a burst)."""
        self.finished({"path": str(path)})


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


# BOSS stops a HERO's worker process from a SIGTERM handler that stops the worker's event loop.
# When the signal lands while the loop runs a callback (not while it waits), the loop stops
# before its communication task has ended, and the worker prints this traceback as it exits.
# It is BOSS's own shutdown, after the HERO has been torn down, so it is not ours to report.
BOSS_WORKER_EXIT = ("boss/worker.py", "RuntimeError: Event loop stopped before Future completed.")


def tracebacks(log: str) -> list[str]:
    """The tracebacks in a process's ``log``, except BOSS's worker-exit race (see above)."""
    found: list[str] = []
    lines = log.splitlines()
    for start, line in enumerate(lines):
        if not line.lstrip().startswith("Traceback (most recent call last):"):
            continue
        end = start + 1
        while end < len(lines) and lines[end][:1].isspace():
            end += 1
        block = "\n".join(lines[start : end + 1])
        frame, message = BOSS_WORKER_EXIT
        if not (frame in block and block.rstrip().endswith(message)):
            found.append(block)
    return found


def wait_job(actor: CollectorArchiver, path: str | Path, *states: JobState) -> Job:
    """The job of ``path`` once it is in one of ``states``."""
    journal = actor.service.journal

    def check() -> Job | None:
        # A run's job is keyed by its resolved path when it resolves inside allowed_roots.
        job = journal.by_path(str(path)) or journal.by_path(os.path.realpath(path))
        return job if job is not None and job.state in states else None

    found: Job = wait_for(check, f"job of {path} to become {'/'.join(states)} (now {journal.by_path(str(path))})")
    return found


def wait_idle(actor: CollectorArchiver) -> None:
    """Until nothing is pending, waiting or running."""
    wait_for(actor.is_queue_drained, "the actor to become idle")


def segments(path: Path) -> list[Path]:
    """The segment files of a run, in name order."""
    return sorted(path.glob("*.seg.zst"))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | str]:
    """Every entry below ``folder``: file contents and mtimes, symlink targets, directories."""
    found: dict[str, tuple[bytes, int] | str] = {}
    for entry in sorted(folder.rglob("*")):
        key = str(entry.relative_to(folder))
        if entry.is_symlink():
            found[key] = "-> " + os.readlink(entry)
        elif entry.is_dir():
            found[key] = "dir"
        else:
            found[key] = (entry.read_bytes(), entry.stat().st_mtime_ns)
    return found


def read_arrow(path: Path) -> pa.Table:
    """An Arrow IPC file, read whole."""
    with pa.ipc.open_file(str(path)) as reader:
        return reader.read_all()


def expected_by_measure(run: Path) -> dict[str, pa.Table]:
    """What the library Collector gives for each measure of a run (the same rule, same columns)."""
    tables = {}
    for measure in MEASURES:
        writer = MemoryWriter()
        rule = {"match": {"key": "measure", "op": "eq", "value": measure}}
        assert Collector([run]).collect(writer, rule=rule, columns=COLUMNS) is True
        tables[measure] = writer.table()
    return tables


def corrupt(run: Path) -> None:
    """Overwrite the start of the first segment (bad zstd magic)."""
    segment = segments(run)[0]
    data = bytearray(segment.read_bytes())
    data[:32] = b"\xff" * 32
    segment.write_bytes(bytes(data))


class Env:
    """Folders of one test, and the actors and HEROs it started (all stopped at the end)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.runs = tmp_path / "runs"
        self.runs.mkdir()
        self.out = tmp_path / "out"
        self.state = tmp_path / "state"
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self._actors: list[CollectorArchiver] = []
        self._heroes: list[LocalHERO] = []
        self._seed = 0
        self.sessions = ZenohSessionManager({"scouting/multicast/enabled": False})

    def actor(self, **overrides: Any) -> CollectorArchiver:
        """An in-process actor on this test's folders (no catch-up scan unless asked for)."""
        kwargs: dict[str, Any] = dict(
            object_selector="*",
            save_template=TEMPLATE,
            output_root=str(self.out),
            allowed_roots=[str(self.runs)],
            state_dir=str(self.state),
            retry_delay=0.05,
            max_retries=1,
            columns=COLUMNS,
            scan_interval=None,
            realm=f"hc-test-{uuid4().hex}",
            session_manager=self.sessions,
        )
        kwargs.update(overrides)
        actor = CollectorArchiver(**kwargs)
        self._actors.append(actor)
        return actor

    def announcer(self, actor: CollectorArchiver, name: str = "announcer") -> Announcer:
        """A HERO in the actor's realm that fires ``finished``."""
        hero = Announcer(name, realm=actor._realm, session_manager=actor._session_manager)
        self._heroes.append(hero)
        return hero

    def run(self, name: str, folder: Path | None = None, **kwargs: Any) -> Path:
        """Write a finished simulated run (a new seed each time)."""
        self._seed += 1
        path = (folder or self.runs) / name
        kwargs = {"records": RECORDS, "entities": ENTITIES, "seed": self._seed, **kwargs}
        write_simulated_run(path, **kwargs)
        return path

    def stop(self, actor: CollectorArchiver) -> None:
        """Tear an actor down as BOSS does, and check that its threads ended."""
        if actor not in self._actors:
            return
        self._actors.remove(actor)
        try:
            actor._teardown()
            assert not hasattr(actor, "_worker_thread")  # the base class's queue thread is never started
            assert not any(t.is_alive() for t in actor.service.scheduler._threads)
        finally:
            actor._destroy_hero()

    def close(self) -> None:
        """Destroy the HEROs, stop the actors (idempotent)."""
        for hero in self._heroes:
            hero._destroy_hero()
        self._heroes.clear()
        for actor in list(self._actors):
            self.stop(actor)
        self.sessions.force_close()


def collected(actor: CollectorArchiver, path: Path, data: Any = None, source: str = "logger-x") -> Job:
    """Feed an event for ``path`` and wait until it is collected."""
    actor.feed(source, {"path": str(path)} if data is None else data)
    job = wait_job(actor, path, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE, job.error
    return job

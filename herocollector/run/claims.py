"""Run claims: several actors hear the same event, exactly one collects the run.

A claim is a file created with ``O_CREAT | O_EXCL`` in the logger directory itself, so the
shared filesystem decides the race. It holds the owner, host and pid; its mtime is the
owner's heartbeat, refreshed while the owner collects. A claim whose heartbeat is older than
``stale_after`` seconds belongs to an actor that died: another actor takes it over by
removing it and creating its own. The removal is guarded by a break token created with
``O_EXCL`` and named after the stale file's identity (inode and mtime): of several actors
that judged the same claim stale one only removes it, and only while it is still that file,
never the fresh claim another taker has just created.

When a collection succeeds the owner writes a ``collected`` marker (atomically, by rename)
before it drops the claim, so an actor that hears the event later, or restarts, finds that
the run is done and by whom.

Guarantees and limits:

* On a local filesystem and on NFSv3+ (``O_EXCL`` creation and ``rename`` are atomic on the
  server), at most one live actor holds a claim at a time.
* Staleness uses the file's mtime, set by the server on NFS: keep clocks in sync (NTP) and
  ``stale_after`` well above ``heartbeat_every`` plus the worst clock skew and attribute-cache
  delay (``actimeo``). A paused-but-alive actor whose claim went stale may finish after
  another took over; both write the same run to the same paths, and both outputs are complete
  files (atomic rename), so readers never see a broken file.
"""

from __future__ import annotations

import enum
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herocollector.heartbeat import Heartbeat

CLAIM_FILE = ".herocollector.claim"
COLLECTED_FILE = ".herocollector.collected"


class ClaimOutcome(enum.StrEnum):
    """What :meth:`RunClaim.acquire` found."""

    ACQUIRED = "acquired"
    """The claim is ours now."""
    HELD = "held"
    """A live actor holds it."""
    COLLECTED = "collected"
    """The run was collected already (the marker is there)."""


ACQUIRED, HELD, COLLECTED = ClaimOutcome.ACQUIRED, ClaimOutcome.HELD, ClaimOutcome.COLLECTED


@dataclass
class ClaimResult:
    """What :meth:`RunClaim.acquire` found.

    Attributes:
        outcome: What was found.
        info: The claim or marker file's content (owner, host, pid, outputs ...), as JSON gives it.
    """

    outcome: ClaimOutcome
    info: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class RunClaim:
    """The claim of one actor on one logger directory.

    Args:
        run: The logger directory.
        owner: Identifies the actor (stable across its restarts, e.g. its state_dir).
        stale_after: Seconds without heartbeat after which a claim may be taken over.
        heartbeat_every: Seconds between heartbeats while the claim is held.
    """

    def __init__(self, run: Path, owner: str, stale_after: float = 60.0, heartbeat_every: float = 5.0) -> None:
        self.run = Path(run)
        self.owner = owner
        self.stale_after = float(stale_after)
        self.heartbeat_every = float(heartbeat_every)
        self.file = self.run / CLAIM_FILE
        self.marker = self.run / COLLECTED_FILE
        self._beat: Heartbeat | None = None

    def acquire(self) -> ClaimResult:
        """Try to take the claim.

        Returns:
            ``collected`` if the run was collected already, ``held`` if another live actor
            holds it, else ``acquired`` (and the heartbeat runs until :meth:`release`).
        """
        for _ in range(8):  # a few rounds of take-over races at most
            if self.marker.exists():
                # No claim on a collected run is anyone's any more: its holder writes the marker
                # before it lets go, and one killed in between leaves the claim behind.
                self.file.unlink(missing_ok=True)
                return ClaimResult(COLLECTED, _read_json(self.marker))
            mine = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "claimed_at": time.time()}
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    seen = os.stat(self.file)
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                held = _read_json(self.file)
                age = time.time() - seen.st_mtime
                if held.get("owner") != self.owner and age < self.stale_after:
                    return ClaimResult(HELD, {**held, "heartbeat_age": age})
                # Ours from before a restart, or stale: remove it (one actor does), then retry.
                self._remove_stale(seen)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(mine, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if self.marker.exists():  # its holder finished and let go between our look and our claim
                self.file.unlink(missing_ok=True)
                return ClaimResult(COLLECTED, _read_json(self.marker))
            self._start_heartbeat()
            return ClaimResult(ACQUIRED, mine)
        return ClaimResult(HELD, _read_json(self.file))

    def _remove_stale(self, seen: os.stat_result) -> None:
        """Remove the claim file judged stale (or ours) as ``seen``, unless it changed since.

        Without the break token, a slow taker that judged the old claim stale would remove
        the fresh claim another taker has just created, and both would acquire the run.
        """
        token = self.file.with_name(f"{CLAIM_FILE}.break-{seen.st_ino}-{seen.st_mtime_ns}")
        try:
            os.close(os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            # Another actor is removing this claim; a token this old was left by one that died.
            try:
                if time.time() - token.stat().st_mtime > self.stale_after:
                    token.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return
        try:
            now = os.stat(self.file)
            if (now.st_dev, now.st_ino, now.st_mtime_ns) == (seen.st_dev, seen.st_ino, seen.st_mtime_ns):
                os.unlink(self.file)
        except FileNotFoundError:
            pass
        finally:
            token.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        def beat() -> bool:
            try:
                os.utime(self.file)
            except FileNotFoundError:
                return False  # the claim is gone: nothing left to keep alive
            return True

        self._beat = Heartbeat(beat, self.heartbeat_every, f"claim-heartbeat {self.run.name}").start()

    def release(self, outputs: dict[str, int] | None = None) -> None:
        """Drop the claim; with ``outputs`` (a success) first write the collected marker.

        Args:
            outputs: Output files and row counts of a successful collection, or None.
        """
        if self._beat is not None:
            self._beat.stop()
        if outputs is not None:
            record = {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "collected_at": time.time(),
                "outputs": outputs,
            }
            temporary = self.run / f"{COLLECTED_FILE}.{uuid.uuid4().hex[:8]}.tmp"
            with open(temporary, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, self.marker)
        self.file.unlink(missing_ok=True)

"""One service per ``state_dir``: an exclusive lock on ``<state_dir>/lock``.

The lock is an ``flock`` on a file that also holds who took it (host, pid, time, a
description), so a second service on the same ``state_dir`` fails to start with a message
naming the holder. The kernel drops the lock when its process dies, ``kill -9`` included, so
a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from herocollector.errors import StateDirError, StateDirLocked

LOCK_FILE = "lock"


class StateDirLock:
    """An exclusive lock on a ``state_dir``.

    Args:
        state_dir: The folder (created if needed).
        description: Who holds it, for the message a second taker gets.
    """

    def __init__(self, state_dir: Path, description: str = "") -> None:
        self.file = state_dir / LOCK_FILE
        self.description = description
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> StateDirLock:
        """Take the lock.

        Args:
            wait: Seconds to keep trying (a holder that is shutting down lets go soon).

        Returns:
            Itself.

        Raises:
            StateDirLocked: Another process holds it; the message names it.
            StateDirError: The lock file cannot be created or written (a full or read-only
                ``state_dir``); the message names the file. Nothing is kept open.
        """
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateDirError(f"cannot open the lock file: {exc.strerror}", self.file) from exc
        try:
            self._lock(fd, wait)
            info = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.time(),
                "description": self.description,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except BaseException as exc:
            os.close(fd)  # also drops the flock: a failed start keeps nothing
            if isinstance(exc, OSError):
                raise StateDirError(f"cannot write the lock file: {exc.strerror}", self.file) from exc
            raise
        self._fd = fd
        return self

    def _lock(self, fd: int, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateDirLocked(
                        f"another herocollector service already uses this state_dir: {_describe(self.holder())}",
                        self.file.parent,
                    ) from None
                time.sleep(0.05)

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its holder (empty if unreadable)."""
        try:
            data = json.loads(self.file.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        """Let go of the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    what = f" ({holder['description']})" if holder.get("description") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{what}, since {since}"
